/**
 * The container's rootfs as a block image, for a VM that cannot read a
 * virtiofs share: Firecracker (it has no virtiofs), a host without
 * virtiofsd, or a container that asks for it (io.nanokata.vm.rootfs=block).
 *
 * The image is made without mounting anything on the host: `mkfs.ext4 -d`
 * (e2fsprogs) copies the rootfs tree into a fresh file system in a regular
 * file in the container's state directory, which goes with the state
 * directory at `delete`. The guest mounts it as the container's root (the
 * plan's MOUNT_IN_ROOT, plan.ts). The trade-off, documented: writes stay in
 * the image -- the host's rootfs never sees them -- and bind mounts from the
 * spec cannot reach the guest as binds (there is no share to carry them).
 * What podman always binds still works: a small regular file is copied into
 * the image at create time (a snapshot, written with debugfs into the made
 * image, never into the bundle's rootfs), and /dev/shm becomes a tmpfs in the
 * guest (as Kata does); any other bind mount is refused by name.
 */
import { spawn } from "node:child_process";
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, posix } from "node:path";
import type { Mount, Spec } from "../spec/types.ts";
import { MS } from "../plan/constants.ts";
import { parseMountOptions } from "../plan/mount-options.ts";
import { VmError } from "./driver.ts";

/** Per container: "block" (an ext4 image) or "virtiofs" (the default where virtiofsd is installed). */
export const ROOTFS_ANNOTATION = "io.nanokata.vm.rootfs";

export type RootfsSharing = "block" | "virtiofs";

/** The image's name in the container's state directory. */
export const ROOTFS_IMAGE_NAME = "rootfs.img";

/** The guest's block device: the image is the VM's only disk, so the first virtio-blk device. */
export const GUEST_ROOT_DEVICE = "/dev/vda";

/**
 * How the rootfs reaches the guest, and why (for --debug). Firecracker and
 * a host without virtiofsd leave only the block image; otherwise the
 * annotation decides, virtiofs by default.
 */
export function selectRootfsSharing(
  spec: Spec,
  host: { driver: "qemu" | "firecracker"; virtiofsd: boolean },
): { sharing: RootfsSharing; reason: string } {
  const field = `annotations["${ROOTFS_ANNOTATION}"]`;
  const asked = spec.annotations?.[ROOTFS_ANNOTATION];
  if (asked !== undefined && asked !== "block" && asked !== "virtiofs") {
    throw new VmError("bad-rootfs-sharing", `${field}: must be "block" or "virtiofs", not ${JSON.stringify(asked)}`);
  }
  if (host.driver === "firecracker") {
    if (asked === "virtiofs") throw new VmError("vm-unsupported", `${field}: Firecracker has no virtiofs; the rootfs can only be a block image there`);
    return { sharing: "block", reason: "Firecracker has no virtiofs" };
  }
  if (asked === "block") return { sharing: "block", reason: `${field} = "block"` };
  if (!host.virtiofsd) {
    if (asked === "virtiofs") throw new VmError("no-virtiofsd", `${field}: virtiofsd not found (Debian's qemu-system-common has /usr/lib/qemu/virtiofsd; or set NK_VIRTIOFSD)`);
    return { sharing: "block", reason: "no virtiofsd installed (set NK_VIRTIOFSD, or install qemu-system-common)" };
  }
  return { sharing: "virtiofs", reason: asked ? `${field} = "virtiofs"` : "the default" };
}

/**
 * A regular file bound into the container is copied into the image instead
 * (a snapshot at `create`): at most this many bytes each...
 */
export const FILE_COPY_MAX_BYTES = 1 << 20;
/** ...and this many in all: these are configuration files (hosts, hostname, resolv.conf, .containerenv), not data. */
export const FILE_COPY_TOTAL_MAX_BYTES = 4 << 20;
/** Symlinks followed while resolving one destination, as the kernel's limit (ELOOP past it). */
const MAX_SYMLINKS = 40;

/** What the guest plan does with the bind mount mounts[i] on a block rootfs (plan.ts). */
export type BlockBind =
  /** A regular file copied into the image at imagePath (symlink-free); the guest binds it from there onto the destination. */
  | { kind: "file"; imagePath: string }
  /** /dev/shm: a tmpfs of the guest's own in place of the host's directory. */
  | { kind: "tmpfs"; mount: Mount };

/** One file to write into the made image (debugfs, copyIntoImage). */
export interface FileCopy {
  index: number;
  destination: string;
  source: string;
  /** The destination resolved inside the rootfs: absolute in the image, no symlink, no "." or "..". */
  imagePath: string;
  /** Something is at imagePath already (the rootfs's own file, or an earlier copy): it is removed first. */
  replaces: boolean;
  content: Buffer;
  /** Permission bits, owner and group of the source: what the bind mount would have shown. */
  mode: number;
  uid: number;
  gid: number;
  readOnly: boolean;
}

export interface BlockMounts {
  binds: Map<number, BlockBind>;
  /**
   * Directories to make in the image, parents first (0755 root:root, as
   * runc's MkdirAll): the ones the rootfs lacks on the way to a copy, and with
   * root.readonly the mount points it lacks (a read-only image cannot get
   * them in the guest, where the planner would make them).
   */
  dirs: string[];
  files: FileCopy[];
  /** What became of each bind mount, for --debug (the snapshot trade-off, said where it applies). */
  notes: string[];
}

export interface BlockHost {
  /** Relative bind sources resolve against it. */
  bundle: string;
  /** The host rootfs (absolute, symlink-free): destinations are resolved in it with lstat and readlink only. */
  rootfs: string;
  /** /proc/self/mountinfo's text (the host tmpfs behind a /dev/shm bind gives its size); injectable for tests. */
  mountinfo?: () => string;
}

/**
 * What a block rootfs can carry from the spec's bind mounts, decided before
 * anything is made (a refusal leaves no state, no image, no process):
 * - a regular file of at most FILE_COPY_MAX_BYTES (FILE_COPY_TOTAL_MAX_BYTES
 *   in all) is read now and copied into the image at its destination
 *   (copyIntoImage, after mkfs): a snapshot, the host's later changes do not
 *   reach the guest and the guest's writes do not reach the host;
 * - a directory bound on /dev/shm becomes a tmpfs in the guest with the
 *   mount's options and the host tmpfs's size (podman's userdata/shm; Kata
 *   does the same): nothing in it is shared with the host, which a VM could
 *   not share anyway;
 * - any other bind mount (a directory, a socket, a device, a bigger file) is
 *   refused naming mounts[i]: without a share nothing can carry it.
 * With root.readonly the mount points the rootfs lacks are listed in dirs too:
 * the guest mounts the image read-only, where the planner could not make them.
 * The kernel file systems and tmpfs the guest makes itself are fine. A pod
 * sandbox is refused too: its further containers' rootfs join the sandbox's
 * running share (pod.ts).
 */
export function checkBlockRootfs(spec: Spec, why: string, host: BlockHost): BlockMounts {
  if (spec.annotations?.["io.kubernetes.cri.container-type"] === "sandbox") {
    throw new VmError("vm-unsupported", `a pod sandbox's rootfs cannot be a block image (${why}): the pod's containers join its VM through virtiofs`);
  }
  const out: BlockMounts = { binds: new Map(), dirs: [], files: [], notes: [] };
  const placed = new Map<string, "file" | "dir">(); // image paths an earlier copy wrote or made
  let total = 0;
  let mountinfo: string | undefined;
  const makeDirs = (dirs: string[]) => {
    for (const dir of dirs.filter((d) => !placed.has(d))) {
      placed.set(dir, "dir");
      out.dirs.push(dir);
    }
  };
  // A read-only image: the mount points the rootfs lacks are made now (where the destination resolves inside it).
  const mountPoint = (m: Mount) => {
    if (spec.root?.readonly !== true) return;
    try {
      const where = resolveInRootfs(host.rootfs, m.destination, "");
      if (where.existing === "none" && ![...where.makeDirs, where.path].some((d) => placed.get(d) === "file")) makeDirs([...where.makeDirs, where.path]);
    } catch {} // a destination that cannot be resolved: the guest's planner reports it, naming the mount
  };
  (spec.mounts ?? []).forEach((m, i) => {
    const options = parseMountOptions(m.options, m.type);
    if (!options.bind) return mountPoint(m);
    const field = `mounts[${i}] (${m.destination})`;
    const source = m.source?.startsWith("/") ? m.source : `${host.bundle}/${m.source ?? ""}`;
    const refuse = (what: string): never => {
      throw new VmError(
        "vm-unsupported",
        `${field}: ${what} cannot reach a VM whose rootfs is a block image (${why}); a block rootfs copies regular files of up to ` +
          `${FILE_COPY_MAX_BYTES >> 20} MiB and makes /dev/shm a tmpfs, other bind mounts need virtiofs (${ROOTFS_ANNOTATION}=virtiofs, with virtiofsd installed)`,
      );
    };
    const read = readBindSource(source, field);
    if (read.kind === "dir") {
      if (posix.normalize(m.destination) !== "/dev/shm") refuse(`a bind mount of the directory ${source}`);
      mountinfo ??= (host.mountinfo ?? (() => readFileSync("/proc/self/mountinfo", "utf8")))();
      const hostTmpfs = tmpfsOptionsAt(mountinfo, realpathSync(source));
      const mount = shmTmpfs(m, hostTmpfs);
      out.binds.set(i, { kind: "tmpfs", mount });
      mountPoint(mount);
      out.notes.push(
        `${field}: a tmpfs of the guest's own (${mount.options!.join(",")}) in place of the host's ${source}${hostTmpfs ? "" : " (not a tmpfs mount: default size)"}: nothing written there is shared with the host`,
      );
      return;
    }
    if (read.kind === "other") refuse(`a bind mount of ${source} (${read.what}, not a regular file)`);
    if (read.kind === "too-big") refuse(`a bind mount of ${source} (${read.size} bytes)`);
    if (read.kind !== "file") return;
    total += read.content.length;
    if (total > FILE_COPY_TOTAL_MAX_BYTES) refuse(`a bind mount of ${source}, past ${FILE_COPY_TOTAL_MAX_BYTES >> 20} MiB of copied files in all,`);
    const where = resolveInRootfs(host.rootfs, m.destination, field);
    for (const dir of where.makeDirs) if (placed.get(dir) === "file") throw new VmError("bad-bind-destination", `${field}: ${dir} is a file copied for an earlier mount, not a directory`);
    const earlier = placed.get(where.path);
    if (where.existing === "dir" || earlier === "dir") throw new VmError("bad-bind-destination", `${field}: ${where.path} is a directory in the rootfs; a file cannot be bound onto it`);
    makeDirs(where.makeDirs);
    placed.set(where.path, "file");
    const readOnly = ((options.flags | options.bindRemountFlags) & MS.RDONLY) !== 0;
    out.files.push({
      index: i,
      destination: m.destination,
      source,
      imagePath: where.path,
      replaces: where.existing !== "none" || earlier === "file",
      content: read.content,
      mode: read.mode & 0o7777,
      uid: read.uid,
      gid: read.gid,
      readOnly,
    });
    out.binds.set(i, { kind: "file", imagePath: where.path });
    const roRoot = spec.root?.readonly === true && !readOnly ? "; read-only like the whole image (root.readonly)" : "";
    out.notes.push(
      `${field}: ${source} (${read.content.length} bytes) copied into the rootfs image at ${where.path}${readOnly ? ", bound read-only" : ""}${roRoot}: ` +
        "a snapshot -- later changes on the host do not reach the guest, and the container's writes stay in the image",
    );
  });
  if ((out.files.length || out.dirs.length) && !debugfsPath()) {
    const what = out.files.length ? `mounts[${out.files[0]!.index}] (${out.files[0]!.destination}): copying a file into` : "root.readonly: making mount points in";
    throw new VmError("no-debugfs", `${what} a block rootfs needs debugfs (apt-get install e2fsprogs)`);
  }
  return out;
}

type BindSource =
  | { kind: "dir" }
  | { kind: "file"; content: Buffer; mode: number; uid: number; gid: number }
  | { kind: "too-big"; size: number }
  | { kind: "other"; what: string };

/**
 * The bind source as the mount would see it (a host path the client chose:
 * symlinks followed, as mount(2) does). Opened non-blocking so a FIFO swapped
 * in cannot hang `create`; the type and size come from the open fd, and the
 * content is read from it, at most one byte over the cap.
 */
function readBindSource(source: string, field: string): BindSource {
  let fd: number;
  try {
    fd = openSync(source, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    throw new VmError("bad-bind-source", `${field}: bind source ${source}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) return { kind: "dir" };
    if (!st.isFile()) return { kind: "other", what: st.isSocket() ? "a socket" : st.isFIFO() ? "a FIFO" : st.isCharacterDevice() || st.isBlockDevice() ? "a device" : "not a file" };
    if (st.size > FILE_COPY_MAX_BYTES) return { kind: "too-big", size: st.size };
    const buf = Buffer.alloc(FILE_COPY_MAX_BYTES + 1);
    let n = 0;
    for (let got = 1; got > 0 && n < buf.length; n += got) got = readSync(fd, buf, n, buf.length - n, null);
    if (n > FILE_COPY_MAX_BYTES) return { kind: "too-big", size: n };
    return { kind: "file", content: buf.subarray(0, n), mode: st.mode, uid: st.uid, gid: st.gid };
  } finally {
    closeSync(fd);
  }
}

/**
 * dest resolved inside root as a path walk chrooted to root would: "." is
 * skipped, ".." stops at root, a symlink's target is read (readlink) and
 * walked in its place, an absolute one from root again, at most
 * MAX_SYMLINKS of them. Only lstat and readlink touch the host, each on a
 * path whose every directory was found not to be a symlink, so nothing
 * outside root is ever followed to (the path escapes of CVE-2019-19921 and
 * CVE-2021-30465). The result is a path in the image with no symlink in it;
 * the guest binds the copy from a mount of the image that refuses to follow
 * symlinks (plan.ts), so even a tree changed meanwhile cannot lead the bind
 * out of the image.
 */
export function resolveInRootfs(root: string, dest: string, field: string): { path: string; makeDirs: string[]; existing: "none" | "file" | "dir" } {
  const bad = (why: string): never => {
    throw new VmError("bad-bind-destination", `${field}: cannot place a copy at ${dest} inside the rootfs: ${why}`);
  };
  const done: string[] = [];
  const todo = dest.split("/");
  let links = 0;
  let missingFrom = -1; // index in done of the first component the rootfs lacks
  let existing: "none" | "file" | "dir" = "dir";
  while (todo.length) {
    const name = todo.shift()!;
    if (name === "" || name === ".") continue;
    if (name === "..") {
      done.pop();
      if (missingFrom >= done.length) missingFrom = -1;
      existing = missingFrom >= 0 ? "none" : "dir";
      continue;
    }
    // debugfs takes a script line by line; the kernel takes no "/" or NUL in a name.
    if (/[\x00-\x1f\x7f]/.test(name)) bad(`a control character in ${JSON.stringify(name)}`);
    if (existing !== "dir" && existing !== "none") bad(`/${done.join("/")} is not a directory`);
    if (missingFrom >= 0) {
      done.push(name);
      continue;
    }
    let st;
    try {
      st = lstatSync(join(root, ...done, name));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOTDIR") bad(`/${done.join("/")} is not a directory`);
      if (code !== "ENOENT") bad(`lstat: ${code}`);
      missingFrom = done.length;
      done.push(name);
      existing = "none";
      continue;
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_SYMLINKS) bad(`more than ${MAX_SYMLINKS} symlinks (ELOOP)`);
      const target = readlinkSync(join(root, ...done, name), "utf8");
      if (target.startsWith("/")) done.length = 0;
      todo.unshift(...target.split("/"));
      continue;
    }
    done.push(name);
    existing = st.isDirectory() ? "dir" : "file";
  }
  if (!done.length) bad("it is the rootfs's root directory");
  const prefixes = done.map((_, k) => `/${done.slice(0, k + 1).join("/")}`);
  return { path: prefixes[prefixes.length - 1]!, makeDirs: missingFrom >= 0 ? prefixes.slice(missingFrom, -1) : [], existing: missingFrom >= 0 ? "none" : existing };
}

/** The mount options of the tmpfs mounted at exactly path (the topmost one), from mountinfo's text; undefined if none is. */
export function tmpfsOptionsAt(mountinfo: string, path: string): string[] | undefined {
  // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options; octal escapes in paths.
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  let found: string[] | undefined;
  for (const line of mountinfo.split("\n")) {
    const fields = line.split(" ");
    const dash = fields.indexOf("-");
    if (dash < 6 || unescape(fields[4]!) !== path) continue;
    found = fields[dash + 1] === "tmpfs" ? (fields[dash + 3] ?? "").split(",").filter(Boolean) : undefined;
  }
  return found;
}

/**
 * /dev/shm's bind as the tmpfs the guest makes: the spec's options without
 * bind/rbind (nosuid, noexec, nodev, propagation as given), and the host
 * tmpfs's size, inode count and mode unless the options name their own.
 */
export function shmTmpfs(m: Mount, hostTmpfs: string[] | undefined): Mount {
  const kept = (m.options ?? []).filter((o) => o !== "bind" && o !== "rbind");
  const named = new Set(kept.map((o) => o.split("=")[0]));
  const fromHost = (hostTmpfs ?? []).filter((o) => /^(size|nr_inodes|mode)=/.test(o) && !named.has(o.split("=")[0]));
  return { destination: m.destination, type: "tmpfs", source: "shm", options: [...kept, ...fromHost] };
}

/** Bytes in use (allocated blocks, each hard-linked file once) and the number of inodes under dir. */
export function measureTree(dir: string): { bytes: number; inodes: number } {
  let bytes = 0;
  let inodes = 0;
  const seen = new Set<string>();
  const walk = (path: string) => {
    const st = lstatSync(path, { bigint: false });
    if (st.nlink > 1 && !st.isDirectory()) {
      const key = `${st.dev}:${st.ino}`;
      if (seen.has(key)) return;
      seen.add(key);
    }
    inodes++;
    bytes += st.blocks * 512;
    if (st.isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
  };
  walk(dir);
  return { bytes, inodes };
}

const MIB = 1 << 20;
/** Room for the container's own writes, on top of what the rootfs holds. */
export const IMAGE_FREE_MIB = 256;
/** The smallest image: ext4's metadata and a little room, whatever the rootfs. */
export const IMAGE_FLOOR_MIB = 256;

/**
 * The image's size: the rootfs's usage plus an eighth for ext4's metadata
 * (inode tables, directories' blocks) plus IMAGE_FREE_MIB, at least
 * IMAGE_FLOOR_MIB, in whole MiB. The file is sparse: mkfs writes only
 * metadata and the copied files, so the free room costs no disk until used.
 * Inodes: the tree's count with half again for the container's new files,
 * and at least 16384.
 */
export function imageGeometry(usage: { bytes: number; inodes: number }): { sizeMiB: number; inodes: number } {
  const sizeMiB = Math.max(IMAGE_FLOOR_MIB, Math.ceil((usage.bytes + usage.bytes / 8) / MIB) + IMAGE_FREE_MIB);
  return { sizeMiB, inodes: Math.max(16384, Math.ceil(usage.inodes * 1.5)) };
}

/**
 * mkfs.ext4's command line, pure (unit-tested). -d copies the tree with its
 * owners, modes, devices, symlinks and hard links; -F because the target is
 * a regular file; -m 0: no blocks reserved for root (the container is the
 * file system's only user); no journal: the image lives as long as the
 * container and no longer, so there is nothing to recover after a crash, and
 * it saves the journal's writes in the guest.
 */
export function mkfsArgs(rootfs: string, image: string, geometry: { sizeMiB: number; inodes: number }): string[] {
  return ["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-N", String(geometry.inodes), "-L", "nk-rootfs", "-d", rootfs, image, `${geometry.sizeMiB}M`];
}

export function mkfsPath(): string | undefined {
  if (process.env.NK_MKFS_EXT4) return existsSync(process.env.NK_MKFS_EXT4) ? process.env.NK_MKFS_EXT4 : undefined;
  // Debian keeps it in /usr/sbin (/sbin), which a non-login PATH may lack.
  const dirs = [...(process.env.PATH ?? "").split(":").filter(Boolean), "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    try {
      accessSync(`${dir}/mke2fs`, constants.X_OK);
      accessSync(`${dir}/mkfs.ext4`, constants.X_OK);
      return `${dir}/mkfs.ext4`;
    } catch {}
  }
  return undefined;
}

/**
 * Make the image; on failure nothing is left at `image`. Returns its geometry and how long it took.
 * sizeMiB: make it exactly this big when the rootfs fits (a VM template's disk size, template.ts); else as imageGeometry says.
 * contents: the files and directories checkBlockRootfs decided on, written into the made image (copyIntoImage).
 */
export async function makeRootfsImage(
  rootfs: string,
  image: string,
  opts: { sizeMiB?: number; contents?: Pick<BlockMounts, "dirs" | "files"> } = {},
): Promise<{ sizeMiB: number; inodes: number; usedBytes: number; ms: number; filesMs?: number }> {
  const mkfs = mkfsPath();
  if (!mkfs) throw new VmError("no-mkfs", "a block rootfs needs mkfs.ext4 (apt-get install e2fsprogs, or set NK_MKFS_EXT4)");
  const started = Date.now();
  const contents = opts.contents ?? { dirs: [], files: [] };
  const tree = measureTree(rootfs);
  const usage = { bytes: contents.files.reduce((sum, f) => sum + f.content.length, tree.bytes), inodes: tree.inodes + contents.files.length + contents.dirs.length };
  const needed = imageGeometry(usage);
  const geometry = opts.sizeMiB !== undefined && opts.sizeMiB >= needed.sizeMiB ? { ...needed, sizeMiB: opts.sizeMiB } : needed;
  const out = await new Promise<{ code: number; stderr: string }>((resolve) => {
    const child = spawn(mkfs, mkfsArgs(rootfs, image, geometry), { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stdout!.on("data", (b: Buffer) => (stderr += b.toString("utf8")));
    child.stderr!.on("data", (b: Buffer) => (stderr += b.toString("utf8")));
    child.on("error", (e) => resolve({ code: 127, stderr: e.message }));
    child.on("close", (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stderr })); // after the last of its output
  });
  if (out.code !== 0) {
    rmSync(image, { force: true });
    throw new VmError("rootfs-image-failed", `mkfs.ext4 -d ${rootfs} (${geometry.sizeMiB} MiB) failed (${out.code}): ${out.stderr.trim().slice(-2000) || "(no message)"}`);
  }
  if (!contents.files.length && !contents.dirs.length) return { ...geometry, usedBytes: usage.bytes, ms: Date.now() - started };
  const copying = Date.now();
  try {
    await copyIntoImage(image, contents);
  } catch (e) {
    rmSync(image, { force: true });
    throw e;
  }
  return { ...geometry, usedBytes: usage.bytes, ms: Date.now() - started, filesMs: Date.now() - copying };
}

/** debugfs (e2fsprogs), found as mkfs.ext4 is (beside it first). */
export function debugfsPath(): string | undefined {
  const mkfs = mkfsPath();
  const dirs = [...(mkfs ? [dirname(mkfs)] : []), ...(process.env.PATH ?? "").split(":").filter(Boolean), "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    try {
      accessSync(`${dir}/debugfs`, constants.X_OK);
      return `${dir}/debugfs`;
    } catch {}
  }
  return undefined;
}

/** A debugfs argument: double quotes, a quote inside doubled (its parser's rule); names never hold a newline (resolveInRootfs). */
const debugfsQuote = (s: string) => `"${s.replaceAll('"', '""')}"`;

/**
 * The debugfs script that writes the copies into the image, pure (unit-tested):
 * per file, the missing directories, the old file removed, the staged copy
 * written, then its mode, owner and group set to the source's.
 */
export function debugfsScript(contents: Pick<BlockMounts, "dirs" | "files">, staged: (k: number) => string): string {
  const lines = contents.dirs.map((dir) => `mkdir ${debugfsQuote(dir)}`);
  contents.files.forEach((f, k) => {
    const at = debugfsQuote(f.imagePath);
    if (f.replaces) lines.push(`rm ${at}`);
    lines.push(`write ${debugfsQuote(staged(k))} ${at}`);
    lines.push(`sif ${at} mode 0${(0o100000 | (f.mode & 0o7777)).toString(8)}`, `sif ${at} uid ${f.uid}`, `sif ${at} gid ${f.gid}`);
  });
  return `${lines.join("\n")}\n`;
}

/** debugfs -f goes on after a failed command and exits 0: its stderr, less the version banner, is the failure. */
export function debugfsErrors(stderr: string): string[] {
  return stderr.split("\n").filter((line) => line.trim() && !/^debugfs \d+\.\d+/.test(line));
}

/**
 * Write the copies into the made image with one `debugfs -w -f script`
 * (~10 ms): the image is the container's own file, nothing is mounted and
 * the bundle's rootfs is never written. The contents are staged as files
 * beside the image (debugfs reads host files) and removed afterwards.
 */
async function copyIntoImage(image: string, contents: Pick<BlockMounts, "dirs" | "files">): Promise<void> {
  const { files } = contents;
  const debugfs = debugfsPath();
  if (!debugfs) throw new VmError("no-debugfs", "copying bind-mounted files into a block rootfs needs debugfs (apt-get install e2fsprogs)");
  const stage = `${image}.files`;
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { mode: 0o700 });
  try {
    files.forEach((f, k) => writeFileSync(join(stage, String(k)), f.content, { mode: 0o600 }));
    const script = join(stage, "script");
    writeFileSync(script, debugfsScript(contents, (k) => join(stage, String(k))));
    const out = await new Promise<{ code: number; stderr: string }>((resolve) => {
      const child = spawn(debugfs, ["-w", "-f", script, image], { stdio: ["ignore", "ignore", "pipe"] });
      let stderr = "";
      child.stderr!.on("data", (b: Buffer) => (stderr += b.toString("utf8")));
      child.on("error", (e) => resolve({ code: 127, stderr: e.message }));
      // "close", not "exit": the exit can come before the last of stderr, which is how a failure is told.
      child.on("close", (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stderr }));
    });
    const errors = debugfsErrors(out.stderr);
    if (out.code !== 0 || errors.length) {
      const which = [...files.map((f) => `mounts[${f.index}] -> ${f.imagePath}`), ...(contents.dirs.length ? [`directories ${contents.dirs.join(", ")}`] : [])].join(", ");
      throw new VmError("rootfs-image-failed", `debugfs -w ${image} (copying ${which}) failed (${out.code}): ${errors.join("; ").slice(-2000) || "(no message)"}`);
    }
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}
