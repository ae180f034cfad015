/**
 * A small eBPF interpreter for BPF_PROG_TYPE_CGROUP_DEVICE programs, so tests
 * (and curious readers) can ask "does this program let a process read c 1:5?"
 * without a kernel.
 *
 * It decodes the instruction bytes itself (it does not share the generator's
 * constants, so an encoding slip shows up as a wrong verdict) and, before
 * running, checks what the kernel's verifier would refuse in programs of this
 * shape: unknown opcodes, jumps out of the program or backwards (no loops),
 * unreachable instructions, falling off the end, reading a register no path
 * has written, writing r1 or r10, and context reads that are not aligned u32
 * loads through r1 inside struct bpf_cgroup_dev_ctx (12 bytes).
 *
 * Supported: ALU and ALU64 (mov, add, sub, and, or, xor, lsh, rsh; immediate
 * or register), LDX MEM W from the context, JMP and JMP32 (ja, jeq, jne,
 * jset, jgt, jge, jlt, jle), exit.
 */
import { CgroupError } from "./errors.ts";

export interface DecodedInstruction {
  code: number;
  dst: number;
  src: number;
  off: number;
  imm: number;
}

export interface DeviceAccessRequest {
  /** 1 block, 2 char. */
  type: number;
  major: number;
  minor: number;
  /** 1 mknod, 2 read, 4 write (combined). */
  access: number;
}

const CTX_SIZE = 12;
const U64 = (1n << 64n) - 1n;
const U32 = (1n << 32n) - 1n;
const MAX_INSNS = 1_000_000; // BPF_COMPLEXITY_LIMIT_INSNS

function invalid(at: number, why: string): CgroupError {
  return new CgroupError("cgroup-bpf-invalid", `eBPF instruction ${at}: ${why}`);
}

export function decodeProgram(bytes: Uint8Array): DecodedInstruction[] {
  if (bytes.length === 0 || bytes.length % 8 !== 0) throw new CgroupError("cgroup-bpf-invalid", `eBPF program of ${bytes.length} bytes is not a whole number of instructions`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: DecodedInstruction[] = [];
  for (let at = 0; at < bytes.length; at += 8) {
    const regs = view.getUint8(at + 1);
    out.push({ code: view.getUint8(at), dst: regs & 0x0f, src: regs >> 4, off: view.getInt16(at + 2, true), imm: view.getInt32(at + 4, true) });
  }
  return out;
}

const ALU_OPS = new Set([0x00, 0x10, 0x50, 0x40, 0xa0, 0x60, 0x70, 0xb0]); // add sub and or xor lsh rsh mov
const JMP_OPS = new Set([0x00, 0x10, 0x50, 0x40, 0x20, 0x30, 0xa0, 0xb0]); // ja jeq jne jset jgt jge jlt jle

type Kind = "alu" | "ldx" | "jump" | "ja" | "exit";

function kindOf(insn: DecodedInstruction, at: number): Kind {
  const cls = insn.code & 0x07;
  const op = insn.code & 0xf0;
  const fromRegister = (insn.code & 0x08) !== 0;
  if (insn.dst > 10 || insn.src > 10) throw invalid(at, "register out of range");
  // The verifier refuses nonzero fields an opcode does not use ("uses reserved fields").
  const reserved = (why: boolean): void => {
    if (why) throw invalid(at, `0x${insn.code.toString(16)} uses reserved fields`);
  };
  switch (cls) {
    case 0x04: // ALU
    case 0x07: // ALU64
      if (!ALU_OPS.has(op)) throw invalid(at, `unsupported ALU op 0x${insn.code.toString(16)}`);
      reserved(insn.off !== 0 || (fromRegister ? insn.imm !== 0 : insn.src !== 0));
      if ((op === 0x60 || op === 0x70) && !fromRegister && (insn.imm < 0 || insn.imm >= (cls === 0x04 ? 32 : 64))) throw invalid(at, "shift out of range");
      return "alu";
    case 0x01: // LDX
      if (insn.code !== 0x61) throw invalid(at, `unsupported load 0x${insn.code.toString(16)} (only LDX MEM W)`);
      reserved(insn.imm !== 0);
      if (insn.src !== 1) throw invalid(at, "loads read only the context (r1)");
      if (insn.off < 0 || insn.off + 4 > CTX_SIZE || insn.off % 4 !== 0) throw invalid(at, `invalid bpf_context access off=${insn.off} size=4`);
      return "ldx";
    case 0x05: // JMP
    case 0x06: // JMP32
      if (insn.code === 0x95) {
        reserved(insn.dst !== 0 || insn.src !== 0 || insn.off !== 0 || insn.imm !== 0);
        return "exit";
      }
      if (op === 0x00) {
        if (insn.code !== 0x05) throw invalid(at, "ja exists only in the JMP class with an immediate");
        reserved(insn.dst !== 0 || insn.src !== 0 || insn.imm !== 0);
        return "ja";
      }
      if (!JMP_OPS.has(op)) throw invalid(at, `unsupported jump 0x${insn.code.toString(16)}`);
      reserved(fromRegister ? insn.imm !== 0 : insn.src !== 0);
      return "jump";
    default:
      throw invalid(at, `unsupported instruction class ${cls}`);
  }
}

/**
 * Checks a program the way the verifier would for this subset; returns the
 * decoded instructions. Forward-only jumps make one pass in program order
 * enough: each instruction's "registers written on every path" is the
 * intersection over its predecessors.
 */
export function checkDeviceProgram(program: Uint8Array | readonly DecodedInstruction[]): DecodedInstruction[] {
  const insns = program instanceof Uint8Array ? decodeProgram(program) : [...program];
  if (insns.length === 0 || insns.length > MAX_INSNS) throw new CgroupError("cgroup-bpf-invalid", `eBPF program length ${insns.length} out of range`);
  const kinds = insns.map((insn, at) => kindOf(insn, at));
  // written[at]: bitmask of registers initialised on every path reaching `at`; undefined = unreachable.
  const written: (number | undefined)[] = new Array(insns.length + 1).fill(undefined);
  written[0] = (1 << 1) | (1 << 10); // r1 = ctx, r10 = frame pointer
  const flow = (to: number, mask: number, from: number): void => {
    if (to <= from) throw invalid(from, "backward jump (loops are refused)");
    if (to > insns.length) throw invalid(from, "jump out of the program");
    written[to] = written[to] === undefined ? mask : written[to]! & mask;
  };
  const needs = (mask: number, reg: number, at: number): void => {
    if ((mask & (1 << reg)) === 0) throw invalid(at, `R${reg} !read_ok`);
  };
  insns.forEach((insn, at) => {
    const mask = written[at];
    if (mask === undefined) throw invalid(at, "unreachable insn");
    const kind = kinds[at]!;
    const fromRegister = (insn.code & 0x08) !== 0;
    switch (kind) {
      case "alu": {
        if (insn.dst === 1 || insn.dst === 10) throw invalid(at, `R${insn.dst} must stay the ${insn.dst === 1 ? "context" : "frame"} pointer here`);
        if (fromRegister) needs(mask, insn.src, at);
        if ((insn.code & 0xf0) !== 0xb0) needs(mask, insn.dst, at);
        flow(at + 1, mask | (1 << insn.dst), at);
        return;
      }
      case "ldx":
        if (insn.dst === 1 || insn.dst === 10) throw invalid(at, `R${insn.dst} must stay the context/frame pointer here`);
        flow(at + 1, mask | (1 << insn.dst), at);
        return;
      case "jump":
        needs(mask, insn.dst, at);
        if (fromRegister) needs(mask, insn.src, at);
        flow(at + 1 + insn.off, mask, at);
        flow(at + 1, mask, at);
        return;
      case "ja":
        flow(at + 1 + insn.off, mask, at);
        return;
      case "exit":
        needs(mask, 0, at);
        return;
    }
  });
  if (written[insns.length] !== undefined) throw invalid(insns.length - 1, "falls off the end of the program");
  return insns;
}

function aluResult(op: number, a: bigint, b: bigint, bits: bigint): bigint {
  const mask = bits === 32n ? U32 : U64;
  switch (op) {
    case 0x00:
      return (a + b) & mask;
    case 0x10:
      return (a - b) & mask;
    case 0x50:
      return a & b & mask;
    case 0x40:
      return (a | b) & mask;
    case 0xa0:
      return (a ^ b) & mask;
    case 0x60:
      return (a << (b & (bits - 1n))) & mask;
    case 0x70:
      return (a & mask) >> (b & (bits - 1n));
    default: // 0xb0 mov
      return b & mask;
  }
}

function jumpTaken(op: number, a: bigint, b: bigint): boolean {
  switch (op) {
    case 0x10:
      return a === b;
    case 0x50:
      return a !== b;
    case 0x40:
      return (a & b) !== 0n;
    case 0x20:
      return a > b;
    case 0x30:
      return a >= b;
    case 0xa0:
      return a < b;
    default: // 0xb0 jle
      return a <= b;
  }
}

/** Checks a program once; the returned function runs it on a request and returns r0 at exit. */
export function prepareDeviceProgram(program: Uint8Array | readonly DecodedInstruction[]): (request: DeviceAccessRequest) => bigint {
  const insns = checkDeviceProgram(program);
  return (request) => execute(insns, request);
}

export function runDeviceProgram(program: Uint8Array | readonly DecodedInstruction[], request: DeviceAccessRequest): bigint {
  return prepareDeviceProgram(program)(request);
}

function execute(insns: readonly DecodedInstruction[], request: DeviceAccessRequest): bigint {
  const ctx = new DataView(new ArrayBuffer(CTX_SIZE));
  ctx.setUint32(0, (((request.access & 0xffff) << 16) | (request.type & 0xffff)) >>> 0, true);
  ctx.setUint32(4, request.major >>> 0, true);
  ctx.setUint32(8, request.minor >>> 0, true);
  const regs: bigint[] = new Array(11).fill(0n);
  for (let pc = 0; ; ) {
    const insn = insns[pc]!;
    const cls = insn.code & 0x07;
    const op = insn.code & 0xf0;
    const fromRegister = (insn.code & 0x08) !== 0;
    if (cls === 0x04 || cls === 0x07) {
      const bits = cls === 0x04 ? 32n : 64n;
      const operand = fromRegister ? regs[insn.src]! : BigInt.asUintN(64, BigInt(insn.imm)); // immediates sign-extend
      const a = bits === 32n ? regs[insn.dst]! & U32 : regs[insn.dst]!;
      regs[insn.dst] = aluResult(op, a, bits === 32n ? operand & U32 : operand, bits);
      pc++;
    } else if (cls === 0x01) {
      regs[insn.dst] = BigInt(ctx.getUint32(insn.off, true));
      pc++;
    } else if (insn.code === 0x95) {
      return regs[0]!;
    } else if (insn.code === 0x05) {
      pc += 1 + insn.off;
    } else {
      const narrow = cls === 0x06;
      const mask = narrow ? U32 : U64;
      const a = regs[insn.dst]! & mask;
      const b = (fromRegister ? regs[insn.src]! : BigInt.asUintN(64, BigInt(insn.imm))) & mask;
      pc += jumpTaken(op, a, b) ? 1 + insn.off : 1;
    }
  }
}

/** The kernel's reading of r0: 1 allows, anything else refuses (EPERM). */
export function deviceProgramAllows(program: Uint8Array | readonly DecodedInstruction[], request: DeviceAccessRequest): boolean {
  return runDeviceProgram(program, request) === 1n;
}
