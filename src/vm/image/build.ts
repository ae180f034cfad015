/**
 * `nk-runtime vm build-image`: the guest artefacts, built from Debian packages
 * into a cache directory (never committed) and rebuilt only when an input
 * changes. Inputs: the cloud kernel package (name, version, SHA256 from apt's
 * metadata), the agent binary, busybox, the module list and this builder's
 * layout version; stamp.json records them.
 *
 *   <cache>/vmlinux          the ELF kernel (PVH entry), extracted from the bzImage
 *   <cache>/initramfs.cpio   /init = nk-agent, /modules/NN-name.ko, busybox (for rdinit=/bin/sh debugging)
 *   <cache>/kernel.json      the kernel stage's inputs and results (release, modules in load order)
 *   <cache>/modules/         the .ko files the guest needs, dependencies first
 *   <cache>/stamp.json       every input and output: what `vm check` compares
 */
import { spawnSync } from "node:child_process";
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { flock, LOCK_EX } from "../../util/libc.ts";
import { agentBinaryPath, BUSYBOX, GUEST_MODULES, kernelPackageName } from "../config.ts";
import { extractVmlinux } from "./bzimage.ts";
import { writeCpio, type CpioEntry } from "./cpio.ts";
import { resolveModules } from "./modules.ts";

/** Bump when the artefacts' layout or content rules change: forces a rebuild. */
const LAYOUT = 1;

export class ImageError extends Error {}

export interface KernelPackage {
  name: string;
  version: string;
  sha256: string;
}

export interface ImageInputs {
  layout: number;
  kernel: KernelPackage;
  agentSha256: string;
  busyboxSha256: string;
  modules: string[];
}

export interface KernelStamp {
  kernel: KernelPackage;
  wanted: string[];
  release: string;
  /** Module names in load order (the file names under modules/ carry the order). */
  modules: string[];
  builtin: string[];
}

export interface ImageStamp {
  inputs: ImageInputs;
  release: string;
  modules: string[];
  vmlinuxBytes: number;
  initramfsBytes: number;
  builtAt: string;
}

export interface GuestImage {
  dir: string;
  vmlinux: string;
  initramfs: string;
  stamp: ImageStamp;
}

export function imagePaths(dir: string) {
  return {
    vmlinux: join(dir, "vmlinux"),
    initramfs: join(dir, "initramfs.cpio"),
    stamp: join(dir, "stamp.json"),
    kernelStamp: join(dir, "kernel.json"),
    modules: join(dir, "modules"),
    lock: join(dir, ".lock"),
  };
}

export function sha256File(path: string): string {
  const hasher = new Bun.CryptoHasher("sha256");
  hasher.update(readFileSync(path));
  return hasher.digest("hex");
}

function run(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (r.error) throw new ImageError(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new ImageError(`${cmd} ${args.join(" ")} failed (exit ${r.status}): ${(r.stderr || r.stdout).trim().split("\n").slice(-3).join(" | ")}`);
  return r.stdout;
}

/** The concrete kernel package behind a meta-package (or the package itself), from apt's local lists. */
export function resolveKernelPackage(name = kernelPackageName()): KernelPackage {
  let concrete = name;
  const depends = run("apt-cache", ["depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", name]);
  const dep = /^\s*Depends:\s*(linux-image-\S+)/m.exec(depends);
  if (dep && !name.match(/^linux-image-\d/)) concrete = dep[1]!;
  const show = run("apt-cache", ["show", "--no-all-versions", concrete]);
  const field = (f: string) => new RegExp(`^${f}: (.+)$`, "m").exec(show)?.[1]?.trim();
  const version = field("Version");
  const sha256 = field("SHA256");
  if (!version || !sha256) throw new ImageError(`apt-cache show ${concrete}: no Version/SHA256 (run apt-get update?)`);
  return { name: concrete, version, sha256 };
}

export function currentInputs(kernel: KernelPackage = resolveKernelPackage()): ImageInputs {
  const agent = agentBinaryPath();
  if (!existsSync(agent)) throw new ImageError(`the guest agent ${agent} is missing: build it with \`npm run build\` (make -C native)`);
  if (!existsSync(BUSYBOX)) throw new ImageError(`${BUSYBOX} is missing: apt-get install busybox-static`);
  return { layout: LAYOUT, kernel, agentSha256: sha256File(agent), busyboxSha256: sha256File(BUSYBOX), modules: [...GUEST_MODULES] };
}

function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return undefined;
  }
}

export function readStamp(dir: string): ImageStamp | undefined {
  return readJson<ImageStamp>(imagePaths(dir).stamp);
}

/** The built image, if its files are all there (whether it is stale is `imageStatus`'s question). */
export function findImage(dir: string): GuestImage | undefined {
  const p = imagePaths(dir);
  const stamp = readStamp(dir);
  if (!stamp || !existsSync(p.vmlinux) || !existsSync(p.initramfs)) return undefined;
  return { dir, vmlinux: p.vmlinux, initramfs: p.initramfs, stamp };
}

export type ImageState = { state: "missing" | "stale" | "current"; reason: string; image?: GuestImage };

/** Compare the built image with what would be built now. */
export function imageStatus(dir: string, inputs: ImageInputs): ImageState {
  const image = findImage(dir);
  if (!image) return { state: "missing", reason: `no guest image in ${dir} (run \`nk-runtime vm build-image\`)` };
  const changed = changedInputs(image.stamp.inputs, inputs);
  if (changed.length) return { state: "stale", reason: `changed since the build: ${changed.join(", ")}`, image };
  return { state: "current", reason: `built ${image.stamp.builtAt} from ${inputs.kernel.name} ${inputs.kernel.version}`, image };
}

export function changedInputs(old: ImageInputs, now: ImageInputs): string[] {
  const changed: string[] = [];
  if (old.layout !== now.layout) changed.push("builder layout");
  if (old.kernel.name !== now.kernel.name || old.kernel.version !== now.kernel.version || old.kernel.sha256 !== now.kernel.sha256) {
    changed.push(`kernel (${old.kernel.name} ${old.kernel.version} -> ${now.kernel.name} ${now.kernel.version})`);
  }
  if (old.agentSha256 !== now.agentSha256) changed.push("agent binary");
  if (old.busyboxSha256 !== now.busyboxSha256) changed.push("busybox");
  if (old.modules.join(",") !== now.modules.join(",")) changed.push("module list");
  return changed;
}

export interface BuildOptions {
  dir: string;
  force?: boolean;
  progress?: (line: string) => void;
}

/** Build (or reuse) the guest image; serialised across processes by a lock in the cache dir. */
export function buildImage(opts: BuildOptions): GuestImage & { rebuilt: boolean } {
  const say = opts.progress ?? (() => {});
  const p = imagePaths(opts.dir);
  mkdirSync(opts.dir, { recursive: true });
  const lockFd = openSync(p.lock, "w");
  try {
    flock(lockFd, LOCK_EX);
    say(`resolving ${kernelPackageName()} with apt-cache`);
    const inputs = currentInputs();
    const status = imageStatus(opts.dir, inputs);
    if (status.state === "current" && !opts.force) {
      say(`up to date: ${status.reason}`);
      return { ...status.image!, rebuilt: false };
    }
    if (status.state === "stale") say(`rebuilding: ${status.reason}`);
    const kernel = ensureKernel(opts.dir, inputs, Boolean(opts.force), say);
    say(`writing initramfs: nk-agent as /init, ${kernel.modules.length} modules, busybox`);
    const initramfsBytes = writeInitramfs(opts.dir, kernel);
    const stamp: ImageStamp = {
      inputs,
      release: kernel.release,
      modules: kernel.modules,
      vmlinuxBytes: statSync(p.vmlinux).size,
      initramfsBytes,
      builtAt: new Date().toISOString(),
    };
    writeAtomic(p.stamp, JSON.stringify(stamp, null, 2) + "\n");
    say(`done: ${p.vmlinux} (${mib(stamp.vmlinuxBytes)}, ${kernel.release}), ${p.initramfs} (${mib(initramfsBytes)})`);
    return { dir: opts.dir, vmlinux: p.vmlinux, initramfs: p.initramfs, stamp, rebuilt: true };
  } finally {
    closeSync(lockFd);
  }
}

const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;

function writeAtomic(path: string, data: string | Uint8Array): void {
  writeFileSync(`${path}.tmp`, data);
  renameSync(`${path}.tmp`, path);
}

/** The kernel stage: download, unpack, extract vmlinux, pick the modules. Skipped when the package is unchanged. */
function ensureKernel(dir: string, inputs: ImageInputs, force: boolean, say: (l: string) => void): KernelStamp {
  const p = imagePaths(dir);
  const old = readJson<KernelStamp>(p.kernelStamp);
  if (
    !force &&
    old &&
    JSON.stringify(old.kernel) === JSON.stringify(inputs.kernel) &&
    old.wanted.join(",") === inputs.modules.join(",") &&
    existsSync(p.vmlinux) &&
    existsSync(p.modules)
  ) {
    say(`kernel ${old.release} unchanged`);
    return old;
  }
  const work = mkdtempSync(join(dir, ".build-"));
  try {
    const { name, version } = inputs.kernel;
    say(`downloading ${name} ${version} (apt-get download)`);
    run("apt-get", ["download", "-q", "-o", "APT::Sandbox::User=root", `${name}=${version}`], work);
    const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
    if (!deb) throw new ImageError(`apt-get download ${name}=${version} left no .deb`);
    const debPath = join(work, deb);
    if (sha256File(debPath) !== inputs.kernel.sha256) throw new ImageError(`${deb}: SHA256 differs from apt's metadata`);
    say(`unpacking ${deb} (dpkg-deb -x)`);
    const tree = join(work, "tree");
    run("dpkg-deb", ["-x", debPath, tree]);
    const vmlinuz = readdirSync(join(tree, "boot")).find((f) => f.startsWith("vmlinuz-"));
    if (!vmlinuz) throw new ImageError(`${deb} has no /boot/vmlinuz-*`);
    const release = vmlinuz.slice("vmlinuz-".length);
    say(`extracting vmlinux from ${vmlinuz} (LZ4 payload -> ELF)`);
    const elf = extractVmlinux(readFileSync(join(tree, "boot", vmlinuz)));
    const { load, builtin } = resolveModules(join(tree, "lib", "modules", release), inputs.modules);
    say(`modules: ${load.map((m) => m.name).join(" ")}${builtin.length ? `; built in: ${builtin.join(" ")}` : ""}`);
    const modulesNew = join(work, "modules");
    mkdirSync(modulesNew);
    load.forEach((m, i) => copyFileSync(m.path, join(modulesNew, `${String(i).padStart(2, "0")}-${m.name}.ko`)));
    writeAtomic(p.vmlinux, elf);
    rmSync(p.modules, { recursive: true, force: true });
    renameSync(modulesNew, p.modules);
    const stamp: KernelStamp = { kernel: inputs.kernel, wanted: [...inputs.modules], release, modules: load.map((m) => m.name), builtin };
    writeAtomic(p.kernelStamp, JSON.stringify(stamp, null, 2) + "\n");
    return stamp;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function writeInitramfs(dir: string, kernel: KernelStamp): number {
  const p = imagePaths(dir);
  const entries: CpioEntry[] = [
    { kind: "dir", path: "bin" },
    { kind: "dir", path: "dev" },
    { kind: "dir", path: "proc" },
    { kind: "dir", path: "sys" },
    { kind: "dir", path: "modules" },
    { kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    { kind: "file", path: "init", data: readFileSync(agentBinaryPath()), mode: 0o755 },
    { kind: "file", path: "bin/busybox", data: readFileSync(BUSYBOX), mode: 0o755 },
    { kind: "symlink", path: "bin/sh", target: "busybox" },
  ];
  for (const f of readdirSync(p.modules).sort()) entries.push({ kind: "file", path: `modules/${f}`, data: readFileSync(join(p.modules, f)) });
  if (entries.filter((e) => e.path.startsWith("modules/")).length !== kernel.modules.length) {
    throw new ImageError(`${p.modules} does not match kernel.json: rebuild with --force`);
  }
  const cpio = writeCpio(entries);
  writeAtomic(p.initramfs, cpio);
  return cpio.length;
}
