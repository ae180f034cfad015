/**
 * `nk-runtime vm build-image`: the guest artefacts, built into a cache
 * directory (never committed) and rebuilt only when an input changes. Two
 * kernel kinds:
 *
 *  - "minimal" (the default): compiled from Debian's linux-source package with
 *    src/vm/image/guest-kernel.config, everything built in, no ACPI
 *    (minimal-kernel.ts). Minutes to build once; the fast one to boot.
 *  - "debian": the stock cloud kernel package, its vmlinux extracted, plus the
 *    modules the guest needs (debian-kernel.ts). Nothing to compile.
 *
 * Inputs (stamp.json records them all): the kernel's (kind; source package
 * version and SHA256, config fragment SHA256 and compiler -- or the kernel
 * package and module list), the agent binary, busybox and this builder's
 * layout version.
 *
 *   <cache>/vmlinux          the ELF kernel, entered through its PVH note; no symbol table (see stripSymbols)
 *   <cache>/initramfs.cpio   /init = nk-agent, busybox (for rdinit=/bin/sh debugging), /modules/NN-name.ko (debian)
 *   <cache>/kernel.json      the kernel stage's inputs and results (release, modules in load order, build time)
 *   <cache>/kernel.config    the minimal kernel's complete .config (for reading: what is in the guest)
 *   <cache>/modules/         the debian kernel's .ko files, dependencies first
 *   <cache>/stamp.json       every input and output: what `vm check` compares
 */
import { spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { flock, LOCK_EX } from "../../util/libc.ts";
import { agentBinaryPath, BUSYBOX, guestKernelKind, type KernelKind } from "../config.ts";
import { writeCpio, type CpioEntry } from "./cpio.ts";
import { buildDebianKernel, debianKernelInputs, type DebianKernelInputs } from "./debian-kernel.ts";
import { buildMinimalKernel, minimalKernelInputs, type MinimalKernelInputs } from "./minimal-kernel.ts";
import { ImageError, sha256File } from "./tools.ts";

export { ImageError, sha256File };
export type { KernelKind };

/** Bump when the artefacts' layout or content rules change: forces a rebuild (the kernel stage is reused when its inputs are unchanged). */
const LAYOUT = 3;

export type KernelInputs = MinimalKernelInputs | DebianKernelInputs;

export interface ImageInputs {
  layout: number;
  kernel: KernelInputs;
  agentSha256: string;
  busyboxSha256: string;
}

export interface KernelStamp {
  inputs: KernelInputs;
  release: string;
  /** Module names in load order (the file names under modules/ carry the order); [] for the minimal kernel. */
  modules: string[];
  builtin: string[];
  /** The minimal kernel's build: how long it took and how many make steps it had (the next build's progress estimate). */
  buildSeconds?: number;
  buildSteps?: number;
}

export interface ImageStamp {
  inputs: ImageInputs;
  kernel: KernelKind;
  release: string;
  modules: string[];
  /**
   * Whether the kernel needs microvm's ACPI tables: the stock kernel finds
   * its virtio-mmio devices there; the minimal one has no ACPI and reads them
   * from the command line (virtio_mmio.device=, which QEMU adds with acpi=off).
   */
  acpi: boolean;
  vmlinuxBytes: number;
  initramfsBytes: number;
  kernelBuildSeconds?: number;
  builtAt: string;
}

export interface GuestImage {
  dir: string;
  vmlinux: string;
  initramfs: string;
  stamp: ImageStamp;
  kernel: KernelKind;
  acpi: boolean;
}

export function imagePaths(dir: string) {
  return {
    vmlinux: join(dir, "vmlinux"),
    initramfs: join(dir, "initramfs.cpio"),
    stamp: join(dir, "stamp.json"),
    kernelStamp: join(dir, "kernel.json"),
    kernelConfig: join(dir, "kernel.config"),
    modules: join(dir, "modules"),
    lock: join(dir, ".lock"),
  };
}

export function kernelInputs(kind: KernelKind): KernelInputs {
  return kind === "minimal" ? minimalKernelInputs() : debianKernelInputs();
}

export function currentInputs(kind: KernelKind = guestKernelKind()): ImageInputs {
  const agent = agentBinaryPath();
  if (!existsSync(agent)) throw new ImageError(`the guest agent ${agent} is missing: build it with \`npm run build\` (make -C native)`, "image-no-agent");
  if (!existsSync(BUSYBOX)) throw new ImageError(`${BUSYBOX} is missing: apt-get install busybox-static`, "image-no-busybox");
  return { layout: LAYOUT, kernel: kernelInputs(kind), agentSha256: sha256File(agent), busyboxSha256: sha256File(BUSYBOX) };
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
  // An image from before kernel kinds existed is Debian's, with ACPI.
  const kernel: KernelKind = stamp.kernel ?? "debian";
  return { dir, vmlinux: p.vmlinux, initramfs: p.initramfs, stamp, kernel, acpi: stamp.acpi ?? kernel === "debian" };
}

export type ImageState = { state: "missing" | "stale" | "current"; reason: string; image?: GuestImage };

/** Compare the built image with what would be built now. */
export function imageStatus(dir: string, inputs: ImageInputs): ImageState {
  const image = findImage(dir);
  if (!image) return { state: "missing", reason: `no guest image in ${dir} (run \`nk-runtime vm build-image\`)` };
  const changed = changedInputs(image.stamp.inputs, inputs);
  if (changed.length) return { state: "stale", reason: `changed since the build: ${changed.join(", ")}`, image };
  return { state: "current", reason: `built ${image.stamp.builtAt}: ${describeKernel(inputs.kernel)}`, image };
}

export function describeKernel(k: KernelInputs): string {
  return k.kind === "minimal" ? `minimal kernel from ${k.source.name} ${k.source.version}` : `Debian's ${k.package.name} ${k.package.version}`;
}

/** What differs between two kernel stages' inputs, in words ([] when nothing does). */
export function changedKernel(old: KernelInputs | undefined, now: KernelInputs): string[] {
  if (!old || old.kind !== now.kind) return [`kernel kind (${old?.kind ?? "debian"} -> ${now.kind})`];
  const changed: string[] = [];
  if (old.kind === "debian" && now.kind === "debian") {
    const [a, b] = [old.package, now.package];
    if (a.name !== b.name || a.version !== b.version || a.sha256 !== b.sha256) changed.push(`kernel (${a.name} ${a.version} -> ${b.name} ${b.version})`);
    if (old.modules.join(",") !== now.modules.join(",")) changed.push("module list");
  } else if (old.kind === "minimal" && now.kind === "minimal") {
    const [a, b] = [old.source, now.source];
    if (a.name !== b.name || a.version !== b.version || a.sha256 !== b.sha256) changed.push(`kernel source (${a.name} ${a.version} -> ${b.name} ${b.version})`);
    if (old.configSha256 !== now.configSha256) changed.push("guest-kernel.config");
    if (old.compiler !== now.compiler) changed.push(`compiler (${old.compiler} -> ${now.compiler})`);
  }
  return changed;
}

export function changedInputs(old: ImageInputs, now: ImageInputs): string[] {
  const changed: string[] = [];
  if (old.layout !== now.layout) changed.push("builder layout");
  changed.push(...changedKernel(old.kernel, now.kernel));
  if (old.agentSha256 !== now.agentSha256) changed.push("agent binary");
  if (old.busyboxSha256 !== now.busyboxSha256) changed.push("busybox");
  return changed;
}

export interface BuildOptions {
  dir: string;
  /** Default: NK_VM_KERNEL, else "minimal". */
  kernel?: KernelKind;
  force?: boolean;
  progress?: (line: string) => void;
}

/** Build (or reuse) the guest image; serialised across processes by a lock in the cache dir. */
export async function buildImage(opts: BuildOptions): Promise<GuestImage & { rebuilt: boolean }> {
  const say = opts.progress ?? (() => {});
  const kind = opts.kernel ?? guestKernelKind();
  const p = imagePaths(opts.dir);
  mkdirSync(opts.dir, { recursive: true });
  const lockFd = openSync(p.lock, "w");
  try {
    flock(lockFd, LOCK_EX);
    removeAbandonedWork(opts.dir);
    say(kind === "minimal" ? "resolving the kernel source package and the build's inputs" : "resolving the Debian kernel package with apt-cache");
    const inputs = currentInputs(kind);
    const status = imageStatus(opts.dir, inputs);
    if (status.state === "current" && !opts.force) {
      say(`up to date: ${status.reason}`);
      return { ...status.image!, rebuilt: false };
    }
    if (status.state === "stale") say(`rebuilding: ${status.reason}`);
    const kernel = await ensureKernel(opts.dir, inputs.kernel, Boolean(opts.force), say);
    stripSymbols(p.vmlinux, say);
    say(`writing initramfs: nk-agent as /init, busybox${kernel.modules.length ? `, ${kernel.modules.length} modules` : ""}`);
    const initramfsBytes = writeInitramfs(opts.dir, kernel);
    const stamp: ImageStamp = {
      inputs,
      kernel: kind,
      release: kernel.release,
      modules: kernel.modules,
      acpi: kind === "debian",
      vmlinuxBytes: statSync(p.vmlinux).size,
      initramfsBytes,
      ...(kernel.buildSeconds !== undefined ? { kernelBuildSeconds: kernel.buildSeconds } : {}),
      builtAt: new Date().toISOString(),
    };
    writeAtomic(p.stamp, JSON.stringify(stamp, null, 2) + "\n");
    say(`done: ${p.vmlinux} (${mib(stamp.vmlinuxBytes)}, ${kernel.release}, ${kind} kernel), ${p.initramfs} (${mib(initramfsBytes)})`);
    return { ...findImage(opts.dir)!, rebuilt: true };
  } finally {
    closeSync(lockFd);
  }
}

/** ELF64 section type of a symbol table. */
const SHT_SYMTAB = 2;

/** Whether an ELF64 (little-endian) file has a symbol table section. */
export function hasSymbolTable(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const header = Buffer.alloc(64);
    readSync(fd, header, 0, 64, 0);
    if (header.readUInt32BE(0) !== 0x7f454c46 || header[4] !== 2) return false; // not ELF64
    const shoff = Number(header.readBigUInt64LE(0x28));
    const shentsize = header.readUInt16LE(0x3a);
    const shnum = header.readUInt16LE(0x3c);
    if (!shoff || !shnum) return false;
    const table = Buffer.alloc(shentsize * shnum);
    readSync(fd, table, 0, table.length, shoff);
    for (let i = 0; i < shnum; i++) if (table.readUInt32LE(i * shentsize + 4) === SHT_SYMTAB) return true;
    return false;
  } finally {
    closeSync(fd);
  }
}

/**
 * Drop the kernel's symbol table (objcopy --strip-all): QEMU reads and sorts
 * every ELF symbol it is given (for its debugger), ~25 ms of each VM's start
 * here for the minimal kernel's 31 000 symbols. What the guest runs is the
 * same: only sections nothing loads go (PT_LOAD segments and the PVH note
 * stay). Debian's vmlinux, from a bzImage, has none to begin with.
 */
function stripSymbols(vmlinux: string, say: (line: string) => void): void {
  if (!hasSymbolTable(vmlinux)) return;
  const r = spawnSync("objcopy", ["--strip-all", vmlinux, `${vmlinux}.stripped`], { encoding: "utf8" });
  if (r.status !== 0) {
    rmSync(`${vmlinux}.stripped`, { force: true });
    say(`note: vmlinux keeps its symbol table (objcopy: ${r.error?.message ?? r.stderr.trim()}); VMs start ~25 ms slower`);
    return;
  }
  renameSync(`${vmlinux}.stripped`, vmlinux);
  say("vmlinux: symbol table dropped (QEMU would load it at every start)");
}

/** Work trees of a build that was killed (a kernel tree is ~1.5 GB); only called under the lock, so none is in use. */
function removeAbandonedWork(dir: string): void {
  for (const name of readdirSync(dir)) if (name.startsWith(".kernel-") || name.startsWith(".build-")) rmSync(join(dir, name), { recursive: true, force: true });
}

const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;

function writeAtomic(path: string, data: string | Uint8Array): void {
  writeFileSync(`${path}.tmp`, data);
  renameSync(`${path}.tmp`, path);
}

/** The kernel stage: skipped when its inputs are unchanged (an agent change only rewrites the initramfs). */
async function ensureKernel(dir: string, inputs: KernelInputs, force: boolean, say: (l: string) => void): Promise<KernelStamp> {
  const p = imagePaths(dir);
  const old = readJson<KernelStamp>(p.kernelStamp);
  const filesThere = existsSync(p.vmlinux) && (inputs.kind === "minimal" || existsSync(p.modules));
  if (!force && old && filesThere && changedKernel(old.inputs, inputs).length === 0) {
    say(`kernel ${old.release} unchanged`);
    return old;
  }
  let stamp: KernelStamp;
  if (inputs.kind === "minimal") {
    const built = await buildMinimalKernel(inputs, { workParent: dir, say, previousSteps: old?.buildSteps });
    writeAtomic(p.vmlinux, built.vmlinux);
    writeAtomic(p.kernelConfig, built.config);
    rmSync(p.modules, { recursive: true, force: true });
    stamp = { inputs, release: built.release, modules: [], builtin: [], buildSeconds: built.seconds, buildSteps: built.steps };
  } else {
    const work = mkdtempSync(join(dir, ".build-"));
    try {
      const modulesNew = join(work, "modules");
      const built = buildDebianKernel(inputs, work, modulesNew, say);
      writeAtomic(p.vmlinux, built.vmlinux);
      rmSync(p.modules, { recursive: true, force: true });
      renameSync(modulesNew, p.modules);
      rmSync(p.kernelConfig, { force: true });
      stamp = { inputs, release: built.release, modules: built.modules, builtin: built.builtin };
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
  writeAtomic(p.kernelStamp, JSON.stringify(stamp, null, 2) + "\n");
  return stamp;
}

function writeInitramfs(dir: string, kernel: KernelStamp): number {
  const p = imagePaths(dir);
  const entries: CpioEntry[] = [
    { kind: "dir", path: "bin" },
    { kind: "dir", path: "dev" },
    { kind: "dir", path: "proc" },
    { kind: "dir", path: "sys" },
    { kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    { kind: "file", path: "init", data: readFileSync(agentBinaryPath()), mode: 0o755 },
    { kind: "file", path: "bin/busybox", data: readFileSync(BUSYBOX), mode: 0o755 },
    { kind: "symlink", path: "bin/sh", target: "busybox" },
  ];
  // The agent loads whatever /modules holds, in name order; the minimal kernel has none (and no /modules).
  if (kernel.modules.length) {
    entries.push({ kind: "dir", path: "modules" });
    for (const f of readdirSync(p.modules).sort()) entries.push({ kind: "file", path: `modules/${f}`, data: readFileSync(join(p.modules, f)) });
    if (entries.filter((e) => e.path.startsWith("modules/")).length !== kernel.modules.length) {
      throw new ImageError(`${p.modules} does not match kernel.json: rebuild with --force`, "image-modules");
    }
  }
  const cpio = writeCpio(entries);
  writeAtomic(p.initramfs, cpio);
  return cpio.length;
}
