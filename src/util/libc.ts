/**
 * The few libc calls the Bun process needs and Node's APIs do not offer.
 * Loaded lazily: dlopen costs ~0.5 ms, and most verbs never need it.
 */
import type { Pointer } from "bun:ffi";

interface Libc {
  flock(fd: number, op: number): number;
  mkfifo(path: Uint8Array, mode: number): number;
  prctl(option: number, arg2: number, arg3: number, arg4: number, arg5: number): number;
  errno(): number;
}

let loaded: Libc | undefined;

function libc(): Libc {
  if (loaded) return loaded;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { dlopen, FFIType, read } = require("bun:ffi") as typeof import("bun:ffi");
  const lib = dlopen("libc.so.6", {
    flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    mkfifo: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    prctl: { args: [FFIType.i32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64], returns: FFIType.i32 },
    __errno_location: { args: [], returns: FFIType.ptr },
  });
  const s = lib.symbols;
  loaded = {
    flock: (fd, op) => s.flock(fd, op) as number,
    mkfifo: (path, mode) => s.mkfifo(path, mode) as number,
    prctl: (o, a, b, c, d) => s.prctl(o, a, b, c, d) as number,
    errno: () => read.i32(s.__errno_location() as Pointer, 0),
  };
  return loaded;
}

export const LOCK_EX = 2;
export const LOCK_NB = 4;

/** flock(2); returns 0 or the errno. */
export function flock(fd: number, op: number): number {
  const l = libc();
  return l.flock(fd, op) === 0 ? 0 : l.errno();
}

export function cString(s: string): Uint8Array {
  return new TextEncoder().encode(s + "\0");
}

/** PR_SET_CHILD_SUBREAPER, so that a foreground container's orphans are ours to reap. */
export function setChildSubreaper(): number {
  const l = libc();
  return l.prctl(36, 1, 0, 0, 0) === 0 ? 0 : l.errno();
}

/** mkfifo(3); returns 0 or the errno. */
export function mkfifo(path: string, mode: number): number {
  const l = libc();
  return l.mkfifo(cString(path), mode) === 0 ? 0 : l.errno();
}
