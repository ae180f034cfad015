/**
 * Lifecycle benchmark (not a test): for each runtime found (nk-runtime, runc,
 * crun), N rounds (NK_BENCH_N, default 20) after one warm-up round, the
 * runtimes interleaved within each round,
 *   (a) create + start + wait for the process to exit + delete, of `true`
 *   (b) run of `true`
 * on the same bundle, each runtime with its own private --root. Prints one
 * table of medians and ratios against nk-runtime.
 *
 * "Exited" is read from /proc/<pid>/stat (gone or zombie), not by polling
 * `state`, so the numbers measure the runtime rather than the polling.
 * A second table splits the lifecycle into its CLI calls (create, start,
 * delete), plus `state` of a created container and `--version`, timed
 * outside the lifecycle's total: where a runtime's per-process start-up cost
 * shows.
 *
 * Then bench/shim.ts: `ctr run --rm ... true` through containerd with the
 * nano-kata shim vs the runc shim, and each shim's idle RSS; then
 * bench/clients.ts: `podman run --rm` and `docker run --rm` of `true`.
 */
import { spawnSync } from "node:child_process";
import { accessSync, closeSync, constants as fsConstants, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeBundle } from "../test/helpers/bundle.ts";
import { repoRoot } from "../test/helpers/rootfs.ts";
import { runClientsBench } from "./clients.ts";
import { runShimBench } from "./shim.ts";

interface Runtime {
  name: string;
  bin: string;
}

/** The CLI calls timed one by one (the lifecycle's own three, and two outside it). */
const CALLS = ["create", "start", "delete", "state", "--version"] as const;
type Call = (typeof CALLS)[number];

interface Result {
  runtime: Runtime;
  lifecycleMs: number[];
  runMs: number[];
  callMs: Record<Call, number[]>;
  error?: string;
}

function executable(path: string): boolean {
  try {
    accessSync(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function candidates(): Runtime[] {
  const list: Runtime[] = [
    { name: "nk-runtime", bin: join(repoRoot(), "bin", "nk-runtime") },
    { name: "runc", bin: ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"].find(executable) ?? "" },
    { name: "crun", bin: ["/usr/bin/crun", "/usr/local/bin/crun"].find(executable) ?? "" },
  ];
  return list.filter((r) => r.bin !== "" && executable(r.bin));
}

function exited(pid: number): boolean {
  try {
    return /\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true;
  }
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

class BenchError extends Error {
  readonly code = "BENCH_STEP_FAILED";
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** One runtime's side of the benchmark: its private --root and a step runner. */
class Bench {
  readonly result: Result;
  private readonly root = mkdtempSync(join(tmpdir(), "nkb-root-"));
  private readonly errPath = join(this.root, "stderr.log");
  private readonly devNull = openSync("/dev/null", "r+");
  private id = "";

  constructor(
    readonly runtime: Runtime,
    private readonly bundleDir: string,
  ) {
    this.result = { runtime, lifecycleMs: [], runMs: [], callMs: { create: [], start: [], delete: [], state: [], "--version": [] } };
  }

  /** Runs one CLI call; returns how long it took (ms). */
  private step(args: string[]): number {
    const errFd = openSync(this.errPath, "w");
    const t0 = performance.now();
    try {
      const r = spawnSync(this.runtime.bin, ["--root", this.root, ...args], { stdio: [this.devNull, this.devNull, errFd], timeout: 30_000 });
      if (r.status !== 0) {
        throw new BenchError(`${this.runtime.name} ${args[0]} failed (${r.status ?? r.signal}): ${readFileSync(this.errPath, "utf8").trim().split("\n")[0]}`);
      }
      return performance.now() - t0;
    } finally {
      closeSync(errFd);
    }
  }

  /** Round i (0 is the warm-up, not recorded); a failure marks the runtime failed. */
  round(i: number): void {
    if (this.result.error) return;
    const name = this.runtime.name;
    try {
      this.id = `nkb-${process.pid}-${name}-${i}`;
      const pidFile = join(this.root, `${this.id}.pid`);
      const t0 = performance.now();
      const create = this.step(["create", "--bundle", this.bundleDir, "--pid-file", pidFile, this.id]);
      const pid = Number(readFileSync(pidFile, "utf8").trim());
      const state = this.step(["state", this.id]); // not part of the lifecycle: subtracted below
      const start = this.step(["start", this.id]);
      const deadline = Date.now() + 10_000;
      while (!exited(pid)) {
        if (Date.now() > deadline) throw new BenchError(`${name}: container process ${pid} did not exit`);
        sleepMs(1);
      }
      const del = this.step(["delete", this.id]);
      const t1 = performance.now();
      this.id = `nkb-${process.pid}-${name}-run-${i}`;
      const run = this.step(["run", "--bundle", this.bundleDir, this.id]);
      this.id = "";
      const version = this.step(["--version"]);
      if (i === 0) return; // warm-up
      this.result.lifecycleMs.push(t1 - t0 - state);
      this.result.runMs.push(run);
      const calls: Record<Call, number> = { create, start, delete: del, state, "--version": version };
      for (const c of CALLS) this.result.callMs[c].push(calls[c]);
    } catch (err) {
      this.result.error = err instanceof Error ? err.message : String(err);
      if (this.id !== "") spawnSync(this.runtime.bin, ["--root", this.root, "delete", "--force", this.id], { stdio: "ignore" });
    }
  }

  close(): void {
    closeSync(this.devNull);
    rmSync(this.root, { recursive: true, force: true });
  }
}

/**
 * Interleaved: round i runs every runtime once before round i+1 starts, so a
 * burst of load from elsewhere on the machine hits all runtimes alike.
 */
function bench(runtimes: Runtime[], n: number, bundleDir: string): Result[] {
  const benches = runtimes.map((r) => new Bench(r, bundleDir));
  try {
    for (let i = 0; i <= n; i++) for (const b of benches) b.round(i);
  } finally {
    for (const b of benches) b.close();
  }
  return benches.map((b) => b.result);
}

function main(n: number): number {
  const runtimes = candidates();
  if (runtimes.length === 0) {
    console.error("no runtime found (bin/nk-runtime, runc, crun)");
    return 1;
  }
  // One bundle for everyone: shared read-only busybox rootfs, process `true`.
  const bundle = makeBundle({ id: `nkb-${process.pid}`, args: ["true"] });
  try {
    console.log(`lifecycle benchmark: N=${n} (+1 warm-up), process "true", bundle ${bundle.dir}`);
    for (const r of runtimes) console.log(`  ${r.name}: ${r.bin}`);
    const results = bench(runtimes, n, bundle.dir);
    for (const r of results) if (r.error) console.log(`  ${r.runtime.name} failed: ${r.error}`);
    const ok = results.filter((r) => !r.error && r.lifecycleMs.length > 0);
    const nk = ok.find((r) => r.runtime.name === "nk-runtime");
    const ratio = (value: number, base: number | undefined): string => (base === undefined ? "n/a" : `${(value / base).toFixed(2)}x`);

    console.log("");
    const widths = [12, 24, 7, 14, 7];
    const row = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[0]!) : c.padStart(widths[i]!))).join("  ");
    console.log(row(["runtime", "create..delete median ms", "vs nk", "run median ms", "vs nk"]));
    for (const r of ok) {
      const lc = median(r.lifecycleMs);
      const run = median(r.runMs);
      const lcBase = nk ? median(nk.lifecycleMs) : undefined;
      const runBase = nk ? median(nk.runMs) : undefined;
      console.log(row([r.runtime.name, lc.toFixed(1), ratio(lc, lcBase), run.toFixed(1), ratio(run, runBase)]));
    }
    for (const r of results.filter((x) => x.error)) console.log(`${r.runtime.name.padEnd(12)}  unavailable: ${r.error}`);
    console.log("(ratio = that runtime's median / nk-runtime's median; below 1 means faster than nk-runtime)");
    printCalls(ok);
    return ok.length > 0 ? 0 : 1;
  } finally {
    bundle.cleanup();
  }
}

/** The per-call table: each CLI call's median, per runtime. */
function printCalls(ok: Result[]): void {
  console.log("");
  const row = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(12) : c.padStart(11))).join("  ");
  console.log(row(["median ms", ...CALLS]));
  for (const r of ok) console.log(row([r.runtime.name, ...CALLS.map((c) => median(r.callMs[c]).toFixed(1))]));
  console.log("(each CLI call alone: the lifecycle's create, start and delete, and `state` of a created container and `--version` outside it)");
}

function benchN(): number | undefined {
  if (process.getuid?.() !== 0) {
    console.error("the benchmarks run real containers and need root");
    return undefined;
  }
  const n = Number(process.env.NK_BENCH_N ?? "20");
  if (!Number.isInteger(n) || n < 1) {
    console.error(`NK_BENCH_N must be a positive integer, got ${process.env.NK_BENCH_N}`);
    return undefined;
  }
  return n;
}

const n = benchN();
if (n === undefined) process.exit(1);
// NK_BENCH_ONLY=lifecycle: just this file's tables (the shim and client benches take minutes).
const only = process.env.NK_BENCH_ONLY;
const lifecycleStatus = main(n);
const shimStatus = only === "lifecycle" ? 0 : await runShimBench(n, (line) => console.log(line));
const clientsStatus = only === "lifecycle" ? 0 : await runClientsBench((line) => console.log(line));
process.exit(lifecycleStatus || shimStatus || clientsStatus);
