/**
 * End-to-end helpers: run real clients (podman, docker, containerd's ctr) on
 * nano-kata and on runc side by side, each with private state, and leave the
 * host as it was.
 *
 * - Every client works under one private directory /var/tmp/nk-e2e-<client>-*
 *   (storage, state, sockets, logs), removed at the end.
 * - The runtimes are given to the clients through argv-logging wrappers
 *   (scripts/argv-logger.sh), so each test also records exactly which runtime
 *   calls a client makes (docs/clients.md).
 * - Daemons (dockerd, containerd) are started by the tests with a timeout and
 *   a clear error, and stopped by pid; their leftover children (containerd
 *   under dockerd, containerd-shim) are found by pid and stopped too.
 * - Networking happens in a private network namespace (a holder process made
 *   with `unshare --net`), so bridges, veths, iptables rules and ip_forward
 *   changes stay out of the host's namespace and vanish with the holder.
 * - The cgroup parents the clients create (/libpod_parent, /docker, /default)
 *   are removed if they did not exist before; a container cgroup still there
 *   at the end is a failure (the runtime must remove its own).
 *
 * The runtime under test is $NK_E2E_RUNTIME or <repo>/bin/nk-runtime; the
 * reference is runc (/usr/sbin/runc).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import {
  accessSync,
  chmodSync,
  closeSync,
  constants as fsConstants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  rmdirSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { BUSYBOX_PATH, ensureBusyboxRootfs, repoRoot } from "../helpers/rootfs.ts";
import { cgroupHierarchies } from "../helpers/runtime.ts";

export const RUNC = "/usr/sbin/runc";
export const E2E_TMP = "/var/tmp";

/** The runtime under test: $NK_E2E_RUNTIME or the repository's bin/nk-runtime. */
export function runtimeUnderTest(): string {
  return process.env.NK_E2E_RUNTIME || join(repoRoot(), "bin", "nk-runtime");
}

/** The two runtimes every scenario runs on: the reference first. */
export type Which = "runc" | "nk";
export const BOTH: Which[] = ["runc", "nk"];

// ------------------------------------------------------------- environment

/** Absolute path of a program on $PATH (or the given absolute path if executable), else null. */
export function which(program: string): string | null {
  const candidates = program.startsWith("/") ? [program] : (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":").map((d) => join(d, program));
  for (const path of candidates) {
    try {
      accessSync(path, fsConstants.X_OK);
      if (statSync(path).isFile()) return path;
    } catch {
      /* next */
    }
  }
  return null;
}

/** Why e2e tests needing these programs cannot run here, or null. */
export function e2eSkipReason(programs: string[]): string | null {
  if (process.getuid?.() !== 0) return "e2e tests need root";
  if (process.env.NK_E2E === "0") return "NK_E2E=0";
  const rt = runtimeUnderTest();
  try {
    accessSync(rt, fsConstants.X_OK);
  } catch {
    return `runtime ${rt} is missing (npm run build, or set NK_E2E_RUNTIME)`;
  }
  if (!existsSync(BUSYBOX_PATH)) return `${BUSYBOX_PATH} is missing: apt-get install -y busybox-static`;
  const missing = [RUNC, "unshare", "nsenter", "tar", "python3", ...programs].filter((p) => which(p) === null);
  if (missing.length) return `not installed: ${missing.join(", ")} (apt-get install -y podman docker.io containerd; see .ci/run)`;
  return null;
}

/** A private work directory /var/tmp/nk-e2e-<name>-XXXXXX. */
export function makeWorkDir(name: string): string {
  return mkdtempSync(join(E2E_TMP, `nk-e2e-${name}-`));
}

// ------------------------------------------------------------ running things

export interface CmdResult {
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  argv: string[];
}

export interface CmdOptions {
  timeoutMs?: number;
  /** Bytes for stdin (default: /dev/null). */
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

let outCounter = 0;
let scratch: string | null = null;

function scratchDir(): string {
  if (scratch === null || !existsSync(scratch)) scratch = makeWorkDir("out");
  return scratch;
}

/** Remove the scratch directory cmd() writes outputs to (afterAll). */
export function removeScratch(): void {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
  scratch = null;
}

/**
 * Run a command to completion. Output goes through files, never pipes: a
 * client may leave a long-lived child (conmon, a shim) holding its stdio, and
 * a pipe would keep us waiting for that child.
 */
export function cmd(argv: string[], opts: CmdOptions = {}): CmdResult {
  const dir = scratchDir();
  outCounter += 1;
  const outPath = join(dir, `out-${outCounter}`);
  const errPath = join(dir, `err-${outCounter}`);
  const outFd = openSync(outPath, "w");
  const errFd = openSync(errPath, "w");
  try {
    const r = spawnSync(argv[0]!, argv.slice(1), {
      stdio: [opts.input !== undefined ? "pipe" : "ignore", outFd, errFd],
      input: opts.input,
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      timeout: opts.timeoutMs ?? 60_000,
      killSignal: "SIGKILL",
    });
    const timedOut = (r.error as NodeJS.ErrnoException | undefined)?.code === "ETIMEDOUT";
    let code = r.status ?? -1;
    if (r.status === null && r.signal) code = 128 + (SIGNAL_NUMBERS[r.signal] ?? 0);
    return { code, stdout: readFileSync(outPath, "utf8"), stderr: readFileSync(errPath, "utf8"), timedOut, argv };
  } finally {
    closeSync(outFd);
    closeSync(errFd);
    rmSync(outPath, { force: true });
    rmSync(errPath, { force: true });
  }
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15 };

export function describeCmd(r: CmdResult): string {
  return `${r.argv.join(" ")} -> ${r.code}${r.timedOut ? " (timed out)" : ""}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
}

/** Throw (with the output) unless the command exited 0. */
export function ok(r: CmdResult): CmdResult {
  if (r.code !== 0) throw new Error(`command failed: ${describeCmd(r)}`);
  return r;
}

export interface PtyResult {
  code: number;
  output: string;
  timedOut: boolean;
  waitingFor: string | null;
}

/**
 * Run argv on a fresh pseudo-terminal (test/e2e/pty-run.py): each step waits
 * for `expect` to appear in the output, then types `send`.
 */
export function ptyRun(argv: string[], steps: { expect?: string; send: string }[], timeoutMs = 30_000, env?: NodeJS.ProcessEnv): PtyResult {
  const args = [join(import.meta.dir, "pty-run.py"), "--timeout", String(timeoutMs / 1000)];
  for (const s of steps) {
    if (s.expect !== undefined) args.push("--expect", s.expect);
    args.push("--send", s.send);
  }
  const r = cmd(["python3", ...args, "--", ...argv], { timeoutMs: timeoutMs + 5_000, env });
  try {
    return JSON.parse(r.stdout) as PtyResult;
  } catch {
    throw new Error(`pty-run.py failed: ${describeCmd(r)}`);
  }
}

/**
 * Terminal output as plain lines: CRLF -> LF, escape sequences and NULs
 * dropped, and the "resize pty" complaint ctr and docker log when a process
 * exits before their resize reaches it (a race in the client, either runtime).
 */
export function plainTerminal(text: string): string {
  return text
    .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
    .replace(/\0/g, "")
    .replace(/\r\n/g, "\n")
    .replace(/\r/g, "")
    .split("\n")
    .filter((line) => !/resize pty|failed to resize tty/.test(line))
    .join("\n");
}

/**
 * What the interactive-shell scenarios type at the prompt. The BEGIN line
 * marks where the commands' output starts: the echo of the typed line itself
 * may be redrawn when the client resizes the terminal meanwhile (a race in
 * the client, whatever the runtime).
 */
export const SHELL_INPUT = "echo BEGIN; tty; stty size; echo $((6*7)); exit 3\n";

/** The output after the BEGIN marker line (see SHELL_INPUT), as plain lines. */
export function shellOutput(terminal: string): string {
  const text = plainTerminal(terminal);
  const at = text.indexOf("\nBEGIN\n");
  return at < 0 ? `(no BEGIN line in: ${JSON.stringify(text)})` : text.slice(at + "\nBEGIN\n".length);
}

export function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Poll fn until it returns a value (not undefined/false); throw after timeoutMs naming `what`. */
export function waitFor<T>(what: string, fn: () => T | undefined | false, timeoutMs = 20_000, stepMs = 50): T {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    sleepMs(stepMs);
  }
}

// ------------------------------------------------------------ argv logging

/**
 * Write <dir>/<name>: a runtime wrapper that logs each call's argv to
 * logFile (JSON lines, scripts/argv-logger.sh) and execs `real`. The name
 * matters to podman: it decides from the runtime's name whether to pass
 * --log-format=json (containers.conf runtime_supports_json).
 */
export function writeArgvWrapper(dir: string, name: string, real: string, logFile: string): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, name);
  const logger = join(repoRoot(), "scripts", "argv-logger.sh");
  writeFileSync(path, `#!/bin/sh\nNK_ARGV_LOG='${logFile}' NK_ARGV_REAL='${real}' exec '${logger}' "$@"\n`);
  chmodSync(path, 0o755);
  return path;
}

export interface ArgvCall {
  time: number;
  pid: number;
  parent: string;
  argv: string[];
}

export function readArgvLog(file: string): ArgvCall[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as ArgvCall)
    .filter((c) => Array.isArray(c.argv));
}

const VALUE_FLAGS = new Set(["--root", "--log", "--log-format", "--bundle", "-b", "--pid-file", "--console-socket", "--process", "-p", "--format", "-f", "--resources", "-r", "--preserve-fds"]);

/**
 * A call's shape with paths, ids and values generalised, for comparing how a
 * client drives two runtimes and for docs/clients.md:
 * `--root R --log F --log-format json create --bundle B --pid-file F ID`.
 */
export function callShape(argv: string[]): string {
  const out: string[] = [];
  let verbSeen = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith("-")) {
      const [flag, inline] = a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
      if (inline !== undefined) {
        out.push(`${flag}=${placeholder(flag, inline)}`);
      } else if (VALUE_FLAGS.has(flag) && i + 1 < argv.length) {
        out.push(flag, placeholder(flag, argv[++i]!));
      } else {
        out.push(flag);
      }
      continue;
    }
    if (!verbSeen) {
      out.push(a);
      verbSeen = true;
      continue;
    }
    out.push(/^\d+$/.test(a) || /^SIG/.test(a) ? a : "ID");
  }
  return out.join(" ");
}

function placeholder(flag: string, value: string): string {
  if (flag === "--log-format" || flag === "--format" || flag === "-f" || flag === "--preserve-fds") return value;
  if (value === "-") return "-";
  const letters: Record<string, string> = { "--root": "R", "--log": "F", "--bundle": "B", "-b": "B", "--pid-file": "F", "--console-socket": "S", "--process": "F", "-p": "F", "--resources": "F", "-r": "F" };
  return letters[flag] ?? "V";
}

/** The distinct call shapes in a log, in first-seen order. */
export function callShapes(file: string): string[] {
  return [...new Set(readArgvLog(file).map((c) => callShape(c.argv)))];
}

// ------------------------------------------------------------- images

/** A tar of the busybox test rootfs (test/helpers/rootfs.ts), for podman/docker import. */
export function busyboxTar(dir: string): string {
  const path = join(dir, "busybox-rootfs.tar");
  if (!existsSync(path)) ok(cmd(["tar", "--numeric-owner", "-C", ensureBusyboxRootfs(), "-cf", path, "."]));
  return path;
}

function sha256(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * A docker-archive (the `docker save` format: manifest.json, the image config
 * and one layer) of the busybox rootfs, made by hand so the containerd tests
 * need no docker. `ctr images import` takes it.
 */
export function busyboxDockerArchive(dir: string, repoTag: string): string {
  const layerPath = busyboxTar(dir);
  const layer = readFileSync(layerPath);
  const diffId = sha256(layer);
  const config = JSON.stringify({
    architecture: "amd64",
    os: "linux",
    created: "2024-01-01T00:00:00Z",
    config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["sh"], WorkingDir: "/" },
    rootfs: { type: "layers", diff_ids: [`sha256:${diffId}`] },
    history: [{ created: "2024-01-01T00:00:00Z", created_by: "nano-kata e2e: busybox-static rootfs" }],
  });
  const configName = `${sha256(config)}.json`;
  const staging = join(dir, "docker-archive");
  mkdirSync(join(staging, diffId), { recursive: true });
  writeFileSync(join(staging, configName), config);
  ok(cmd(["cp", layerPath, join(staging, diffId, "layer.tar")]));
  writeFileSync(join(staging, "manifest.json"), JSON.stringify([{ Config: configName, RepoTags: [repoTag], Layers: [`${diffId}/layer.tar`] }]));
  const out = join(dir, "busybox-docker-archive.tar");
  ok(cmd(["tar", "-C", staging, "-cf", out, "."]));
  rmSync(staging, { recursive: true, force: true });
  return out;
}

// ------------------------------------------------------------- processes

function readProc(pid: number, file: string): string | null {
  try {
    return readFileSync(`/proc/${pid}/${file}`, "utf8");
  } catch {
    return null;
  }
}

function allPids(): number[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .map(Number);
}

function isGone(pid: number): boolean {
  const stat = readProc(pid, "stat");
  return stat === null || /\) [ZX] /.test(stat);
}

/** Live processes (not us) whose command line mentions `text` (e.g. a work directory). */
export function pidsMentioning(text: string): number[] {
  return allPids().filter((pid) => pid !== process.pid && !isGone(pid) && (readProc(pid, "cmdline") ?? "").includes(text));
}

/** Children of pid (by /proc/<n>/stat ppid). */
export function childPids(parent: number): number[] {
  return allPids().filter((pid) => {
    const stat = readProc(pid, "stat");
    if (!stat) return false;
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[1]) === parent;
  });
}

/** SIGTERM (or `signal`) each pid, wait up to timeoutMs for all to go, SIGKILL what remains. Returns the pids that needed SIGKILL. */
export async function stopPids(pids: number[], timeoutMs = 15_000, signal: NodeJS.Signals = "SIGTERM"): Promise<number[]> {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      /* gone */
    }
  }
  const deadline = Date.now() + timeoutMs;
  while (pids.some((p) => !isGone(p)) && Date.now() < deadline) await Bun.sleep(50);
  const killed = pids.filter((p) => !isGone(p));
  for (const pid of killed) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  const hard = Date.now() + 5_000;
  while (killed.some((p) => !isGone(p)) && Date.now() < hard) await Bun.sleep(20);
  return killed;
}

// -------------------------------------------------------------- daemons

export interface Daemon {
  name: string;
  pid: number;
  logPath: string;
  child: ChildProcess;
  /** Stop the daemon by pid (SIGTERM, then SIGKILL); returns problems found on the way. */
  stop(): Promise<string[]>;
}

export function tailFile(path: string, lines = 30): string {
  try {
    return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/**
 * Start a daemon (stdout/stderr to logPath) and wait until ready() is true.
 * Throws after timeoutMs, or as soon as the daemon exits, with its log tail.
 */
export async function startDaemon(name: string, argv: string[], logPath: string, ready: () => boolean, timeoutMs = 30_000): Promise<Daemon> {
  const logFd = openSync(logPath, "a");
  let exited: string | null = null;
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", logFd, logFd], env: process.env });
  closeSync(logFd);
  child.on("exit", (code, signal) => {
    exited = signal ? `killed by ${signal}` : `exit code ${code}`;
  });
  child.on("error", (e) => {
    exited = `could not start: ${e.message}`;
  });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited !== null) throw new Error(`${name} (${argv.join(" ")}) stopped before it was ready (${exited}); its log ${logPath}:\n${tailFile(logPath)}`);
    let isReady = false;
    try {
      isReady = ready();
    } catch {
      isReady = false;
    }
    if (isReady) break;
    if (Date.now() > deadline) {
      if (child.pid) await stopPids([child.pid], 5_000);
      throw new Error(`${name} was not ready after ${timeoutMs} ms (${argv.join(" ")}); its log ${logPath}:\n${tailFile(logPath)}`);
    }
    await Bun.sleep(100);
  }
  const pid = child.pid!;
  return {
    name,
    pid,
    logPath,
    child,
    async stop() {
      const problems: string[] = [];
      if (exited === null) {
        const killed = await stopPids([pid], 20_000);
        if (killed.length) problems.push(`${name} (pid ${pid}) ignored SIGTERM for 20 s and was killed`);
      }
      return problems;
    },
  };
}

/**
 * A process that holds a private network namespace open (`unshare --net
 * sleep`): commands run in it through nsenter, daemons are started in it, and
 * everything they build there (bridges, veths, iptables rules, sysctls) goes
 * away with it.
 */
export interface NetnsHolder {
  pid: number;
  nsPath: string;
  /** argv prefix to run a command inside the namespace. */
  enter: string[];
  stop(): Promise<void>;
}

export async function startNetnsHolder(): Promise<NetnsHolder> {
  const child = spawn("unshare", ["--net", "--", "sleep", "86400"], { stdio: "ignore" });
  const pid = child.pid!;
  // unshare execs sleep in the new namespace: wait until the pid's netns differs from ours.
  const ours = readlinkSafe("/proc/self/ns/net");
  await waitForAsync("unshare --net to create a namespace", () => {
    const theirs = readlinkSafe(`/proc/${pid}/ns/net`);
    return theirs !== null && theirs !== ours && (readProc(pid, "comm") ?? "").trim() === "sleep";
  });
  const nsPath = `/proc/${pid}/ns/net`;
  ok(cmd(["nsenter", `--net=${nsPath}`, "--", "ip", "link", "set", "lo", "up"]));
  return {
    pid,
    nsPath,
    enter: ["nsenter", `--net=${nsPath}`, "--"],
    async stop() {
      await stopPids([pid], 5_000);
    },
  };
}

function readlinkSafe(path: string): string | null {
  try {
    return readlinkSync(path);
  } catch {
    return null;
  }
}

async function waitForAsync(what: string, fn: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(20);
  }
}

// ------------------------------------------------------------- host state

/** Top-level cgroup directory names per hierarchy (snapshot before a client creates its parents). */
export function cgroupTopLevel(): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const h of cgroupHierarchies()) {
    const names = new Set<string>();
    for (const e of readdirSync(h, { withFileTypes: true })) if (e.isDirectory()) names.add(e.name);
    out.set(h, names);
  }
  return out;
}

function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => join(dir, e.name));
  } catch {
    return [];
  }
}

/**
 * Container cgroups still present under a client's parent (e.g. /libpod_parent,
 * /docker, /default) in any hierarchy, apart from the client's own (`allowed`
 * names, e.g. podman's "conmon").
 */
export function leftoverCgroups(parent: string, allowed: string[] = []): string[] {
  const found: string[] = [];
  for (const h of cgroupHierarchies()) {
    for (const dir of subdirs(join(h, parent))) {
      if (!allowed.includes(dir.slice(dir.lastIndexOf("/") + 1))) found.push(dir);
    }
  }
  return found;
}

function rmdirTree(dir: string): void {
  for (const sub of subdirs(dir)) rmdirTree(sub);
  rmdirSync(dir);
}

/**
 * Remove the cgroup parents a client created (those of `names` that were not
 * in `before`), deepest first with rmdir (which fails if a process is still
 * in one). Returns what could not be removed.
 */
export function removeNewCgroupParents(before: Map<string, Set<string>>, names: string[]): string[] {
  const problems: string[] = [];
  for (const h of cgroupHierarchies()) {
    for (const name of names) {
      const dir = join(h, name);
      if (before.get(h)?.has(name) || !existsSync(dir)) continue;
      let lastError = "";
      const deadline = Date.now() + 3_000;
      for (;;) {
        try {
          rmdirTree(dir);
          lastError = "";
          break;
        } catch (e) {
          lastError = (e as Error).message;
          if (Date.now() > deadline) break;
          sleepMs(50);
        }
      }
      if (lastError) problems.push(`cgroup ${dir} could not be removed: ${lastError}`);
    }
  }
  return problems;
}

/** Mount points (from /proc/self/mounts) under or naming `text`. */
export function mountsMentioning(text: string): string[] {
  return readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .filter((l) => l.includes(text))
    .map((l) => l.split(" ")[1]!.replace(/\\040/g, " "));
}

/** Unmount (lazily, deepest first) whatever is still mounted under `dir`; returns what was found. */
export function unmountUnder(dir: string): string[] {
  const found = mountsMentioning(dir);
  for (const target of [...found].sort((a, b) => b.length - a.length)) cmd(["umount", "-l", target]);
  return found;
}

/**
 * The final sweep for a client's work directory: stop processes that still
 * mention it, unmount what is mounted under it, then remove it. Returns the
 * problems found (each one a leak the test reports).
 */
export async function sweepWorkDir(dir: string): Promise<string[]> {
  const problems: string[] = [];
  const stray = pidsMentioning(dir);
  if (stray.length) {
    problems.push(`processes still running from ${dir}: ${stray.map((p) => `${p} (${(readProc(p, "cmdline") ?? "").replace(/\0/g, " ").trim().slice(0, 120)})`).join(", ")}`);
    await stopPids(stray, 5_000);
  }
  const mounts = unmountUnder(dir);
  if (mounts.length) problems.push(`mounts left under ${dir}: ${mounts.join(", ")}`);
  rmSync(dir, { recursive: true, force: true });
  return problems;
}

// ------------------------------------------------------------- comparison

/** Replace what legitimately differs between two runs (ids, pids, times, addresses). */
export function normalize(text: string, extra: [RegExp, string][] = []): string {
  let out = text;
  for (const [re, to] of extra) out = out.replace(re, to);
  return out
    .replace(/\b[0-9a-f]{64}\b/g, "<id>")
    .replace(/\b[0-9a-f]{12}\b/g, "<id12>");
}

// ------------------------------------------------------------- containerd

/**
 * What containerd 1.6 creates outside its configured root and state: the
 * shim socket directory /run/containerd/s (fixed in the shim), and the
 * default runc root /run/containerd/runc/<namespace>, which the shim's
 * cleanup of a failed create uses whatever --runc-root said. ctr's default
 * fifo directory is avoided with --fifo-dir.
 */
export function containerdHostPaths(namespace: string): string[] {
  return ["/run/containerd", "/run/containerd/s", "/run/containerd/runc", `/run/containerd/runc/${namespace}`];
}

export interface Containerd extends Daemon {
  address: string;
}

/**
 * containerd with everything private under dir/containerd: root, state, the
 * gRPC/ttrpc sockets, and the "opt" plugin's directory (default /opt/containerd).
 * No CRI plugin. `enter` runs it inside a network namespace.
 */
export async function startContainerd(dir: string, enter: string[] = []): Promise<Containerd> {
  const base = join(dir, "containerd");
  mkdirSync(base, { recursive: true });
  const address = join(base, "containerd.sock");
  const config = join(base, "config.toml");
  writeFileSync(
    config,
    `version = 2
root = "${join(base, "root")}"
state = "${join(base, "state")}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "${address}"

[ttrpc]
  address = "${address}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${join(base, "opt")}"
`,
  );
  const daemon = await startDaemon(
    "containerd",
    [...enter, "containerd", "--config", config],
    join(base, "containerd.log"),
    () => existsSync(address) && cmd(["ctr", "--address", address, "version"], { timeoutMs: 10_000 }).code === 0,
    60_000,
  );
  return { ...daemon, address };
}

// ------------------------------------------------------ host paths clients create

/**
 * What podman creates outside --root/--runroot/tmp_dir: the /run/netns bind
 * mount for network namespaces (default network), CNI's IPAM state, and
 * containers/image's blob-info cache (written by `podman import`).
 */
export const PODMAN_HOST_PATHS = [
  "/run/netns",
  "/var/lib/cni",
  "/var/lib/cni/networks",
  "/var/lib/cni/networks/podman",
  "/var/lib/cni/networks/podman/lock",
  "/var/lib/cni/networks/podman/last_reserved_ip.0",
  "/var/lib/cni/results",
  "/var/lib/containers",
  "/var/lib/containers/cache",
  "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
];

/** What dockerd creates outside its data and exec roots (its plugin socket directory). */
export const DOCKER_HOST_PATHS = ["/run/docker", "/run/docker/plugins"];

function isMountPoint(path: string): boolean {
  return readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .some((l) => l.split(" ")[1] === path);
}

/**
 * Paths outside the private work directory that a client creates by itself
 * (hard-coded in it, e.g. podman's /run/netns bind mount and CNI's
 * /var/lib/cni, dockerd's /run/docker/plugins). Snapshot them before the
 * client runs; cleanup() removes those that are new (unmounting a new mount
 * point first, rmdir for directories, so a directory with something left in
 * it is reported, not removed).
 */
export class HostPaths {
  private readonly existed: Set<string>;
  private readonly mounted: Set<string>;

  constructor(private readonly paths: string[]) {
    this.existed = new Set(paths.filter((p) => existsSync(p)));
    this.mounted = new Set(paths.filter((p) => isMountPoint(p)));
  }

  cleanup(): string[] {
    const problems: string[] = [];
    const deepestFirst = [...this.paths].sort((a, b) => b.split("/").length - a.split("/").length);
    for (const path of deepestFirst) {
      if (!this.mounted.has(path) && isMountPoint(path)) cmd(["umount", path]);
      if (this.existed.has(path) || !existsSync(path)) continue;
      try {
        if (statSync(path).isDirectory()) rmdirSync(path);
        else rmSync(path);
      } catch (e) {
        problems.push(`${path} (created by the client) could not be removed: ${(e as Error).message}: ${subdirs(path).concat(readdirSync(path)).join(", ")}`);
      }
    }
    return problems;
  }
}
