/**
 * bpf(2) through bun:ffi's libc syscall(): the handful of commands the cgroup
 * v2 device program needs. union bpf_attr layouts are from
 * include/uapi/linux/bpf.h (offsets checked against the kernel headers with
 * offsetof); fields not set stay zero, which the kernel requires of every
 * byte past the command's last field.
 *
 * libc is opened lazily, on the first call: most verbs never need bpf(2).
 */
import { closeSync, constants as fsConstants, openSync } from "node:fs";
import { constants as osConstants } from "node:os";
import type { Pointer } from "bun:ffi";
import { openLibc } from "../util/ffi.ts";
import { CgroupError, errnoCode } from "./errors.ts";

export const BPF_PROG_TYPE_CGROUP_DEVICE = 15;
/** enum bpf_attach_type */
export const BPF_CGROUP_DEVICE = 6;
/** Several programs may sit on one cgroup; all of them (and the ancestors') must allow. */
export const BPF_F_ALLOW_MULTI = 2;

const BPF_PROG_LOAD = 5;
const BPF_PROG_ATTACH = 8;
const BPF_PROG_DETACH = 9;
const BPF_PROG_GET_FD_BY_ID = 13;
const BPF_OBJ_GET_INFO_BY_FD = 15;
const BPF_PROG_QUERY = 16;

const COMMAND_NAMES: Record<number, string> = {
  [BPF_PROG_LOAD]: "BPF_PROG_LOAD",
  [BPF_PROG_ATTACH]: "BPF_PROG_ATTACH",
  [BPF_PROG_DETACH]: "BPF_PROG_DETACH",
  [BPF_PROG_GET_FD_BY_ID]: "BPF_PROG_GET_FD_BY_ID",
  [BPF_OBJ_GET_INFO_BY_FD]: "BPF_OBJ_GET_INFO_BY_FD",
  [BPF_PROG_QUERY]: "BPF_PROG_QUERY",
};

/** The syscall number of bpf per architecture (arch/<arch>/.../syscall tables). */
const SYS_BPF: Partial<Record<NodeJS.Architecture, number>> = { x64: 321, arm64: 280, riscv64: 280, loong64: 280, ppc64: 361, s390x: 351 };

/** BPF_OBJ_NAME_LEN: names are at most 15 characters plus NUL. */
const OBJ_NAME_LEN = 16;
/** Enough of union bpf_attr for every command used here (the kernel's is 144 bytes on 6.x). */
const ATTR_SIZE = 128;
/** struct bpf_prog_info up to and including name[16]. */
const PROG_INFO_SIZE = 80;

export interface BpfProgramInfo {
  type: number;
  id: number;
  /** prog_name as loaded. */
  name: string;
  /** Size of the program after the verifier's rewrites, in bytes (8 per instruction). */
  xlatedBytes: number;
  /** Size of the JIT-compiled code in bytes (0 without JIT). */
  jitedBytes: number;
}

/**
 * The bpf(2) commands (and the fd plumbing around them) that cgroup code
 * uses. Tests substitute an in-memory kernel; bpfSyscalls() is the real one.
 * Every method throws CgroupError("cgroup-bpf-failed") with the errno name.
 */
export interface BpfSyscalls {
  /** open(dir, O_RDONLY | O_DIRECTORY): the fd BPF_PROG_ATTACH/DETACH/QUERY take for a cgroup. */
  openCgroup(dir: string): number;
  close(fd: number): void;
  /** BPF_PROG_LOAD; returns the program fd. */
  progLoad(opts: { type: number; bytecode: Uint8Array; license: string; name: string }): number;
  /** BPF_PROG_ATTACH. */
  progAttach(cgroupFd: number, progFd: number, attachType: number, flags: number): void;
  /** BPF_PROG_DETACH of one program (needs BPF_F_ALLOW_MULTI attachments). */
  progDetach(cgroupFd: number, progFd: number, attachType: number): void;
  /** BPF_PROG_QUERY: ids of the programs attached to this cgroup itself (not inherited ones). */
  progQuery(cgroupFd: number, attachType: number): number[];
  /** BPF_PROG_GET_FD_BY_ID. */
  progFdById(id: number): number;
  /** BPF_OBJ_GET_INFO_BY_FD. */
  progInfo(progFd: number): BpfProgramInfo;
}

let errnoNames: Map<number, string> | undefined;

export function errnoName(errno: number): string {
  if (!errnoNames) {
    errnoNames = new Map();
    for (const [name, value] of Object.entries(osConstants.errno)) if (!errnoNames.has(value)) errnoNames.set(value, name);
  }
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

interface Libc {
  syscall(nr: number, cmd: number, attr: Uint8Array, size: number): number;
  errno(): number;
  address(buffer: Uint8Array): bigint;
}

let libc: Libc | undefined;

function loadLibc(): Libc {
  if (libc) return libc;
  const nr = SYS_BPF[process.arch];
  if (nr === undefined) {
    throw new CgroupError("cgroup-resource-unsupported", `linux.resources.devices: bpf(2) is not wired for ${process.arch} in nano-kata`);
  }
  // syscall(2) is variadic; on x86-64 and arm64 Linux, integer arguments of a
  // variadic call travel in the same registers as fixed ones, and glibc's
  // syscall() just moves them into place.
  const { fns: s, errno, ffi: { ptr } } = openLibc((FFIType) => ({
    syscall: { args: [FFIType.i64, FFIType.i64, FFIType.ptr, FFIType.i64], returns: FFIType.i64_fast },
  }));
  libc = {
    syscall: (n, cmd, attr, size) => Number(s.syscall(n, cmd, attr, size)),
    errno,
    address: (buffer) => BigInt(ptr(buffer)),
  };
  return libc;
}

/** Thrown inside this module with the errno number; callers see CgroupError. */
function bpfFailed(cmd: number, errno: number, detail = ""): CgroupError {
  const name = errnoName(errno);
  return new CgroupError("cgroup-bpf-failed", `bpf(${COMMAND_NAMES[cmd] ?? cmd}) failed: ${name}${detail}`, name);
}

/** bpf(cmd, attr, size): the result, or [-1, errno]. */
function bpf(cmd: number, attr: Uint8Array): { result: number; errno: number } {
  const l = loadLibc();
  const result = l.syscall(SYS_BPF[process.arch]!, cmd, attr, attr.length);
  return { result, errno: result < 0 ? l.errno() : 0 };
}

function call(cmd: number, attr: Uint8Array): number {
  const { result, errno } = bpf(cmd, attr);
  if (result < 0) throw bpfFailed(cmd, errno);
  return result;
}

function cString(text: string): Uint8Array {
  return new TextEncoder().encode(text + "\0");
}

function requireObjectName(name: string): void {
  // The kernel accepts only [A-Za-z0-9_.] in object names (bpf_obj_name_cpy).
  if (!/^[A-Za-z0-9_.]{0,15}$/.test(name)) throw new CgroupError("cgroup-bpf-failed", `bpf program name ${JSON.stringify(name)} is not 0-15 of [A-Za-z0-9_.]`);
}

function progLoad(opts: { type: number; bytecode: Uint8Array; license: string; name: string }): number {
  requireObjectName(opts.name);
  if (opts.bytecode.length === 0 || opts.bytecode.length % 8 !== 0) {
    throw new CgroupError("cgroup-bpf-failed", `bpf(BPF_PROG_LOAD): ${opts.bytecode.length} bytes is not a whole number of instructions`);
  }
  const l = loadLibc();
  const license = cString(opts.license);
  const attempt = (log: Uint8Array | undefined): { result: number; errno: number } => {
    const attr = new Uint8Array(ATTR_SIZE);
    const view = new DataView(attr.buffer);
    view.setUint32(0, opts.type, true); // prog_type
    view.setUint32(4, opts.bytecode.length / 8, true); // insn_cnt
    view.setBigUint64(8, l.address(opts.bytecode), true); // insns
    view.setBigUint64(16, l.address(license), true); // license
    if (log) {
      view.setUint32(24, 1, true); // log_level
      view.setUint32(28, log.length, true); // log_size
      view.setBigUint64(32, l.address(log), true); // log_buf
    }
    attr.set(new TextEncoder().encode(opts.name), 48); // prog_name[16]
    return bpf(BPF_PROG_LOAD, attr);
  };
  const first = attempt(undefined);
  if (first.result >= 0) return first.result;
  // Load again with the verifier log, only to explain the failure.
  const log = new Uint8Array(64 * 1024);
  const second = attempt(log);
  if (second.result >= 0) return second.result;
  const end = log.indexOf(0);
  const text = new TextDecoder().decode(log.subarray(0, end < 0 ? log.length : end)).trim();
  const tail = text.length > 1500 ? `...${text.slice(-1500)}` : text;
  throw bpfFailed(BPF_PROG_LOAD, second.errno, tail ? ` (verifier: ${tail})` : "");
}

function progAttachOrDetach(cmd: number, cgroupFd: number, progFd: number, attachType: number, flags: number): void {
  const attr = new Uint8Array(ATTR_SIZE);
  const view = new DataView(attr.buffer);
  view.setUint32(0, cgroupFd, true); // target_fd
  view.setUint32(4, progFd, true); // attach_bpf_fd
  view.setUint32(8, attachType, true); // attach_type
  view.setUint32(12, flags, true); // attach_flags
  call(cmd, attr);
}

function progQuery(cgroupFd: number, attachType: number): number[] {
  const l = loadLibc();
  for (let capacity = 64; ; ) {
    const ids = new Uint32Array(capacity);
    const idBytes = new Uint8Array(ids.buffer);
    const attr = new Uint8Array(ATTR_SIZE);
    const view = new DataView(attr.buffer);
    view.setUint32(0, cgroupFd, true); // query.target_fd
    view.setUint32(4, attachType, true); // query.attach_type
    view.setBigUint64(16, l.address(idBytes), true); // query.prog_ids
    view.setUint32(24, capacity, true); // query.prog_cnt
    const { result, errno } = bpf(BPF_PROG_QUERY, attr);
    const count = view.getUint32(24, true);
    // ENOSPC: more programs than room; prog_cnt now says how many.
    if (result < 0 && errnoName(errno) === "ENOSPC" && count > capacity) {
      capacity = count;
      continue;
    }
    if (result < 0) throw bpfFailed(BPF_PROG_QUERY, errno);
    return [...ids.subarray(0, count)];
  }
}

function progFdById(id: number): number {
  const attr = new Uint8Array(ATTR_SIZE);
  new DataView(attr.buffer).setUint32(0, id, true); // prog_id
  return call(BPF_PROG_GET_FD_BY_ID, attr);
}

function progInfo(progFd: number): BpfProgramInfo {
  const l = loadLibc();
  const info = new Uint8Array(PROG_INFO_SIZE);
  const attr = new Uint8Array(ATTR_SIZE);
  const view = new DataView(attr.buffer);
  view.setUint32(0, progFd, true); // info.bpf_fd
  view.setUint32(4, info.length, true); // info.info_len
  view.setBigUint64(8, l.address(info), true); // info.info
  call(BPF_OBJ_GET_INFO_BY_FD, attr);
  const iv = new DataView(info.buffer);
  const nameBytes = info.subarray(64, 64 + OBJ_NAME_LEN);
  const end = nameBytes.indexOf(0);
  return {
    type: iv.getUint32(0, true),
    id: iv.getUint32(4, true),
    jitedBytes: iv.getUint32(16, true),
    xlatedBytes: iv.getUint32(20, true),
    name: new TextDecoder().decode(nameBytes.subarray(0, end < 0 ? OBJ_NAME_LEN : end)),
  };
}

function openCgroup(dir: string): number {
  try {
    return openSync(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW);
  } catch (error) {
    const code = errnoCode(error);
    throw new CgroupError("cgroup-bpf-failed", `opening ${dir} for bpf(2) failed: ${code ?? (error as Error).message}`, code);
  }
}

let real: BpfSyscalls | undefined;

/** The real bpf(2) (libc loaded on first use). */
export function bpfSyscalls(): BpfSyscalls {
  real ??= {
    openCgroup,
    close: (fd) => closeSync(fd),
    progLoad,
    progAttach: (cgroupFd, progFd, attachType, flags) => progAttachOrDetach(BPF_PROG_ATTACH, cgroupFd, progFd, attachType, flags),
    progDetach: (cgroupFd, progFd, attachType) => progAttachOrDetach(BPF_PROG_DETACH, cgroupFd, progFd, attachType, 0),
    progQuery,
    progFdById,
    progInfo,
  };
  return real;
}
