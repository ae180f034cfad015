/**
 * Classic BPF (the `struct sock_filter` instruction set seccomp runs), as
 * defined in <linux/bpf_common.h> and <linux/filter.h>. Only encoding lives
 * here; the compiler builds programs with assembler.ts and the tests run them
 * with interpret.ts.
 */

/** One `struct sock_filter`: u16 code, u8 jt, u8 jf, u32 k. */
export interface SockFilter {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/** sizeof(struct sock_filter). */
export const SOCK_FILTER_SIZE = 8;

/** The kernel refuses longer programs (BPF_MAXINSNS). */
export const BPF_MAXINSNS = 4096;

/** Conditional jumps encode their offsets in one byte each. */
export const MAX_CONDITIONAL_JUMP = 255;

// Instruction classes (code & 0x07).
export const BPF_LD = 0x00;
export const BPF_LDX = 0x01;
export const BPF_ST = 0x02;
export const BPF_STX = 0x03;
export const BPF_ALU = 0x04;
export const BPF_JMP = 0x05;
export const BPF_RET = 0x06;
export const BPF_MISC = 0x07;

// Load size (code & 0x18) and mode (code & 0xe0).
export const BPF_W = 0x00;
export const BPF_IMM = 0x00;
export const BPF_ABS = 0x20;
export const BPF_MEM = 0x60;

// ALU operations and jump tests (code & 0xf0).
export const BPF_ADD = 0x00;
export const BPF_SUB = 0x10;
export const BPF_OR = 0x40;
export const BPF_AND = 0x50;
export const BPF_LSH = 0x60;
export const BPF_RSH = 0x70;
export const BPF_XOR = 0xa0;
export const BPF_JA = 0x00;
export const BPF_JEQ = 0x10;
export const BPF_JGT = 0x20;
export const BPF_JGE = 0x30;
export const BPF_JSET = 0x40;

// Operand source (code & 0x08); for RET, BPF_A returns the accumulator.
export const BPF_K = 0x00;
export const BPF_X = 0x08;
export const BPF_A = 0x10;

// MISC register moves (code & 0xf8).
export const BPF_TAX = 0x00;
export const BPF_TXA = 0x80;

/** Scratch memory slots (BPF_MEMWORDS). */
export const BPF_MEMWORDS = 16;

export const bpfClass = (code: number): number => code & 0x07;
export const bpfSize = (code: number): number => code & 0x18;
export const bpfMode = (code: number): number => code & 0xe0;
export const bpfOp = (code: number): number => code & 0xf0;
export const bpfSrc = (code: number): number => code & 0x08;

/** The conditional jump tests the compiler emits. */
export type JumpTest = typeof BPF_JEQ | typeof BPF_JGT | typeof BPF_JGE | typeof BPF_JSET;

/** Serialises a program as the kernel reads it (little-endian, the byte order of every arch we target). */
export function encodeProgram(instructions: readonly SockFilter[]): Uint8Array {
  const bytes = new Uint8Array(instructions.length * SOCK_FILTER_SIZE);
  const view = new DataView(bytes.buffer);
  instructions.forEach((insn, i) => {
    const at = i * SOCK_FILTER_SIZE;
    view.setUint16(at, insn.code, true);
    view.setUint8(at + 2, insn.jt);
    view.setUint8(at + 3, insn.jf);
    view.setUint32(at + 4, insn.k >>> 0, true);
  });
  return bytes;
}

export function decodeProgram(bytes: Uint8Array): SockFilter[] {
  if (bytes.length % SOCK_FILTER_SIZE !== 0) {
    throw new RangeError(`a BPF program is a multiple of ${SOCK_FILTER_SIZE} bytes, got ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const instructions: SockFilter[] = [];
  for (let at = 0; at < bytes.length; at += SOCK_FILTER_SIZE) {
    instructions.push({
      code: view.getUint16(at, true),
      jt: view.getUint8(at + 2),
      jf: view.getUint8(at + 3),
      k: view.getUint32(at + 4, true),
    });
  }
  return instructions;
}
