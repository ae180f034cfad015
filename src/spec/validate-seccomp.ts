/**
 * Shape rules for linux.seccomp. Whether each syscall name exists on each
 * architecture is the seccomp compiler's business (unknown names are skipped
 * there, as libseccomp-based runtimes do); here we catch what no compiler can
 * make sense of.
 */
import { type Checker, childPath, field, indexPath, type JsonObject, UINT32, UINT64 } from "./check.ts";
import type { SeccompAction, SeccompFlag, SeccompOperator } from "./types.ts";

export const SECCOMP_ACTIONS: readonly SeccompAction[] = [
  "SCMP_ACT_KILL",
  "SCMP_ACT_KILL_PROCESS",
  "SCMP_ACT_KILL_THREAD",
  "SCMP_ACT_TRAP",
  "SCMP_ACT_ERRNO",
  "SCMP_ACT_TRACE",
  "SCMP_ACT_ALLOW",
  "SCMP_ACT_LOG",
  "SCMP_ACT_NOTIFY",
];

export const SECCOMP_OPERATORS: readonly SeccompOperator[] = [
  "SCMP_CMP_NE",
  "SCMP_CMP_LT",
  "SCMP_CMP_LE",
  "SCMP_CMP_EQ",
  "SCMP_CMP_GE",
  "SCMP_CMP_GT",
  "SCMP_CMP_MASKED_EQ",
];

export const SECCOMP_FLAGS: readonly SeccompFlag[] = [
  "SECCOMP_FILTER_FLAG_TSYNC",
  "SECCOMP_FILTER_FLAG_LOG",
  "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
  "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];

/** The architecture names of runtime-spec (libseccomp's SCMP_ARCH_* set). */
export const SECCOMP_ARCHITECTURES: readonly string[] = [
  "SCMP_ARCH_X86",
  "SCMP_ARCH_X86_64",
  "SCMP_ARCH_X32",
  "SCMP_ARCH_ARM",
  "SCMP_ARCH_AARCH64",
  "SCMP_ARCH_MIPS",
  "SCMP_ARCH_MIPS64",
  "SCMP_ARCH_MIPS64N32",
  "SCMP_ARCH_MIPSEL",
  "SCMP_ARCH_MIPSEL64",
  "SCMP_ARCH_MIPSEL64N32",
  "SCMP_ARCH_PPC",
  "SCMP_ARCH_PPC64",
  "SCMP_ARCH_PPC64LE",
  "SCMP_ARCH_S390",
  "SCMP_ARCH_S390X",
  "SCMP_ARCH_PARISC",
  "SCMP_ARCH_PARISC64",
  "SCMP_ARCH_RISCV64",
  "SCMP_ARCH_LOONGARCH64",
  "SCMP_ARCH_M68K",
  "SCMP_ARCH_SH",
  "SCMP_ARCH_SHEB",
];

/** Syscalls take at most six arguments. */
const MAX_SYSCALL_ARGS = 6;

/** Actions whose BPF return value carries an errno (SECCOMP_RET_DATA). */
function takesErrno(action: unknown): boolean {
  return action === "SCMP_ACT_ERRNO" || action === "SCMP_ACT_TRACE";
}

export function validateSeccomp(check: Checker, path: string, seccomp: JsonObject): void {
  const defaultAction = field(seccomp, "defaultAction");
  const defaultPath = childPath(path, "defaultAction");
  if (check.required(defaultPath, defaultAction) && check.isOneOf(defaultPath, defaultAction, SECCOMP_ACTIONS)) {
    // The kernel refuses a filter whose fallback is USER_NOTIF for every call
    // it does not list (the notifying process itself could never proceed).
    if (defaultAction === "SCMP_ACT_NOTIFY") check.report(defaultPath, "SCMP_ACT_NOTIFY cannot be the default action");
  }
  const defaultErrno = check.optionalInteger(seccomp, path, "defaultErrnoRet", UINT32);
  if (defaultErrno !== undefined && !takesErrno(defaultAction)) {
    check.report(childPath(path, "defaultErrnoRet"), "is only valid with defaultAction SCMP_ACT_ERRNO or SCMP_ACT_TRACE");
  }

  const architectures = check.optionalStringArray(seccomp, path, "architectures");
  architectures?.forEach((arch, i) => check.isOneOf(indexPath(childPath(path, "architectures"), i), arch, SECCOMP_ARCHITECTURES));
  const flags = check.optionalStringArray(seccomp, path, "flags");
  flags?.forEach((flag, i) => check.isOneOf(indexPath(childPath(path, "flags"), i), flag, SECCOMP_FLAGS));

  const listenerPath = field(seccomp, "listenerPath");
  if (listenerPath !== undefined && listenerPath !== "") check.isAbsolutePath(childPath(path, "listenerPath"), listenerPath);
  check.optionalString(seccomp, path, "listenerMetadata");

  let usesNotify = false;
  check.eachObject(seccomp, path, "syscalls", (rule, rulePath) => {
    const names = field(rule, "names");
    const namesPath = childPath(rulePath, "names");
    if (check.required(namesPath, names) && check.isStringArray(namesPath, names)) {
      if (names.length === 0) check.report(namesPath, "must name at least one syscall");
      names.forEach((name, i) => {
        if (!/^[a-z0-9_]+$/.test(name)) check.report(indexPath(namesPath, i), `${JSON.stringify(name)} is not a syscall name`);
      });
    }
    const action = field(rule, "action");
    const actionPath = childPath(rulePath, "action");
    if (check.required(actionPath, action) && check.isOneOf(actionPath, action, SECCOMP_ACTIONS)) {
      if (action === "SCMP_ACT_NOTIFY") usesNotify = true;
    }
    const errnoRet = check.optionalInteger(rule, rulePath, "errnoRet", UINT32);
    if (errnoRet !== undefined && !takesErrno(action)) {
      check.report(childPath(rulePath, "errnoRet"), "is only valid with action SCMP_ACT_ERRNO or SCMP_ACT_TRACE");
    }
    const args = field(rule, "args");
    const argsPath = childPath(rulePath, "args");
    if (args !== undefined && check.isArray(argsPath, args) && args.length > MAX_SYSCALL_ARGS) {
      check.report(argsPath, `has ${args.length} conditions; a syscall has at most ${MAX_SYSCALL_ARGS} arguments`);
    }
    check.eachObject(rule, rulePath, "args", (arg, argPath) => {
      check.requiredInteger(arg, argPath, "index", { min: 0, max: MAX_SYSCALL_ARGS - 1, description: "an integer from 0 to 5" });
      check.requiredInteger(arg, argPath, "value", UINT64);
      check.optionalInteger(arg, argPath, "valueTwo", UINT64);
      const op = field(arg, "op");
      if (check.required(childPath(argPath, "op"), op)) check.isOneOf(childPath(argPath, "op"), op, SECCOMP_OPERATORS);
    });
  });

  // Notifications go to the agent listening on listenerPath; without one the
  // notified syscalls would block forever.
  if (usesNotify && (typeof listenerPath !== "string" || listenerPath === "")) {
    check.report(childPath(path, "listenerPath"), "is required when a rule uses SCMP_ACT_NOTIFY");
  }
}
