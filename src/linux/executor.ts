/**
 * Runs the C executor on a plan and speaks its sync protocol (see
 * src/plan/ops.ts): send the plan, relay "pid" to the caller (which places the
 * process in its cgroup) and answer "go", collect op results for --trace, and
 * resolve once init reports "ready" or fail with the op that failed.
 */
import { spawn, type ChildProcess } from "node:child_process";
import type { Socket } from "node:net";
import { encodePlan, OpCode, Section, type PlanOp } from "../plan/ops.ts";
import { executorPath } from "../util/home.ts";
import { ExecutorError } from "../util/errors.ts";
import type { Tracer } from "./trace.ts";
import { signalNumber } from "../util/signals.ts";

export interface ExecutorOptions {
  /** Caller fds 3..3+n-1 are passed through to the container unchanged (--preserve-fds). */
  preserveFds: number;
  /** Called with the init pid before init is released; throwing aborts the create. */
  onPid: (pid: number) => void | Promise<void>;
  tracer: Tracer;
  /** A "sync <name>" point in init: do the runtime's part, return the payload for "go <payload>". */
  onSync?: (name: string) => Promise<string | undefined> | string | undefined;
  /** Give up if init is not ready by then (a hung mount, a wedged hook). */
  readyTimeoutMs?: number;
  /** The executor's (and so the container's) stdin, stdout, stderr: fds or "ignore" (default: the caller's own). */
  stdio?: ExecutorStdio;
}

export type ExecutorStdio = readonly [number | "ignore", number | "ignore", number | "ignore"];

export interface ExecutorRun {
  initPid: number;
  /** The executor's exit code: 0 for a detached create, the container's status in MONITOR mode. */
  exited: Promise<number>;
  executor: ChildProcess;
}

export function runExecutor(ops: readonly PlanOp[], opts: ExecutorOptions): Promise<ExecutorRun> {
  const syncFd = 3 + opts.preserveFds;
  const stdio: (number | "pipe" | "inherit" | "ignore")[] = opts.stdio ? [...opts.stdio] : ["inherit", "inherit", "inherit"];
  for (let fd = 3; fd < syncFd; fd++) stdio.push(fd);
  stdio.push("pipe");
  const child = spawn(executorPath(), [String(syncFd)], { stdio: stdio as never });
  const sync = child.stdio[syncFd] as unknown as Socket;
  const exited = new Promise<number>((resolve) => {
    child.on("exit", (code, signal) => resolve(code ?? 128 + (signal ? (signalNumber(signal) ?? 0) : 0)));
    child.on("error", () => resolve(127));
  });

  return new Promise<ExecutorRun>((resolve, reject) => {
    let initPid = 0;
    let buffered = "";
    let failure: ExecutorError | undefined;
    let settled = false;
    const timer = setTimeout(() => fail(new ExecutorError("container init did not become ready in time", 110, "create")), opts.readyTimeoutMs ?? 60_000);

    function fail(error: Error): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sync.destroy();
      // The init pid (if any) is the caller's to clean up; the executor is ours.
      if (child.exitCode === null) child.kill("SIGKILL");
      reject(Object.assign(error, { initPid }));
    }

    child.on("error", (e) => fail(new ExecutorError(`cannot run the executor ${executorPath()}: ${e.message}`, 2, "create")));

    const onLine = async (line: string): Promise<void> => {
      const [kind, ...rest] = line.split(" ");
      if (kind === "ok" || kind === "err") {
        const index = Number(rest[0]);
        const op = ops[index];
        if (kind === "ok") {
          if (op) opts.tracer.op(op, rest.slice(1).join(" ") || "ok");
          return;
        }
        const errno = Number(rest[1]);
        const message = rest.slice(2).join(" ");
        if (op) opts.tracer.op(op, `failed: ${message}`);
        failure = new ExecutorError(op ? `${message} (${op.source})` : message, errno, op?.source ?? "plan");
        return;
      }
      if (kind === "pid") {
        initPid = Number(rest[0]);
        try {
          await opts.onPid(initPid);
          sync.write("go\n");
        } catch (e) {
          sync.write("abort\n");
          fail(e as Error);
        }
        return;
      }
      if (kind === "sync") {
        try {
          const payload = await opts.onSync?.(rest.join(" "));
          sync.write(payload ? `go ${payload.replaceAll("\n", " ")}\n` : "go\n");
        } catch (e) {
          sync.write("abort\n");
          fail(e as Error);
        }
        return;
      }
      if (kind === "ready") {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        // What init still does once released can no longer be reported: list it.
        const ready = ops.findIndex((op) => op.code === OpCode.REPORT_READY);
        for (const op of ops.slice(ready + 1)) if (op.section === Section.Init) opts.tracer.later(op);
        resolve({ initPid, exited, executor: child });
      }
    };

    // Lines are handled in order; "pid" awaits the caller before later lines are looked at.
    let chain = Promise.resolve();
    sync.on("data", (chunk: Buffer) => {
      buffered += chunk.toString("utf8");
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        chain = chain.then(() => onLine(line));
      }
    });
    sync.on("error", () => {});
    sync.on("close", () => {
      chain.then(() => {
        if (settled) return;
        fail(failure ?? new ExecutorError("container init exited before it was ready", 5, "create"));
      });
    });

    const plan = encodePlan(ops);
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, plan.length, true);
    sync.write(header);
    sync.write(plan);
  });
}


/**
 * Run a plan that has only Pre ops (no CLONE): the executor carries them out
 * in itself and exits. Resolves when every op succeeded; rejects with the
 * first op that failed, naming its source field.
 */
export function runPreOnlyPlan(ops: readonly PlanOp[], tracer: Tracer): Promise<void> {
  if (ops.some((op) => op.section !== Section.Pre || op.code === OpCode.CLONE)) {
    return Promise.reject(new ExecutorError("runPreOnlyPlan: the plan has a CLONE or non-Pre ops", 22, "plan"));
  }
  const child = spawn(executorPath(), ["3"], { stdio: ["ignore", "ignore", "inherit", "pipe"] });
  const sync = child.stdio[3] as unknown as Socket;
  let failure: ExecutorError | undefined;
  let buffered = "";
  sync.on("data", (chunk: Buffer) => {
    buffered += chunk.toString("utf8");
    let nl: number;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const [kind, index, errno, ...message] = buffered.slice(0, nl).split(" ");
      buffered = buffered.slice(nl + 1);
      const op = ops[Number(index)];
      if (kind === "ok" && op) tracer.op(op, [errno, ...message].filter(Boolean).join(" ") || "ok");
      else if (kind === "err" && !failure) {
        if (op) tracer.op(op, `failed: ${message.join(" ")}`);
        failure = new ExecutorError(op ? `${message.join(" ")} (${op.source})` : message.join(" "), Number(errno), op?.source ?? "plan");
      }
    }
  });
  sync.on("error", () => {});
  const plan = encodePlan(ops);
  const header = new Uint8Array(4);
  new DataView(header.buffer).setUint32(0, plan.length, true);
  sync.write(header);
  sync.write(plan);
  return new Promise<void>((resolve, reject) => {
    child.on("error", (e) => reject(new ExecutorError(`cannot run the executor ${executorPath()}: ${e.message}`, 2, "plan")));
    // "close", not "exit": every sync line has been read by then.
    child.on("close", (code) => {
      if (failure) reject(failure);
      else if (code !== 0) reject(new ExecutorError(`the executor exited with ${code}`, 5, "plan"));
      else resolve();
    });
  });
}
