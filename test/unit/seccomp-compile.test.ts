import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { AUDIT_ARCH, describeVerdict, ENOSYS, EPERM, SECCOMP_FILTER_FLAG, SECCOMP_RET, X32_SYSCALL_BIT } from "../../src/seccomp/abi.ts";
import { SYSCALL_ABIS, syscallNumber } from "../../src/seccomp/arch.ts";
import { BPF_MAXINSNS, SOCK_FILTER_SIZE } from "../../src/seccomp/bpf.ts";
import { type CompiledSeccomp, compileSeccomp, type CompileOptions } from "../../src/seccomp/compile.ts";
import { disassemble } from "../../src/seccomp/disassemble.ts";
import { SeccompError } from "../../src/seccomp/errors.ts";
import { run } from "../../src/seccomp/interpret.ts";
import type { LinuxSeccomp, LinuxSeccompArg, LinuxSyscall, SeccompOperator } from "../../src/spec/types.ts";

const X86_64: CompileOptions = { nativeArch: "x86_64" };
const ALLOW = SECCOMP_RET.ALLOW;
const KILL_THREAD = SECCOMP_RET.KILL_THREAD;
const errno = (n: number) => (SECCOMP_RET.ERRNO | n) >>> 0;

/** seccomp_data.nr of `name` on an ABI ("SCMP_ARCH_X86_64" by default). */
function nr(name: string, abi = "SCMP_ARCH_X86_64"): number {
  const number = syscallNumber(SYSCALL_ABIS[abi]!, name);
  if (number === undefined) throw new Error(`${name} has no number on ${abi}`);
  return number;
}

interface Call {
  name?: string;
  nr?: number;
  abi?: string;
  arch?: number;
  args?: bigint[];
}

/** Runs one syscall through the compiled filter; verdicts print by name so failures read well. */
function verdict(compiled: CompiledSeccomp, call: Call): string {
  const abi = call.abi ?? "SCMP_ARCH_X86_64";
  const number = call.nr ?? nr(call.name!, abi);
  const arch = call.arch ?? SYSCALL_ABIS[abi]!.auditArch;
  return describeVerdict(run(compiled.program, { nr: number, arch, args: call.args }));
}

const v = describeVerdict;

function profile(syscalls: LinuxSyscall[], extra: Partial<LinuxSeccomp> = {}): LinuxSeccomp {
  return { defaultAction: "SCMP_ACT_ALLOW", syscalls, ...extra };
}

function compileError(p: LinuxSeccomp, opts: CompileOptions = X86_64): SeccompError {
  try {
    compileSeccomp(p, opts);
  } catch (error) {
    if (error instanceof SeccompError) return error;
    throw error;
  }
  throw new Error("compileSeccomp did not throw");
}

describe("verdicts", () => {
  test("default allow, mkdir and mkdirat denied with errnoRet 38", () => {
    const c = compileSeccomp(profile([{ names: ["mkdir", "mkdirat"], action: "SCMP_ACT_ERRNO", errnoRet: 38 }]), X86_64);
    expect(verdict(c, { name: "mkdir" })).toBe(v(errno(38)));
    expect(verdict(c, { name: "mkdirat" })).toBe(v(errno(38)));
    expect(verdict(c, { name: "read" })).toBe("ALLOW");
    expect(verdict(c, { name: "rmdir" })).toBe("ALLOW");
    // A permissive default gets no -ENOSYS stub: far-away numbers are allowed too.
    expect(verdict(c, { nr: 1000 })).toBe("ALLOW");
    expect(c.flags).toBe(0);
    expect(c.needsNotifyListener).toBe(false);
    expect(c.notes).toEqual([]);
  });

  test("default ERRNO with an allow list; defaultErrnoRet and the -ENOSYS stub", () => {
    const p = profile([{ names: ["read", "write", "exit_group"], action: "SCMP_ACT_ALLOW" }], {
      defaultAction: "SCMP_ACT_ERRNO",
      defaultErrnoRet: 13,
    });
    const c = compileSeccomp(p, X86_64);
    expect(verdict(c, { name: "read" })).toBe("ALLOW");
    expect(verdict(c, { name: "write" })).toBe("ALLOW");
    expect(verdict(c, { name: "exit_group" })).toBe("ALLOW");
    expect(verdict(c, { name: "close" })).toBe(v(errno(13)));
    // exit_group (231) is the highest number named: anything above is "newer than the profile".
    expect(verdict(c, { name: "openat" })).toBe(v(errno(ENOSYS)));
    expect(verdict(c, { nr: nr("exit_group") + 1 })).toBe(v(errno(ENOSYS)));
    expect(verdict(c, { name: "clone3" })).toBe(v(errno(ENOSYS)));
    expect(verdict(c, { nr: nr("exit_group") - 1 })).toBe(v(errno(13)));

    const withoutStub = compileSeccomp(p, { ...X86_64, enosysForNewerSyscalls: false });
    expect(verdict(withoutStub, { name: "clone3" })).toBe(v(errno(13)));
  });

  test("the -ENOSYS stub follows runc: only for defaults that block", () => {
    const withDefault = (defaultAction: LinuxSeccomp["defaultAction"], defaultErrnoRet?: number) =>
      compileSeccomp(profile([{ names: ["getpid"], action: "SCMP_ACT_NOTIFY" }], { defaultAction, defaultErrnoRet, listenerPath: "/run/a.sock" }), X86_64);
    const newer = { name: "mseal" };
    expect(verdict(withDefault("SCMP_ACT_KILL_PROCESS"), newer)).toBe(v(errno(ENOSYS)));
    expect(verdict(withDefault("SCMP_ACT_TRAP"), newer)).toBe(v(errno(ENOSYS)));
    expect(verdict(withDefault("SCMP_ACT_LOG"), newer)).toBe("LOG");
    expect(verdict(withDefault("SCMP_ACT_TRACE", 9), newer)).toBe(v((SECCOMP_RET.TRACE | 9) >>> 0));
    // Below the highest named syscall the default still applies.
    expect(verdict(withDefault("SCMP_ACT_KILL_PROCESS"), { name: "read" })).toBe("KILL_PROCESS");
  });

  test("ERRNO without errnoRet means EPERM, as runtime-spec says", () => {
    const c = compileSeccomp(profile([{ names: ["mount"], action: "SCMP_ACT_ERRNO" }]), X86_64);
    expect(verdict(c, { name: "mount" })).toBe(v(errno(EPERM)));
  });

  test("every action maps to its SECCOMP_RET value", () => {
    const cases: Array<[LinuxSyscall["action"], number | undefined, number]> = [
      ["SCMP_ACT_KILL", undefined, SECCOMP_RET.KILL_THREAD],
      ["SCMP_ACT_KILL_THREAD", undefined, SECCOMP_RET.KILL_THREAD],
      ["SCMP_ACT_KILL_PROCESS", undefined, SECCOMP_RET.KILL_PROCESS],
      ["SCMP_ACT_TRAP", undefined, SECCOMP_RET.TRAP],
      ["SCMP_ACT_ERRNO", 5, errno(5)],
      ["SCMP_ACT_TRACE", 7, (SECCOMP_RET.TRACE | 7) >>> 0],
      ["SCMP_ACT_TRACE", undefined, (SECCOMP_RET.TRACE | EPERM) >>> 0],
      ["SCMP_ACT_LOG", undefined, SECCOMP_RET.LOG],
      ["SCMP_ACT_NOTIFY", undefined, SECCOMP_RET.USER_NOTIF],
    ];
    for (const [action, errnoRet, expected] of cases) {
      const rule: LinuxSyscall = { names: ["getpid"], action, ...(errnoRet === undefined ? {} : { errnoRet }) };
      const c = compileSeccomp(profile([rule], { listenerPath: "/run/agent.sock" }), X86_64);
      expect(run(c.program, { nr: nr("getpid"), arch: AUDIT_ARCH.X86_64 })).toBe(expected);
    }
  });

  test("unknown syscall names are skipped with a note naming the path", () => {
    const c = compileSeccomp(profile([{ names: ["read", "not_a_syscall", "getpid"], action: "SCMP_ACT_ERRNO" }]), X86_64);
    expect(c.notes).toContain('linux.seccomp.syscalls[0].names[1]: unknown syscall "not_a_syscall" skipped');
    expect(verdict(c, { name: "read" })).toBe(v(errno(EPERM)));
    expect(verdict(c, { name: "getpid" })).toBe(v(errno(EPERM)));
    // Names that only exist on another ABI are silently per-ABI, not "unknown".
    const c2 = compileSeccomp(profile([{ names: ["socketcall"], action: "SCMP_ACT_ERRNO" }]), X86_64);
    expect(c2.notes).toEqual([]);
  });

  test("Object.prototype names are not syscalls", () => {
    const c = compileSeccomp(profile([{ names: ["constructor", "tostring"], action: "SCMP_ACT_ERRNO" }]), X86_64);
    expect(c.notes).toHaveLength(2);
  });

  test("a rule with the default's verdict is skipped; a different errno is not", () => {
    const p = profile(
      [
        { names: ["mount"], action: "SCMP_ACT_ERRNO" },
        { names: ["umount2"], action: "SCMP_ACT_ERRNO", errnoRet: 38 },
        { names: ["read"], action: "SCMP_ACT_ALLOW" },
      ],
      { defaultAction: "SCMP_ACT_ERRNO" },
    );
    const c = compileSeccomp(p, X86_64);
    expect(c.notes).toContain("linux.seccomp.syscalls[0]: same verdict as defaultAction; skipped");
    expect(verdict(c, { name: "umount2" })).toBe(v(errno(38)));
    expect(verdict(c, { name: "mount" })).toBe(v(errno(EPERM)));
  });
});

// ---------------------------------------------------------------- arguments

/** What the kernel-side comparison must answer, in plain bigint arithmetic. */
function holds(op: SeccompOperator, arg: bigint, value: bigint, valueTwo: bigint): boolean {
  switch (op) {
    case "SCMP_CMP_EQ":
      return arg === value;
    case "SCMP_CMP_NE":
      return arg !== value;
    case "SCMP_CMP_LT":
      return arg < value;
    case "SCMP_CMP_LE":
      return arg <= value;
    case "SCMP_CMP_GT":
      return arg > value;
    case "SCMP_CMP_GE":
      return arg >= value;
    case "SCMP_CMP_MASKED_EQ":
      return (arg & value) === valueTwo;
  }
}

const OPERATORS: SeccompOperator[] = ["SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_GT", "SCMP_CMP_GE", "SCMP_CMP_MASKED_EQ"];

/** Values around the 32-bit boundary, where comparing halves goes wrong first. */
const EDGES: bigint[] = [
  0n,
  1n,
  0x7fff_ffffn,
  0xffff_fffen,
  0xffff_ffffn,
  0x1_0000_0000n,
  0x1_0000_0001n,
  0x1_ffff_ffffn,
  0x2_0000_0000n,
  0xffff_ffff_0000_0000n,
  0xffff_ffff_ffff_fffen,
  0xffff_ffff_ffff_ffffn,
];

/** A rule's JSON value; above 2^53 a double cannot hold it, so pass the exact bigint. */
function jsonValue(value: bigint): number {
  return (value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value) as unknown as number;
}

function argRule(args: LinuxSeccompArg[], errnoRet = 99): LinuxSyscall {
  return { names: ["getpid"], action: "SCMP_ACT_ERRNO", errnoRet, args };
}

describe("argument conditions", () => {
  for (const op of OPERATORS) {
    test(`${op} on 64-bit values matches unsigned bigint comparison`, () => {
      for (const value of EDGES) {
        const valueTwo = op === "SCMP_CMP_MASKED_EQ" ? value & 0x1_0000_00f0n : 0n;
        const rule = argRule([{ index: 2, op, value: jsonValue(value), valueTwo: jsonValue(valueTwo) }]);
        const c = compileSeccomp(profile([rule]), X86_64);
        for (const arg of EDGES) {
          const expected = holds(op, arg, value, valueTwo) ? v(errno(99)) : "ALLOW";
          const got = verdict(c, { name: "getpid", args: [0n, 0n, arg] });
          if (got !== expected) {
            throw new Error(`${op} value=0x${value.toString(16)} arg=0x${arg.toString(16)}: got ${got}\n${disassemble(c.program).join("\n")}`);
          }
        }
      }
    });
  }

  test("the high half decides: 0x1_0000_0000 against 0xffff_ffff", () => {
    const lt = compileSeccomp(profile([argRule([{ index: 0, op: "SCMP_CMP_LT", value: 0x1_0000_0000 }])]), X86_64);
    expect(verdict(lt, { name: "getpid", args: [0xffff_ffffn] })).toBe(v(errno(99)));
    expect(verdict(lt, { name: "getpid", args: [0x1_0000_0000n] })).toBe("ALLOW");
    // Low halves alone (0 vs 0xffffffff) would say the opposite.
    const gt = compileSeccomp(profile([argRule([{ index: 0, op: "SCMP_CMP_GT", value: 0xffff_ffff }])]), X86_64);
    expect(verdict(gt, { name: "getpid", args: [0x1_0000_0000n] })).toBe(v(errno(99)));
    expect(verdict(gt, { name: "getpid", args: [0xffff_ffffn] })).toBe("ALLOW");
    const eq = compileSeccomp(profile([argRule([{ index: 0, op: "SCMP_CMP_EQ", value: 5 }])]), X86_64);
    expect(verdict(eq, { name: "getpid", args: [0x1_0000_0005n] })).toBe("ALLOW");
  });

  test("MASKED_EQ: clone without namespace flags", () => {
    const c = compileSeccomp(
      profile([{ names: ["clone"], action: "SCMP_ACT_ALLOW", args: [{ index: 0, op: "SCMP_CMP_MASKED_EQ", value: 0x7e02_0000, valueTwo: 0 }] }], {
        defaultAction: "SCMP_ACT_ERRNO",
      }),
      X86_64,
    );
    expect(verdict(c, { name: "clone", args: [0x0120_0011n] })).toBe("ALLOW"); // fork(): CHILD_SETTID|CHILD_CLEARTID|SIGCHLD
    expect(verdict(c, { name: "clone", args: [0x1000_0011n] })).toBe(v(errno(EPERM))); // CLONE_NEWUSER
    expect(verdict(c, { name: "clone", args: [0x0002_0000n] })).toBe(v(errno(EPERM))); // CLONE_NEWNS
  });

  test("MASKED_EQ with a mask in the high half", () => {
    const c = compileSeccomp(profile([argRule([{ index: 1, op: "SCMP_CMP_MASKED_EQ", value: jsonValue(0xffff_0000_0000_0000n), valueTwo: jsonValue(0x1234_0000_0000_0000n) }])]), X86_64);
    expect(verdict(c, { name: "getpid", args: [0n, 0x1234_5678_9abc_def0n] })).toBe(v(errno(99)));
    expect(verdict(c, { name: "getpid", args: [0n, 0x1235_0000_0000_0000n] })).toBe("ALLOW");
  });

  test("2^64 from JSON.parse stands for 2^64-1", () => {
    const parsed = JSON.parse('{"index":0,"op":"SCMP_CMP_EQ","value":18446744073709551615}') as LinuxSeccompArg;
    const c = compileSeccomp(profile([argRule([parsed])]), X86_64);
    expect(verdict(c, { name: "getpid", args: [0xffff_ffff_ffff_ffffn] })).toBe(v(errno(99)));
    expect(verdict(c, { name: "getpid", args: [0xffff_ffffn] })).toBe("ALLOW");
  });

  test("several args in one rule must all hold (AND)", () => {
    const c = compileSeccomp(
      profile([
        argRule([
          { index: 0, op: "SCMP_CMP_EQ", value: 1 },
          { index: 3, op: "SCMP_CMP_GE", value: 10 },
        ]),
      ]),
      X86_64,
    );
    expect(verdict(c, { name: "getpid", args: [1n, 0n, 0n, 10n] })).toBe(v(errno(99)));
    expect(verdict(c, { name: "getpid", args: [1n, 0n, 0n, 9n] })).toBe("ALLOW");
    expect(verdict(c, { name: "getpid", args: [2n, 0n, 0n, 10n] })).toBe("ALLOW");
  });

  test("several rules for one syscall: any may match (OR), the first in profile order decides", () => {
    const c = compileSeccomp(
      profile([argRule([{ index: 0, op: "SCMP_CMP_EQ", value: 1 }], 5), argRule([{ index: 1, op: "SCMP_CMP_EQ", value: 1 }], 6)]),
      X86_64,
    );
    expect(verdict(c, { name: "getpid", args: [1n, 1n] })).toBe(v(errno(5)));
    expect(verdict(c, { name: "getpid", args: [1n, 0n] })).toBe(v(errno(5)));
    expect(verdict(c, { name: "getpid", args: [0n, 1n] })).toBe(v(errno(6)));
    expect(verdict(c, { name: "getpid", args: [0n, 0n] })).toBe("ALLOW");
  });

  test("rules after an unconditional one are unreachable, with a note", () => {
    const c = compileSeccomp(
      profile([{ names: ["getpid"], action: "SCMP_ACT_ERRNO", errnoRet: 3 }, argRule([{ index: 0, op: "SCMP_CMP_EQ", value: 1 }])]),
      X86_64,
    );
    expect(verdict(c, { name: "getpid", args: [1n] })).toBe(v(errno(3)));
    expect(c.notes.some((n) => n.startsWith("linux.seccomp.syscalls[1]: never reached"))).toBe(true);
  });

  test("repeated argument index is ANDed, with a note on the runc difference", () => {
    const c = compileSeccomp(
      profile([
        argRule([
          { index: 0, op: "SCMP_CMP_GE", value: 10 },
          { index: 0, op: "SCMP_CMP_LE", value: 20 },
        ]),
      ]),
      X86_64,
    );
    expect(verdict(c, { name: "getpid", args: [15n] })).toBe(v(errno(99)));
    expect(verdict(c, { name: "getpid", args: [25n] })).toBe("ALLOW");
    expect(c.notes.some((n) => n.includes("several conditions on argument 0"))).toBe(true);
  });

  test("32-bit ABIs compare only the low half, like libseccomp", () => {
    const c = compileSeccomp(
      profile([argRule([{ index: 0, op: "SCMP_CMP_EQ", value: jsonValue(0xffff_ffff_ffff_ff9cn) }])], { architectures: ["SCMP_ARCH_X86"] }),
      X86_64,
    );
    // AT_FDCWD as an i386 process passes it: zero-extended 0xffffff9c.
    expect(verdict(c, { name: "getpid", abi: "SCMP_ARCH_X86", args: [0xffff_ff9cn] })).toBe(v(errno(99)));
    expect(verdict(c, { name: "getpid", abi: "SCMP_ARCH_X86", args: [0xff9cn] })).toBe("ALLOW");
    // x86_64 still compares all 64 bits.
    expect(verdict(c, { name: "getpid", args: [0xffff_ff9cn] })).toBe("ALLOW");
    expect(c.notes.some((n) => n.includes("SCMP_ARCH_X86 arguments are 32-bit"))).toBe(true);
  });
});

// ---------------------------------------------------------------- architectures

describe("architectures", () => {
  const allowList = (architectures?: string[]) =>
    profile([{ names: ["read", "execve", "getpid"], action: "SCMP_ACT_ALLOW" }], { defaultAction: "SCMP_ACT_ERRNO", architectures });

  test("an empty list filters the native ABI only; other arches are killed", () => {
    const c = compileSeccomp(allowList([]), X86_64);
    expect(verdict(c, { name: "read" })).toBe("ALLOW");
    expect(verdict(c, { name: "read", abi: "SCMP_ARCH_X86", arch: AUDIT_ARCH.I386 })).toBe("KILL_THREAD");
    expect(verdict(c, { nr: 63, arch: AUDIT_ARCH.AARCH64 })).toBe("KILL_THREAD");
    expect(verdict(c, { nr: 3, arch: 0x1234 })).toBe("KILL_THREAD");
  });

  test("listed ABIs use their own numbers", () => {
    const c = compileSeccomp(allowList(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]), X86_64);
    expect(nr("read", "SCMP_ARCH_X86")).toBe(3);
    expect(verdict(c, { name: "read", abi: "SCMP_ARCH_X86" })).toBe("ALLOW");
    expect(verdict(c, { name: "execve", abi: "SCMP_ARCH_X86" })).toBe("ALLOW");
    // i386's 0 is restart_syscall, not read: default applies.
    expect(verdict(c, { nr: 0, abi: "SCMP_ARCH_X86" })).toBe(v(errno(EPERM)));
  });

  test("the native ABI is filtered even when the list omits it", () => {
    const c = compileSeccomp(allowList(["SCMP_ARCH_X86"]), X86_64);
    expect(verdict(c, { name: "read" })).toBe("ALLOW");
    expect(verdict(c, { name: "close" })).toBe(v(errno(EPERM)));
  });

  test("x32 calls take the bad-arch action unless SCMP_ARCH_X32 is listed", () => {
    // Even under a default-allow profile: the x32 numbering must not become a bypass.
    const open = compileSeccomp(profile([{ names: ["mount"], action: "SCMP_ACT_ERRNO" }]), X86_64);
    expect(verdict(open, { nr: X32_SYSCALL_BIT | 0, arch: AUDIT_ARCH.X86_64 })).toBe("KILL_THREAD");
    expect(verdict(open, { name: "mount", abi: "SCMP_ARCH_X32" })).toBe("KILL_THREAD");

    const c = compileSeccomp(allowList(["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]), X86_64);
    expect(nr("execve", "SCMP_ARCH_X32")).toBe((X32_SYSCALL_BIT | 520) >>> 0);
    expect(verdict(c, { name: "read", abi: "SCMP_ARCH_X32" })).toBe("ALLOW");
    expect(verdict(c, { name: "execve", abi: "SCMP_ARCH_X32" })).toBe("ALLOW");
    // 59 is x86_64's execve; with the x32 bit it is not an x32 syscall the profile allows.
    expect(verdict(c, { nr: (X32_SYSCALL_BIT | 59) >>> 0, arch: AUDIT_ARCH.X86_64 })).toBe(v(errno(EPERM)));
    expect(verdict(c, { name: "execve" })).toBe("ALLOW");
  });

  test("aarch64 native, with 32-bit ARM listed", () => {
    const c = compileSeccomp(allowList(["SCMP_ARCH_ARM"]), { nativeArch: "aarch64" });
    expect(verdict(c, { name: "read", abi: "SCMP_ARCH_AARCH64" })).toBe("ALLOW");
    expect(verdict(c, { nr: 63, arch: AUDIT_ARCH.AARCH64 })).toBe("ALLOW");
    expect(verdict(c, { name: "mount", abi: "SCMP_ARCH_AARCH64" })).toBe(v(errno(EPERM)));
    expect(verdict(c, { name: "read", abi: "SCMP_ARCH_ARM" })).toBe("ALLOW");
    expect(verdict(c, { name: "read" })).toBe("KILL_THREAD"); // an x86_64 process on this filter
  });

  test("a valid arch name without a table is noted, not fatal", () => {
    const c = compileSeccomp(allowList(["SCMP_ARCH_PPC64LE"]), X86_64);
    expect(c.notes).toContain("linux.seccomp.architectures[0]: no syscall table for SCMP_ARCH_PPC64LE; its processes get the bad-arch action (KILL_THREAD)");
    expect(verdict(c, { nr: 3, arch: 0xc0000015 })).toBe("KILL_THREAD");
  });
});

// ---------------------------------------------------------------- flags

describe("flags", () => {
  test("OCI flag names map to SECCOMP_FILTER_FLAG bits", () => {
    const c = compileSeccomp(profile([], { flags: ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"] }), X86_64);
    expect(c.flags).toBe(SECCOMP_FILTER_FLAG.LOG | SECCOMP_FILTER_FLAG.SPEC_ALLOW | SECCOMP_FILTER_FLAG.TSYNC);
  });

  test("NOTIFY sets NEW_LISTENER; TSYNC then needs TSYNC_ESRCH; WAIT_KILLABLE_RECV needs a listener", () => {
    const notify = profile([{ names: ["mkdir"], action: "SCMP_ACT_NOTIFY" }], {
      listenerPath: "/run/agent.sock",
      flags: ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
    });
    const c = compileSeccomp(notify, X86_64);
    expect(c.needsNotifyListener).toBe(true);
    expect(c.flags).toBe(
      SECCOMP_FILTER_FLAG.TSYNC | SECCOMP_FILTER_FLAG.NEW_LISTENER | SECCOMP_FILTER_FLAG.TSYNC_ESRCH | SECCOMP_FILTER_FLAG.WAIT_KILLABLE_RECV,
    );
    expect(verdict(c, { name: "mkdir" })).toBe("USER_NOTIF");

    const noNotify = compileSeccomp(profile([], { flags: ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"] }), X86_64);
    expect(noNotify.flags).toBe(0);
    expect(noNotify.notes.some((n) => n.includes("WAIT_KILLABLE_RECV dropped"))).toBe(true);
  });
});

// ---------------------------------------------------------------- errors

describe("errors name the JSON path", () => {
  const fourthRule = (rule: Partial<LinuxSyscall>): LinuxSeccomp =>
    profile([
      { names: ["read"], action: "SCMP_ACT_ERRNO" },
      { names: ["write"], action: "SCMP_ACT_ERRNO" },
      { names: ["close"], action: "SCMP_ACT_ERRNO" },
      { names: ["getpid"], action: "SCMP_ACT_ERRNO", ...rule },
    ]);

  test("unknown operator", () => {
    const e = compileError(fourthRule({ args: [{ index: 0, value: 1, op: "SCMP_CMP_XX" as SeccompOperator }] }));
    expect(e.code).toBe("seccomp-bad-operator");
    expect(e.message).toBe('linux.seccomp.syscalls[3].args[0].op: unknown operator "SCMP_CMP_XX"');
  });

  test("argument index above 5", () => {
    const e = compileError(fourthRule({ args: [{ index: 6, value: 1, op: "SCMP_CMP_EQ" }] }));
    expect(e.code).toBe("seccomp-bad-arg-index");
    expect(e.message).toStartWith("linux.seccomp.syscalls[3].args[0].index:");
  });

  test("unknown action, in a rule and as the default", () => {
    const e = compileError(fourthRule({ action: "SCMP_ACT_MAYBE" as LinuxSyscall["action"] }));
    expect(e.code).toBe("seccomp-bad-action");
    expect(e.message).toBe('linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_MAYBE"');
    const d = compileError(profile([], { defaultAction: "SCMP_ACT_NOPE" as LinuxSeccomp["defaultAction"] }));
    expect(d.message).toStartWith("linux.seccomp.defaultAction:");
  });

  test("NOTIFY as default action or on write", () => {
    expect(compileError(profile([], { defaultAction: "SCMP_ACT_NOTIFY" })).code).toBe("seccomp-bad-action");
    const e = compileError(profile([{ names: ["write"], action: "SCMP_ACT_NOTIFY" }]));
    expect(e.message).toBe("linux.seccomp.syscalls[0].action: SCMP_ACT_NOTIFY cannot be used for the write syscall");
  });

  test("bad architecture name", () => {
    const e = compileError(profile([], { architectures: ["SCMP_ARCH_X86_64", "SCMP_ARCH_Z80"] }));
    expect(e.code).toBe("seccomp-bad-arch");
    expect(e.message).toBe('linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_Z80"');
  });

  test("errnoRet on an action without errno", () => {
    const e = compileError(fourthRule({ action: "SCMP_ACT_KILL", errnoRet: 1 }));
    expect(e.code).toBe("seccomp-errno-not-allowed");
    expect(e.message).toStartWith("linux.seccomp.syscalls[3].errnoRet:");
    const d = compileError(profile([], { defaultAction: "SCMP_ACT_ALLOW", defaultErrnoRet: 1 }));
    expect(d.message).toStartWith("linux.seccomp.defaultErrnoRet:");
  });

  test("values out of range", () => {
    expect(compileError(fourthRule({ errnoRet: 0x1_0000 })).code).toBe("seccomp-bad-value");
    const e = compileError(fourthRule({ args: [{ index: 0, value: -1, op: "SCMP_CMP_EQ" }] }));
    expect(e.code).toBe("seccomp-bad-value");
    expect(e.message).toStartWith("linux.seccomp.syscalls[3].args[0].value:");
    expect(compileError(fourthRule({ args: [{ index: 0, value: 1.5, op: "SCMP_CMP_EQ" }] })).code).toBe("seccomp-bad-value");
  });

  test("unknown flag", () => {
    const e = compileError(profile([], { flags: ["SECCOMP_FILTER_FLAG_NEW_LISTENER" as LinuxSeccomp["flags"] & string] as LinuxSeccomp["flags"] }));
    expect(e.code).toBe("seccomp-bad-flag");
    expect(e.message).toBe('linux.seccomp.flags[0]: unknown flag "SECCOMP_FILTER_FLAG_NEW_LISTENER"');
  });
});

// ---------------------------------------------------------------- size

describe("program size", () => {
  const x86Names = Object.keys(SYSCALL_ABIS.SCMP_ARCH_X86_64!.table);

  test("hundreds of conditional rules still compile to a valid program with far jumps", () => {
    const rules: LinuxSyscall[] = x86Names.slice(0, 300).map((name, i) => ({
      names: [name],
      action: "SCMP_ACT_ERRNO",
      errnoRet: (i % 200) + 1,
      args: [{ index: i % 6, op: "SCMP_CMP_EQ", value: i }],
    }));
    const c = compileSeccomp(profile(rules), X86_64);
    const instructions = c.program.length / SOCK_FILTER_SIZE;
    expect(instructions).toBeGreaterThan(1500); // far beyond any 8-bit jump
    expect(instructions).toBeLessThanOrEqual(BPF_MAXINSNS);
    x86Names.slice(0, 300).forEach((name, i) => {
      const args = [0n, 0n, 0n, 0n, 0n, 0n];
      args[i % 6] = BigInt(i);
      expect(verdict(c, { name, args })).toBe(v(errno((i % 200) + 1)));
      args[i % 6] = BigInt(i + 1);
      expect(verdict(c, { name, args })).toBe("ALLOW");
    });
  });

  test("a filter over BPF_MAXINSNS is refused", () => {
    const sixArgs: LinuxSeccompArg[] = [0, 1, 2, 3, 4, 5].map((index) => ({ index, op: "SCMP_CMP_EQ", value: 7 }));
    const rules = x86Names.slice(0, 200).map((name): LinuxSyscall => ({ names: [name], action: "SCMP_ACT_ERRNO", args: sixArgs }));
    const e = compileError(profile(rules));
    expect(e.code).toBe("seccomp-program-too-large");
  });
});

// ---------------------------------------------------------------- Docker's default profile

describe("Docker's default profile (OCI form, default capabilities)", () => {
  const docker = JSON.parse(readFileSync(join(import.meta.dir, "..", "fixtures", "seccomp", "docker-default.json"), "utf8")) as LinuxSeccomp;
  const CLONE_NEWUSER = 0x1000_0000n;
  const CLONE_NEWNS = 0x0002_0000n;
  const SIGCHLD = 17n;
  const FORK_FLAGS = 0x0120_0000n | SIGCHLD;

  test("x86_64: compiles well under BPF_MAXINSNS and decides like Docker", () => {
    const c = compileSeccomp(docker, X86_64);
    const instructions = c.program.length / SOCK_FILTER_SIZE;
    expect(instructions).toBeLessThan(BPF_MAXINSNS);
    console.log(`docker default (x86_64 + x86 + x32): ${instructions} instructions`);
    expect(c.flags).toBe(0);

    for (const name of ["read", "write", "execve", "openat", "exit_group", "futex", "rt_sigaction", "arch_prctl", "chroot", "ptrace"]) {
      expect(`${name}: ${verdict(c, { name })}`).toBe(`${name}: ALLOW`);
    }
    expect(verdict(c, { name: "clone", args: [FORK_FLAGS] })).toBe("ALLOW");
    expect(verdict(c, { name: "clone", args: [FORK_FLAGS | CLONE_NEWUSER] })).toBe(v(errno(EPERM)));
    expect(verdict(c, { name: "clone", args: [CLONE_NEWNS | SIGCHLD] })).toBe(v(errno(EPERM)));
    for (const name of ["unshare", "mount", "umount2", "setns", "pivot_root", "bpf", "kexec_load", "init_module", "swapon", "reboot"]) {
      expect(`${name}: ${verdict(c, { name })}`).toBe(`${name}: ${v(errno(EPERM))}`);
    }
    expect(verdict(c, { name: "clone3" })).toBe(v(errno(ENOSYS)));
    expect(verdict(c, { name: "personality", args: [0n] })).toBe("ALLOW");
    expect(verdict(c, { name: "personality", args: [0xffff_ffffn] })).toBe("ALLOW");
    expect(verdict(c, { name: "personality", args: [0x0040_0000n] })).toBe(v(errno(EPERM))); // ADDR_NO_RANDOMIZE
    // Newer than anything the profile names -> ENOSYS; an unnamed older one -> EPERM.
    expect(verdict(c, { name: "mseal" })).toBe(v(errno(ENOSYS)));
    expect(verdict(c, { name: "listns" })).toBe(v(errno(ENOSYS)));
    expect(verdict(c, { name: "uretprobe" })).toBe(v(errno(EPERM)));
  });

  test("x86_64 host: i386 and x32 processes get the same policy in their own numbers", () => {
    const c = compileSeccomp(docker, X86_64);
    for (const abi of ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]) {
      expect(`${abi} read: ${verdict(c, { name: "read", abi })}`).toBe(`${abi} read: ALLOW`);
      expect(`${abi} execve: ${verdict(c, { name: "execve", abi })}`).toBe(`${abi} execve: ALLOW`);
      expect(`${abi} mount: ${verdict(c, { name: "mount", abi })}`).toBe(`${abi} mount: ${v(errno(EPERM))}`);
      expect(verdict(c, { name: "unshare", abi })).toBe(v(errno(EPERM)));
      expect(verdict(c, { name: "clone", abi, args: [FORK_FLAGS] })).toBe("ALLOW");
      expect(verdict(c, { name: "clone", abi, args: [FORK_FLAGS | CLONE_NEWUSER] })).toBe(v(errno(EPERM)));
    }
    expect(verdict(c, { name: "socketcall", abi: "SCMP_ARCH_X86" })).toBe("ALLOW");
    expect(verdict(c, { name: "read", abi: "SCMP_ARCH_AARCH64" })).toBe("KILL_THREAD");
  });

  test("aarch64 host: native rules apply, the listed x86 ABIs too", () => {
    const c = compileSeccomp(docker, { nativeArch: "aarch64" });
    expect(c.program.length / SOCK_FILTER_SIZE).toBeLessThan(BPF_MAXINSNS);
    expect(verdict(c, { name: "read", abi: "SCMP_ARCH_AARCH64" })).toBe("ALLOW");
    expect(verdict(c, { name: "execve", abi: "SCMP_ARCH_AARCH64" })).toBe("ALLOW");
    expect(verdict(c, { name: "mount", abi: "SCMP_ARCH_AARCH64" })).toBe(v(errno(EPERM)));
    expect(verdict(c, { name: "clone", abi: "SCMP_ARCH_AARCH64", args: [FORK_FLAGS | CLONE_NEWUSER] })).toBe(v(errno(EPERM)));
    expect(verdict(c, { name: "clone3", abi: "SCMP_ARCH_AARCH64" })).toBe(v(errno(ENOSYS)));
  });

  test("compiles without notes: every name exists on some ABI (recv/send are ARM's)", () => {
    expect(compileSeccomp(docker, X86_64).notes).toEqual([]);
  });
});

test("KILL_THREAD is what libseccomp calls SCMP_ACT_KILL", () => {
  expect(KILL_THREAD).toBe(0);
  expect(ALLOW).toBe(0x7fff_0000);
});
