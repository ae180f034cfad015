/**
 * libc through bun:ffi, for the few calls Node's APIs lack (flock, ptys,
 * taps, bpf(2), the new mount API, ...). Each caller opens the symbols it
 * needs on first use, never at import: loading bun:ffi and dlopen cost
 * ~0.5 ms, and most CLI calls need neither.
 */
import type { ConvertFns, FFIFunction, Pointer } from "bun:ffi";

type Ffi = typeof import("bun:ffi");

export interface Libc<D extends Record<string, FFIFunction>> {
  /** The functions asked for, callable. */
  fns: ConvertFns<D>;
  /** errno of this thread, as the last failed call left it. */
  errno(): number;
  /** bun:ffi itself (ptr, read, CString), already loaded. */
  ffi: Ffi;
}

/** dlopen libc.so.6 for the functions `declare` names (given FFIType), plus errno. */
export function openLibc<D extends Record<string, FFIFunction>>(declare: (type: Ffi["FFIType"]) => D): Libc<D> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const ffi = require("bun:ffi") as Ffi;
  const lib = ffi.dlopen("libc.so.6", { ...declare(ffi.FFIType), __errno_location: { args: [], returns: ffi.FFIType.ptr } });
  const errnoLocation = lib.symbols.__errno_location as unknown as () => Pointer;
  return { fns: lib.symbols as unknown as ConvertFns<D>, errno: () => ffi.read.i32(errnoLocation(), 0), ffi };
}
