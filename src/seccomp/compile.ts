/**
 * OCI linux.seccomp -> classic BPF, without libseccomp.
 *
 * The meaning follows what runc (libseccomp + its patchbpf -ENOSYS stub)
 * gives a profile, so a config.json behaves the same under nano-kata:
 *
 * - seccomp_data.arch is checked first. The native ABI is always filtered
 *   (libseccomp's filter context starts with it); `architectures` adds more.
 *   Any other arch gets libseccomp's default bad-arch action, KILL_THREAD.
 *   On x86_64 the x32 ABI shares AUDIT_ARCH_X86_64 and sets bit 30 of nr: those
 *   calls take the x32 rules when SCMP_ARCH_X32 is listed and the bad-arch
 *   action otherwise, so an allow-list cannot be bypassed by calling the same
 *   code through the x32 numbers.
 * - A rule whose verdict equals the default verdict is dropped (runc skips
 *   them; libseccomp would refuse them). Syscall names no table knows are
 *   skipped with a note (runc logs and skips); a name that exists on some ABIs
 *   and not others simply applies where it exists.
 * - Rules for one syscall are tried in profile order and the first whose
 *   conditions all hold decides; an unconditional rule ends the list.
 *   Conditions compare unsigned 64-bit values as high then low 32-bit halves;
 *   on 32-bit ABIs only the low halves exist, as in libseccomp.
 * - Unless the default action lets calls through (ALLOW, LOG, TRACE), a
 *   syscall numbered above every syscall the profile names returns ENOSYS
 *   instead of the default, as runc's stub does: libc then falls back from a
 *   syscall newer than the profile (clone3, faccessat2) instead of failing
 *   with EPERM.
 *
 * Layout: arch dispatch, then per ABI a binary search over the syscall
 * numbers the profile names, ending in small leaves of JEQ tests followed by
 * the leaf's RET instructions and inline argument checks. Far jumps are the
 * assembler's problem (it inserts BPF_JA trampolines).
 */
import type { LinuxSeccomp, LinuxSeccompArg, LinuxSyscall, SeccompAction, SeccompFlag, SeccompOperator } from "../spec/types.ts";
import { SECCOMP_ARCHITECTURES } from "../spec/validate-seccomp.ts";
import {
  argHighOffset,
  argLowOffset,
  AUDIT_ARCH,
  ENOSYS,
  EPERM,
  SECCOMP_DATA,
  SECCOMP_FILTER_FLAG,
  SECCOMP_RET,
  SECCOMP_RET_DATA,
  X32_SYSCALL_BIT,
} from "./abi.ts";
import { isKnownSyscall, NATIVE_ABI, type NativeArch, type SyscallAbi, SYSCALL_ABIS, syscallNumber } from "./arch.ts";
import { type Label, ProgramBuilder } from "./assembler.ts";
import { BPF_JEQ, BPF_JGE, BPF_JGT, BPF_MAXINSNS, encodeProgram } from "./bpf.ts";
import { SeccompError } from "./errors.ts";

export interface CompileOptions {
  nativeArch: NativeArch;
  /** runc's -ENOSYS answer for syscalls newer than the profile (see above); default true. */
  enosysForNewerSyscalls?: boolean;
  /** JSON path of the profile, for messages; default "linux.seccomp". */
  path?: string;
}

export interface CompiledSeccomp {
  /** Raw `struct sock_filter` array, little-endian, for seccomp(SECCOMP_SET_MODE_FILTER). */
  program: Uint8Array;
  /** SECCOMP_FILTER_FLAG_* bits for the same call. */
  flags: number;
  /** What was skipped or adjusted, one sentence each, for --debug / --trace. */
  notes: string[];
  /** A rule uses SCMP_ACT_NOTIFY: the load returns a listener fd for listenerPath. */
  needsNotifyListener: boolean;
}

/** libseccomp's default bad-architecture action, SCMP_ACT_KILL (= KILL_THREAD); runc keeps it. */
export const BAD_ARCH_VERDICT = SECCOMP_RET.KILL_THREAD;

/** Syscalls per binary-search leaf: smaller is faster to match, larger is a shorter program. */
const LEAF_SIZE = 6;

const MAX_ARG_INDEX = 5;
const UINT64_MAX = (1n << 64n) - 1n;
const LOW_32 = 0xffff_ffffn;

const FLAG_BITS: Readonly<Record<SeccompFlag, number>> = {
  SECCOMP_FILTER_FLAG_TSYNC: SECCOMP_FILTER_FLAG.TSYNC,
  SECCOMP_FILTER_FLAG_LOG: SECCOMP_FILTER_FLAG.LOG,
  SECCOMP_FILTER_FLAG_SPEC_ALLOW: SECCOMP_FILTER_FLAG.SPEC_ALLOW,
  SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: SECCOMP_FILTER_FLAG.WAIT_KILLABLE_RECV,
};

const OPERATORS: readonly SeccompOperator[] = [
  "SCMP_CMP_NE",
  "SCMP_CMP_LT",
  "SCMP_CMP_LE",
  "SCMP_CMP_EQ",
  "SCMP_CMP_GE",
  "SCMP_CMP_GT",
  "SCMP_CMP_MASKED_EQ",
];

interface Condition {
  index: number;
  op: SeccompOperator;
  /** For MASKED_EQ the mask. */
  value: bigint;
  /** For MASKED_EQ the value the masked argument must equal. */
  valueTwo: bigint;
  path: string;
}

interface Rule {
  verdict: number;
  conditions: Condition[];
  path: string;
}

/** What one ABI's filter must decide: rules per seccomp_data.nr. */
interface AbiPlan {
  abi: SyscallAbi;
  rules: Map<number, Rule[]>;
  /** Calls numbered above this get ENOSYS; undefined = no stub. */
  enosysAbove: number | undefined;
}

export function compileSeccomp(profile: LinuxSeccomp, opts: CompileOptions): CompiledSeccomp {
  const path = opts.path ?? "linux.seccomp";
  const notes = new NoteList();

  const defaultVerdict = verdictOf(profile.defaultAction, profile.defaultErrnoRet, `${path}.defaultAction`, `${path}.defaultErrnoRet`);
  if (profile.defaultAction === "SCMP_ACT_NOTIFY") {
    // The notifying process could never make the syscalls needed to hand the
    // listener fd to the agent (runc refuses this too).
    throw new SeccompError("seccomp-bad-action", `${path}.defaultAction: SCMP_ACT_NOTIFY cannot be the default action`);
  }

  const abis = resolveAbis(profile.architectures ?? [], opts.nativeArch, path, notes);
  const rules = resolveRules(profile.syscalls ?? [], path, notes);
  const usesNotify = rules.some((r) => r.action === "SCMP_ACT_NOTIFY");
  const flags = resolveFlags(profile.flags ?? [], usesNotify, path, notes);

  const enosysStub =
    opts.enosysForNewerSyscalls !== false &&
    !isPermissive(profile.defaultAction) &&
    defaultVerdict !== ((SECCOMP_RET.ERRNO | ENOSYS) >>> 0);

  const plans = abis.map((abi) => planAbi(abi, rules, defaultVerdict, enosysStub, notes));
  const instructions = emitProgram(plans, defaultVerdict);
  if (instructions.length > BPF_MAXINSNS) {
    throw new SeccompError(
      "seccomp-program-too-large",
      `${path}: the compiled filter has ${instructions.length} BPF instructions; the kernel accepts at most ${BPF_MAXINSNS}`,
    );
  }
  return { program: encodeProgram(instructions), flags, notes: notes.list(), needsNotifyListener: usesNotify };
}

// ------------------------------------------------------------------ profile

/** Ordered, de-duplicated notes: one unknown name must not produce a note per ABI. */
class NoteList {
  private readonly notes = new Set<string>();
  add(note: string): void {
    this.notes.add(note);
  }
  list(): string[] {
    return [...this.notes];
  }
}

function isPermissive(action: SeccompAction): boolean {
  // As runc: a good tracer handles unknown syscalls itself, so TRACE counts as permissive.
  return action === "SCMP_ACT_ALLOW" || action === "SCMP_ACT_LOG" || action === "SCMP_ACT_TRACE";
}

/** The 32-bit value a filter returns for an OCI action (runtime-spec: errnoRet defaults to EPERM). */
function verdictOf(action: unknown, errnoRet: unknown, actionPath: string, errnoPath: string): number {
  const carriesErrno = action === "SCMP_ACT_ERRNO" || action === "SCMP_ACT_TRACE";
  if (errnoRet !== undefined && !carriesErrno) {
    throw new SeccompError("seccomp-errno-not-allowed", `${errnoPath}: is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not ${JSON.stringify(action)}`);
  }
  let data = EPERM;
  if (errnoRet !== undefined) {
    // The errno travels in SECCOMP_RET_DATA; a larger value would spill into the action bits.
    if (typeof errnoRet !== "number" || !Number.isInteger(errnoRet) || errnoRet < 0 || errnoRet > SECCOMP_RET_DATA) {
      throw new SeccompError("seccomp-bad-value", `${errnoPath}: must be an integer from 0 to ${SECCOMP_RET_DATA}, got ${JSON.stringify(errnoRet)}`);
    }
    data = errnoRet;
  }
  switch (action) {
    case "SCMP_ACT_KILL":
    case "SCMP_ACT_KILL_THREAD":
      return SECCOMP_RET.KILL_THREAD;
    case "SCMP_ACT_KILL_PROCESS":
      return SECCOMP_RET.KILL_PROCESS;
    case "SCMP_ACT_TRAP":
      return SECCOMP_RET.TRAP;
    case "SCMP_ACT_ERRNO":
      return (SECCOMP_RET.ERRNO | data) >>> 0;
    case "SCMP_ACT_TRACE":
      return (SECCOMP_RET.TRACE | data) >>> 0;
    case "SCMP_ACT_ALLOW":
      return SECCOMP_RET.ALLOW;
    case "SCMP_ACT_LOG":
      return SECCOMP_RET.LOG;
    case "SCMP_ACT_NOTIFY":
      return SECCOMP_RET.USER_NOTIF;
    default:
      throw new SeccompError("seccomp-bad-action", `${actionPath}: unknown action ${JSON.stringify(action)}`);
  }
}

function resolveAbis(architectures: readonly string[], nativeArch: NativeArch, path: string, notes: NoteList): SyscallAbi[] {
  const nativeName = NATIVE_ABI[nativeArch];
  const names = [nativeName];
  architectures.forEach((name, i) => {
    if (!SECCOMP_ARCHITECTURES.includes(name)) {
      throw new SeccompError("seccomp-bad-arch", `${path}.architectures[${i}]: unknown architecture ${JSON.stringify(name)}`);
    }
    if (!Object.hasOwn(SYSCALL_ABIS, name)) {
      notes.add(`${path}.architectures[${i}]: no syscall table for ${name}; its processes get the bad-arch action (KILL_THREAD)`);
      return;
    }
    if (!names.includes(name)) names.push(name);
  });
  return names.map((name) => SYSCALL_ABIS[name] as SyscallAbi);
}

interface ProfileRule extends Rule {
  action: SeccompAction;
  names: string[];
}

function resolveRules(syscalls: readonly LinuxSyscall[], path: string, notes: NoteList): ProfileRule[] {
  return syscalls.map((syscall, i) => {
    const rulePath = `${path}.syscalls[${i}]`;
    const verdict = verdictOf(syscall.action, syscall.errnoRet, `${rulePath}.action`, `${rulePath}.errnoRet`);
    if (syscall.action === "SCMP_ACT_NOTIFY" && syscall.names.includes("write")) {
      // The container's init reports the listener fd to the runtime with
      // write(2); notifying on it would deadlock the setup (runc refuses too).
      throw new SeccompError("seccomp-bad-action", `${rulePath}.action: SCMP_ACT_NOTIFY cannot be used for the write syscall`);
    }
    const conditions = (syscall.args ?? []).map((arg, j) => resolveCondition(arg, `${rulePath}.args[${j}]`));
    noteRepeatedIndexes(rulePath, conditions, notes);
    syscall.names.forEach((name, j) => {
      if (!isKnownSyscall(name)) notes.add(`${rulePath}.names[${j}]: unknown syscall ${JSON.stringify(name)} skipped`);
    });
    return { action: syscall.action, names: syscall.names, verdict, conditions, path: rulePath };
  });
}

function resolveCondition(arg: LinuxSeccompArg, argPath: string): Condition {
  const { index, op } = arg;
  if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index > MAX_ARG_INDEX) {
    throw new SeccompError("seccomp-bad-arg-index", `${argPath}.index: must be an integer from 0 to ${MAX_ARG_INDEX}, got ${JSON.stringify(index)}`);
  }
  if (!OPERATORS.includes(op)) {
    throw new SeccompError("seccomp-bad-operator", `${argPath}.op: unknown operator ${JSON.stringify(op)}`);
  }
  const value = toUint64(arg.value, `${argPath}.value`);
  const valueTwo = arg.valueTwo === undefined ? 0n : toUint64(arg.valueTwo, `${argPath}.valueTwo`);
  return { index, op, value, valueTwo, path: argPath };
}

/** Profile numbers are JSON numbers; a caller holding exact values may pass bigints. */
function toUint64(value: unknown, valuePath: string): bigint {
  if (typeof value === "bigint" && value >= 0n && value <= UINT64_MAX) return value;
  if (typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 2 ** 64) {
    // JSON.parse turns 2^64-1 into exactly 2^64 (IEEE doubles): read it as the
    // all-ones value it was written as.
    return value === 2 ** 64 ? UINT64_MAX : BigInt(value);
  }
  throw new SeccompError("seccomp-bad-value", `${valuePath}: must be an unsigned 64-bit integer, got ${String(value)}`);
}

function resolveFlags(flagNames: readonly string[], usesNotify: boolean, path: string, notes: NoteList): number {
  let flags = 0;
  flagNames.forEach((name, i) => {
    if (!Object.hasOwn(FLAG_BITS, name)) {
      throw new SeccompError("seccomp-bad-flag", `${path}.flags[${i}]: unknown flag ${JSON.stringify(name)}`);
    }
    flags |= FLAG_BITS[name as SeccompFlag];
  });
  if (usesNotify) flags |= SECCOMP_FILTER_FLAG.NEW_LISTENER;
  if (flags & SECCOMP_FILTER_FLAG.WAIT_KILLABLE_RECV && !usesNotify) {
    // The kernel rejects WAIT_KILLABLE_RECV without NEW_LISTENER (EINVAL).
    flags &= ~SECCOMP_FILTER_FLAG.WAIT_KILLABLE_RECV;
    notes.add(`${path}.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV dropped: no rule uses SCMP_ACT_NOTIFY`);
  }
  if (flags & SECCOMP_FILTER_FLAG.TSYNC && flags & SECCOMP_FILTER_FLAG.NEW_LISTENER) {
    // TSYNC reports a failing thread's id as the return value, which collides
    // with the listener fd; the kernel demands TSYNC_ESRCH to combine them.
    flags |= SECCOMP_FILTER_FLAG.TSYNC_ESRCH;
    notes.add(`${path}.flags: SECCOMP_FILTER_FLAG_TSYNC_ESRCH added so TSYNC can be combined with the notify listener`);
  }
  return flags;
}

// ------------------------------------------------------------------ per-ABI rules

function planAbi(abi: SyscallAbi, rules: readonly ProfileRule[], defaultVerdict: number, enosysStub: boolean, notes: NoteList): AbiPlan {
  const byNumber = new Map<number, Rule[]>();
  let highest: number | undefined;
  for (const rule of rules) {
    const sameAsDefault = rule.verdict === defaultVerdict;
    if (sameAsDefault) notes.add(`${rule.path}: same verdict as defaultAction; skipped`);
    for (const name of rule.names) {
      const nr = syscallNumber(abi, name);
      // Absent on this ABI (or on all: resolveRules noted those).
      if (nr === undefined) continue;
      // runc's stub counts every name in the profile, whatever its action.
      if (highest === undefined || nr > highest) highest = nr;
      if (sameAsDefault) continue;
      const list = byNumber.get(nr) ?? [];
      if (list.includes(rule)) continue;
      if (list.length > 0 && list[list.length - 1]?.conditions.length === 0) {
        notes.add(`${rule.path}: never reached for ${JSON.stringify(name)}: an earlier rule matches it unconditionally`);
        continue;
      }
      list.push(rule);
      byNumber.set(nr, list);
    }
  }
  if (abi.argBits === 32) {
    for (const rule of rules) if (rule.verdict !== defaultVerdict) noteTruncatedValues(rule, abi, notes);
  }
  return { abi, rules: byNumber, enosysAbove: enosysStub ? highest : undefined };
}

function noteTruncatedValues(rule: Rule, abi: SyscallAbi, notes: NoteList): void {
  for (const c of rule.conditions) {
    if (c.value > LOW_32 || c.valueTwo > LOW_32) {
      notes.add(`${c.path}: ${abi.scmpName} arguments are 32-bit; only the low 32 bits of the value are compared there`);
    }
  }
}

function noteRepeatedIndexes(rulePath: string, conditions: readonly Condition[], notes: NoteList): void {
  const seen = new Set<number>();
  for (const c of conditions) {
    if (seen.has(c.index)) {
      // runc splits such a rule into one rule per condition (OR); the
      // runtime-spec reads conditions as AND, which is what we compile.
      notes.add(`${rulePath}: several conditions on argument ${c.index} must all hold (runc would accept any one of them)`);
    }
    seen.add(c.index);
  }
}

// ------------------------------------------------------------------ emission

function emitProgram(plans: readonly AbiPlan[], defaultVerdict: number): ReturnType<ProgramBuilder["assemble"]> {
  const b = new ProgramBuilder();
  // Group ABIs by seccomp_data.arch: x86_64 and x32 share AUDIT_ARCH_X86_64.
  const sections = new Map<number, AbiPlan[]>();
  for (const plan of plans) sections.set(plan.abi.auditArch, [...(sections.get(plan.abi.auditArch) ?? []), plan]);

  const sectionLabels = new Map<number, Label>();
  b.loadWord(SECCOMP_DATA.arch);
  for (const auditArch of sections.keys()) {
    const label = b.label(`arch 0x${auditArch.toString(16)}`);
    sectionLabels.set(auditArch, label);
    b.branch(BPF_JEQ, auditArch, label, undefined);
  }
  b.ret(BAD_ARCH_VERDICT);

  for (const [auditArch, group] of sections) {
    b.place(sectionLabels.get(auditArch) as Label);
    b.loadWord(SECCOMP_DATA.nr);
    if (auditArch === AUDIT_ARCH.X86_64) {
      const x32 = b.label("x32");
      b.branch(BPF_JGE, X32_SYSCALL_BIT, x32, undefined);
      emitAbiOrBadArch(b, group.find((p) => p.abi.nrBias === 0), defaultVerdict);
      b.place(x32);
      emitAbiOrBadArch(b, group.find((p) => p.abi.nrBias === X32_SYSCALL_BIT), defaultVerdict);
    } else {
      emitAbi(b, group[0] as AbiPlan, defaultVerdict);
    }
  }
  return b.assemble();
}

function emitAbiOrBadArch(b: ProgramBuilder, plan: AbiPlan | undefined, defaultVerdict: number): void {
  if (plan) emitAbi(b, plan, defaultVerdict);
  else b.ret(BAD_ARCH_VERDICT);
}

/** Expects A = seccomp_data.nr; every path ends in RET. */
function emitAbi(b: ProgramBuilder, plan: AbiPlan, defaultVerdict: number): void {
  if (plan.enosysAbove !== undefined) {
    const known = b.label("known range");
    b.branch(BPF_JGT, plan.enosysAbove, undefined, known);
    b.ret((SECCOMP_RET.ERRNO | ENOSYS) >>> 0);
    b.place(known);
  }
  const entries = [...plan.rules].sort(([a], [c]) => a - c);
  emitSearch(b, entries, plan.abi, defaultVerdict);
}

type Entry = [nr: number, rules: Rule[]];

function emitSearch(b: ProgramBuilder, entries: readonly Entry[], abi: SyscallAbi, defaultVerdict: number): void {
  if (entries.length <= LEAF_SIZE) {
    emitLeaf(b, entries, abi, defaultVerdict);
    return;
  }
  const middle = Math.floor(entries.length / 2);
  const upper = b.label("upper half");
  b.branch(BPF_JGE, (entries[middle] as Entry)[0], upper, undefined);
  emitSearch(b, entries.slice(0, middle), abi, defaultVerdict);
  b.place(upper);
  emitSearch(b, entries.slice(middle), abi, defaultVerdict);
}

/**
 * JEQ per syscall, then one RET per distinct unconditional verdict, then the
 * argument checks of conditional syscalls, then the leaf's RET default (last,
 * so every failed check can jump forward to it).
 */
function emitLeaf(b: ProgramBuilder, entries: readonly Entry[], abi: SyscallAbi, defaultVerdict: number): void {
  const fallback = b.label("default");
  const verdictLabels = new Map<number, Label>();
  const blocks: Array<{ label: Label; rules: Rule[] }> = [];
  entries.forEach(([nr, rules], i) => {
    let target: Label;
    const only = rules[0] as Rule;
    if (rules.length === 1 && only.conditions.length === 0) {
      target = verdictLabels.get(only.verdict) ?? b.label(`verdict 0x${only.verdict.toString(16)}`);
      verdictLabels.set(only.verdict, target);
    } else {
      target = b.label(`rules for ${nr}`);
      blocks.push({ label: target, rules });
    }
    const isLast = i === entries.length - 1;
    b.branch(BPF_JEQ, nr, target, isLast ? fallback : undefined);
  });
  for (const [verdict, label] of verdictLabels) {
    b.place(label);
    b.ret(verdict);
  }
  for (const block of blocks) {
    b.place(block.label);
    emitRules(b, block.rules, abi, fallback);
  }
  b.place(fallback);
  b.ret(defaultVerdict);
}

function emitRules(b: ProgramBuilder, rules: readonly Rule[], abi: SyscallAbi, fallback: Label): void {
  rules.forEach((rule, i) => {
    const next = i === rules.length - 1 ? fallback : b.label("next rule");
    for (const condition of rule.conditions) emitCondition(b, condition, abi, next);
    b.ret(rule.verdict);
    if (next !== fallback) b.place(next);
  });
}

/** Falls through when the condition holds, jumps to `fail` when it does not. */
function emitCondition(b: ProgramBuilder, c: Condition, abi: SyscallAbi, fail: Label): void {
  const lo = Number(c.value & LOW_32);
  const hi = Number(c.value >> 32n);
  const lo2 = Number(c.valueTwo & LOW_32);
  const hi2 = Number(c.valueTwo >> 32n);
  const loadLow = () => b.loadWord(argLowOffset(c.index));
  const loadHigh = () => b.loadWord(argHighOffset(c.index));

  if (abi.argBits === 32) {
    loadLow();
    switch (c.op) {
      case "SCMP_CMP_EQ":
        return b.branch(BPF_JEQ, lo, undefined, fail);
      case "SCMP_CMP_NE":
        return b.branch(BPF_JEQ, lo, fail, undefined);
      case "SCMP_CMP_GT":
        return b.branch(BPF_JGT, lo, undefined, fail);
      case "SCMP_CMP_GE":
        return b.branch(BPF_JGE, lo, undefined, fail);
      case "SCMP_CMP_LT":
        return b.branch(BPF_JGE, lo, fail, undefined);
      case "SCMP_CMP_LE":
        return b.branch(BPF_JGT, lo, fail, undefined);
      case "SCMP_CMP_MASKED_EQ":
        b.andConstant(lo);
        return b.branch(BPF_JEQ, lo2, undefined, fail);
    }
  }

  const pass = b.label("condition holds");
  switch (c.op) {
    case "SCMP_CMP_EQ":
      loadHigh();
      b.branch(BPF_JEQ, hi, undefined, fail);
      loadLow();
      b.branch(BPF_JEQ, lo, undefined, fail);
      break;
    case "SCMP_CMP_NE":
      loadHigh();
      b.branch(BPF_JEQ, hi, undefined, pass);
      loadLow();
      b.branch(BPF_JEQ, lo, fail, undefined);
      break;
    case "SCMP_CMP_GT":
    case "SCMP_CMP_GE":
      // arg > v  <=>  hi > v.hi, or hi == v.hi and lo > v.lo (>= for GE).
      loadHigh();
      b.branch(BPF_JGT, hi, pass, undefined);
      // Not above a zero high half means equal to it: skip the equality test.
      if (hi !== 0) b.branch(BPF_JEQ, hi, undefined, fail);
      loadLow();
      b.branch(c.op === "SCMP_CMP_GT" ? BPF_JGT : BPF_JGE, lo, undefined, fail);
      break;
    case "SCMP_CMP_LT":
    case "SCMP_CMP_LE":
      // arg < v  <=>  not (arg >= v); arg <= v  <=>  not (arg > v).
      loadHigh();
      b.branch(BPF_JGT, hi, fail, undefined);
      if (hi !== 0) b.branch(BPF_JEQ, hi, undefined, pass);
      loadLow();
      b.branch(c.op === "SCMP_CMP_LT" ? BPF_JGE : BPF_JGT, lo, fail, undefined);
      break;
    case "SCMP_CMP_MASKED_EQ":
      loadHigh();
      b.andConstant(hi);
      b.branch(BPF_JEQ, hi2, undefined, fail);
      loadLow();
      b.andConstant(lo);
      b.branch(BPF_JEQ, lo2, undefined, fail);
      break;
  }
  b.place(pass);
}

/** The value a filter returns for an OCI action (errnoRet defaulting to EPERM), for tests and --trace. */
export function actionVerdict(action: SeccompAction, errnoRet?: number): number {
  return verdictOf(action, errnoRet, "action", "errnoRet");
}
