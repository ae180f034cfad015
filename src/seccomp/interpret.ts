/**
 * A classic-BPF interpreter for seccomp programs, so tests (and curious
 * readers) can ask "what does this filter answer for this syscall?" without
 * loading it into a kernel.
 *
 * Before running, the program is checked the way the kernel's
 * bpf_check_classic() and seccomp_check_filter() check it: length 1..4096,
 * every jump lands inside the program, the last instruction is a RET,
 * BPF_LD|BPF_ABS reads aligned words inside struct seccomp_data, and only the
 * opcodes seccomp accepts appear. A program this interpreter runs is one the
 * kernel would load; anything else throws SeccompError("seccomp-invalid-bpf").
 */
import { SECCOMP_DATA } from "./abi.ts";
import {
  BPF_A,
  BPF_ABS,
  BPF_ADD,
  BPF_ALU,
  BPF_AND,
  BPF_IMM,
  BPF_JA,
  BPF_JEQ,
  BPF_JGE,
  BPF_JGT,
  BPF_JMP,
  BPF_JSET,
  BPF_K,
  BPF_LD,
  BPF_LDX,
  BPF_LSH,
  BPF_MAXINSNS,
  BPF_MEM,
  BPF_MEMWORDS,
  BPF_MISC,
  BPF_OR,
  BPF_RET,
  BPF_RSH,
  BPF_ST,
  BPF_STX,
  BPF_SUB,
  BPF_TAX,
  BPF_TXA,
  BPF_W,
  BPF_X,
  BPF_XOR,
  bpfClass,
  bpfMode,
  bpfOp,
  bpfSize,
  bpfSrc,
  decodeProgram,
  type SockFilter,
} from "./bpf.ts";
import { SeccompError } from "./errors.ts";

/** The fields of struct seccomp_data a test cares about. */
export interface SyscallInput {
  /** seccomp_data.nr (x32 numbers include __X32_SYSCALL_BIT). */
  nr: number;
  /** seccomp_data.arch, an AUDIT_ARCH_* value. */
  arch: number;
  /** Up to six unsigned 64-bit arguments; missing ones are 0. */
  args?: readonly bigint[];
  instructionPointer?: bigint;
}

export type Program = Uint8Array | readonly SockFilter[];

/** Runs a seccomp filter over one syscall and returns its 32-bit verdict. */
export function run(program: Program, input: SyscallInput): number {
  const instructions = program instanceof Uint8Array ? decodeProgram(program) : program;
  checkProgram(instructions);
  return execute(instructions, seccompData(input));
}

/** Throws unless the kernel would accept the program. */
export function checkProgram(instructions: readonly SockFilter[]): void {
  const fail = (pc: number, why: string): never => {
    throw new SeccompError("seccomp-invalid-bpf", `instruction ${pc}: ${why}`);
  };
  if (instructions.length === 0 || instructions.length > BPF_MAXINSNS) {
    throw new SeccompError("seccomp-invalid-bpf", `a program has 1 to ${BPF_MAXINSNS} instructions, got ${instructions.length}`);
  }
  instructions.forEach((insn, pc) => {
    const { code, k } = insn;
    switch (bpfClass(code)) {
      case BPF_LD:
      case BPF_LDX: {
        if (bpfSize(code) !== BPF_W) fail(pc, "seccomp only loads 32-bit words");
        const mode = bpfMode(code);
        if (mode === BPF_ABS && bpfClass(code) === BPF_LD) {
          if (k % 4 !== 0 || k + 4 > SECCOMP_DATA.size) fail(pc, `load at offset ${k} is outside struct seccomp_data or unaligned`);
        } else if (mode === BPF_MEM) {
          if (k >= BPF_MEMWORDS) fail(pc, `scratch slot ${k} out of range`);
        } else if (mode !== BPF_IMM) {
          fail(pc, `load mode 0x${mode.toString(16)} is not allowed in seccomp`);
        }
        break;
      }
      case BPF_ST:
      case BPF_STX:
        if (code !== BPF_ST && code !== BPF_STX) fail(pc, `bad store 0x${code.toString(16)}`);
        if (k >= BPF_MEMWORDS) fail(pc, `scratch slot ${k} out of range`);
        break;
      case BPF_ALU:
        if (!ALU_OPS.has(bpfOp(code))) fail(pc, `ALU op 0x${bpfOp(code).toString(16)} not supported`);
        if (bpfSrc(code) === BPF_K && (bpfOp(code) === BPF_LSH || bpfOp(code) === BPF_RSH) && k >= 32) fail(pc, "shift by 32 or more");
        break;
      case BPF_JMP: {
        const op = bpfOp(code);
        if (op === BPF_JA) {
          if (code !== (BPF_JMP | BPF_JA)) fail(pc, "bad JA");
          if (pc + 1 + k >= instructions.length) fail(pc, `JA +${k} leaves the program`);
        } else {
          if (op !== BPF_JEQ && op !== BPF_JGT && op !== BPF_JGE && op !== BPF_JSET) fail(pc, `jump op 0x${op.toString(16)} unknown`);
          if (bpfSrc(code) !== BPF_K) fail(pc, "only constant (BPF_K) comparisons are supported");
          if (pc + 1 + insn.jt >= instructions.length || pc + 1 + insn.jf >= instructions.length) fail(pc, "jump leaves the program");
        }
        break;
      }
      case BPF_RET:
        if (code !== (BPF_RET | BPF_K) && code !== (BPF_RET | BPF_A)) fail(pc, `bad RET 0x${code.toString(16)}`);
        break;
      case BPF_MISC:
        if (code !== (BPF_MISC | BPF_TAX) && code !== (BPF_MISC | BPF_TXA)) fail(pc, `bad MISC 0x${code.toString(16)}`);
        break;
    }
  });
  const last = instructions[instructions.length - 1] as SockFilter;
  if (bpfClass(last.code) !== BPF_RET) fail(instructions.length - 1, "the last instruction must be a RET");
}

const ALU_OPS = new Set([BPF_ADD, BPF_SUB, BPF_OR, BPF_AND, BPF_XOR, BPF_LSH, BPF_RSH]);

function seccompData(input: SyscallInput): DataView {
  const view = new DataView(new ArrayBuffer(SECCOMP_DATA.size));
  view.setInt32(SECCOMP_DATA.nr, input.nr | 0, true);
  view.setUint32(SECCOMP_DATA.arch, input.arch >>> 0, true);
  view.setBigUint64(SECCOMP_DATA.instructionPointer, BigInt.asUintN(64, input.instructionPointer ?? 0n), true);
  const args = input.args ?? [];
  if (args.length > 6) throw new RangeError("a syscall has at most 6 arguments");
  args.forEach((arg, i) => view.setBigUint64(SECCOMP_DATA.args + 8 * i, BigInt.asUintN(64, arg), true));
  return view;
}

/** Runs a checked program. Jumps only go forward, so this always terminates. */
function execute(instructions: readonly SockFilter[], data: DataView): number {
  let a = 0;
  let x = 0;
  const memory = new Uint32Array(BPF_MEMWORDS);
  let pc = 0;
  for (;;) {
    const insn = instructions[pc] as SockFilter;
    const { code, k } = insn;
    pc += 1;
    switch (bpfClass(code)) {
      case BPF_LD:
        a = bpfMode(code) === BPF_ABS ? data.getUint32(k, true) : bpfMode(code) === BPF_MEM ? (memory[k] as number) : k;
        break;
      case BPF_LDX:
        x = bpfMode(code) === BPF_MEM ? (memory[k] as number) : k;
        break;
      case BPF_ST:
        memory[k] = a;
        break;
      case BPF_STX:
        memory[k] = x;
        break;
      case BPF_ALU: {
        const operand = bpfSrc(code) === BPF_X ? x : k;
        a = alu(bpfOp(code), a, operand);
        break;
      }
      case BPF_JMP: {
        const op = bpfOp(code);
        if (op === BPF_JA) {
          pc += k;
          break;
        }
        let taken: boolean;
        if (op === BPF_JEQ) taken = a === k;
        else if (op === BPF_JGT) taken = a > k;
        else if (op === BPF_JGE) taken = a >= k;
        else taken = ((a & k) >>> 0) !== 0;
        pc += taken ? insn.jt : insn.jf;
        break;
      }
      case BPF_RET:
        return (code === (BPF_RET | BPF_A) ? a : k) >>> 0;
      case BPF_MISC:
        if (code === (BPF_MISC | BPF_TAX)) x = a;
        else a = x;
        break;
    }
  }
}

function alu(op: number, a: number, operand: number): number {
  switch (op) {
    case BPF_ADD:
      return (a + operand) >>> 0;
    case BPF_SUB:
      return (a - operand) >>> 0;
    case BPF_OR:
      return (a | operand) >>> 0;
    case BPF_AND:
      return (a & operand) >>> 0;
    case BPF_XOR:
      return (a ^ operand) >>> 0;
    case BPF_LSH:
      return operand >= 32 ? 0 : (a << operand) >>> 0;
    default:
      return operand >= 32 ? 0 : a >>> operand;
  }
}
