/**
 * VM-mode benchmark (not a test): `bun bench/vm.ts` (NK_BENCH_N runs, default
 * 5, after one warm-up), with the guest image from NK_VM_CACHE (default the
 * tests' <repo>/.cache/vm; run `nk-runtime vm build-image` first):
 *   (a) create -> first byte of the container's output: `create` of
 *       `echo x` with stdout on a pipe, then `start`, until the byte arrives
 *   (b) `run` of `true`, whole (boot, plan, exit, VM shutdown, delete)
 *   (c) host memory of one running VM-mode container: QEMU, virtiofsd and the
 *       host process (RSS)
 *   (d) where the time of one `true` goes (see breakdown())
 *   (e) (b), (c) and (d) again for a container started from a VM template
 *       (io.nanokata.vm.template=true: a block rootfs, the VM a clone of a
 *       saved guest), with the templates in a directory of the bench's own
 * Prints medians; the accelerator (tcg or kvm) is named with the numbers.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeBundle } from "../test/helpers/bundle.ts";
import { repoRoot } from "../test/helpers/rootfs.ts";

const BIN = join(repoRoot(), "bin", "nk-runtime");
const N = Number(process.env.NK_BENCH_N ?? 5);
const root = mkdtempSync(join(tmpdir(), "nk-bench-vm-"));
const env = { ...process.env, NK_VM_CACHE: process.env.NK_VM_CACHE ?? join(repoRoot(), ".cache", "vm"), NK_VM_TEMPLATE_DIR: join(root, "templates") };
const rt = (args: string[], extra: object = {}) => spawnSync(BIN, ["--root", root, "--mode", "vm", ...args], { env, encoding: "utf8", ...extra });

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function firstByte(bundleDir: string, id: string): Promise<number> {
  const started = performance.now();
  const create = spawn(BIN, ["--root", root, "--mode", "vm", "create", "--bundle", bundleDir, id], { env, stdio: ["ignore", "pipe", "inherit"] });
  const first = new Promise<number>((resolve) => create.stdout!.once("data", () => resolve(performance.now() - started)));
  await new Promise((r) => create.on("exit", r));
  const start = rt(["start", id]);
  if (start.status !== 0) throw new Error(`start failed: ${start.stderr}`);
  const ms = await first;
  for (let i = 0; i < 500 && JSON.parse(rt(["state", id]).stdout || "{}").status !== "stopped"; i++) await Bun.sleep(10);
  rt(["delete", "--force", id]);
  return ms;
}

function rss(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
  } catch {
    return 0;
  }
}

/**
 * A process's memory from smaps_rollup, in MiB: resident; its own (dirty:
 * written by it, anonymous or copied on write); clean file pages (a clone's
 * template RAM pages it only read, which every clone of the template shares
 * through the page cache, and QEMU's code).
 */
function smaps(pid: number | undefined): { rss: number; own: number; clean: number } {
  if (!pid) return { rss: 0, own: 0, clean: 0 };
  try {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? 0) / 1024;
    return { rss: kib("Rss"), own: kib("Private_Dirty") + kib("Shared_Dirty"), clean: kib("Private_Clean") + kib("Shared_Clean") };
  } catch {
    return { rss: 0, own: 0, clean: 0 };
  }
}

/**
 * Where the time of one `true` goes: create, start, the wait for its exit and
 * delete, each timed from here; the --debug log's milestones (host process,
 * virtiofsd, QEMU, the agent's HELLO, init ready, exit, VM stopped); and the
 * agent's own boot steps in guest uptime (nk.debug=1, from console.log).
 */
async function breakdown(bundleDir: string, title = "one `true`"): Promise<void> {
  const log = join(root, `breakdown-${title.replace(/\W+/g, "-")}.log`);
  const debugEnv = { ...env, NK_VM_CMDLINE_EXTRA: "nk.debug=1" };
  const t0 = performance.now();
  const at = () => `+${String(Math.round(performance.now() - t0)).padStart(5)} ms`;
  const marks: string[] = [];
  const c = spawnSync(BIN, ["--root", root, "--mode", "vm", "--debug", "--log", log, "--log-format", "json", "create", "--bundle", bundleDir, "bd"], { env: debugEnv, stdio: "ignore" });
  if (c.status !== 0) throw new Error(`create failed (exit ${c.status}): ${readFileSync(log, "utf8")}`);
  marks.push(`${at()}  create returned`);
  rt(["start", "bd"]);
  marks.push(`${at()}  start returned`);
  for (let i = 0; i < 1000 && JSON.parse(rt(["state", "bd"]).stdout || "{}").status !== "stopped"; i++) await Bun.sleep(5);
  marks.push(`${at()}  state says stopped`);
  const consoleLog = (() => {
    for (const dir of [join(root, "bd", "vm")]) {
      try {
        return readFileSync(join(dir, "console.log"), "utf8");
      } catch {}
    }
    return "";
  })();
  rt(["delete", "bd"]);
  marks.push(`${at()}  delete returned`);
  const lines = readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { msg: string; time: string });
  const wall0 = Date.now() - (performance.now() - t0);
  console.log(`${title}, create to delete (times from the bench's start):`);
  for (const l of lines) console.log(`  +${String(Math.round(Date.parse(l.time) - wall0)).padStart(5)} ms  ${l.msg}`);
  for (const m of marks) console.log(`  ${m}`);
  const steps = consoleLog.split("\n").filter((l) => l.startsWith("nk-agent:"));
  if (steps.length) console.log(`the agent's boot steps (guest uptime):\n${steps.map((l) => `  ${l.trim()}`).join("\n")}`);
}

async function main(): Promise<void> {
  if (!existsSync(join(env.NK_VM_CACHE!, "stamp.json"))) {
    console.error(`no guest image in ${env.NK_VM_CACHE}: run NK_VM_CACHE=${env.NK_VM_CACHE} bin/nk-runtime vm build-image`);
    process.exit(1);
  }
  const echo = makeBundle({ args: ["echo", "x"] });
  const nothing = makeBundle({ args: ["true"] });
  const sleeper = makeBundle({ args: ["sleep", "60"] });
  const templated = makeBundle({ args: ["true"], override: (c) => (c.annotations = { "io.nanokata.vm.template": "true" }) });
  try {
    const check = spawnSync(BIN, ["vm", "check", "--format", "json"], { env, encoding: "utf8" });
    const report = JSON.parse(check.stdout);
    const accel = report.accelerator;
    console.log(`accelerator: ${accel.accel} (${accel.reason}); guest kernel: ${report.image.kernel} ${report.image.release}`);

    await firstByte(echo.dir, "warm");
    const firstBytes: number[] = [];
    const runs: number[] = [];
    for (let i = 0; i < N; i++) {
      firstBytes.push(await firstByte(echo.dir, `fb${i}`));
      const t = performance.now();
      const r = rt(["run", "--bundle", nothing.dir, `run${i}`]);
      if (r.status !== 0) throw new Error(`run failed: ${r.stderr}`);
      runs.push(performance.now() - t);
    }
    const fmt = (xs: number[]) => `median ${median(xs).toFixed(0)} ms (min ${Math.min(...xs).toFixed(0)}, max ${Math.max(...xs).toFixed(0)}, n=${xs.length})`;
    console.log(`create -> first output byte: ${fmt(firstBytes)}`);
    console.log(`run true (whole):            ${fmt(runs)}`);

    // One running container: memory.
    const c = spawnSync(BIN, ["--root", root, "--mode", "vm", "create", "--bundle", sleeper.dir, "mem"], { env, stdio: "ignore" });
    if (c.status !== 0) throw new Error(`create failed (exit ${c.status})`);
    rt(["start", "mem"]);
    await Bun.sleep(1000);
    const pids = JSON.parse(readFileSync(join(root, "mem", "vm-pids.json"), "utf8"));
    const qemu = rss(pids.vmm?.pid);
    const fsd = rss(pids.virtiofsd?.pid);
    const host = rss(pids.host?.pid);
    console.log(`memory (RSS): qemu ${qemu.toFixed(0)} MiB, virtiofsd ${fsd.toFixed(0)} MiB, host process ${host.toFixed(0)} MiB; total ${(qemu + fsd + host).toFixed(0)} MiB`);
    rt(["delete", "--force", "mem"]);

    await breakdown(nothing.dir);

    // From a template: the first run makes it (not counted).
    const runTemplated = (id: string) => {
      const t = performance.now();
      const r = rt(["run", "--bundle", templated.dir, id]);
      if (r.status !== 0) throw new Error(`run failed: ${r.stderr}`);
      return performance.now() - t;
    };
    const making = runTemplated("tmpl-warm");
    const templatedRuns: number[] = [];
    for (let i = 0; i < N; i++) templatedRuns.push(runTemplated(`tmpl${i}`));
    console.log(`run true from a VM template:  ${fmt(templatedRuns)} (the first run, which made the template: ${making.toFixed(0)} ms)`);
    // One running clone: its QEMU's memory, and how much of it is the template's (shared) pages.
    const sleepingClone = makeBundle({ args: ["sleep", "60"], override: (c) => (c.annotations = { "io.nanokata.vm.template": "true" }) });
    try {
      const cc = spawnSync(BIN, ["--root", root, "--mode", "vm", "create", "--bundle", sleepingClone.dir, "cmem"], { env, stdio: "ignore" });
      if (cc.status !== 0) throw new Error(`create failed (exit ${cc.status})`);
      rt(["start", "cmem"]);
      await Bun.sleep(1000);
      const clonePids = JSON.parse(readFileSync(join(root, "cmem", "vm-pids.json"), "utf8"));
      const m = smaps(clonePids.vmm?.pid);
      console.log(
        `memory of a clone (RSS): qemu ${m.rss.toFixed(0)} MiB (its own ${m.own.toFixed(0)} MiB; clean file pages ${m.clean.toFixed(0)} MiB: the template's RAM it only read, shared by every clone, and QEMU's code), host process ${rss(clonePids.host?.pid).toFixed(0)} MiB`,
      );
      rt(["delete", "--force", "cmem"]);
    } finally {
      sleepingClone.cleanup();
    }
    await breakdown(templated.dir, "one `true` from a VM template");
  } finally {
    for (const b of [echo, nothing, sleeper, templated]) b.cleanup();
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
