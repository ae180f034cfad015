/**
 * Test helper: run the C executor (native/build/nk-exec) on a plan and
 * collect what it reports, without the rest of the runtime.
 */
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Duplex } from "node:stream";
import { encodePlan, type OpCode, type PlanOp, type Section } from "../../src/plan/ops.ts";

export const REPO_ROOT = resolve(import.meta.dir, "../..");
export const NK_EXEC = join(REPO_ROOT, "native/build/nk-exec");

/** Build the executor; returns why it cannot be used, or null when it can. */
export function buildExecutor(): string | null {
  const make = spawnSync("make", ["-s", "-C", join(REPO_ROOT, "native")], { encoding: "utf8" });
  if (make.error) return `make not runnable: ${make.error.message}`;
  if (make.status !== 0) return `make -C native failed: ${make.stderr}`;
  return existsSync(NK_EXEC) ? null : `${NK_EXEC} missing after make`;
}

/** A plan op; arguments given as numbers are sent in decimal. */
export function op(code: OpCode, section: Section, ...args: (string | number | Uint8Array)[]): PlanOp {
  return { code, section, args: args.map((a) => (typeof a === "number" ? String(a) : a)), source: "test" };
}

export interface PlanRun {
  /** Lines the executor wrote on the sync socket, in order. */
  lines: string[];
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** From the "pid" line, when there was one. */
  childPid?: number;
}

export interface RunOptions {
  /** Reply to the "pid" line (default "go\n"). */
  answerPid?: string;
  /** Called for every sync line (e.g. to open the exec fifo on "ready"). */
  onLine?: (line: string) => void;
  stdin?: string;
  /** Extra inherited pipes at fd 4 and up, which the executor knows nothing about. */
  extraFds?: number;
  timeoutMs?: number;
  /** The container outlives the executor (EXIT) and keeps its stdio open: finish when the executor exits. */
  detached?: boolean;
}

const CLEANUP_SIGNAL = "SIGKILL";

/**
 * Spawn nk-exec with the sync socket at fd 3, send the length-prefixed plan
 * (or raw bytes, for malformed-plan tests), answer the "pid" line, and wait
 * for the executor to exit and its stdio to close.
 */
export function runPlan(plan: readonly PlanOp[] | Uint8Array, options: RunOptions = {}): Promise<PlanRun> {
  const bytes = plan instanceof Uint8Array ? plan : encodePlan(plan);
  const stdio: ("pipe" | "ignore")[] = ["pipe", "pipe", "pipe", "pipe"];
  for (let i = 0; i < (options.extraFds ?? 0); i++) stdio.push("pipe");
  const child = spawn(NK_EXEC, ["3"], { stdio });
  const sync = child.stdio[3] as Duplex; // a unix socket pair, like a Node IPC pipe
  const result: PlanRun = { lines: [], stdout: "", stderr: "", exitCode: null, signal: null };

  return new Promise<PlanRun>((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      if (result.childPid) tryKill(result.childPid);
      child.kill(CLEANUP_SIGNAL);
      reject(new Error(`nk-exec timed out; lines so far: ${JSON.stringify(result.lines)}`));
    }, options.timeoutMs ?? 4_000); // below bun test's 5 s default, so this cleanup runs first

    let pending = "";
    sync.on("data", (chunk: Buffer) => {
      pending += chunk.toString("utf8");
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        result.lines.push(line);
        const pid = /^pid (\d+)$/.exec(line);
        if (pid) {
          result.childPid = Number(pid[1]);
          sync.write(options.answerPid ?? "go\n");
        }
        options.onLine?.(line);
      }
    });
    sync.on("error", () => {}); // EPIPE after the executor exits is expected
    child.stdout!.on("data", (d: Buffer) => (result.stdout += d.toString("utf8")));
    child.stderr!.on("data", (d: Buffer) => (result.stderr += d.toString("utf8")));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on(options.detached ? "exit" : "close", (code, signal) => {
      clearTimeout(timer);
      result.exitCode = code;
      result.signal = signal;
      sync.destroy();
      resolvePromise(result);
    });

    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, bytes.length, true);
    sync.write(header);
    sync.write(bytes);
    if (options.stdin !== undefined) child.stdin!.write(options.stdin);
    child.stdin!.end();
  });
}

export function tryKill(pid: number): void {
  try {
    process.kill(pid, CLEANUP_SIGNAL);
  } catch {
    // already gone
  }
}

/** The "ok <i> <detail>" or "err <i> <errno> <message>" line of op i. */
export function lineOf(run: PlanRun, index: number): string | undefined {
  return run.lines.find((l) => l.startsWith(`ok ${index} `) || l.startsWith(`err ${index} `));
}

const BUSYBOX_APPLETS = ["sh", "cat", "ls", "hostname", "echo", "id", "stat", "sleep", "kill", "ulimit", "grep", "readlink", "test", "wc"];

export interface TestRootfs {
  /** Temp dir holding the rootfs and anything else a test needs (fifo). */
  dir: string;
  rootfs: string;
  cleanup(): void;
}

/** A minimal rootfs: static busybox and a few applet links. */
export function makeRootfs(busybox = "/bin/busybox"): TestRootfs {
  const dir = mkdtempSync(join(tmpdir(), "nk-exec-test-"));
  // Reachable by mapped (non-root) ids in user-namespace tests.
  chmodSync(dir, 0o755);
  const rootfs = join(dir, "rootfs");
  for (const d of ["bin", "proc", "dev", "tmp", "etc"]) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync(busybox, join(rootfs, "bin/busybox"));
  chmodSync(join(rootfs, "bin/busybox"), 0o755);
  for (const applet of BUSYBOX_APPLETS) symlinkSync("busybox", join(rootfs, "bin", applet));
  const cleanup = () => {
    // A recursive delete through a leaked bind mount would delete host files.
    const leaked = hostMountsUnder(dir);
    if (leaked.length > 0) throw new Error(`not removing ${dir}: host mounts under it:\n${leaked.join("\n")}`);
    rmSync(dir, { recursive: true, force: true });
  };
  return { dir, rootfs, cleanup };
}

/** Host mount table lines mentioning path (there should be none after a test). */
export function hostMountsUnder(path: string): string[] {
  return readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .filter((l) => l.includes(path));
}
