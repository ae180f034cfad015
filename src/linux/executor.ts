/**
 * Runs the C executor on a plan and speaks its sync protocol (see
 * src/plan/ops.ts): send the plan, relay "pid" to the caller (which places the
 * process in its cgroup) and answer "go", collect op results for --trace, and
 * resolve once init reports "ready" or fail with the op that failed.
 *
 * Start-up cost matters here (the CLI runs this once per create): the sync
 * socket is a socketpair made with one libc call, the executor is started
 * with Bun.spawn (node:child_process and node:net cost ~10 ms to load), and
 * the plan is written the moment the executor exists. A CLI call then reads
 * the socket with blocking reads: the executor's "ok" lines pile up in the
 * socket buffer and are read in one go at the next "pid", "sync" or "ready",
 * instead of waking this process once per op. Long-lived callers (the shim,
 * the VM host) keep the default and their event loop keeps running.
 */
import { closeSync, readSync, writeSync } from "node:fs";
import type { Socket } from "node:net";
import type { Subprocess } from "bun";
import { encodePlan, OpCode, Section, type PlanOp } from "../plan/ops.ts";
import { executorPath } from "../util/home.ts";
import { ExecutorError } from "../util/errors.ts";
import { socketPair, waitReadable } from "../util/libc.ts";
import type { Tracer } from "./trace.ts";
import { signalNumber } from "../util/signals.ts";

export interface ExecutorOptions {
  /** Caller fds 3..3+n-1 are passed through to the container unchanged (--preserve-fds). */
  preserveFds: number;
  /** Instead: these caller fds become the executor's 3, 4, ... (preserveFds must be their count). */
  passFds?: readonly number[];
  /**
   * Called once the executor runs and has its plan, while it starts init:
   * work that does not need the pid (making the cgroup) overlaps with the
   * executor's start-up. Throwing aborts the create once init's pid is known.
   */
  onSpawned?: () => void;
  /** Called with the init pid before init is released; throwing aborts the create. */
  onPid: (pid: number) => void | Promise<void>;
  tracer: Tracer;
  /** A "sync <name>" point in init: do the runtime's part, return the payload for "go <payload>". */
  onSync?: (name: string) => Promise<string | undefined> | string | undefined;
  /** Give up if init is not ready by then (a hung mount, a wedged hook). */
  readyTimeoutMs?: number;
  /** The executor's (and so the container's) stdio, stdin, stdout, stderr: fds or "ignore" (default: the caller's own). */
  stdio?: ExecutorStdio;
  /**
   * Wait for the executor with blocking reads: the fastest way for a
   * short-lived CLI call. Default false: the event loop keeps running
   * meanwhile, as a process that serves other requests (the shim) needs.
   */
  blocking?: boolean;
}

export type ExecutorStdio = readonly [number | "ignore", number | "ignore", number | "ignore"];

/** The executor process, as much of it as callers use. */
export interface ExecutorProcess {
  readonly pid?: number;
  kill(signal?: NodeJS.Signals | number): void;
}

export interface ExecutorRun {
  initPid: number;
  /** The executor's exit code: 0 for a detached create, the container's status in MONITOR mode. */
  exited: Promise<number>;
  executor: ExecutorProcess;
}

/** Where the executor's lines come from: blocking reads or the event loop. */
interface LineSource {
  /** The next line without its "\n"; null once the executor side closed the socket. */
  next(): Promise<string | null>;
  /** Stop reading and close our end of the socket. */
  close(): void;
}

class TimeoutError extends Error {}

/** Blocking reads with poll(2) for the deadline; lines that arrived together are served from one read. */
class BlockingLines implements LineSource {
  private buffered = "";
  private readonly chunk = Buffer.alloc(64 * 1024);
  constructor(
    private readonly fd: number,
    private readonly deadline: number,
  ) {}

  next(): Promise<string | null> {
    for (;;) {
      const nl = this.buffered.indexOf("\n");
      if (nl >= 0) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        return Promise.resolve(line);
      }
      const left = this.deadline - Date.now();
      if (left <= 0 || !waitReadable(this.fd, left)) return Promise.reject(new TimeoutError());
      let n: number;
      try {
        n = readSync(this.fd, this.chunk, 0, this.chunk.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "EAGAIN" || code === "EINTR") continue;
        return Promise.resolve(null);
      }
      if (n === 0) return Promise.resolve(null);
      this.buffered += this.chunk.toString("utf8", 0, n);
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** The socket on the event loop (node:net, loaded only here), for callers that must stay responsive. */
class EventLoopLines implements LineSource {
  private buffered = "";
  private readonly lines: string[] = [];
  private waiting: ((line: string | null) => void) | undefined;
  private ended = false;
  private readonly socket: Socket;

  constructor(fd: number, onTimeout: () => void, timeoutMs: number) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const net = require("node:net") as typeof import("node:net");
    // net.connect({ fd }) adopts an fd that is already connected (new net.Socket({ fd }) does not read it in Bun).
    this.socket = net.connect({ fd } as never);
    const timer = setTimeout(onTimeout, timeoutMs);
    this.socket.on("data", (chunk: Buffer) => {
      this.buffered += chunk.toString("utf8");
      let nl: number;
      while ((nl = this.buffered.indexOf("\n")) >= 0) {
        this.lines.push(this.buffered.slice(0, nl));
        this.buffered = this.buffered.slice(nl + 1);
      }
      this.wake();
    });
    this.socket.on("error", () => {});
    this.socket.on("close", () => {
      clearTimeout(timer);
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    if (!this.waiting) return;
    const line = this.lines.shift();
    if (line === undefined && !this.ended) return;
    const resolve = this.waiting;
    this.waiting = undefined;
    resolve(line ?? null);
  }

  next(): Promise<string | null> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  close(): void {
    // The socket owns the fd: destroying it closes the fd.
    this.socket.destroy();
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let at = 0;
  while (at < bytes.length) {
    try {
      at += writeSync(fd, bytes, at, bytes.length - at);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EAGAIN" || code === "EINTR") continue;
      throw e;
    }
  }
}

function startExecutor(syncFd: number, theirs: number, opts: ExecutorOptions): Subprocess {
  const stdio: (number | "inherit" | "ignore")[] = opts.stdio ? [...opts.stdio] : ["inherit", "inherit", "inherit"];
  if (opts.passFds) stdio.push(...opts.passFds);
  else for (let fd = 3; fd < syncFd; fd++) stdio.push(fd);
  stdio.push(theirs);
  try {
    return Bun.spawn([executorPath(), String(syncFd)], { stdio: stdio as never });
  } catch (e) {
    throw new ExecutorError(`cannot run the executor ${executorPath()}: ${(e as Error).message}`, 2, "create");
  }
}

export async function runExecutor(ops: readonly PlanOp[], opts: ExecutorOptions): Promise<ExecutorRun> {
  const syncFd = 3 + opts.preserveFds;
  const [ours, theirs] = socketPair();
  let child: Subprocess;
  try {
    child = startExecutor(syncFd, theirs, opts);
  } catch (e) {
    closeSync(ours);
    throw e;
  } finally {
    closeSync(theirs);
  }
  const exited = child.exited.then(() => {
    const signal = child.signalCode;
    return child.exitCode ?? 128 + (typeof signal === "number" ? signal : signal ? (signalNumber(signal) ?? 0) : 0);
  });
  const executor: ExecutorProcess = { pid: child.pid, kill: (signal) => child.kill(signal as never) };

  let initPid = 0;
  let closed = false;
  const closeOurs = (): void => {
    if (closed) return;
    closed = true;
    source.close();
  };
  const timeoutMs = opts.readyTimeoutMs ?? 60_000;
  const plan = encodePlan(ops);
  const message = new Uint8Array(4 + plan.length);
  new DataView(message.buffer).setUint32(0, plan.length, true);
  message.set(plan, 4);
  try {
    // The executor waits for the plan: write it now, before anything else.
    writeAll(ours, message);
  } catch {
    // The executor died before reading its plan: its lines (if any) and the close say why.
  }
  let timedOut = false;
  const source: LineSource =
    opts.blocking !== true
      ? new EventLoopLines(
          ours,
          () => {
            timedOut = true;
            if (child.exitCode === null) child.kill("SIGKILL");
            source.close();
          },
          timeoutMs,
        )
      : new BlockingLines(ours, Date.now() + timeoutMs);
  const reply = (text: string): void => {
    try {
      writeAll(ours, new TextEncoder().encode(text));
    } catch {}
  };

  let failure: ExecutorError | undefined;
  // A failed onSpawned is reported once the executor says "pid": answering
  // "abort" then makes it kill init itself, and the caller learns init's pid.
  let spawnError: Error | undefined;
  try {
    opts.onSpawned?.();
  } catch (e) {
    spawnError = e as Error;
  }
  const fail = (error: Error): never => {
    closeOurs();
    // The init pid (if any) is the caller's to clean up; the executor is ours.
    if (child.exitCode === null) child.kill("SIGKILL");
    throw Object.assign(error, { initPid });
  };

  for (;;) {
    let line: string | null;
    try {
      line = await source.next();
    } catch (e) {
      if (e instanceof TimeoutError) timedOut = true;
      else throw e;
      line = null;
    }
    if (line === null) {
      if (spawnError) return fail(spawnError);
      if (timedOut) return fail(new ExecutorError("container init did not become ready in time", 110, "create"));
      return fail(failure ?? new ExecutorError("container init exited before it was ready", 5, "create"));
    }
    const [kind, ...rest] = line.split(" ");
    if (kind === "ok" || kind === "err") {
      const index = Number(rest[0]);
      const op = ops[index];
      if (kind === "ok") {
        if (op) opts.tracer.op(op, rest.slice(1).join(" ") || "ok");
        continue;
      }
      const errno = Number(rest[1]);
      const text = rest.slice(2).join(" ");
      if (op) opts.tracer.op(op, `failed: ${text}`);
      failure = new ExecutorError(op ? `${text} (${op.source})` : text, errno, op?.source ?? "plan");
      continue;
    }
    if (kind === "pid") {
      initPid = Number(rest[0]);
      if (spawnError) {
        reply("abort\n");
        return fail(spawnError);
      }
      try {
        await opts.onPid(initPid);
      } catch (e) {
        reply("abort\n");
        return fail(e as Error);
      }
      reply("go\n");
      continue;
    }
    if (kind === "sync") {
      let payload: string | undefined;
      try {
        payload = await opts.onSync?.(rest.join(" "));
      } catch (e) {
        reply("abort\n");
        return fail(e as Error);
      }
      reply(payload ? `go ${payload.replaceAll("\n", " ")}\n` : "go\n");
      continue;
    }
    if (kind === "ready") {
      closeOurs();
      // What init still does once released can no longer be reported: list it.
      const ready = ops.findIndex((op) => op.code === OpCode.REPORT_READY);
      for (const op of ops.slice(ready + 1)) if (op.section === Section.Init) opts.tracer.later(op);
      return { initPid, exited, executor };
    }
  }
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
  // Loaded here, not at the top: the CLI's verbs never need node:child_process.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { spawn } = require("node:child_process") as typeof import("node:child_process");
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
