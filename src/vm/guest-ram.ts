/**
 * The guest's RAM as one file on a private tmpfs with transparent huge pages
 * (huge=always), handed to QEMU as an open fd.
 *
 * Why: QEMU faults guest RAM in as the guest first touches it (and while it
 * copies the kernel in). With the usual memfd that is one host page fault per
 * 4 KiB, and here a fault costs 15-25 us (this host is itself a VM): ~10 000
 * of them, ~0.15 s of a TCG boot. A huge tmpfs page is one fault per 2 MiB.
 * A memfd cannot have huge pages unless the host's shmem_enabled allows it
 * (it is "never" by default and a host setting, not ours to change), but a
 * tmpfs mounted with huge=always can, whatever shmem_enabled says.
 *
 * The tmpfs is never attached anywhere: fsopen(2) + fsmount(2) give a
 * detached mount, open(O_TMPFILE) a nameless file on it, and the mount fd is
 * closed at once. The file (and with it the tmpfs) lives exactly as long as
 * an fd on it -- QEMU's, and virtiofsd's mapping of the guest's memory --
 * so nothing is mounted on the host and nothing is left after a crash.
 * vhost-user (virtiofs) needs the guest RAM in a shared, fd-backed file;
 * this is one, like the memfd.
 */
import { openLibc } from "../util/ffi.ts";

const FSOPEN_CLOEXEC = 0x1;
const FSCONFIG_SET_STRING = 1;
const FSCONFIG_CMD_CREATE = 6;
const FSMOUNT_CLOEXEC = 0x1;
const MOUNT_ATTR_NOSUID = 0x2;
const MOUNT_ATTR_NODEV = 0x4;
const MOUNT_ATTR_NOEXEC = 0x8;
const O_RDWR = 0o2;
const O_CLOEXEC = 0o2000000;
const O_TMPFILE = 0o20000000 | 0o200000; // __O_TMPFILE | O_DIRECTORY

/** The alignment QEMU must map the file at for the host to map it with 2 MiB pages (memory-backend-file align=). */
export const HUGE_PAGE_BYTES = 2 * 1024 * 1024;

interface Calls {
  fsopen(fsName: string): number;
  fsconfigString(fd: number, key: string, value: string): number;
  fsconfigCreate(fd: number): number;
  fsmount(fd: number, attrs: number): number;
  openTmpfile(dirFd: number): number;
  close(fd: number): number;
  errno(): number;
}

let calls: Calls | undefined;
function libc(): Calls {
  if (calls) return calls;
  // glibc 2.36 and later wrap the new mount API (Debian 12 has 2.36).
  const { fns: s, errno, ffi: { ptr } } = openLibc((FFIType) => ({
    fsopen: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    fsconfig: { args: [FFIType.i32, FFIType.u32, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    fsmount: { args: [FFIType.i32, FFIType.u32, FFIType.u32], returns: FFIType.i32 },
    openat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.u32], returns: FFIType.i32 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
  }));
  const cstr = (text: string) => ptr(Buffer.from(`${text}\0`));
  calls = {
    fsopen: (name) => s.fsopen(cstr(name), FSOPEN_CLOEXEC) as number,
    fsconfigString: (fd, key, value) => s.fsconfig(fd, FSCONFIG_SET_STRING, cstr(key), cstr(value), 0) as number,
    fsconfigCreate: (fd) => s.fsconfig(fd, FSCONFIG_CMD_CREATE, null, null, 0) as number,
    fsmount: (fd, attrs) => s.fsmount(fd, FSMOUNT_CLOEXEC, attrs) as number,
    openTmpfile: (dirFd) => s.openat(dirFd, cstr("."), O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600) as number,
    close: (fd) => s.close(fd) as number,
    errno,
  };
  return calls;
}

/**
 * A nameless file for `sizeMiB` of guest RAM on a detached huge-page tmpfs,
 * close-on-exec (the caller passes it to QEMU through spawn's stdio, then
 * closes its copy). Returns an error string instead when the kernel or the
 * caller's privileges do not allow it (the caller falls back to a memfd).
 */
export function openHugeGuestRam(sizeMiB: number): { fd: number } | { error: string } {
  let c: Calls;
  try {
    c = libc();
  } catch (e) {
    return { error: `bun:ffi: ${(e as Error).message}` };
  }
  let fs = -1;
  let mnt = -1;
  try {
    fs = c.fsopen("tmpfs");
    if (fs < 0) return { error: `fsopen(tmpfs): errno ${c.errno()}` };
    // size= caps the file at the guest's RAM; huge=always is the point; mode: only we (and QEMU, root) use it.
    for (const [key, value] of [["size", `${sizeMiB}m`], ["huge", "always"], ["mode", "0700"], ["nr_inodes", "16"]] as const) {
      if (c.fsconfigString(fs, key, value) < 0) return { error: `tmpfs ${key}=${value}: errno ${c.errno()}` };
    }
    if (c.fsconfigCreate(fs) < 0) return { error: `tmpfs create: errno ${c.errno()}` };
    mnt = c.fsmount(fs, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    if (mnt < 0) return { error: `fsmount: errno ${c.errno()}` };
    const fd = c.openTmpfile(mnt);
    if (fd < 0) return { error: `open(O_TMPFILE) on the tmpfs: errno ${c.errno()}` };
    return { fd };
  } finally {
    if (mnt >= 0) c.close(mnt);
    if (fs >= 0) c.close(fs);
  }
}
