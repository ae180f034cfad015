/**
 * The syscall ABIs the compiler can build rules for, keyed by their
 * runtime-spec (libseccomp) names.
 */
import { AUDIT_ARCH, X32_SYSCALL_BIT } from "./abi.ts";
import { AARCH64_SYSCALLS } from "./syscalls-aarch64.ts";
import { ARM_SYSCALLS } from "./syscalls-arm.ts";
import { I386_SYSCALLS } from "./syscalls-i386.ts";
import { X32_SYSCALLS } from "./syscalls-x32.ts";
import { X86_64_SYSCALLS } from "./syscalls-x86_64.ts";

export type NativeArch = "x86_64" | "aarch64";

export interface SyscallAbi {
  /** "SCMP_ARCH_X86_64" etc. */
  readonly scmpName: string;
  /** seccomp_data.arch for processes of this ABI. */
  readonly auditArch: number;
  readonly table: Readonly<Record<string, number>>;
  /** Added to a table number to get seccomp_data.nr (__X32_SYSCALL_BIT for x32). */
  readonly nrBias: number;
  /**
   * 32-bit ABIs pass 32-bit registers, so libseccomp compares only the low
   * halves of arguments there; we do the same so a profile means the same thing.
   */
  readonly argBits: 32 | 64;
}

export const SYSCALL_ABIS: Readonly<Record<string, SyscallAbi>> = {
  SCMP_ARCH_X86_64: { scmpName: "SCMP_ARCH_X86_64", auditArch: AUDIT_ARCH.X86_64, table: X86_64_SYSCALLS, nrBias: 0, argBits: 64 },
  SCMP_ARCH_X32: { scmpName: "SCMP_ARCH_X32", auditArch: AUDIT_ARCH.X86_64, table: X32_SYSCALLS, nrBias: X32_SYSCALL_BIT, argBits: 64 },
  SCMP_ARCH_X86: { scmpName: "SCMP_ARCH_X86", auditArch: AUDIT_ARCH.I386, table: I386_SYSCALLS, nrBias: 0, argBits: 32 },
  SCMP_ARCH_AARCH64: { scmpName: "SCMP_ARCH_AARCH64", auditArch: AUDIT_ARCH.AARCH64, table: AARCH64_SYSCALLS, nrBias: 0, argBits: 64 },
  SCMP_ARCH_ARM: { scmpName: "SCMP_ARCH_ARM", auditArch: AUDIT_ARCH.ARM, table: ARM_SYSCALLS, nrBias: 0, argBits: 32 },
};

/** libseccomp always filters the native ABI, whether or not the profile lists it. */
export const NATIVE_ABI: Readonly<Record<NativeArch, string>> = {
  x86_64: "SCMP_ARCH_X86_64",
  aarch64: "SCMP_ARCH_AARCH64",
};

/** The number seccomp_data.nr carries for `name` on `abi`, or undefined when the ABI lacks it. */
export function syscallNumber(abi: SyscallAbi, name: string): number | undefined {
  // Object.hasOwn: a profile naming "constructor" must not find Object.prototype's.
  if (!Object.hasOwn(abi.table, name)) return undefined;
  return (abi.table[name] as number) + abi.nrBias;
}

/** True when some ABI we have a table for knows the name. */
export function isKnownSyscall(name: string): boolean {
  return Object.values(SYSCALL_ABIS).some((abi) => Object.hasOwn(abi.table, name));
}
