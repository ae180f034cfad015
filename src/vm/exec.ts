/**
 * `exec` into a VM-mode container. The container's init is in the guest, and
 * the host process owns the channel, so:
 *
 * - the plan is container mode's exec planner run on the guest's facts: join
 *   the namespaces of init's *guest* pid, and its cgroup (stage0 writes "0"
 *   into the guest cgroup's cgroup.procs first); stage0 always stays as the
 *   monitor, so the guest reports the process's exit status;
 * - a stand-in on the host speaks for the process: it connects to the host
 *   process's control socket, which gives it a channel session of its own,
 *   relays its stdio (or a terminal) and signals, and exits with the
 *   process's status. For a foreground exec the stand-in is the `exec`
 *   command itself; for `exec -d` it is a detached `nk-runtime vm
 *   exec-relay` that inherits exec's stdio, and --pid-file names it (the
 *   process's guest pid means nothing on the host; like the host process for
 *   init, the stand-in takes signals for the process and exits with its status).
 *   If a stand-in dies, the host process kills the guest process.
 * - process.terminal: with --console-socket, a host pty's master goes to the
 *   socket and the stand-in relays the slave; without (foreground only), the
 *   stand-in's own terminal, in raw mode. In the guest the agent takes the
 *   pty master on a console socket of the session, and follows RESIZE.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import type { Process } from "../spec/types.ts";
import { buildExecPlan } from "../plan/exec-plan.ts";
import { NO_LSM } from "../plan/build.ts";
import { encodePlan, OpCode, Section, type PlanOp } from "../plan/ops.ts";
import type { ContainerRecord } from "../state/store.ts";
import { containerStatus, type RuntimeContext } from "../linux/container.ts";
import { ContainerError } from "../util/errors.ts";
import { compileContainerSeccomp } from "../linux/seccomp.ts";
import { Tracer } from "../linux/trace.ts";
import type { Logger } from "../util/log.ts";
import { signalNumber } from "../util/signals.ts";
import { projectHome } from "../util/home.ts";
import { encodeFrame, Frame, FrameReader, LineBuffer, u32Payload, type FrameType } from "./channel.ts";
import { GUEST_CGROUP, GUEST_FIFO_DIR } from "./config.ts";
import { VmError } from "./driver.ts";
import { controlSocketOf, readPids, replacer, reviver } from "./launch.ts";
import { readReport, reporter } from "./report.ts";
import { opResult, traceAfterReady } from "./sync.ts";
import { StdioRelay, type SessionStdio } from "./stdio.ts";

/** Everything a stand-in needs: computed by `exec`, carried out by it or by `vm exec-relay`. */
export interface VmExecRequest {
  id: string;
  controlSocket: string;
  ops: PlanOp[];
  /** process.terminal: the guest socket the agent takes the pty master on, and the host console socket (if any). */
  guestConsole?: string;
  consoleSocket?: string;
  trace: boolean;
  /** A plan of Pre ops only (no process: `update`'s cgroup writes): its exit status is the outcome. */
  oneShot?: boolean;
  /**
   * A container's init rather than an exec'd process (a pod member, pod.ts):
   * once ready it waits on the guest fifo; the relay blocks on the host
   * fifo as init would, and on `start` sends START.
   */
  start?: { hostFifo: string; guestFifo: string };
}

export interface VmExecOptions {
  process: Process;
  consoleSocket?: string;
  pidFile?: string;
  preserveFds: number;
  detach: boolean;
  ignorePaused: boolean;
}

const FORWARDED = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCONT"] as const;

function writePidFile(path: string, pid: number): void {
  const temp = `${path}.${process.pid}.tmp`;
  writeFileSync(temp, String(pid));
  renameSync(temp, path);
}

/** The guest plan of one exec'd process (pure, given the container's facts). */
export function buildVmExecPlan(input: { process: Process; guestInit: number; spec: ContainerRecord["spec"]; guestConsole?: string; seccomp?: Parameters<typeof buildExecPlan>[0]["seccomp"] }): PlanOp[] {
  const plan = buildExecPlan({
    process: input.process,
    initPid: input.guestInit,
    // A namespace path in the spec was a host file: the guest made a fresh one, which init's /proc/<pid>/ns/* names.
    namespaces: (input.spec.linux?.namespaces ?? []).map((ns) => ({ type: ns.type })),
    consoleSocket: input.guestConsole,
    preserveFds: 0,
    foreground: true,
    seccomp: input.seccomp,
    lsm: NO_LSM,
    setgroupsDenied: false,
  });
  const joinCgroup: PlanOp = { code: OpCode.WRITE_FILE, section: Section.Pre, args: [`${GUEST_CGROUP}/cgroup.procs`, "0"], source: "linux.cgroupsPath (guest: join the container's cgroup)" };
  return [joinCgroup, ...plan.ops];
}

/** Check that `exec` can run in this VM-mode container now and compute its request (plan, sockets). */
export async function prepareVmExec(ctx: RuntimeContext, record: ContainerRecord, opts: Omit<VmExecOptions, "pidFile">): Promise<VmExecRequest> {
  const stateDir = ctx.store.dir(record.id);
  const status = containerStatus(ctx, record);
  if (status === "stopped" || status === "creating") throw new ContainerError("container-not-running", `cannot exec in a stopped container: ${record.id}`);
  // A paused VM runs nothing, the new process included, until `resume`.
  if (status === "paused" && !opts.ignorePaused) throw new ContainerError("container-paused", `cannot exec in a paused container: ${record.id} (resume it first)`);
  if (opts.preserveFds > 0) throw new VmError("vm-unsupported", "--preserve-fds: passing extra fds is not possible in VM mode (not implemented yet)");
  const terminal = Boolean(opts.process.terminal);
  if (terminal && opts.detach && !opts.consoleSocket) {
    throw new VmError("console-socket-required", "process.terminal: cannot allocate a terminal for a detached process without --console-socket");
  }
  const guestInit = readPids(stateDir)?.guestInit?.pid;
  if (!guestInit) throw new VmError("vm-not-ready", `container ${record.id}: its init in the guest is not known yet`);
  const guestConsole = terminal ? `${GUEST_FIFO_DIR}/tty-${randomBytes(6).toString("hex")}.sock` : undefined;
  const seccomp = await compileContainerSeccomp(record.spec, ctx, { id: record.id, bundle: record.bundle, listenerAllowed: false });
  const request: VmExecRequest = {
    id: record.id,
    controlSocket: controlSocketOf(stateDir),
    ops: buildVmExecPlan({ process: opts.process, guestInit, spec: record.spec, guestConsole, seccomp }),
    guestConsole,
    consoleSocket: terminal ? opts.consoleSocket : undefined,
    trace: ctx.tracer.enabled,
  };
  return request;
}

/** `exec` for a VM-mode container; resolves with exec's exit code. */
export async function execInVmContainer(ctx: RuntimeContext, record: ContainerRecord, opts: VmExecOptions): Promise<number> {
  const stateDir = ctx.store.dir(record.id);
  const request = await prepareVmExec(ctx, record, opts);
  if (!opts.detach) {
    return runExecRelay(request, ctx.log, () => {
      if (opts.pidFile) writePidFile(opts.pidFile, process.pid);
    });
  }

  // -d: a detached stand-in inherits our stdio; it reports once the process runs.
  const requestFile = `${stateDir}/exec-${process.pid}-${randomBytes(4).toString("hex")}.json`;
  writeFileSync(requestFile, JSON.stringify(request, replacer), { mode: 0o600 });
  const flags = [
    ...(ctx.log.file ? ["--log", ctx.log.file] : []),
    ...(ctx.log.format !== "text" ? ["--log-format", ctx.log.format] : []),
    ...(ctx.log.debugEnabled ? ["--debug"] : []),
  ];
  const child = spawn(`${projectHome()}/bin/nk-runtime`, [...flags, "vm", "exec-relay", requestFile], { stdio: ["inherit", "inherit", "inherit", "pipe"], detached: true });
  const report = await readReport(child);
  rmSync(requestFile, { force: true });
  if (report.started !== true) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    throw new VmError(typeof report.code === "string" ? report.code : "vm-exec-failed", typeof report.error === "string" ? report.error : `exec in container ${record.id}: the stand-in exited without a report`);
  }
  if (opts.pidFile) writePidFile(opts.pidFile, child.pid!);
  child.unref();
  return 0;
}

/** `vm exec-relay FILE`: the detached stand-in of `exec -d`; reports on fd 3. */
export async function runDetachedRelay(requestFile: string, log: Logger): Promise<number> {
  const request = JSON.parse(readFileSync(requestFile, "utf8"), reviver) as VmExecRequest;
  rmSync(requestFile, { force: true });
  const { report } = reporter();
  try {
    return await runExecRelay(request, log, (guestPid) => report({ started: true, guestPid }));
  } catch (e) {
    report({ error: (e as Error).message, code: (e as { code?: string }).code ?? "vm-exec-failed" });
    return 1;
  }
}

function connectControl(path: string, id: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once("connect", () => resolve(socket));
    socket.once("error", (e) => reject(new VmError("vm-not-running", `container ${id}: cannot reach its VM's host process (${path}): ${e.message}`)));
  });
}

/** How runExecRelay is embedded: a stand-in process (the defaults) or a long-running shim serving many. */
export interface RelayHost {
  /** The process's stdio on the host (default: our own fds 0, 1, 2). */
  stdio?: SessionStdio;
  /** Relay the signals this process receives (default true; a shim receives its own). */
  forwardSignals?: boolean;
  /** Hands over a function that signals the guest process (false before it has a pid). */
  signaller?: (signal: (signo: number) => boolean) => void;
  /** Hands over a function that sets the guest pty's window size (with a terminal and host.stdio). */
  resizer?: (resize: (rows: number, cols: number) => void) => void;
}

/**
 * Stand for one exec'd process: run its plan in a channel session, relay its
 * stdio and our signals, resolve with its exit status. Rejects if it never
 * started (the failed op's message, with its config.json field).
 */
export async function runExecRelay(request: VmExecRequest, log: Logger, onStarted: (guestPid: number) => void, host: RelayHost = {}): Promise<number> {
  const tracer = new Tracer(request.trace);
  const socket = await connectControl(request.controlSocket, request.id);
  let io: SessionStdio = host.stdio ?? { input: 0, output: 1, errors: 2 };
  let windowSize: ((fd: number) => { rows: number; cols: number }) | undefined;
  let restoreTerminal: (() => void) | undefined;
  // A host that brings its own streams (the shim: containerd's fifos) takes the guest pty's bytes as they are.
  if (request.guestConsole && !host.stdio) {
    const pty = await import("./pty.ts");
    windowSize = pty.windowSize;
    if (request.consoleSocket) {
      const { slave } = pty.consoleForSocket(request.consoleSocket);
      io = { input: slave, output: slave, errors: 2, tty: slave };
    } else {
      restoreTerminal = pty.makeRaw(0);
      if (restoreTerminal) io = { ...io, tty: 0 };
    }
  }
  const send = (type: FrameType, payload?: Uint8Array | string) => {
    if (!socket.destroyed) socket.write(encodeFrame(type, payload));
  };
  const relay = new StdioRelay(send, io, windowSize);

  return new Promise<number>((resolve, reject) => {
    let guestPid = 0;
    let started = false;
    let failure: VmError | undefined;
    const syncLines = new LineBuffer();
    let done = false;
    host.signaller?.((signo) => {
      if (!guestPid) return false;
      send(Frame.SIGNAL, u32Payload(guestPid, signo));
      return true;
    });
    host.resizer?.((rows, cols) => send(Frame.RESIZE, u32Payload(rows, cols)));
    const handlers = (host.forwardSignals === false ? [] : FORWARDED).map((name) => {
      const handler = () => {
        if (guestPid) send(Frame.SIGNAL, u32Payload(guestPid, signalNumber(name)!));
      };
      process.on(name, handler);
      return [name, handler] as const;
    });
    const end = (outcome: number | Error) => {
      if (done) return;
      done = true;
      relay.stop();
      restoreTerminal?.();
      for (const [name, handler] of handlers) process.off(name, handler);
      socket.destroy();
      if (typeof outcome === "number") resolve(outcome);
      else reject(outcome);
    };

    const onSyncLine = (line: string) => {
      const [kind, ...rest] = line.split(" ");
      if (kind === "ok" || kind === "err") {
        failure ??= opResult(request.ops, tracer, kind, rest);
      } else if (kind === "pid") {
        guestPid = Number(rest[0]);
        send(Frame.SYNC, "go\n");
      } else if (kind === "sync") {
        send(Frame.SYNC, "go\n");
      } else if (kind === "ready") {
        started = true;
        traceAfterReady(request.ops, tracer);
        log.debug(`vm ${request.id}: ${request.start ? "container init is ready" : "exec'd process runs"} in the guest (pid ${guestPid})`);
        onStarted(guestPid);
        if (!request.start) relay.start();
        else void waitForStart(request.start);
      }
    };

    /** Like a container's init: block on the host's exec fifo until `start` opens it, then release the guest's. */
    const waitForStart = async (fifos: { hostFifo: string; guestFifo: string }) => {
      try {
        const fifo = await open(fifos.hostFifo, "w");
        await fifo.write("0");
        await fifo.close();
      } catch (e) {
        return end(new VmError("start-failed", `exec fifo ${fifos.hostFifo}: ${(e as Error).message}`));
      }
      send(Frame.START, fifos.guestFifo);
      relay.start();
    };

    const reader = new FrameReader((type, payload) => {
      if (relay.handle(type, payload)) return;
      switch (type) {
        case Frame.SYNCOUT: {
          for (const line of syncLines.push(payload)) onSyncLine(line);
          break;
        }
        case Frame.LOG:
          log.warn(`vm ${request.id}: agent: ${new TextDecoder().decode(payload)}`);
          break;
        case Frame.EXIT: {
          const status = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true);
          if (request.oneShot) return end(failure ?? status);
          end(started ? status : (failure ?? new VmError("vm-exec-failed", `exec in container ${request.id}: the process exited (${status}) before it ran`)));
          break;
        }
      }
    });
    socket.on("data", (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (e) {
        end(new VmError("channel-broken", (e as Error).message));
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      // The container (and with it the VM) ended first: as if the process was killed.
      if (started) end(137);
      else end(failure ?? new VmError("vm-not-running", `exec in container ${request.id}: the VM's host process went away`));
    });
    if (request.guestConsole) send(Frame.CONSOLE, request.guestConsole);
    send(Frame.PLAN, encodePlan(request.ops));
  });
}
