/**
 * The kernel side of seccomp: what a filter reads (struct seccomp_data) and
 * what it may return. Values from <linux/seccomp.h>, <linux/audit.h> and
 * <asm/unistd.h>.
 */

/**
 * struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }.
 * Every arch we target is little-endian, so an argument's low 32 bits sit at
 * its offset and the high 32 bits four bytes later.
 */
export const SECCOMP_DATA = {
  nr: 0,
  arch: 4,
  instructionPointer: 8,
  args: 16,
  size: 64,
} as const;

export function argLowOffset(index: number): number {
  return SECCOMP_DATA.args + 8 * index;
}

export function argHighOffset(index: number): number {
  return SECCOMP_DATA.args + 8 * index + 4;
}

/** A filter's verdict: action in the top 16 bits, data (an errno, a tracer cookie) in the low 16. */
export const SECCOMP_RET = {
  KILL_PROCESS: 0x8000_0000,
  KILL_THREAD: 0x0000_0000,
  TRAP: 0x0003_0000,
  ERRNO: 0x0005_0000,
  USER_NOTIF: 0x7fc0_0000,
  TRACE: 0x7ff0_0000,
  LOG: 0x7ffc_0000,
  ALLOW: 0x7fff_0000,
} as const;

export const SECCOMP_RET_ACTION_FULL = 0xffff_0000;
export const SECCOMP_RET_DATA = 0x0000_ffff;

/** Flags of seccomp(SECCOMP_SET_MODE_FILTER, flags, prog). */
export const SECCOMP_FILTER_FLAG = {
  TSYNC: 1 << 0,
  LOG: 1 << 1,
  SPEC_ALLOW: 1 << 2,
  NEW_LISTENER: 1 << 3,
  TSYNC_ESRCH: 1 << 4,
  WAIT_KILLABLE_RECV: 1 << 5,
} as const;

/** AUDIT_ARCH_* = EM_* | __AUDIT_ARCH_64BIT (0x80000000) | __AUDIT_ARCH_LE (0x40000000). */
export const AUDIT_ARCH = {
  X86_64: 0xc000_003e,
  I386: 0x4000_0003,
  AARCH64: 0xc000_00b7,
  ARM: 0x4000_0028,
} as const;

/** x32 processes run on AUDIT_ARCH_X86_64 and mark their syscall numbers with this bit. */
export const X32_SYSCALL_BIT = 0x4000_0000;

export const EPERM = 1;
export const ENOSYS = 38;

/** Renders a verdict the way strace and the kernel docs name it, for notes and test failures. */
export function describeVerdict(verdict: number): string {
  const action = (verdict & SECCOMP_RET_ACTION_FULL) >>> 0;
  const data = verdict & SECCOMP_RET_DATA;
  switch (action) {
    case SECCOMP_RET.KILL_PROCESS:
      return "KILL_PROCESS";
    case SECCOMP_RET.KILL_THREAD:
      return "KILL_THREAD";
    case SECCOMP_RET.TRAP:
      return `TRAP(${data})`;
    case SECCOMP_RET.ERRNO:
      return `ERRNO(${data})`;
    case SECCOMP_RET.USER_NOTIF:
      return "USER_NOTIF";
    case SECCOMP_RET.TRACE:
      return `TRACE(${data})`;
    case SECCOMP_RET.LOG:
      return "LOG";
    case SECCOMP_RET.ALLOW:
      return "ALLOW";
    default:
      return `0x${(verdict >>> 0).toString(16)}`;
  }
}
