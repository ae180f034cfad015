/**
 * Lifecycle benchmark (not a test): for each runtime found (nk-runtime, runc,
 * crun), N times (NK_BENCH_N, default 20) after one warm-up,
 *   (a) create + start + wait for the process to exit + delete, of `true`
 *   (b) run of `true`
 * on the same bundle, each runtime with its own private --root. Prints one
 * table of medians and ratios against nk-runtime.
 *
 * "Exited" is read from /proc/<pid>/stat (gone or zombie), not by polling
 * `state`, so the numbers measure the runtime rather than the polling.
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

interface Result {
  runtime: Runtime;
  lifecycleMs: number[];
  runMs: number[];
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

function bench(runtime: Runtime, n: number, bundleDir: string): Result {
  const root = mkdtempSync(join(tmpdir(), "nkb-root-"));
  const errPath = join(root, "stderr.log");
  const devNull = openSync("/dev/null", "r+");
  const result: Result = { runtime, lifecycleMs: [], runMs: [] };
  const step = (args: string[]): void => {
    const errFd = openSync(errPath, "w");
    try {
      const r = spawnSync(runtime.bin, ["--root", root, ...args], { stdio: [devNull, devNull, errFd], timeout: 30_000 });
      if (r.status !== 0) {
        throw new BenchError(`${runtime.name} ${args[0]} failed (${r.status ?? r.signal}): ${readFileSync(errPath, "utf8").trim().split("\n")[0]}`);
      }
    } finally {
      closeSync(errFd);
    }
  };
  let id = "";
  try {
    for (let i = 0; i <= n; i++) {
      id = `nkb-${process.pid}-${runtime.name}-${i}`;
      const pidFile = join(root, `${id}.pid`);
      const t0 = performance.now();
      step(["create", "--bundle", bundleDir, "--pid-file", pidFile, id]);
      const pid = Number(readFileSync(pidFile, "utf8").trim());
      step(["start", id]);
      const deadline = Date.now() + 10_000;
      while (!exited(pid)) {
        if (Date.now() > deadline) throw new BenchError(`${runtime.name}: container process ${pid} did not exit`);
        sleepMs(1);
      }
      step(["delete", id]);
      const t1 = performance.now();
      id = `nkb-${process.pid}-${runtime.name}-run-${i}`;
      step(["run", "--bundle", bundleDir, id]);
      const t2 = performance.now();
      id = "";
      if (i === 0) continue; // warm-up
      result.lifecycleMs.push(t1 - t0);
      result.runMs.push(t2 - t1);
    }
  } catch (err) {
    result.error = err instanceof Error ? err.message : String(err);
    if (id !== "") spawnSync(runtime.bin, ["--root", root, "delete", "--force", id], { stdio: "ignore" });
  } finally {
    closeSync(devNull);
    rmSync(root, { recursive: true, force: true });
  }
  return result;
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
    const results = runtimes.map((r) => {
      process.stdout.write(`  ${r.name} (${r.bin}) ... `);
      const res = bench(r, n, bundle.dir);
      console.log(res.error ? `failed: ${res.error}` : "done");
      return res;
    });
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
    return ok.length > 0 ? 0 : 1;
  } finally {
    bundle.cleanup();
  }
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
const lifecycleStatus = main(n);
const shimStatus = await runShimBench(n, (line) => console.log(line));
const clientsStatus = await runClientsBench((line) => console.log(line));
process.exit(lifecycleStatus || shimStatus || clientsStatus);
