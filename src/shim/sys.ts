/**
 * The libc calls the shim needs that Node's API lacks: mount/umount2 for the
 * rootfs containerd hands over, fcntl to clear O_NONBLOCK on fifo fds given
 * to a container, ioctl(TIOCSWINSZ) for ResizePty. Loaded on first use.
 */
import type { Pointer } from "bun:ffi";
import { openLibc } from "../util/ffi.ts";

interface Sys {
  mount(source: Uint8Array | null, target: Uint8Array, fstype: Uint8Array | null, flags: number, data: Uint8Array | null): number;
  umount2(target: Uint8Array, flags: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  ioctl(fd: number, req: number, arg: Uint8Array): number;
  dup2(from: number, to: number): number;
  setsid(): number;
  errno(): number;
  strerror(errno: number): string;
}

let loaded: Sys | undefined;

function sys(): Sys {
  if (loaded) return loaded;
  const { fns: s, errno, ffi: { CString } } = openLibc((FFIType) => ({
    mount: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
    umount2: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i64], returns: FFIType.i32 },
    ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
    dup2: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    setsid: { args: [], returns: FFIType.i32 },
    strerror: { args: [FFIType.i32], returns: FFIType.ptr },
  }));
  loaded = {
    mount: (a, b, c, d, e) => s.mount(a, b, c, d, e) as number,
    umount2: (t, f) => s.umount2(t, f) as number,
    fcntl: (fd, cmd, arg) => s.fcntl(fd, cmd, arg) as number,
    ioctl: (fd, req, arg) => s.ioctl(fd, req, arg) as number,
    dup2: (a, b) => s.dup2(a, b) as number,
    setsid: () => s.setsid() as number,
    errno,
    strerror: (e) => new CString(s.strerror(e) as Pointer).toString(),
  };
  return loaded;
}

function cstr(s: string): Uint8Array {
  return new TextEncoder().encode(s + "\0");
}

export class SysError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
    detail: string,
  ) {
    super(`${call}: ${detail}: ${sys().strerror(errno)}`);
    this.name = "SysError";
  }
}

export function mount(source: string, target: string, fstype: string, flags: number, data: string): void {
  const s = sys();
  const r = s.mount(source ? cstr(source) : null, cstr(target), fstype ? cstr(fstype) : null, flags, data ? cstr(data) : null);
  if (r !== 0) throw new SysError("mount", s.errno(), `${fstype || "bind"} ${source} on ${target}`);
}

export const MNT_DETACH = 2;
export const EINVAL = 22;
export const ENOENT = 2;

/** umount2; returns 0 or the errno. */
export function umount(target: string, flags = 0): number {
  const s = sys();
  return s.umount2(cstr(target), flags) === 0 ? 0 : s.errno();
}

const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;

/** Clear O_NONBLOCK (a container must not inherit a non-blocking stdio fd). */
export function setBlocking(fd: number): void {
  const s = sys();
  const flags = s.fcntl(fd, F_GETFL, 0);
  if (flags < 0) throw new SysError("fcntl", s.errno(), `fd ${fd}`);
  if (flags & O_NONBLOCK && s.fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) throw new SysError("fcntl", s.errno(), `fd ${fd}`);
}

const TIOCSWINSZ = 0x5414;

/** ioctl(TIOCSWINSZ): set a terminal's size (either side of a pty works). */
export function setWindowSize(fd: number, rows: number, cols: number): void {
  const ws = new Uint8Array(8);
  const v = new DataView(ws.buffer);
  v.setUint16(0, rows, true);
  v.setUint16(2, cols, true);
  const s = sys();
  if (s.ioctl(fd, TIOCSWINSZ, ws) !== 0) throw new SysError("ioctl", s.errno(), `TIOCSWINSZ fd ${fd}`);
}

/** dup2(2); throws on failure. */
export function dup2(from: number, to: number): void {
  const s = sys();
  if (s.dup2(from, to) < 0) throw new SysError("dup2", s.errno(), `${from} -> ${to}`);
}

/** setsid(2): leave the caller's session (containerd's); returns 0 or the errno (EPERM for a group leader). */
export function setsid(): number {
  const s = sys();
  return s.setsid() < 0 ? s.errno() : 0;
}
