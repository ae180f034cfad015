/**
 * The runtime under test and everything the integration suites need to drive
 * it: a runc-style CLI runner, container lifecycle shortcuts, a cleanup
 * registry and a leftover detector.
 *
 * The binary is $NK_TEST_RUNTIME or <repo>/bin/nk-runtime, so the same suites
 * run against runc and crun (to validate the tests themselves) and against
 * nano-kata (as its acceptance suite). Every invocation gets a private
 * `--root` (one temporary state directory per test process), so tests never
 * see or disturb containers other than their own.
 *
 * The runtime's stdout/stderr always go to files, never pipes: `create` and
 * `run -d` hand their stdio to the container, and a pipe would keep a
 * synchronous spawn waiting until the container exits.
 */
import { spawnSync } from "node:child_process";
import {
  accessSync,
  closeSync,
  constants as fsConstants,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  rmSync,
  rmdirSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { test } from "bun:test";
import { type Bundle, type BundleOptions, TEST_CGROUP_PARENT, makeBundle } from "./bundle.ts";
import { BUSYBOX_PATH, repoRoot } from "./rootfs.ts";

export type RuntimeKind = "nk" | "runc" | "crun" | "other";

export interface RtOptions {
  /** Kill the runtime (SIGKILL) after this long; default 30 s. */
  timeoutMs?: number;
  /** Bytes for stdin; default stdin is /dev/null. */
  input?: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Leave out the private --root (for --version, --help, spec, features). */
  noRoot?: boolean;
  /** Append stdout/stderr to these files (kept) instead of private temp files (removed). */
  stdoutPath?: string;
  stderrPath?: string;
  /** Extra open fds handed to the runtime as fd 3, 4, ... (fd-leak tests). */
  extraFds?: number[];
}

export interface RtResult {
  /** Exit code; 128+n when the runtime itself was killed by signal n; -1 if unknown. */
  code: number;
  signal: string | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** The full argv, for assertion messages. */
  argv: string[];
}

export interface ContainerState {
  ociVersion: string;
  id: string;
  status: string;
  pid: number;
  bundle: string;
  rootfs?: string;
  created?: string;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

// ---------------------------------------------------------------- the binary

export function runtimeBinary(): string {
  return process.env.NK_TEST_RUNTIME || join(repoRoot(), "bin", "nk-runtime");
}

/** Which implementation runs, for the few cases where expectations differ. */
export function runtimeKind(): RuntimeKind {
  const name = basename(runtimeBinary());
  if (name === "runc") return "runc";
  if (name === "crun") return "crun";
  if (name.startsWith("nk-runtime") || name === "nano-kata") return "nk";
  return "other";
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** Why integration tests cannot run here, or null if they can. */
export function integrationSkipReason(): string | null {
  if (!isRoot()) return "integration tests need root";
  const bin = runtimeBinary();
  try {
    accessSync(bin, fsConstants.X_OK);
  } catch {
    return `runtime binary ${bin} is missing or not executable (set NK_TEST_RUNTIME)`;
  }
  if (!existsSync(BUSYBOX_PATH)) return `${BUSYBOX_PATH} is missing: apt-get install -y busybox-static`;
  return null;
}

/** Reason to skip unless the runtime under test is one of `kinds`. */
export function onlyFor(kinds: RuntimeKind[], why: string): string | null {
  return kinds.includes(runtimeKind()) ? null : `only for ${kinds.join("/")} (${why}); runtime is ${runtimeKind()}`;
}

/** The first non-null skip reason. */
export function firstReason(...reasons: (string | null)[]): string | null {
  return reasons.find((r) => r !== null) ?? null;
}

/**
 * Register a test, or a skipped test with "SKIP <name>: <reason>" printed to
 * stderr so a skipped check is never silent.
 */
export function testIf(reason: string | null, name: string, fn: () => void | Promise<void>, timeoutMs = 30_000): void {
  if (reason !== null) {
    process.stderr.write(`SKIP ${name}: ${reason}\n`);
    test.skip(name, fn);
    return;
  }
  test(name, fn, timeoutMs);
}

// ------------------------------------------------------------- the CLI runner

let privateRoot: string | null = null;

/** The private --root state directory of this test process (created on first use). */
export function stateRoot(): string {
  if (privateRoot === null) {
    privateRoot = mkdtempSync(join(tmpdir(), "nkt-root-"));
    tempDirs.add(privateRoot);
  }
  return privateRoot;
}

let outCounter = 0;

/** Run the runtime CLI: `<bin> --root <private> ...args`. Never throws for a non-zero exit. */
export function rt(args: string[], opts: RtOptions = {}): RtResult {
  const bin = runtimeBinary();
  const argv = opts.noRoot ? [...args] : ["--root", stateRoot(), ...args];
  const scratch = mkdtempScratch();
  outCounter += 1;
  const outPath = opts.stdoutPath ?? join(scratch, `out-${outCounter}`);
  const errPath = opts.stderrPath ?? join(scratch, `err-${outCounter}`);
  const outFd = openSync(outPath, "a");
  const errFd = openSync(errPath, "a");
  const outStart = statSync(outPath).size;
  const errStart = statSync(errPath).size;
  try {
    const r = spawnSync(bin, argv, {
      stdio: [opts.input !== undefined ? "pipe" : "ignore", outFd, errFd, ...(opts.extraFds ?? [])],
      input: opts.input,
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      timeout: opts.timeoutMs ?? 30_000,
      killSignal: "SIGKILL",
    });
    const timedOut = (r.error as NodeJS.ErrnoException | undefined)?.code === "ETIMEDOUT";
    let code = r.status ?? -1;
    if (r.status === null && r.signal) code = 128 + signalNumber(r.signal);
    return {
      code,
      signal: r.signal ?? null,
      stdout: readFrom(outPath, outStart),
      stderr: readFrom(errPath, errStart),
      timedOut,
      argv: [bin, ...argv],
    };
  } finally {
    closeSync(outFd);
    closeSync(errFd);
    if (!opts.stdoutPath) rmSync(outPath, { force: true });
    if (!opts.stderrPath) rmSync(errPath, { force: true });
  }
}

let scratchDir: string | null = null;
function mkdtempScratch(): string {
  if (scratchDir === null || !existsSync(scratchDir)) {
    scratchDir = mkdtempSync(join(tmpdir(), "nkt-out-"));
    tempDirs.add(scratchDir);
  }
  return scratchDir;
}

function readFrom(path: string, offset: number): string {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch {
    return ""; // removed behind our back (someone cleaning /tmp): report no output rather than crash
  }
  return buf.subarray(offset).toString("utf8");
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15 };
function signalNumber(name: string): number {
  return SIGNALS[name] ?? 0;
}

/** A readable one-line summary of a result for expect() messages. */
export function describeResult(r: RtResult): string {
  return `${r.argv.join(" ")} -> code ${r.code}${r.timedOut ? " (timed out)" : ""}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
}

/** Throw (with the runtime's output) unless the command exited 0. */
export function ok(r: RtResult): RtResult {
  if (r.code !== 0) throw new Error(`runtime command failed: ${describeResult(r)}`);
  return r;
}

// ---------------------------------------------------------- container helpers

export interface CreateOptions {
  pidFile?: string;
  /** Extra flags placed before the id. */
  flags?: string[];
}

/** Where a bundle's container writes its stdout/stderr (create/run hand theirs to the container). */
export function outputPaths(bundle: Bundle): { stdout: string; stderr: string } {
  return { stdout: join(bundle.dir, "stdout.log"), stderr: join(bundle.dir, "stderr.log") };
}

/** What the container (and the runtime) wrote to stdout so far. */
export function containerStdout(bundle: Bundle): string {
  try {
    return readFileSync(outputPaths(bundle).stdout, "utf8");
  } catch {
    return "";
  }
}

/** Make a bundle and register it (and its id) for cleanup. */
export function newBundle(opts: BundleOptions = {}): Bundle {
  const bundle = makeBundle(opts);
  track(bundle.id, bundle);
  return bundle;
}

/** `create --bundle <dir> <id>` with the container's stdio going to the bundle's log files. */
export function createContainer(bundle: Bundle, opts: CreateOptions = {}, id = bundle.id): RtResult {
  track(id, bundle);
  const paths = outputPaths(bundle);
  const args = ["create", "--bundle", bundle.dir];
  if (opts.pidFile) args.push("--pid-file", opts.pidFile);
  args.push(...(opts.flags ?? []), id);
  return rt(args, { stdoutPath: paths.stdout, stderrPath: paths.stderr });
}

export function startContainer(id: string): RtResult {
  return rt(["start", id]);
}

/** Foreground `run`: returns once the container exited (the runtime deletes it). */
export function runContainerIn(bundle: Bundle, flags: string[] = [], timeoutMs = 30_000): RtResult {
  track(bundle.id, bundle);
  return rt(["run", "--bundle", bundle.dir, ...flags, bundle.id], { timeoutMs });
}

/** newBundle(opts) + foreground run: the common "what does the container see" shape. */
export function runContainer(opts: BundleOptions = {}, flags: string[] = []): { result: RtResult; bundle: Bundle } {
  const bundle = newBundle(opts);
  return { result: runContainerIn(bundle, flags), bundle };
}

export function stateResult(id: string): RtResult {
  return rt(["state", id]);
}

/** Parsed `state <id>`; throws with the runtime's output if it fails. */
export function state(id: string): ContainerState {
  const r = ok(stateResult(id));
  try {
    return JSON.parse(r.stdout) as ContainerState;
  } catch {
    throw new Error(`state output is not JSON: ${describeResult(r)}`);
  }
}

export function deleteForce(id: string): RtResult {
  return rt(["delete", "--force", id]);
}

export function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Poll `state` until status matches; returns the state, throws after timeoutMs. */
export function waitForStatus(id: string, status: string, timeoutMs = 10_000): ContainerState {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    const r = stateResult(id);
    if (r.code === 0) {
      try {
        const s = JSON.parse(r.stdout) as ContainerState;
        if (s.status === status) return s;
        last = `status ${s.status}`;
      } catch {
        last = `unparsable state: ${r.stdout}`;
      }
    } else {
      last = `state failed: ${r.stderr.trim()}`;
    }
    if (Date.now() > deadline) throw new Error(`container ${id} did not reach "${status}" in ${timeoutMs} ms (${last})`);
    sleepMs(20);
  }
}

/** Poll until fn() returns true (e.g. output appeared); throws after timeoutMs. */
export function waitUntil(what: string, fn: () => boolean, timeoutMs = 10_000): void {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    sleepMs(20);
  }
}

// ------------------------------------------------------------ host inspection

/** The host's namespace link for `name` (e.g. "pid:[4026531836]"). */
export function hostNamespace(name: string): string {
  return readlinkSync(`/proc/self/ns/${name}`);
}

/** Distinct cgroup hierarchy mount points (v1 controllers, name=systemd, unified). */
export function cgroupHierarchies(): string[] {
  const base = "/sys/fs/cgroup";
  if (existsSync(join(base, "cgroup.controllers"))) return [base]; // pure cgroup v2
  const seen = new Set<string>();
  for (const entry of readdirSync(base)) {
    const path = join(base, entry);
    try {
      const real = realpathSync(path);
      if (statSync(real).isDirectory() && existsSync(join(real, "cgroup.procs"))) seen.add(real);
    } catch {
      /* not a hierarchy */
    }
  }
  return [...seen].sort();
}

/**
 * True for ids that name exactly one directory under /nano-kata-test. Hostile
 * ids from the bad-input tests ("..", "", "a/b") must never be joined into a
 * cgroup path: join(parent, "..") is the hierarchy root, and cleanup kills
 * every process in the cgroups it is given.
 */
export function isPlainId(id: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9_.+-]*$/.test(id) && !id.includes("..") && id.length <= 200;
}

/** The cgroup directories of a test container that exist right now (none for an id that is not a plain name). */
export function containerCgroupDirs(id: string): string[] {
  if (!isPlainId(id)) return [];
  const dirs: string[] = [];
  for (const h of cgroupHierarchies()) {
    const parent = join(h, TEST_CGROUP_PARENT);
    const dir = join(parent, id);
    // Belt and braces: the directory must be a direct child of the test parent.
    if (dirname(dir) !== parent || basename(dir) !== id) continue;
    if (existsSync(dir)) dirs.push(dir);
  }
  return dirs;
}

function pidsOnHost(): number[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .map(Number);
}

/** True if the process is a zombie (exited, waiting for its parent to reap it). */
function isZombie(pid: number): boolean {
  try {
    return /\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/**
 * Live host pids whose /proc/<pid>/cgroup mentions the container id. Zombies
 * are left out: a detached container's init is reparented to the host's init,
 * which may take a while to reap it, and a zombie holds nothing but its pid.
 */
export function pidsInContainerCgroups(id: string): number[] {
  const found: number[] = [];
  if (!isPlainId(id)) return found;
  for (const pid of pidsOnHost()) {
    try {
      if (readFileSync(`/proc/${pid}/cgroup`, "utf8").includes(`/${id}`) && !isZombie(pid)) found.push(pid);
    } catch {
      /* exited meanwhile */
    }
  }
  return found;
}

/** Names in the private state root (snapshot before a hostile-id test, pass to leftovers()). */
export function stateRootEntries(): string[] {
  try {
    return readdirSync(stateRoot()).sort();
  } catch {
    return [];
  }
}

/** Everything a container could leave behind on the host; empty when clean. */
export function leftovers(id: string, bundleDir?: string, stateRootBefore?: string[]): string[] {
  const problems: string[] = [];
  const plain = isPlainId(id);
  if (plain) {
    const stateDir = join(stateRoot(), id);
    if (existsSync(stateDir)) problems.push(`state dir ${stateDir} still exists`);
    for (const dir of containerCgroupDirs(id)) problems.push(`cgroup dir ${dir} still exists`);
    for (const pid of pidsInContainerCgroups(id)) problems.push(`process ${pid} still in a cgroup of ${id}`);
  }
  if (stateRootBefore !== undefined || !plain) {
    // A hostile id names no directory of its own: the state root must not have gained anything.
    const added = stateRootEntries().filter((e) => !(stateRootBefore ?? []).includes(e));
    if (added.length > 0) problems.push(`new entries in the state root: ${added.join(", ")}`);
  }
  for (const line of readFileSync("/proc/self/mounts", "utf8").split("\n")) {
    if ((plain && line.includes(id)) || (bundleDir !== undefined && line.includes(bundleDir))) {
      problems.push(`mount left: ${line}`);
    }
  }
  return problems;
}

/**
 * Throw unless the container left nothing behind (state dir, cgroup dirs,
 * host mounts, processes). Retries briefly: an exiting init may still be a
 * zombie for a few milliseconds.
 */
export function assertNoLeftovers(id: string, bundleDir?: string, stateRootBefore?: string[], timeoutMs = 3_000): void {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const problems = leftovers(id, bundleDir, stateRootBefore);
    if (problems.length === 0) return;
    if (Date.now() > deadline) throw new Error(`container ${id} left things behind:\n  ${problems.join("\n  ")}`);
    sleepMs(50);
  }
}

// ------------------------------------------------------------ cleanup registry

const trackedIds = new Set<string>();
const trackedBundles = new Map<string, Bundle>();
const tempDirs = new Set<string>();

/** Remember a container id (and its bundle) so cleanupAll() removes it. */
export function track(id: string, bundle?: Bundle): void {
  trackedIds.add(id);
  if (bundle) trackedBundles.set(bundle.dir, bundle);
}

/** Remember a temporary directory for cleanupAll() to remove. */
export function trackTempDir(dir: string): void {
  tempDirs.add(dir);
}

/** Kill what is still in a test cgroup (only our own containers live there) and remove the dirs. */
function removeContainerCgroups(id: string): void {
  for (const dir of containerCgroupDirs(id)) {
    for (const pid of readPids(join(dir, "cgroup.procs"))) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
  }
  const deadline = Date.now() + 2_000;
  for (const dir of containerCgroupDirs(id)) {
    for (;;) {
      try {
        removeCgroupTree(dir);
        break;
      } catch {
        if (Date.now() > deadline) break;
        sleepMs(20);
      }
    }
  }
}

function readPids(path: string): number[] {
  try {
    return readFileSync(path, "utf8").split("\n").filter((s) => s !== "").map(Number);
  } catch {
    return [];
  }
}

/** rmdir a cgroup and its children, deepest first (cgroup dirs are removed with rmdir, never rm -r). */
function removeCgroupTree(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) removeCgroupTree(join(dir, entry.name));
  }
  rmdirSync(dir);
}

/**
 * Force-delete every tracked container, remove its cgroups if the runtime
 * left them, remove bundles and temp dirs. Call from afterAll in every
 * integration file; safe to call more than once.
 */
export function cleanupAll(): void {
  for (const id of trackedIds) {
    if (privateRoot !== null) {
      if (isPlainId(id) ? existsSync(join(privateRoot, id)) : id !== "") deleteForce(id);
    }
    removeContainerCgroups(id);
  }
  trackedIds.clear();
  for (const bundle of trackedBundles.values()) bundle.cleanup();
  trackedBundles.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
  privateRoot = null;
  scratchDir = null;
}

/**
 * Remove the empty /nano-kata-test parents in every hierarchy. Only for the
 * end of a whole run (scripts/test.ts): a test file running in parallel may be
 * creating a child under them at any moment.
 */
export function removeTestCgroupParents(): string[] {
  const kept: string[] = [];
  for (const h of cgroupHierarchies()) {
    const parent = join(h, TEST_CGROUP_PARENT);
    if (!existsSync(parent)) continue;
    try {
      rmdirSync(parent);
    } catch {
      kept.push(parent);
    }
  }
  return kept;
}

// ------------------------------------------------------------ test utilities

/** A host temp directory (removed by cleanupAll) for bind mounts and markers. */
export function newHostDir(prefix = "nkt-host-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  trackTempDir(dir);
  return dir;
}

/** A bind mount of a host directory into the container. */
export function bindMount(source: string, destination: string, readonly = false): Record<string, unknown> {
  return { destination, type: "bind", source, options: ["rbind", readonly ? "ro" : "rw"] };
}

/** What a failing command must print, per runtime; a missing entry means "only check the exit code". */
export interface FailureExpectation {
  nk?: string | RegExp;
  runc?: string | RegExp;
  crun?: string | RegExp;
}

/**
 * Assert a non-zero exit whose stderr (or stdout, for usage errors) contains
 * the expectation for the runtime under test. Strings match case-insensitively.
 */
export function expectFailure(r: RtResult, expected: FailureExpectation): void {
  if (r.code === 0) throw new Error(`expected a failure, got success: ${describeResult(r)}`);
  if (r.timedOut) throw new Error(`command timed out instead of failing: ${describeResult(r)}`);
  const kind = runtimeKind();
  const want = kind === "nk" || kind === "runc" || kind === "crun" ? expected[kind] : undefined;
  if (want === undefined) return;
  const text = `${r.stderr}\n${r.stdout}`;
  const matches = typeof want === "string" ? text.toLowerCase().includes(want.toLowerCase()) : want.test(text);
  if (!matches) throw new Error(`expected the error output to mention ${String(want)}: ${describeResult(r)}`);
}

let cachedFeatures: Record<string, unknown> | null | undefined;

/** Parsed `features` output, or null if the runtime has none. */
export function runtimeFeatures(): Record<string, unknown> | null {
  if (cachedFeatures !== undefined) return cachedFeatures;
  const r = rt(["features"], { noRoot: true });
  try {
    cachedFeatures = r.code === 0 ? (JSON.parse(r.stdout) as Record<string, unknown>) : null;
  } catch {
    cachedFeatures = null;
  }
  return cachedFeatures;
}

/** Whether `features` lists a namespace type (e.g. "time"); true if the runtime cannot tell. */
export function runtimeSupportsNamespace(type: string): boolean {
  const linux = runtimeFeatures()?.linux as { namespaces?: string[] } | undefined;
  return linux?.namespaces === undefined ? true : linux.namespaces.includes(type);
}

/** Parse "Key:\tvalue" lines of /proc/<pid>/status-like text. */
export function parseStatus(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_]+):\s*(.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!.trim();
  }
  return out;
}
