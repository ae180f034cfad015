/**
 * A private containerd for the shim's end-to-end tests: its own root, state,
 * sockets and config (CRI plugin off unless `criConfig` is given), bin/
 * first on its PATH so that `--runtime io.containerd.nanokata.v2` finds
 * bin/containerd-shim-nanokata-v2,
 * and a busybox image made here as an OCI archive (layer, config, manifest
 * and index written by hand) and imported with `ctr images import`.
 *
 * Everything lives under one temporary directory; stop() ends the daemon by
 * its pid, unmounts what containerd mounted there and removes the directory.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ensureBusyboxRootfs, repoRoot } from "../helpers/rootfs.ts";

export const IMAGE = "docker.io/nanokata/busybox:test";

export interface CtrResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Containerd {
  dir: string;
  address: string;
  ttrpcAddress: string;
  pid: number;
  /** Where the shims' own state goes ($NK_SHIM_ROOT given to containerd). */
  shimRoot: string;
  socketDir: string;
  logPath: string;
  ctr(args: string[], opts?: { input?: string; timeoutMs?: number; env?: Record<string, string> }): CtrResult;
  /** ctr started in the background (for `ctr events`). */
  ctrSpawn(args: string[]): ChildProcess;
  stop(): Promise<void>;
}

export function have(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

/** Whether this machine can run the e2e suite (root, containerd, ctr, busybox). */
export function containerdAvailable(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root";
  for (const c of ["containerd", "ctr", "tar"]) if (!have(c)) return `${c} is not installed (apt-get install -y containerd)`;
  if (!existsSync("/bin/busybox")) return "busybox-static is not installed";
  return undefined;
}

function sha256(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** What goes into a hand-made single-layer image. */
export interface ImageSource {
  /** A directory whose tree becomes the one layer. */
  rootfs: string;
  /** The image name (annotation io.containerd.image.name). */
  name: string;
  /** The image config's `config` object (Env, Entrypoint, Cmd, WorkingDir). */
  config: Record<string, unknown>;
  /** The archive file name inside `dir`. */
  file: string;
}

/** An OCI image layout tar (layer, config, manifest and index written by hand) of one directory tree. */
export function buildOciArchive(dir: string, image: ImageSource): string {
  const work = join(dir, `${image.file}.d`);
  mkdirSync(join(work, "blobs", "sha256"), { recursive: true });
  const layerPath = join(dir, `${image.file}.layer`);
  const tar = spawnSync("tar", ["--numeric-owner", "--owner=0", "--group=0", "-C", image.rootfs, "-cf", layerPath, "."], { encoding: "utf8" });
  if (tar.status !== 0) throw new Error(`tar: ${tar.stderr}`);
  const layer = readFileSync(layerPath);
  const layerDigest = sha256(layer);
  writeFileSync(join(work, "blobs", "sha256", layerDigest), layer);
  rmSync(layerPath);
  const config = JSON.stringify({
    architecture: process.arch === "arm64" ? "arm64" : "amd64",
    os: "linux",
    config: image.config,
    rootfs: { type: "layers", diff_ids: [`sha256:${layerDigest}`] },
  });
  const configDigest = sha256(config);
  writeFileSync(join(work, "blobs", "sha256", configDigest), config);
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${configDigest}`, size: Buffer.byteLength(config) },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: `sha256:${layerDigest}`, size: layer.length }],
  });
  const manifestDigest = sha256(manifest);
  writeFileSync(join(work, "blobs", "sha256", manifestDigest), manifest);
  writeFileSync(join(work, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  const tag = image.name.slice(image.name.lastIndexOf(":") + 1);
  writeFileSync(
    join(work, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          digest: `sha256:${manifestDigest}`,
          size: Buffer.byteLength(manifest),
          annotations: { "io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag },
        },
      ],
    }),
  );
  const archive = join(dir, image.file);
  const t = spawnSync("tar", ["-C", work, "-cf", archive, "oci-layout", "index.json", "blobs"], { encoding: "utf8" });
  if (t.status !== 0) throw new Error(`tar: ${t.stderr}`);
  rmSync(work, { recursive: true, force: true });
  return archive;
}

/** The busybox test rootfs as an OCI archive named IMAGE. */
export function buildImageArchive(dir: string): string {
  return buildOciArchive(dir, {
    rootfs: ensureBusyboxRootfs(),
    name: IMAGE,
    config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["sh"], WorkingDir: "/" },
    file: "busybox-oci.tar",
  });
}

async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

/** Mount points under dir, deepest first. */
function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const point = line.split(" ")[4];
    if (point && (point === dir || point.startsWith(dir + "/"))) out.push(point.replace(/\\040/g, " "));
  }
  return out.sort((a, b) => b.length - a.length);
}

export interface StartOptions {
  /** Extra environment for the daemon (and so for the shims it starts). */
  env?: Record<string, string>;
  /**
   * A shim command other than bin/containerd-shim-nanokata-v2: written as a
   * script named containerd-shim-nanokata-v2 in a directory first on the
   * daemon's PATH.
   */
  shimScript?: string;
  /**
   * Install the shim as the README says: a symlink to
   * bin/containerd-shim-nanokata-v2 in a directory first on the daemon's
   * PATH (instead of putting the checkout's bin/ there).
   */
  shimLink?: boolean;
  /**
   * Configuration of the CRI plugin, given the daemon's private directory: a
   * TOML fragment appended to the config. When absent the CRI plugin is
   * disabled.
   */
  criConfig?: (dir: string) => string;
  /**
   * A command prefix that puts the daemon in another network namespace
   * (NetnsHolder.enter): the CNI networks of its pods then live there, never
   * in the host's.
   */
  enter?: string[];
}

export async function startContainerd(opts: StartOptions = {}): Promise<Containerd> {
  const dir = mkdtempSync("/tmp/nk-ctrd-");
  const root = join(dir, "root");
  const state = join(dir, "state");
  const address = join(dir, "containerd.sock");
  const shimRoot = join(dir, "shim-state");
  const socketDir = join(dir, "s");
  mkdirSync(root, { recursive: true });
  mkdirSync(state, { recursive: true });
  const config = [
    "version = 2",
    `root = "${root}"`,
    `state = "${state}"`,
    ...(opts.criConfig ? [] : ['disabled_plugins = ["io.containerd.grpc.v1.cri"]']),
    "[grpc]",
    `  address = "${address}"`,
    "[ttrpc]",
    `  address = "${address}.ttrpc"`,
    "[debug]",
    '  level = "debug"',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = "${join(dir, "opt")}"`,
    opts.criConfig?.(dir) ?? "",
    "",
  ].join("\n");
  writeFileSync(join(dir, "config.toml"), config);
  const logPath = join(dir, "containerd.log");
  const logFd = openSync(logPath, "a");
  let bin = join(repoRoot(), "bin");
  if (opts.shimScript) {
    bin = join(dir, "bin");
    mkdirSync(bin);
    writeFileSync(join(bin, "containerd-shim-nanokata-v2"), opts.shimScript, { mode: 0o755 });
  } else if (opts.shimLink) {
    bin = join(dir, "bin");
    mkdirSync(bin);
    for (const shim of ["containerd-shim-nanokata-v2", "containerd-shim-nanokata-vm-v2"]) symlinkSync(join(repoRoot(), "bin", shim), join(bin, shim));
  }
  const argv = [...(opts.enter ?? []), "containerd", "--config", join(dir, "config.toml")];
  const daemon = spawn(argv[0]!, argv.slice(1), {
    stdio: ["ignore", logFd, logFd],
    env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin"}`, NK_SHIM_ROOT: shimRoot, NK_SHIM_SOCKET_DIR: socketDir, ...opts.env },
  });
  closeSync(logFd);
  const pid = daemon.pid!;
  const exited = new Promise<void>((resolve) => daemon.on("exit", () => resolve()));

  const ctr = (args: string[], o: { input?: string; timeoutMs?: number; env?: Record<string, string> } = {}): CtrResult => {
    const r = spawnSync("ctr", ["--address", address, ...args], {
      input: o.input ?? "",
      encoding: "utf8",
      timeout: o.timeoutMs ?? 60_000,
      env: { ...process.env, ...o.env },
    });
    return { code: r.status ?? (r.signal ? 128 : -1), stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
  };

  const handle: Containerd = {
    dir,
    address,
    ttrpcAddress: `${address}.ttrpc`,
    pid,
    shimRoot,
    socketDir,
    logPath,
    ctr,
    ctrSpawn: (args) => spawn("ctr", ["--address", address, ...args], { stdio: ["ignore", "pipe", "pipe"] }),
    async stop() {
      try {
        process.kill(pid, "SIGTERM");
      } catch {}
      await Promise.race([exited, Bun.sleep(10_000)]);
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
      for (const point of mountsUnder(dir)) spawnSync("umount", ["-l", point]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitFor(() => {
      if (daemon.exitCode !== null) throw new Error(`containerd exited ${daemon.exitCode}: ${readFileSync(logPath, "utf8").slice(-2000)}`);
      return existsSync(address) && ctr(["version"], { timeoutMs: 5000 }).code === 0;
    }, 30_000, "containerd to answer");
    const archive = buildImageArchive(dir);
    const imp = ctr(["images", "import", archive], { timeoutMs: 120_000 });
    if (imp.code !== 0) throw new Error(`ctr images import: ${imp.stderr}${imp.stdout}`);
    rmSync(archive);
  } catch (e) {
    await handle.stop();
    throw e;
  }
  return handle;
}

/** Processes whose command line mentions the shim (the long-running shims). */
export function shimProcesses(): { pid: number; cmdline: string }[] {
  const out: { pid: number; cmdline: string }[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").join(" ");
      if (cmdline.includes("containerd-shim-nanokata-v2") || cmdline.includes("src/shim/main.ts")) out.push({ pid: Number(entry), cmdline });
    } catch {}
  }
  return out;
}

export function isDirEmpty(path: string): boolean {
  try {
    return statSync(path).isDirectory() ? readdirSync(path).length === 0 : false;
  } catch {
    return true;
  }
}

/** A task's status as `ctr task ls` shows it (RUNNING, STOPPED, PAUSED, ...), undefined when not listed. */
export function taskStatusOf(c: Containerd, taskId: string): string | undefined {
  for (const line of c.ctr(["task", "ls"]).stdout.split("\n")) {
    const [tid, , status] = line.trim().split(/\s+/);
    if (tid === taskId) return status;
  }
  return undefined;
}

/** Poll until check() holds; throws after ms. */
export async function until(check: () => boolean, ms = 10_000, poll = 25): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await Bun.sleep(poll);
  }
}
