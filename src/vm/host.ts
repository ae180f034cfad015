/**
 * The host process of a VM-mode container (`nk-runtime vm host <state dir>`,
 * started by `create`): to its clients it *is* the container. Its pid goes
 * into state.json and --pid-file; it holds the stdio `create` was given and
 * relays it (or, with process.terminal, a host pty whose master went to the
 * --console-socket); signals sent to it go to the container's init in the
 * guest; it exits with the container's exit status.
 *
 * It boots the VM (the hypervisor and virtiofsd), waits for the agent's
 * HELLO, sends the plan `create` computed and answers the executor's sync
 * lines (as src/linux/executor.ts does for container mode), running the
 * prestart and createRuntime hooks at the "hooks" point. On "ready" it
 * tells `create` (a JSON line on fd 3) and then blocks on the host's exec
 * fifo exactly as a container's init does, so `start` needs no VM knowledge.
 *
 * It owns the channel, so everything else that reaches into the VM goes
 * through its control socket (host-control.ts): `exec` stand-ins get a
 * channel session each (session 0 is the container's init), `pause` and
 * `resume` stop and continue the VM over QMP.
 * When the container exits: QMP quit, virtiofsd stopped, exit with the status.
 */
import { closeSync, createReadStream, existsSync } from "node:fs";
import { open } from "node:fs/promises";
import { encodePlan } from "../plan/ops.ts";
import { Tracer } from "../linux/trace.ts";
import type { Logger } from "../util/log.ts";
import { signalNumber } from "../util/signals.ts";
import { readProcStat } from "../state/proc.ts";
import { encodeFrame, Frame, FrameReader, LineBuffer, u32Payload, wakePayload, WAKE_ENTROPY_BYTES, type FrameType } from "./channel.ts";
import { ControlServer } from "./host-control.ts";
import { VmError, type HypervisorDriver, type RunningVm } from "./driver.ts";
import { bootPath, GO_FD, launchPath, readJson, readLaunch, writePids, type VmBoot, type VmLaunch, type VmPids } from "./launch.ts";
import { GUEST_ROOT_DEVICE } from "./rootfs-image.ts";
import { TEMPLATE_FAILED, type Template } from "./template.ts";
import { connectNetwork, unwireMirror } from "./network.ts";
import { StdioRelay, type SessionStdio } from "./stdio.ts";
import { reporter } from "./report.ts";
import { opResult, traceAfterReady } from "./sync.ts";
import { listenForVirtiofsd, startVirtiofsd, tail } from "./virtiofsd.ts";

/** Signals relayed to the container (SIGKILL and SIGSTOP cannot be caught: a SIGKILL ends the VM with us). */
const RELAYED = ["SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGTERM", "SIGCONT", "SIGWINCH", "SIGTSTP", "SIGTTIN", "SIGTTOU"] as const;

/** Before the container's init exists, these end the host process (and the VM); the others are dropped. */
const TERMINATING = new Set<string>(["SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGTERM"]);


export async function loadDriver(name: VmLaunch["driver"]): Promise<HypervisorDriver> {
  if (name === "firecracker") return new (await import("./firecracker.ts")).FirecrackerDriver();
  return new (await import("./qemu.ts")).QemuDriver();
}

const procRef = (pid: number) => ({ pid, startTime: readProcStat(pid)?.startTime ?? "" });

function killProcess(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {}
}

/** An early start's "go" (or its absence: create failed or died) on fd GO_FD, read to its end. */
function goSignal(): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    const stream = createReadStream("", { fd: GO_FD });
    stream.on("data", (b) => (text += b.toString()));
    stream.on("error", () => resolve(text));
    stream.on("end", () => resolve(text));
  });
}

export async function runHost(stateDir: string, log: Logger): Promise<number> {
  // An early start (VmBoot): the VM is started from vm-boot.json; vm.json comes with the "go".
  const early = !existsSync(launchPath(stateDir));
  const going = early ? goSignal() : undefined;
  // Until the "go", only VmBoot's fields are read (the VM's start, finish()).
  let launch = (early ? readJson<VmBoot>(bootPath(stateDir)) : readLaunch(stateDir)) as VmLaunch;
  const tracer = new Tracer(launch.trace);
  const pids: VmPids = { host: procRef(process.pid) };
  writePids(stateDir, pids);

  const reporting = reporter();
  const report = reporting.report;

  let vm: RunningVm | undefined;
  let stdio: StdioRelay | undefined;
  let controlServer: ControlServer | undefined;
  let restoreTerminal: (() => void) | undefined;
  let virtiofsdPid = 0;
  let finishing = false;
  /** The template this VM is a clone of, until its agent has answered WAKE. */
  let restoring: Template | undefined;
  /** A clone that fails to load or to wake means a bad template: remove it, so that the next create makes a new one. */
  const templateFailed = async (error: VmError): Promise<VmError> => {
    if (!restoring) return error;
    const { discardTemplate } = await import("./template.ts");
    discardTemplate(restoring);
    // A stable code: create boots the VM instead (container.ts).
    const message = `restoring VM template ${restoring.meta.key} failed, the template was removed: ${error.message}`;
    restoring = undefined;
    return new VmError(TEMPLATE_FAILED, message);
  };
  /** Stop everything we started and exit: the one way out. */
  const finish = async (status: number, error?: VmError): Promise<never> => {
    if (!finishing) {
      finishing = true;
      if (error) {
        log.debug(`vm ${launch.id}: ${error.message}`);
        if (reporting.open) report({ error: error.message, code: error.code });
        else log.error(`container ${launch.id}: ${error.message}`);
      }
      stdio?.stop();
      restoreTerminal?.();
      controlServer?.close();
      await vm?.shutdown(2000).catch(() => {});
      if (virtiofsdPid) {
        try {
          process.kill(virtiofsdPid, "SIGKILL");
        } catch {}
      }
      if (pids.networkWired && launch.network) {
        unwireMirror(launch.network);
        pids.networkWired = false;
        try {
          writePids(stateDir, pids);
        } catch {} // the state directory may be gone already; exiting matters more
      }
      log.debug(`vm ${launch.id}: VM stopped; exit ${status}`);
      process.exit(status);
    }
    return new Promise<never>(() => {});
  };

  let guestInit = 0;
  for (const name of RELAYED) {
    process.on(name, () => {
      const signo = signalNumber(name)!;
      if (guestInit && vm) vm.channel.write(encodeFrame(Frame.SIGNAL, u32Payload(guestInit, signo)));
      else if (TERMINATING.has(name)) void finish(128 + signo, new VmError("vm-interrupted", `interrupted by ${name} before the container existed`));
    });
  }
  process.on("SIGPIPE", () => {});

  try {
    const driver = await loadDriver(launch.driver);
    const why = driver.unavailable();
    if (why) throw new VmError("no-hypervisor", why);
    // The client's network: taps in its namespace, mirrored to its interfaces; QEMU gets the taps' fds.
    const wiringStarted = Date.now();
    const tapFds = launch.network
      ? connectNetwork(launch.network, () => {
          pids.networkWired = true;
          writePids(stateDir, pids);
        })
      : [];
    if (tapFds.length) log.debug(`vm ${launch.id}: ${tapFds.length} tap(s) mirrored in ${launch.network!.netnsPath} in ${Date.now() - wiringStarted} ms`);
    let vmConfig = { ...launch.vm, nics: launch.vm.nics?.map((nic, i) => ({ ...nic, tapFd: tapFds[i] })) };
    if (launch.fromTemplate) {
      const { ensureTemplate } = await import("./template.ts");
      const asked = Date.now();
      const { template, made } = await ensureTemplate(launch.vm, log);
      log.debug(`vm ${launch.id}: template ${template.meta.key} ${made ? `made in ${Date.now() - asked} ms (${template.dir})` : `found in ${template.dir}`}`);
      tracer.runtime(`VM template ${template.meta.key}${made ? " made now" : ""}: the VM starts as its copy-on-write clone`, "vm");
      restoring = template;
      vmConfig = { ...vmConfig, template: { role: "restore", ram: template.ram, state: template.state } };
    }
    const started = Date.now();
    // QEMU and virtiofsd start at the same time, QEMU first (it takes longest
    // to start): virtiofsd's socket already listens (virtiofsd.ts), and
    // QEMU's vhost-user requests wait for virtiofsd to answer.
    const listening = launch.virtiofsd ? listenForVirtiofsd(launch.virtiofsd) : -1;
    let launching: Promise<{ vm: RunningVm } | { error: unknown }>;
    try {
      const recordVmm = (pid: number) => {
        pids.vmm = procRef(pid);
        writePids(stateDir, pids);
      };
      // launch() spawns QEMU before it first waits; QEMU holds the taps from then on.
      launching = driver.launch(vmConfig, recordVmm).then(
        (running) => ({ vm: running }),
        (error: unknown) => ({ error }),
      );
    } finally {
      for (const fd of tapFds) closeSync(fd); // the taps live exactly as long as QEMU
    }
    if (going) {
      // QEMU starts; create meanwhile plans (and makes the rootfs image), then says "go" with vm.json written.
      // virtiofsd needs the plan's share entries: it starts after the "go" (QEMU waits for it meanwhile).
      const go = await going;
      if (go.trim() !== "go") {
        if (pids.vmm) killProcess(pids.vmm.pid);
        return finish(1, new VmError("create-aborted", "create ended before the container's plan was ready"));
      }
      launch = readLaunch(stateDir);
      log.debug(`vm ${launch.id}: the plan is ready ("go")`);
    }
    const setup = launch.virtiofsd;
    const virtiofsd = setup
      ? // Recorded as soon as it exists, so that finish() and `delete` can stop it even mid-start.
        startVirtiofsd(setup, listening, (pid) => {
          virtiofsdPid = pid;
          pids.virtiofsd = procRef(pid);
          writePids(stateDir, pids);
        }).then(
          (pid) => void log.debug(`vm ${launch.id}: virtiofsd pid ${pid}`),
          (e: Error) => e,
        )
      : Promise.resolve();
    const launched = await launching;
    if ("vm" in launched) vm = launched.vm; // from here finish() stops it, whatever fails next
    // A virtiofsd that failed is the cause of QEMU's failure that follows (its socket closed): report it first.
    const virtiofsdError = await virtiofsd;
    if (virtiofsdError) throw virtiofsdError;
    if ("error" in launched) throw launched.error;
    vm = launched.vm;
    log.debug(`vm ${launch.id}: ${driver.name} pid ${vm.pid} (${launch.vm.accel}) started in ${Date.now() - started} ms; guest RAM: ${vm.memory ?? "?"}`);
    // A clone's agent is where the template left it, waiting for a frame: the clock, fresh entropy and its disk first.
    if (restoring) {
      const { templateMac } = await import("./template.ts");
      const macs = (launch.vm.nics ?? []).map((nic, i) => ({ from: templateMac(i), to: nic.mac }));
      vm.channel.write(encodeFrame(Frame.WAKE, wakePayload(Date.now(), crypto.getRandomValues(new Uint8Array(WAKE_ENTROPY_BYTES)), GUEST_ROOT_DEVICE, macs)));
    }
  } catch (e) {
    return finish(1, await templateFailed(e instanceof VmError ? e : new VmError("vm-start-failed", (e as Error).message)));
  }
  const running = vm;
  const consoleTail = () => tail(`${launch.vm.runDir}/console.log`, 8);

  void running.exited.then(async (code) => {
    if (finishing) return;
    const error = new VmError("vm-exited", `the VM exited (${code}) before the container did; console: ${consoleTail()}${restoring ? `; qemu: ${running.stderr().trim()}` : ""}`);
    void finish(255, await templateFailed(error));
  });

  // process.terminal: the console client gets a host pty's master now, as
  // runc's create hands it over before it returns; the guest's pty follows.
  // A foreground `run -t` without one: the terminal `run` was given, raw while the container runs.
  let io: SessionStdio = { input: 0, output: 1, errors: 2 };
  let windowSize: ((fd: number) => { rows: number; cols: number }) | undefined;
  if (launch.guestConsole) {
    try {
      const pty = await import("./pty.ts");
      windowSize = pty.windowSize;
      if (launch.consoleSocket) {
        const { slave } = pty.consoleForSocket(launch.consoleSocket);
        io = { input: slave, output: slave, errors: 2, tty: slave };
      } else {
        restoreTerminal = pty.makeRaw(0);
        if (restoreTerminal) io = { ...io, tty: 0 };
      }
    } catch (e) {
      return finish(1, e instanceof VmError ? e : new VmError("terminal-failed", (e as Error).message));
    }
  }

  const bootTimer = setTimeout(
    () =>
      void templateFailed(new VmError("vm-boot-timeout", `the guest agent did not answer within ${launch.bootTimeoutMs} ms; console: ${consoleTail()}`)).then((e) =>
        finish(1, e),
      ),
    launch.bootTimeoutMs,
  );
  let readyTimer: ReturnType<typeof setTimeout> | undefined;
  let failure: VmError | undefined;
  let ready = false;
  const syncLines = new LineBuffer();
  const send = (type: FrameType, payload?: Uint8Array | string, session = 0) => running.channel.write(encodeFrame(type, payload, session));
  const relay = new StdioRelay((type, payload) => send(type, payload), io, windowSize);
  stdio = relay;

  /** The hooks the runtime runs at init's "hooks" point: prestart, createRuntime, in the host's namespaces (as Kata). */
  const runCreateHooks = async (): Promise<void> => {
    const { runHooks } = await import("../hooks/run.ts");
    const state = { ...launch.hookState, status: "creating", pid: process.pid };
    for (const kind of ["prestart", "createRuntime"] as const) {
      await runHooks(kind, launch.hooks?.[kind], state);
      if (launch.hooks?.[kind]?.length) tracer.runtime(`ran ${launch.hooks[kind]!.length} ${kind} hook(s)`, `hooks.${kind}`);
    }
  };

  const onSyncLine = (line: string) => {
    const [kind, ...rest] = line.split(" ");
    if (kind === "ok" || kind === "err") {
      // The first failure is the cause (a hook's, before the executor's "abort" it caused).
      failure ??= opResult(launch.ops, tracer, kind, rest);
    } else if (kind === "pid") {
      guestInit = Number(rest[0]);
      pids.guestInit = { pid: guestInit, startTime: "" };
      writePids(stateDir, pids);
      send(Frame.SYNC, "go\n");
    } else if (kind === "sync") {
      if (rest[0] !== "hooks") return void send(Frame.SYNC, "go\n");
      runCreateHooks().then(
        () => send(Frame.SYNC, "go\n"),
        (e: Error) => {
          failure = new VmError((e as { code?: string }).code ?? "hook-failed", e.message);
          send(Frame.SYNC, "abort\n");
        },
      );
    } else if (kind === "ready") {
      ready = true;
      clearTimeout(readyTimer);
      log.debug(`vm ${launch.id}: container init ready in the guest (pid ${guestInit})`);
      traceAfterReady(launch.ops, tracer);
      void control.listen().then(
        () => {
          report({ ready: true, guestPid: guestInit });
          void waitForStart();
        },
        (e: Error) => void finish(1, new VmError("control-socket-failed", `control socket ${launch.controlSocket}: ${e.message}`)),
      );
    }
  };

  /** Like a container's init: block on the host's exec fifo until `start` opens it. */
  const waitForStart = async () => {
    try {
      const fifo = await open(launch.hostFifo, "w");
      await fifo.write("0");
      await fifo.close();
    } catch (e) {
      return finish(1, new VmError("start-failed", `exec fifo ${launch.hostFifo}: ${(e as Error).message}`));
    }
    send(Frame.START, launch.guestFifo);
    log.debug(`vm ${launch.id}: started`);
    relay.start();
  };

  const control = new ControlServer({ id: launch.id, stateDir, socketPath: launch.controlSocket, vm: running, log, send });
  controlServer = control;

  // ------------------------------------------------------------- channel
  const reader = new FrameReader((type, payload, session) => {
    if (session !== 0) return control.fromGuest(session, type, payload);
    if (relay.handle(type, payload)) return;
    switch (type) {
      case Frame.HELLO: {
        clearTimeout(bootTimer);
        restoring = undefined; // woken: the template served
        log.debug(`vm ${launch.id}: agent ${new TextDecoder().decode(payload)} (version, guest uptime ms)`);
        tracer.runtime(`guest agent up: ${new TextDecoder().decode(payload)}`, "vm");
        readyTimer = setTimeout(
          () => void finish(1, new VmError("vm-ready-timeout", `container init in the guest was not ready within ${launch.readyTimeoutMs} ms`)),
          launch.readyTimeoutMs,
        );
        if (launch.guestConsole) send(Frame.CONSOLE, launch.guestConsole);
        send(Frame.PLAN, encodePlan(launch.ops));
        break;
      }
      case Frame.SYNCOUT: {
        for (const line of syncLines.push(payload)) onSyncLine(line);
        break;
      }
      case Frame.LOG:
        log.warn(`vm ${launch.id}: agent: ${new TextDecoder().decode(payload)}`);
        break;
      case Frame.EXIT: {
        const status = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true);
        log.debug(`vm ${launch.id}: container exited (${status})`);
        if (!ready) {
          void finish(1, failure ?? new VmError("init-exited", `container init in the guest exited (${status}) before it was ready`));
        } else void finish(status);
        break;
      }
    }
  });
  running.channel.on("data", (chunk: Buffer) => {
    try {
      reader.push(chunk);
    } catch (e) {
      void finish(255, new VmError("channel-broken", (e as Error).message));
    }
  });
  running.channel.on("error", () => {});
  return new Promise<number>(() => {}); // finish() exits the process
}

/** Read the host process's one-line report (create's side of fd 3). */
export function parseReport(line: string): { ready: true; guestPid: number } | { error: string; code: string } {
  return JSON.parse(line);
}
