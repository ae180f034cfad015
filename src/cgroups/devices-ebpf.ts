/**
 * linux.resources.devices -> a BPF_PROG_TYPE_CGROUP_DEVICE program, the
 * cgroup v2 replacement for devices.allow / devices.deny.
 *
 * Parity with cgroup v1 comes by construction, in two steps:
 *
 * 1. The rules become the exact devices.allow/deny lines the v1 driver writes
 *    (deviceRulesToV1Writes), and those lines run through a model of the v1
 *    controller (security/device_cgroup.c, devcgroup_update_access): a
 *    default behaviour (allow-all / deny-all) plus an exception list keyed by
 *    (type, major, minor). "a" resets both; an exception-adding write merges
 *    access bits into an existing key; an exception-removing write clears
 *    bits of the exactly matching key only. This is why "last matching rule
 *    wins" is NOT v1's meaning: "allow c 1:3 r" then "allow c 1:3 w" grants
 *    an O_RDWR open (one exception "rw"), and "deny c 1:3" after "allow c 1:*"
 *    changes nothing (v1 cannot punch a hole into a wildcard exception; such
 *    rules are reported in `ignored`).
 *
 * 2. The resulting state becomes straight-line eBPF answering the kernel's
 *    own check (devcgroup_legacy_check_permission):
 *      deny-all default:  allow iff one exception matches type, major, minor
 *                         and holds every requested access bit;
 *      allow-all default: deny iff one exception matches type, major, minor
 *                         and shares any requested access bit.
 *    (runc tests "requested bits within the rule's bits" in both modes; for
 *    allow-all that misses v1's partial match, e.g. a rule denying "w" must
 *    also refuse an O_RDWR open, which asks for r and w at once.)
 *
 * The program's input is struct bpf_cgroup_dev_ctx (include/uapi/linux/bpf.h):
 * u32 access_type at 0 (device type in the low 16 bits, access in the high
 * 16), u32 major at 4, u32 minor at 8; it returns 1 to allow and 0 to refuse
 * with EPERM. Every jump goes forward (the verifier refuses loops) and only
 * reachable code is emitted (it refuses dead instructions too).
 */
import type { LinuxDeviceCgroup } from "../spec/types.ts";
import { deviceRulesToV1Writes, type DeviceWrite } from "./devices.ts";
import { CgroupError } from "./errors.ts";

// ---------------------------------------------------------------- the kernel's numbers

/** Device types and access bits in bpf_cgroup_dev_ctx (same values as v1's DEVCG_*). */
export const BPF_DEVCG_DEV_BLOCK = 1;
export const BPF_DEVCG_DEV_CHAR = 2;
export const BPF_DEVCG_ACC_MKNOD = 1;
export const BPF_DEVCG_ACC_READ = 2;
export const BPF_DEVCG_ACC_WRITE = 4;
const ACCESS_ALL = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE;

/** v1 stores "*" as ~0 (u32); a major or minor of 4294967295 therefore is the wildcard. */
export const DEVICE_WILDCARD = 0xffffffff;

// Instruction fields (Documentation/bpf/standardization/instruction-set.rst).
const CLASS_LDX = 0x01;
const CLASS_ALU = 0x04; // 32-bit ALU: results are zero-extended
const CLASS_JMP = 0x05;
const CLASS_JMP32 = 0x06; // compares the low 32 bits (kernel 5.1+)
const CLASS_ALU64 = 0x07;
const SIZE_W = 0x00;
const MODE_MEM = 0x60;
const SRC_K = 0x00;
const SRC_X = 0x08;
const ALU_AND = 0x50;
const ALU_RSH = 0x70;
const ALU_MOV = 0xb0;
const JMP_JA = 0x00;
const JMP_JSET = 0x40;
const JMP_JNE = 0x50;
const JMP_EXIT = 0x90;

/** One eBPF instruction: opcode, two 4-bit registers, a signed 16-bit offset, a signed 32-bit immediate. */
export interface EbpfInstruction {
  code: number;
  dst: number;
  src: number;
  off: number;
  imm: number;
}

export const EBPF_INSTRUCTION_SIZE = 8;

/** Jump offsets are signed 16-bit: the longest forward jump the encoding can hold. */
const MAX_JUMP = 0x7fff;

// ---------------------------------------------------------------- step 1: the v1 model

export interface DeviceException {
  /** BPF_DEVCG_DEV_BLOCK or BPF_DEVCG_DEV_CHAR. */
  type: number;
  /** DEVICE_WILDCARD for "*". */
  major: number;
  minor: number;
  /** BPF_DEVCG_ACC_* bits. */
  access: number;
}

/** A device cgroup as v1 would hold it after the writes. */
export interface DeviceCgroupModel {
  defaultAllow: boolean;
  /** In the order v1 lists them (devices.list), one per (type, major, minor). */
  exceptions: DeviceException[];
  /**
   * Rules v1 (silently) does not carry out in full: a removal touches only the
   * exception with exactly its type, major and minor, so "deny c 1:3" leaves
   * an "allow c 1:*" whole, and "deny c 1:*" leaves an "allow c 1:3".
   */
  ignored: { field: string; rule: string; survivor: string }[];
}

interface ParsedLine {
  reset: boolean;
  type: number;
  major: number;
  minor: number;
  access: number;
}

function parseDeviceNumber(text: string, field: string, what: string): number {
  if (text === "*") return DEVICE_WILDCARD;
  const value = Number(text);
  // The kernel parses these with kstrtou32: anything larger is EINVAL on v1.
  if (!/^\d+$/.test(text) || value > DEVICE_WILDCARD) {
    throw new CgroupError("cgroup-resource-invalid", `${field}.${what}: ${text} is not a 32-bit device number`);
  }
  return value;
}

/** One devices.allow/deny line: "a", or "<c|b> <major|*>:<minor|*> <rwm>". */
function parseLine(write: DeviceWrite): ParsedLine {
  if (write.value === "a") return { reset: true, type: 0, major: 0, minor: 0, access: 0 };
  const match = /^([cb]) (\S+):(\S+) ([rwm]*)$/.exec(write.value);
  if (!match) throw new CgroupError("cgroup-resource-invalid", `${write.field}: cannot express ${JSON.stringify(write.value)} as a device rule`);
  let access = 0;
  for (const letter of match[4]!) access |= letter === "r" ? BPF_DEVCG_ACC_READ : letter === "w" ? BPF_DEVCG_ACC_WRITE : BPF_DEVCG_ACC_MKNOD;
  return {
    reset: false,
    type: match[1] === "b" ? BPF_DEVCG_DEV_BLOCK : BPF_DEVCG_DEV_CHAR,
    major: parseDeviceNumber(match[2]!, write.field, "major"),
    minor: parseDeviceNumber(match[3]!, write.field, "minor"),
    access,
  };
}

function describe(e: { type: number; major: number; minor: number; access: number }): string {
  const number = (n: number): string => (n === DEVICE_WILDCARD ? "*" : String(n));
  const access = (e.access & BPF_DEVCG_ACC_READ ? "r" : "") + (e.access & BPF_DEVCG_ACC_WRITE ? "w" : "") + (e.access & BPF_DEVCG_ACC_MKNOD ? "m" : "");
  return `${e.type === BPF_DEVCG_DEV_BLOCK ? "b" : "c"} ${number(e.major)}:${number(e.minor)} ${access}`;
}

/**
 * Plays devices.allow/deny writes on a fresh device cgroup. A fresh v1
 * cgroup inherits its parent's state; the writes always start with "a" to
 * devices.deny, so the starting state never shows.
 */
export function emulateDeviceCgroup(writes: readonly DeviceWrite[]): DeviceCgroupModel {
  let defaultAllow = true;
  let exceptions: DeviceException[] = [];
  const ignored: DeviceCgroupModel["ignored"] = [];
  for (const write of writes) {
    const line = parseLine(write);
    const allowFile = write.file === "devices.allow";
    if (line.reset) {
      defaultAllow = allowFile;
      exceptions = [];
      continue;
    }
    const sameKey = (e: DeviceException): boolean => e.type === line.type && e.major === line.major && e.minor === line.minor;
    // An allow on a deny-all cgroup (or a deny on an allow-all one) adds an
    // exception; the other two combinations remove one.
    if (allowFile !== defaultAllow) {
      const existing = exceptions.find(sameKey);
      if (existing) existing.access |= line.access;
      else exceptions.push({ type: line.type, major: line.major, minor: line.minor, access: line.access });
      continue;
    }
    const overlaps = (a: number, b: number): boolean => a === DEVICE_WILDCARD || b === DEVICE_WILDCARD || a === b;
    const survivor = exceptions.find(
      (e) => !sameKey(e) && e.type === line.type && overlaps(e.major, line.major) && overlaps(e.minor, line.minor) && (e.access & line.access) !== 0,
    );
    if (survivor) ignored.push({ field: write.field, rule: `${write.file} ${write.value}`, survivor: describe(survivor) });
    exceptions = exceptions.flatMap((e) => {
      if (!sameKey(e)) return [e];
      const access = e.access & ~line.access;
      return access === 0 ? [] : [{ ...e, access }];
    });
  }
  return { defaultAllow, exceptions, ignored };
}

/** The model's answer to one access check (what the v1 kernel would answer). */
export function modelAllows(model: DeviceCgroupModel, type: number, major: number, minor: number, access: number): boolean {
  const matches = (e: DeviceException): boolean =>
    e.type === type && (e.major === DEVICE_WILDCARD || e.major === major) && (e.minor === DEVICE_WILDCARD || e.minor === minor);
  if (model.defaultAllow) return !model.exceptions.some((e) => matches(e) && (access & e.access) !== 0);
  return model.exceptions.some((e) => matches(e) && (access & ~e.access) === 0);
}

// ---------------------------------------------------------------- step 2: code generation

// Registers: r1 holds the context pointer on entry; the prologue loads the
// context into r2..r5 once and no instruction writes them afterwards.
const R0 = 0;
const R1 = 1;
const R_ACCESS = 2;
const R_TYPE = 3;
const R_MAJOR = 4;
const R_MINOR = 5;

type Label = { position?: number };
type Pending = { at: number; target: Label };

/** Emits instructions with forward jumps to labels, resolved in finish(). */
class ProgramBuilder {
  readonly instructions: EbpfInstruction[] = [];
  private readonly pending: Pending[] = [];

  emit(code: number, dst: number, src: number, off: number, imm: number): void {
    this.instructions.push({ code, dst, src, off, imm });
  }

  jump(code: number, dst: number, imm: number, target: Label): void {
    this.pending.push({ at: this.instructions.length, target });
    this.emit(code, dst, 0, 0, imm);
  }

  place(label: Label): void {
    label.position = this.instructions.length;
  }

  finish(): EbpfInstruction[] {
    for (const { at, target } of this.pending) {
      if (target.position === undefined) throw new Error("device program: jump to a label never placed");
      const off = target.position - at - 1;
      if (off < 0 || off > MAX_JUMP) {
        throw new CgroupError("cgroup-resource-invalid", `linux.resources.devices: too many rules for one eBPF program (a jump spans ${off} instructions)`);
      }
      this.instructions[at]!.off = off;
    }
    return this.instructions;
  }
}

/** The eBPF program answering like the model. */
export function generateDeviceProgram(model: DeviceCgroupModel): EbpfInstruction[] {
  const b = new ProgramBuilder();
  // r2 = access_type; r3 = type (low 16 bits); r2 = access (high 16 bits); r4 = major; r5 = minor.
  b.emit(CLASS_LDX | MODE_MEM | SIZE_W, R_ACCESS, R1, 0, 0); // off 0: access_type
  b.emit(CLASS_ALU | ALU_MOV | SRC_X, R_TYPE, R_ACCESS, 0, 0);
  b.emit(CLASS_ALU | ALU_AND | SRC_K, R_TYPE, 0, 0, 0xffff);
  b.emit(CLASS_ALU | ALU_RSH | SRC_K, R_ACCESS, 0, 0, 16);
  b.emit(CLASS_LDX | MODE_MEM | SIZE_W, R_MAJOR, R1, 4, 0); // off 4: major
  b.emit(CLASS_LDX | MODE_MEM | SIZE_W, R_MINOR, R1, 8, 0); // off 8: minor

  // An exception with no access bits can never decide a real check (the
  // kernel always asks for at least one of r, w, m): leave it out.
  const exceptions = model.exceptions.filter((e) => (e.access & ACCESS_ALL) !== 0);
  const decided: Label = {}; // where an exception's verdict (the opposite of the default) is returned
  for (const e of exceptions) {
    const next: Label = {};
    // JMP32 compares 32 bits: a major above 2^31 must not meet a sign-extended immediate.
    b.jump(CLASS_JMP32 | JMP_JNE | SRC_K, R_TYPE, e.type, next);
    if (e.major !== DEVICE_WILDCARD) b.jump(CLASS_JMP32 | JMP_JNE | SRC_K, R_MAJOR, e.major | 0, next);
    if (e.minor !== DEVICE_WILDCARD) b.jump(CLASS_JMP32 | JMP_JNE | SRC_K, R_MINOR, e.minor | 0, next);
    if (model.defaultAllow) {
      // Deny when any requested bit is one this exception denies.
      b.jump(CLASS_JMP32 | JMP_JSET | SRC_K, R_ACCESS, e.access & ACCESS_ALL, decided);
    } else {
      // Allow only when no requested bit lies outside the exception.
      const outside = ACCESS_ALL & ~e.access;
      if (outside !== 0) b.jump(CLASS_JMP32 | JMP_JSET | SRC_K, R_ACCESS, outside, next);
      b.jump(CLASS_JMP | JMP_JA | SRC_K, 0, 0, decided);
    }
    b.place(next);
  }
  b.emit(CLASS_ALU64 | ALU_MOV | SRC_K, R0, 0, 0, model.defaultAllow ? 1 : 0);
  b.emit(CLASS_JMP | JMP_EXIT, 0, 0, 0, 0);
  if (exceptions.length > 0) {
    b.place(decided);
    b.emit(CLASS_ALU64 | ALU_MOV | SRC_K, R0, 0, 0, model.defaultAllow ? 0 : 1);
    b.emit(CLASS_JMP | JMP_EXIT, 0, 0, 0, 0);
  }
  return b.finish();
}

/** Instructions -> the bytes BPF_PROG_LOAD reads (little-endian hosts: x86-64, arm64). */
export function encodeInstructions(instructions: readonly EbpfInstruction[]): Uint8Array {
  const bytes = new Uint8Array(instructions.length * EBPF_INSTRUCTION_SIZE);
  const view = new DataView(bytes.buffer);
  instructions.forEach((insn, index) => {
    const at = index * EBPF_INSTRUCTION_SIZE;
    view.setUint8(at, insn.code);
    view.setUint8(at + 1, (insn.dst & 0x0f) | ((insn.src & 0x0f) << 4));
    view.setInt16(at + 2, insn.off, true);
    view.setInt32(at + 4, insn.imm, true);
  });
  return bytes;
}

export interface DeviceProgram {
  /** The encoded program, ready for BPF_PROG_LOAD. */
  bytecode: Uint8Array;
  instructions: EbpfInstruction[];
  /** The v1 state the program mirrors. */
  model: DeviceCgroupModel;
}

/**
 * Compiles linux.resources.devices (already including any default rules the
 * caller adds) into the device program. Throws cgroup-resource-invalid, naming
 * the rule, for a rule v1 would refuse.
 */
export function compileDeviceProgram(rules: readonly LinuxDeviceCgroup[]): DeviceProgram {
  const model = emulateDeviceCgroup(deviceRulesToV1Writes(rules));
  const instructions = generateDeviceProgram(model);
  return { bytecode: encodeInstructions(instructions), instructions, model };
}
