/**
 * Shim benchmark (part of `npm run bench`, called by bench/lifecycle.ts):
 * a private containerd (test/e2e/shim-containerd.ts) runs, for each shim,
 *   (a) `ctr run --rm --runtime <shim> IMAGE <id> true`, N times after one
 *       warm-up (N = NK_BENCH_N), median; the shims take turns run by run;
 *   (b) one detached `sleep` task, then the RSS of its idle shim process
 *       (VmRSS from /proc/<pid>/status, after the shim has settled).
 * Shims: nano-kata's io.containerd.nanokata.v2 and containerd's
 * io.containerd.runc.v2 (which runs runc per operation).
 *
 * Every container gets an absolute cgroup under /nano-kata-test/<id>, and
 * the daemon, its shims and its directory are gone when this returns.
 */
import { existsSync, readFileSync, readdirSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { cgroupHierarchies } from "../test/helpers/runtime.ts";
import { containerdAvailable, IMAGE, startContainerd, type Containerd } from "../test/e2e/shim-containerd.ts";

interface Shim {
  name: string;
  runtime: string;
  /** A word of the shim process's command line that picks it out among the daemon's children. */
  processMarker: string;
}

const SHIMS: Shim[] = [
  { name: "nanokata", runtime: "io.containerd.nanokata.v2", processMarker: "containerd-shim-nanokata-v2" },
  { name: "runc", runtime: "io.containerd.runc.v2", processMarker: "containerd-shim-runc-v2" },
];

interface ShimResult {
  shim: Shim;
  runMs: number[];
  idleRssKb?: number;
  error?: string;
}

class ShimBenchError extends Error {
  readonly code = "SHIM_BENCH_STEP_FAILED";
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The long-running shim processes of this daemon (their command line names its address). */
function shimPids(c: Containerd, shim: Shim): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").join(" ");
      if (cmdline.includes(shim.processMarker) && cmdline.includes(c.address)) out.push(Number(entry));
    } catch {}
  }
  return out;
}

function rssKb(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new ShimBenchError(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

function ctrOrThrow(c: Containerd, shim: Shim, args: string[]): void {
  const r = c.ctr(args);
  if (r.code !== 0) throw new ShimBenchError(`ctr ${args.slice(0, 2).join(" ")} (${shim.name}) exited ${r.code}: ${r.stderr.trim().split("\n")[0]}`);
}

/** One timed `ctr run --rm ... true`, in ms. */
function timedRun(c: Containerd, shim: Shim, i: number): number {
  const id = `nkb-shim-${process.pid}-${shim.name}-${i}`;
  const t0 = performance.now();
  ctrOrThrow(c, shim, ["run", "--rm", "--runtime", shim.runtime, "--cgroup", `/nano-kata-test/${id}`, IMAGE, id, "true"]);
  return performance.now() - t0;
}

/** The idle RSS of a shim serving one detached `sleep` task, in kB; the task is removed afterwards. */
async function idleShimRss(c: Containerd, shim: Shim): Promise<number> {
  const id = `nkb-shim-${process.pid}-${shim.name}-idle`;
  let started = false;
  try {
    ctrOrThrow(c, shim, ["run", "-d", "--runtime", shim.runtime, "--cgroup", `/nano-kata-test/${id}`, IMAGE, id, "sleep", "1000"]);
    started = true;
    await Bun.sleep(1000); // let the shim finish its start-up work (JIT, GC) before reading its RSS
    const pids = shimPids(c, shim);
    if (pids.length !== 1) throw new ShimBenchError(`${shim.name}: expected one shim process, found ${pids.length}`);
    return rssKb(pids[0]!);
  } finally {
    if (started) {
      c.ctr(["task", "kill", "-s", "SIGKILL", id]);
      for (let i = 0; i < 100 && !/STOPPED|^$/.test(taskStatus(c, id)); i++) await Bun.sleep(50);
      c.ctr(["task", "delete", id]);
      c.ctr(["container", "rm", id]);
    }
  }
}

/**
 * The runs alternate between the shims (nk, runc, nk, runc, ...) so that a
 * change in the machine's load during the benchmark hits both alike.
 */
async function benchShims(c: Containerd, n: number): Promise<ShimResult[]> {
  const results: ShimResult[] = SHIMS.map((shim) => ({ shim, runMs: [] }));
  for (let i = 0; i <= n; i++) {
    for (const r of results) {
      if (r.error) continue;
      try {
        const ms = timedRun(c, r.shim, i);
        if (i > 0) r.runMs.push(ms); // i = 0 is the warm-up
      } catch (err) {
        r.error = err instanceof Error ? err.message : String(err);
      }
    }
  }
  for (const r of results) {
    if (r.error) continue;
    try {
      r.idleRssKb = await idleShimRss(c, r.shim);
    } catch (err) {
      r.error = err instanceof Error ? err.message : String(err);
    }
  }
  return results;
}

/** Both shims remove the container cgroups they made; an empty one left (say, after a failed step) goes here. Never a busy one. */
function removeEmptyBenchCgroups(): void {
  const prefix = `nkb-shim-${process.pid}-`;
  for (const h of cgroupHierarchies()) {
    const parent = join(h, "nano-kata-test");
    if (!existsSync(parent)) continue;
    for (const entry of readdirSync(parent)) {
      if (!entry.startsWith(prefix)) continue;
      try {
        rmdirSync(join(parent, entry));
      } catch {}
    }
  }
}

function taskStatus(c: Containerd, id: string): string {
  for (const line of c.ctr(["task", "ls"]).stdout.split("\n")) {
    const [tid, , status] = line.trim().split(/\s+/);
    if (tid === id) return status ?? "";
  }
  return "";
}

/** Runs the shim benchmark and prints its table; 0 when both shims were measured. */
export async function runShimBench(n: number, log: (line: string) => void): Promise<number> {
  const skip = containerdAvailable();
  if (skip) {
    log(`shim benchmark skipped: ${skip}`);
    return 0;
  }
  log("");
  log(`shim benchmark: private containerd, \`ctr run --rm --runtime <shim> IMAGE ID true\`, N=${n} (+1 warm-up), the shims taking turns`);
  const c = await startContainerd();
  let results: ShimResult[];
  try {
    results = await benchShims(c, n);
  } finally {
    await c.stop();
    removeEmptyBenchCgroups();
  }
  const nk = results.find((r) => r.shim.name === "nanokata" && !r.error);
  const ratio = (value: number, base: number | undefined): string => (base === undefined ? "n/a" : `${(value / base).toFixed(2)}x`);
  const widths = [12, 22, 7, 17, 7];
  const row = (cells: string[]): string => cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[0]!) : cell.padStart(widths[i]!))).join("  ");
  log("");
  log(row(["shim", "ctr run --rm median ms", "vs nk", "idle shim RSS MB", "vs nk"]));
  for (const r of results.filter((x) => !x.error)) {
    const run = median(r.runMs);
    const rss = r.idleRssKb! / 1024;
    log(row([r.shim.name, run.toFixed(1), ratio(run, nk ? median(nk.runMs) : undefined), rss.toFixed(1), ratio(rss, nk ? nk.idleRssKb! / 1024 : undefined)]));
  }
  for (const r of results.filter((x) => x.error)) log(`${r.shim.name.padEnd(12)}  unavailable: ${r.error}`);
  log("(ratio = that shim's figure / nano-kata's; below 1 means less than nano-kata; idle RSS: one shim serving one `sleep` task)");
  return results.every((r) => !r.error) ? 0 : 1;
}
