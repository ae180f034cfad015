import { describe, expect, test } from "bun:test";
import { AUDIT_ARCH, SECCOMP_RET } from "../../src/seccomp/abi.ts";
import { ProgramBuilder } from "../../src/seccomp/assembler.ts";
import {
  BPF_ABS,
  BPF_ALU,
  BPF_JA,
  BPF_JEQ,
  BPF_JGE,
  BPF_JMP,
  BPF_JSET,
  BPF_K,
  BPF_LD,
  BPF_MAXINSNS,
  BPF_RET,
  BPF_W,
  decodeProgram,
  encodeProgram,
  type SockFilter,
} from "../../src/seccomp/bpf.ts";
import { disassemble } from "../../src/seccomp/disassemble.ts";
import { SeccompError } from "../../src/seccomp/errors.ts";
import { checkProgram, run } from "../../src/seccomp/interpret.ts";

const LD_ABS = BPF_LD | BPF_W | BPF_ABS;
const RET_K = BPF_RET | BPF_K;
const ld = (k: number): SockFilter => ({ code: LD_ABS, jt: 0, jf: 0, k });
const ret = (k: number): SockFilter => ({ code: RET_K, jt: 0, jf: 0, k });
const jump = (op: number, k: number, jt: number, jf: number): SockFilter => ({ code: BPF_JMP | op | BPF_K, jt, jf, k });
const anyCall = { nr: 0, arch: AUDIT_ARCH.X86_64 };

function invalid(program: SockFilter[]): string {
  try {
    checkProgram(program);
  } catch (error) {
    expect(error).toBeInstanceOf(SeccompError);
    expect((error as SeccompError).code).toBe("seccomp-invalid-bpf");
    return (error as Error).message;
  }
  throw new Error("program was accepted");
}

describe("encoding", () => {
  test("struct sock_filter is u16 code, u8 jt, u8 jf, u32 k, little-endian", () => {
    const bytes = encodeProgram([{ code: 0x15, jt: 1, jf: 2, k: 0xc000003e }]);
    expect([...bytes]).toEqual([0x15, 0x00, 0x01, 0x02, 0x3e, 0x00, 0x00, 0xc0]);
    expect(decodeProgram(bytes)).toEqual([{ code: 0x15, jt: 1, jf: 2, k: 0xc000003e }]);
  });

  test("a byte count that is not a whole number of instructions is refused", () => {
    expect(() => decodeProgram(new Uint8Array(12))).toThrow(RangeError);
  });
});

describe("interpreter", () => {
  test("reads seccomp_data: nr, arch, and each argument's halves little-endian", () => {
    const data = { nr: 59, arch: AUDIT_ARCH.AARCH64, args: [0n, 0x1111_2222_3333_4444n, 0n, 0n, 0n, 0xffff_ffff_0000_0001n], instructionPointer: 0xdead_beef_0000n };
    // RET A returns whatever was loaded last.
    const load = (offset: number) => run([ld(offset), { code: BPF_RET | 0x10, jt: 0, jf: 0, k: 0 }], data);
    expect(load(0)).toBe(59);
    expect(load(4)).toBe(AUDIT_ARCH.AARCH64);
    expect(load(8)).toBe(0xbeef_0000);
    expect(load(12)).toBe(0xdead);
    expect(load(24)).toBe(0x3333_4444);
    expect(load(28)).toBe(0x1111_2222);
    expect(load(56)).toBe(1);
    expect(load(60)).toBe(0xffff_ffff);
  });

  test("a negative nr (the syscall -1 ptrace uses to skip) reads as its u32 pattern", () => {
    expect(run([ld(0), { code: BPF_RET | 0x10, jt: 0, jf: 0, k: 0 }], { nr: -1, arch: 0 })).toBe(0xffff_ffff);
  });

  test("jumps compare unsigned and JSET tests bits", () => {
    const program = [ld(0), jump(BPF_JGE, 0x8000_0000, 0, 1), ret(1), jump(BPF_JSET, 0x4, 0, 1), ret(2), ret(3)];
    expect(run(program, { nr: -5, arch: 0 })).toBe(1);
    expect(run(program, { nr: 4, arch: 0 })).toBe(2);
    expect(run(program, { nr: 3, arch: 0 })).toBe(3);
  });

  test("ALU AND masks the accumulator", () => {
    const program = [ld(0), { code: BPF_ALU | 0x50 | BPF_K, jt: 0, jf: 0, k: 0xf0 }, jump(BPF_JEQ, 0x30, 0, 1), ret(1), ret(2)];
    expect(run(program, { nr: 0x3f, arch: 0 })).toBe(1);
    expect(run(program, { nr: 0x4f, arch: 0 })).toBe(2);
  });

  test("refuses what the kernel's checker refuses", () => {
    expect(invalid([])).toContain("1 to 4096");
    expect(invalid(Array.from({ length: BPF_MAXINSNS + 1 }, () => ret(0)))).toContain("got 4097");
    expect(invalid([ld(0)])).toContain("last instruction must be a RET");
    expect(invalid([jump(BPF_JEQ, 1, 1, 0), ret(0)])).toContain("leaves the program");
    expect(invalid([{ code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: 1 }, ret(0)])).toContain("leaves the program");
    expect(invalid([ld(64), ret(0)])).toContain("outside struct seccomp_data");
    expect(invalid([ld(2), ret(0)])).toContain("unaligned");
    expect(invalid([{ code: BPF_LD | BPF_W | 0x40, jt: 0, jf: 0, k: 0 }, ret(0)])).toContain("not allowed"); // BPF_IND
    expect(invalid([{ code: BPF_LD | 0x10 | BPF_ABS, jt: 0, jf: 0, k: 0 }, ret(0)])).toContain("32-bit"); // BPF_B
    expect(invalid([{ code: BPF_ALU | 0x30 | BPF_K, jt: 0, jf: 0, k: 2 }, ret(0)])).toContain("not supported"); // DIV
    expect(invalid([{ code: BPF_JMP | BPF_JEQ | 0x08, jt: 0, jf: 0, k: 0 }, ret(0)])).toContain("BPF_K"); // JEQ X
    expect(invalid([{ code: 0x02, jt: 0, jf: 0, k: 16 }, ret(0)])).toContain("scratch slot");
  });

  test("run() checks before running", () => {
    expect(() => run([ld(0)], anyCall)).toThrow(SeccompError);
  });
});

describe("assembler", () => {
  /** A program whose branch target sits `gap` instructions past the branch. */
  function farProgram(gap: number, farSide: "true" | "false"): SockFilter[] {
    const b = new ProgramBuilder();
    const far = b.label("far");
    b.loadWord(0);
    if (farSide === "true") b.branch(BPF_JEQ, 7, far, undefined);
    else b.branch(BPF_JEQ, 7, undefined, far);
    for (let i = 0; i < gap; i++) b.ret(1000 + i);
    b.place(far);
    b.ret(SECCOMP_RET.ALLOW);
    return b.assemble();
  }

  test("near jumps need no trampoline", () => {
    const program = farProgram(10, "true");
    expect(program).toHaveLength(13);
    expect(run(program, { nr: 7, arch: 0 })).toBe(SECCOMP_RET.ALLOW);
    expect(run(program, { nr: 8, arch: 0 })).toBe(1000);
  });

  test("a conditional jump past 255 instructions goes through a BPF_JA", () => {
    for (const side of ["true", "false"] as const) {
      const program = farProgram(300, side);
      expect(program).toHaveLength(304); // one trampoline
      expect(program[2]!.code).toBe(BPF_JMP | BPF_JA);
      const taken = side === "true" ? 7 : 8;
      const notTaken = side === "true" ? 8 : 7;
      expect(run(program, { nr: taken, arch: 0 })).toBe(SECCOMP_RET.ALLOW);
      expect(run(program, { nr: notTaken, arch: 0 })).toBe(1000);
    }
  });

  test("the 255 boundary is exact", () => {
    expect(farProgram(255, "true")).toHaveLength(258); // jt = 255 still fits
    expect(farProgram(256, "true")).toHaveLength(260);
  });

  test("trampolines that push other jumps out of range are resolved too", () => {
    // 300 branches to one far label, each just under 255 away before any trampoline exists.
    const b = new ProgramBuilder();
    const far = b.label("far");
    const count = 300;
    b.loadWord(0);
    for (let i = 0; i < count; i++) b.branch(BPF_JEQ, i, far, undefined);
    b.ret(SECCOMP_RET.KILL_PROCESS);
    b.place(far);
    b.ret(SECCOMP_RET.ALLOW);
    const program = b.assemble();
    checkProgram(program);
    for (const nr of [0, 1, 44, 45, 46, 150, 299]) expect(run(program, { nr, arch: 0 })).toBe(SECCOMP_RET.ALLOW);
    expect(run(program, { nr: 300, arch: 0 })).toBe(SECCOMP_RET.KILL_PROCESS);
  });

  test("misuse is a programming error", () => {
    const b = new ProgramBuilder();
    const never = b.label("never");
    b.branch(BPF_JEQ, 1, never, undefined);
    b.ret(0);
    expect(() => b.assemble()).toThrow("never placed");

    const twice = new ProgramBuilder();
    const l = twice.label("l");
    twice.place(l);
    expect(() => twice.place(l)).toThrow("placed twice");

    const backwards = new ProgramBuilder();
    const top = backwards.label("top");
    backwards.place(top);
    backwards.goto(top);
    backwards.ret(0);
    expect(() => backwards.assemble()).toThrow("backwards");
  });
});

test("disassembly names seccomp_data fields and verdicts", () => {
  const lines = disassemble([ld(4), jump(BPF_JEQ, AUDIT_ARCH.X86_64, 0, 1), ret(SECCOMP_RET.ALLOW), ld(20), ret((SECCOMP_RET.ERRNO | 38) >>> 0)]);
  expect(lines).toEqual([
    "   0: ld  [4] (arch)",
    "   1: jeq #0xc000003e ? 2 : 3",
    "   2: ret ALLOW",
    "   3: ld  [20] (args[0] high)",
    "   4: ret ERRNO(38)",
  ]);
});
