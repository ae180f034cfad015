import { describe, expect, test } from "bun:test";
import { X32_SYSCALL_BIT } from "../../src/seccomp/abi.ts";
import { isKnownSyscall, SYSCALL_ABIS, syscallNumber } from "../../src/seccomp/arch.ts";

const number = (abi: string, name: string) => syscallNumber(SYSCALL_ABIS[abi]!, name);

describe("syscall tables", () => {
  // Numbers from the kernel's syscall tables, spot-checked per ABI.
  const known: Array<[string, string, number | undefined]> = [
    ["SCMP_ARCH_X86_64", "read", 0],
    ["SCMP_ARCH_X86_64", "execve", 59],
    ["SCMP_ARCH_X86_64", "clone", 56],
    ["SCMP_ARCH_X86_64", "mount", 165],
    ["SCMP_ARCH_X86_64", "unshare", 272],
    ["SCMP_ARCH_X86_64", "pidfd_open", 434],
    ["SCMP_ARCH_X86_64", "clone3", 435],
    ["SCMP_ARCH_X86_64", "close_range", 436],
    ["SCMP_ARCH_X86_64", "openat2", 437],
    ["SCMP_ARCH_X86_64", "faccessat2", 439],
    ["SCMP_ARCH_X86_64", "set_mempolicy_home_node", 450],
    ["SCMP_ARCH_X86_64", "cachestat", 451],
    ["SCMP_ARCH_X86_64", "mseal", 462],
    ["SCMP_ARCH_X86_64", "file_setattr", 469],
    ["SCMP_ARCH_X86_64", "uretprobe", 335],
    ["SCMP_ARCH_X86_64", "socketcall", undefined],
    ["SCMP_ARCH_X32", "read", X32_SYSCALL_BIT | 0],
    ["SCMP_ARCH_X32", "execve", X32_SYSCALL_BIT | 520],
    ["SCMP_ARCH_X32", "rt_sigaction", X32_SYSCALL_BIT | 512],
    ["SCMP_ARCH_X32", "openat2", X32_SYSCALL_BIT | 437],
    ["SCMP_ARCH_X86", "read", 3],
    ["SCMP_ARCH_X86", "socketcall", 102],
    ["SCMP_ARCH_X86", "clone", 120],
    ["SCMP_ARCH_X86", "clone3", 435],
    ["SCMP_ARCH_X86", "mseal", 462],
    ["SCMP_ARCH_AARCH64", "read", 63],
    ["SCMP_ARCH_AARCH64", "openat", 56],
    ["SCMP_ARCH_AARCH64", "clone", 220],
    ["SCMP_ARCH_AARCH64", "renameat", 38],
    ["SCMP_ARCH_AARCH64", "fstat", 80],
    ["SCMP_ARCH_AARCH64", "memfd_secret", 447],
    ["SCMP_ARCH_AARCH64", "mseal", 462],
    ["SCMP_ARCH_AARCH64", "open", undefined],
    ["SCMP_ARCH_AARCH64", "fork", undefined],
    ["SCMP_ARCH_ARM", "read", 3],
    ["SCMP_ARCH_ARM", "set_tls", 0x0f0005],
    ["SCMP_ARCH_ARM", "cacheflush", 0x0f0002],
    ["SCMP_ARCH_ARM", "sync_file_range2", 341],
    ["SCMP_ARCH_ARM", "memfd_secret", undefined],
  ];
  for (const [abi, name, expected] of known) {
    test(`${abi} ${name} = ${expected}`, () => {
      expect(number(abi, name)).toBe(expected === undefined ? undefined : expected >>> 0);
    });
  }

  test("tables are complete enough: every ABI knows the basics and numbers are unique per name", () => {
    for (const abi of Object.values(SYSCALL_ABIS)) {
      const entries = Object.entries(abi.table);
      expect(entries.length).toBeGreaterThan(300);
      for (const name of ["read", "write", "exit_group", "execve", "openat", "mprotect", "futex", "listns"]) {
        expect(`${abi.scmpName} ${name} ${Object.hasOwn(abi.table, name)}`).toBe(`${abi.scmpName} ${name} true`);
      }
      // Only ARM has true aliases (sync_file_range2 is arm_sync_file_range).
      const byNumber = new Map<number, string[]>();
      for (const [name, nr] of entries) byNumber.set(nr, [...(byNumber.get(nr) ?? []), name]);
      const aliases = [...byNumber.values()].filter((names) => names.length > 1);
      expect(aliases).toEqual(abi.scmpName === "SCMP_ARCH_ARM" ? [["arm_sync_file_range", "sync_file_range2"]] : []);
    }
  });

  test("lookups ignore Object.prototype", () => {
    expect(isKnownSyscall("constructor")).toBe(false);
    expect(isKnownSyscall("__proto__")).toBe(false);
    expect(isKnownSyscall("hasOwnProperty")).toBe(false);
    expect(isKnownSyscall("read")).toBe(true);
  });
});
