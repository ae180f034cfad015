/**
 * Renders a seccomp program one instruction per line, in the style of
 * `bpf_dbg` / libseccomp's seccomp_export_pfc, for --trace output and for
 * test failures that need to show where a filter went wrong.
 */
import { describeVerdict, SECCOMP_DATA } from "./abi.ts";
import {
  BPF_A,
  BPF_ABS,
  BPF_ALU,
  BPF_JA,
  BPF_JEQ,
  BPF_JGE,
  BPF_JGT,
  BPF_JMP,
  BPF_LD,
  BPF_MEM,
  BPF_RET,
  bpfClass,
  bpfMode,
  bpfOp,
  decodeProgram,
  type SockFilter,
} from "./bpf.ts";

const JUMP_NAMES: Record<number, string> = { [BPF_JEQ]: "jeq", [BPF_JGT]: "jgt", [BPF_JGE]: "jge" };
const ALU_NAMES: Record<number, string> = { 0x00: "add", 0x10: "sub", 0x40: "or", 0x50: "and", 0x60: "lsh", 0x70: "rsh", 0xa0: "xor" };

export function disassemble(program: Uint8Array | readonly SockFilter[]): string[] {
  const instructions = program instanceof Uint8Array ? decodeProgram(program) : program;
  return instructions.map((insn, pc) => `${String(pc).padStart(4)}: ${describe(insn, pc)}`);
}

function describe(insn: SockFilter, pc: number): string {
  const { code, k, jt, jf } = insn;
  const hex = `0x${k.toString(16)}`;
  switch (bpfClass(code)) {
    case BPF_LD:
      if (bpfMode(code) === BPF_ABS) return `ld  [${k}]${fieldName(k)}`;
      if (bpfMode(code) === BPF_MEM) return `ld  M[${k}]`;
      return `ld  #${hex}`;
    case BPF_ALU:
      return `${ALU_NAMES[bpfOp(code)] ?? `alu(0x${code.toString(16)})`} #${hex}`;
    case BPF_JMP:
      if (bpfOp(code) === BPF_JA) return `ja  ${pc + 1 + k}`;
      return `${JUMP_NAMES[bpfOp(code)] ?? "jset"} #${hex} ? ${pc + 1 + jt} : ${pc + 1 + jf}`;
    case BPF_RET:
      return code === (BPF_RET | BPF_A) ? "ret A" : `ret ${describeVerdict(k)}`;
    default:
      return `op 0x${code.toString(16)} k=${hex} jt=${jt} jf=${jf}`;
  }
}

function fieldName(offset: number): string {
  if (offset === SECCOMP_DATA.nr) return " (nr)";
  if (offset === SECCOMP_DATA.arch) return " (arch)";
  if (offset >= SECCOMP_DATA.args) {
    const index = Math.floor((offset - SECCOMP_DATA.args) / 8);
    return ` (args[${index}] ${(offset - SECCOMP_DATA.args) % 8 === 0 ? "low" : "high"})`;
  }
  return " (instruction_pointer)";
}
