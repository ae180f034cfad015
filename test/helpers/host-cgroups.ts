/**
 * Reading a test container's cgroup from the host side (cgroup v1 control
 * files under /sys/fs/cgroup/<controller>/nano-kata-test/<id>), and running
 * long-lived runtime commands (`events`) in the background.
 *
 * Independent of the runtime under test: the hierarchies are found in
 * /proc/self/mountinfo, so the same checks hold for nano-kata and runc.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { TEST_CGROUP_PARENT } from "./bundle.ts";
import { runtimeBinary, sleepMs, stateRoot } from "./runtime.ts";

let v1Mounts: Map<string, string> | undefined;

/** v1 controller (and "name=..." hierarchy) -> mount point, from /proc/self/mountinfo. */
export function v1ControllerMounts(): Map<string, string> {
  if (v1Mounts !== undefined) return v1Mounts;
  const mounts = new Map<string, string>();
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const [before, after] = line.split(" - ");
    if (before === undefined || after === undefined) continue;
    const [fstype, , superOptions] = after.split(" ");
    if (fstype !== "cgroup") continue;
    const mountpoint = before.split(" ")[4]!;
    for (const option of (superOptions ?? "").split(",")) {
      if (!mounts.has(option)) mounts.set(option, mountpoint);
    }
  }
  v1Mounts = mounts;
  return mounts;
}

/** The cgroup2 mount point (hybrid or pure v2 hosts), or undefined. */
export function unifiedMount(): string | undefined {
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const [before, after] = line.split(" - ");
    if (before !== undefined && after?.startsWith("cgroup2 ")) return before.split(" ")[4];
  }
  return undefined;
}

/** Null when every listed v1 controller is mounted, else why the test cannot run. */
export function v1SkipReason(controllers: string[]): string | null {
  const missing = controllers.filter((c) => !v1ControllerMounts().has(c));
  if (missing.length === 0) return null;
  return `host has no cgroup v1 ${missing.join(", ")} hierarchy (these checks read v1 control files)`;
}

/** A test container's directory in the v1 hierarchy of `controller`. */
export function v1Dir(controller: string, id: string): string {
  const mount = v1ControllerMounts().get(controller);
  if (mount === undefined) throw new Error(`no cgroup v1 ${controller} hierarchy on this host`);
  return join(mount, TEST_CGROUP_PARENT, id);
}

/** A control file of a test container's cgroup, trimmed. */
export function cgRead(controller: string, id: string, file: string): string {
  return readFileSync(join(v1Dir(controller, id), file), "utf8").trim();
}

export function cgNumber(controller: string, id: string, file: string): number {
  return Number(cgRead(controller, id, file));
}

/** "key value" lines (cpu.stat, memory.oom_control, pids.events) as numbers. */
export function cgKeyValues(controller: string, id: string, file: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of cgRead(controller, id, file).split("\n")) {
    const [key, value] = line.trim().split(/\s+/);
    if (key !== undefined && value !== undefined) out[key] = Number(value);
  }
  return out;
}

/** cgroup.procs of the container's cgroup (and any sub-cgroups) in one hierarchy, sorted. */
export function cgProcs(controller: string, id: string): number[] {
  const pids: number[] = [];
  const walk = (dir: string): void => {
    for (const line of readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n")) if (line.trim() !== "") pids.push(Number(line));
    for (const entry of readdirSync(dir, { withFileTypes: true })) if (entry.isDirectory()) walk(join(dir, entry.name));
  };
  walk(v1Dir(controller, id));
  return [...new Set(pids)].sort((a, b) => a - b);
}

// ------------------------------------------------------------ background runtime commands

export interface Background {
  child: ChildProcess;
  pid: number;
  /** Everything the command wrote to stdout so far. */
  stdout(): string;
  stderr(): string;
  exited: Promise<void>;
  /** SIGKILL it (by pid) unless it already exited, and wait for it. */
  stop(): Promise<void>;
}

const running = new Set<Background>();

/** `<runtime> --root <private> ...args` in the background, output to files in dir. */
export function spawnRuntime(args: string[], dir: string, name: string): Background {
  const outPath = join(dir, `${name}.out`);
  const errPath = join(dir, `${name}.err`);
  const outFd = openSync(outPath, "a");
  const errFd = openSync(errPath, "a");
  const child = spawn(runtimeBinary(), ["--root", stateRoot(), ...args], { stdio: ["ignore", outFd, errFd] });
  closeSync(outFd);
  closeSync(errFd);
  let done = false;
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      done = true;
      resolve();
    });
  });
  const read = (path: string) => (existsSync(path) ? readFileSync(path, "utf8") : "");
  const bg: Background = {
    child,
    pid: child.pid!,
    stdout: () => read(outPath),
    stderr: () => read(errPath),
    exited,
    stop: async () => {
      if (!done) {
        try {
          process.kill(child.pid!, "SIGKILL");
        } catch {
          /* exited meanwhile */
        }
      }
      await Promise.race([exited, Bun.sleep(3_000)]);
      running.delete(bg);
    },
  };
  running.add(bg);
  return bg;
}

/** Stop every background command still running (afterAll, before cleanupAll). */
export async function stopAllBackground(): Promise<void> {
  for (const bg of [...running]) await bg.stop();
}

/** JSON lines of a stream (partial or garbled lines are skipped). */
export function jsonLines(text: string): Record<string, any>[] {
  const out: Record<string, any>[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      /* a line being written */
    }
  }
  return out;
}

/** Async poll (lets background children's exit events run), throws after timeoutMs. */
export async function waitFor(what: string, fn: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(20);
  }
}

/** sleepMs re-exported for tests that only import this module. */
export { sleepMs };
