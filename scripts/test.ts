/**
 * `npm test`: build if needed, then `bun test` over test/unit, test/integration
 * and test/e2e (each directory that has test files, in that order, one Bun
 * process each), echoing their output, and finish with one plain line:
 *
 *   N passed, N failed, N skipped
 *
 * Exits non-zero if any run failed. Extra arguments go to every `bun test`
 * (e.g. `npm test -- -t lifecycle`). NK_TEST_RUNTIME picks the runtime the
 * integration suites drive (default bin/nk-runtime).
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "../test/helpers/rootfs.ts";
import { removeTestCgroupParents } from "../test/helpers/runtime.ts";

const SUITES = ["test/unit", "test/integration", "test/e2e"];
const PER_TEST_TIMEOUT_MS = 60_000;

interface Counts {
  passed: number;
  failed: number;
  skipped: number;
}

function hasTestFiles(dir: string): boolean {
  if (!existsSync(dir)) return false;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory() && hasTestFiles(join(dir, entry.name))) return true;
    if (entry.isFile() && /\.test\.[cm]?[jt]sx?$/.test(entry.name)) return true;
  }
  return false;
}

/** The newest modification time of any file below `dir` (0 when it does not exist). */
function newestMtime(dir: string): number {
  if (!existsSync(dir)) return 0;
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      if (entry.name !== "build") newest = Math.max(newest, newestMtime(path));
    } else if (entry.isFile()) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

/**
 * The tests run bin/nk-runtime, which prefers the compiled dist/nk-runtime: a
 * build older than the sources would test yesterday's code. Rebuild when a
 * source is newer than the binary (make itself decides what native/ needs).
 */
function buildIfNeeded(root: string): void {
  const binary = join(root, "dist", "nk-runtime");
  const missing = !existsSync(join(root, "native", "build", "nk-exec")) || !existsSync(binary);
  const builtAt = missing ? 0 : statSync(binary).mtimeMs;
  const stale = !missing && Math.max(newestMtime(join(root, "src")), newestMtime(join(root, "native"))) > builtAt;
  if (!missing && !stale) return;
  console.log(missing ? "native/build/nk-exec or dist/nk-runtime missing: running npm run build" : "sources are newer than dist/nk-runtime: running npm run build");
  const r = spawnSync("npm", ["run", "build"], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) {
    console.error("npm run build failed");
    process.exit(1);
  }
}

/**
 * Each failed test of a run with the lines bun printed for it (its error and
 * stack come before its "(fail)" line, after the previous test's verdict), so
 * that the closing summary can repeat them: CI keeps only the tail of a log,
 * and a failure in an early suite would otherwise scroll out of it.
 */
export function failedTestReports(output: string, maxLinesEach = 30): string[] {
  const reports: string[] = [];
  const lines = output.split("\n");
  let blockStart = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const verdict = /^\((pass|fail|skip|todo)\) /.exec(line);
    const fileHeader = /^\S.*\.test\.[cm]?[jt]sx?:$/.test(line);
    if (verdict?.[1] === "fail") {
      const context = lines.slice(Math.max(blockStart, i - maxLinesEach), i).filter((l) => l.trim() !== "");
      reports.push([line, ...context.map((l) => `    ${l}`)].join("\n"));
    }
    if (verdict || fileHeader) blockStart = i + 1;
  }
  // bun repeats every failure in a closing "N tests failed:" list; keep the first report of each.
  const seen = new Set<string>();
  return reports.filter((r) => {
    const name = r.split("\n", 1)[0]!.replace(/ \[[\d.]+m?s\]$/, "");
    if (seen.has(name)) return false;
    seen.add(name);
    return true;
  });
}

/** Sum bun's closing " N pass / N fail / N skip" lines. */
export function parseBunSummary(output: string): Counts & { found: boolean } {
  const grab = (word: string): number | null => {
    const m = new RegExp(`^\\s*(\\d+) ${word}\\s*$`, "m").exec(output);
    return m ? Number(m[1]) : null;
  };
  const pass = grab("pass");
  const fail = grab("fail");
  const skip = grab("skip");
  const todo = grab("todo");
  return {
    passed: pass ?? 0,
    failed: fail ?? 0,
    skipped: (skip ?? 0) + (todo ?? 0),
    found: pass !== null || fail !== null,
  };
}

function runSuite(root: string, dir: string, extra: string[]): Promise<{ code: number; output: string }> {
  const bun = process.execPath;
  const args = ["test", `--timeout=${PER_TEST_TIMEOUT_MS}`, `./${dir}`, ...extra];
  console.log(`\n=== bun ${args.join(" ")}`);
  return new Promise((resolve) => {
    const child = spawn(bun, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      process.stdout.write(chunk);
    });
    child.stderr.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      process.stderr.write(chunk);
    });
    child.on("close", (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), output }));
  });
}

async function main(): Promise<number> {
  const root = repoRoot();
  const extra = process.argv.slice(2);
  buildIfNeeded(root);
  const total: Counts = { passed: 0, failed: 0, skipped: 0 };
  let anyFailure = false;
  const failures: string[] = [];
  for (const dir of SUITES) {
    if (!hasTestFiles(join(root, dir))) continue;
    const { code, output } = await runSuite(root, dir, extra);
    const counts = parseBunSummary(output);
    total.passed += counts.passed;
    total.failed += counts.failed;
    total.skipped += counts.skipped;
    for (const report of failedTestReports(output)) failures.push(`${dir}: ${report}`);
    if (code !== 0 || !counts.found) {
      anyFailure = true;
      // A crash before bun's summary still counts as a failure in the closing line.
      if (counts.failed === 0) total.failed += 1;
      const why = `bun test ./${dir} exited with ${code}${counts.found ? "" : " without a summary"}`;
      console.error(why);
      if (counts.failed === 0) failures.push(`${why}; its last lines:\n${output.trimEnd().split("\n").slice(-30).join("\n")}`);
    }
  }
  // Only between runs is this safe: a running test may be creating a child there.
  if (process.getuid?.() === 0) removeTestCgroupParents();
  if (failures.length > 0) console.log(`\nFailed (repeated here from each suite's output):\n\n${failures.join("\n\n")}`);
  console.log(`\n${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
  return anyFailure || total.failed > 0 ? 1 : 0;
}

if (import.meta.main) process.exit(await main());
