/**
 * The container's root filesystem: containerd's snapshotter describes it as a
 * list of mounts (usually one overlay) in CreateTaskRequest.rootfs, and the
 * shim mounts them onto <bundle>/rootfs and unmounts them on delete.
 *
 * Options are fstab words: the known flag words become mount(2) flags, the
 * propagation words a separate propagation change, everything else the data
 * string (overlay's lowerdir=..., upperdir=..., workdir=...).
 */
import { mount, umount, EINVAL, ENOENT, MNT_DETACH, SysError } from "./sys.ts";
import type { Mount } from "./messages.ts";

const MS_RDONLY = 0x1;
const MS_NOSUID = 0x2;
const MS_NODEV = 0x4;
const MS_NOEXEC = 0x8;
const MS_SYNCHRONOUS = 0x10;
const MS_REMOUNT = 0x20;
const MS_MANDLOCK = 0x40;
const MS_DIRSYNC = 0x80;
const MS_NOATIME = 0x400;
const MS_NODIRATIME = 0x800;
const MS_BIND = 0x1000;
const MS_REC = 0x4000;
const MS_UNBINDABLE = 1 << 17;
const MS_PRIVATE = 1 << 18;
const MS_SLAVE = 1 << 19;
const MS_SHARED = 1 << 20;
const MS_RELATIME = 1 << 21;
const MS_STRICTATIME = 1 << 24;
const PROPAGATION = MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED;

/** word -> [clear?, flag] */
const FLAG_WORDS: Record<string, [boolean, number]> = {
  async: [true, MS_SYNCHRONOUS],
  atime: [true, MS_NOATIME],
  bind: [false, MS_BIND],
  defaults: [false, 0],
  dev: [true, MS_NODEV],
  diratime: [true, MS_NODIRATIME],
  dirsync: [false, MS_DIRSYNC],
  exec: [true, MS_NOEXEC],
  mand: [false, MS_MANDLOCK],
  noatime: [false, MS_NOATIME],
  nodev: [false, MS_NODEV],
  nodiratime: [false, MS_NODIRATIME],
  noexec: [false, MS_NOEXEC],
  nomand: [true, MS_MANDLOCK],
  norelatime: [true, MS_RELATIME],
  nostrictatime: [true, MS_STRICTATIME],
  nosuid: [false, MS_NOSUID],
  rbind: [false, MS_BIND | MS_REC],
  relatime: [false, MS_RELATIME],
  remount: [false, MS_REMOUNT],
  ro: [false, MS_RDONLY],
  rw: [true, MS_RDONLY],
  strictatime: [false, MS_STRICTATIME],
  suid: [true, MS_NOSUID],
  sync: [false, MS_SYNCHRONOUS],
};

const PROPAGATION_WORDS: Record<string, number> = {
  private: MS_PRIVATE,
  rprivate: MS_PRIVATE | MS_REC,
  shared: MS_SHARED,
  rshared: MS_SHARED | MS_REC,
  slave: MS_SLAVE,
  rslave: MS_SLAVE | MS_REC,
  unbindable: MS_UNBINDABLE,
  runbindable: MS_UNBINDABLE | MS_REC,
};

export interface ParsedOptions {
  flags: number;
  propagation: number;
  data: string;
}

export function parseMountOptions(options: readonly string[]): ParsedOptions {
  let flags = 0;
  let propagation = 0;
  const data: string[] = [];
  for (const o of options) {
    const f = FLAG_WORDS[o];
    if (f) {
      flags = f[0] ? flags & ~f[1] : flags | f[1];
      continue;
    }
    const p = PROPAGATION_WORDS[o];
    if (p !== undefined) {
      propagation |= p;
      continue;
    }
    data.push(o);
  }
  return { flags, propagation, data: data.join(",") };
}

/** Mount one containerd mount on target. */
export function mountOne(m: Mount, target: string): void {
  const { flags, propagation, data } = parseMountOptions(m.options);
  if ((flags & MS_REMOUNT) === 0 || data) mount(m.source, target, m.type === "bind" ? "" : m.type, flags, data);
  if (propagation) mount("", target, "", propagation, "");
  // A read-only bind needs a second, remounting call.
  if ((flags & MS_BIND) !== 0 && (flags & MS_RDONLY) !== 0) mount("", target, "", flags | MS_REMOUNT, "");
}

/** Mount the snapshotter's mounts onto rootfs; on failure, undo what was mounted. */
export function mountRootfs(mounts: readonly Mount[], rootfs: string): void {
  let done = 0;
  try {
    for (const m of mounts) {
      mountOne(m, rootfs);
      done++;
    }
  } catch (e) {
    for (let i = 0; i < done; i++) umount(rootfs, MNT_DETACH);
    throw e;
  }
}

/** Unmount everything stacked on target (containerd's UnmountAll). */
export function unmountAll(target: string): void {
  for (let i = 0; i < 64; i++) {
    const err = umount(target, 0);
    if (err === 0) continue;
    if (err === EINVAL || err === ENOENT) return; // not a mount point (any more)
    // Busy: detach it lazily rather than leave it behind.
    const lazy = umount(target, MNT_DETACH);
    if (lazy === 0) continue;
    if (lazy === EINVAL || lazy === ENOENT) return;
    throw new SysError("umount2", lazy, target);
  }
}
