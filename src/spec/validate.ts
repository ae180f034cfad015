/**
 * Validation of an untrusted config.json value against runtime-spec 1.0-1.2
 * (config.md, config-linux.md), plus the few stricter rules nano-kata keeps
 * (each says why where it is checked).
 *
 * Every problem is reported with the JSON path of the offending value, and all
 * problems are collected, so a user fixes a config in one round. Unknown
 * properties are ignored, as the spec requires ("Extensibility").
 */
import { statSync } from "node:fs";
import { resolve } from "node:path";

import { isKnownCapability } from "./capabilities.ts";
import {
  Checker,
  childPath,
  field,
  INT32,
  intRange,
  indexPath,
  isJsonObject,
  jsonTypeName,
  type JsonObject,
  quote,
  UINT32,
  UINT64,
} from "./check.ts";
import { hasNewNamespace, type ValidateOptions, type ValidationContext } from "./context.ts";
import { SpecError, type SpecIssue } from "./errors.ts";
import { isKnownRlimit } from "./rlimits.ts";
import type { Spec } from "./types.ts";
import { isMappedInContainer, readMappingPair } from "./validate-idmap.ts";
import { readNamespaces, validateLinux } from "./validate-linux.ts";
import { isCpuList } from "./validate-resources.ts";

export type { ValidateOptions } from "./context.ts";

/** Major version of runtime-spec this runtime implements. */
const SUPPORTED_MAJOR = 1;

// SemVer 2.0.0 (semver.org), core + optional pre-release + optional build metadata.
const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;

const CAPABILITY_SETS = ["bounding", "effective", "inheritable", "permitted", "ambient"] as const;
const HOOK_KINDS = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"] as const;
const IO_PRIORITY_CLASSES = ["IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"] as const;
const SCHEDULER_POLICIES = [
  "SCHED_OTHER",
  "SCHED_FIFO",
  "SCHED_RR",
  "SCHED_BATCH",
  "SCHED_ISO",
  "SCHED_IDLE",
  "SCHED_DEADLINE",
] as const;
const SCHEDULER_FLAGS = [
  "SCHED_FLAG_RESET_ON_FORK",
  "SCHED_FLAG_RECLAIM",
  "SCHED_FLAG_DL_OVERRUN",
  "SCHED_FLAG_KEEP_POLICY",
  "SCHED_FLAG_KEEP_PARAMS",
  "SCHED_FLAG_UTIL_CLAMP_MIN",
  "SCHED_FLAG_UTIL_CLAMP_MAX",
] as const;

/** sethostname(2)/setdomainname(2) refuse more than HOST_NAME_MAX (64) bytes. */
const HOST_NAME_MAX = 64;

/** Returns every problem found in `spec`; an empty list means it is valid. */
export function validateSpec(spec: unknown, options: ValidateOptions): SpecIssue[] {
  const check = new Checker();
  if (!isJsonObject(spec)) {
    check.report("", `the configuration must be a JSON object, got ${jsonTypeName(spec)}`);
    return check.issues;
  }
  const context: ValidationContext = {
    check,
    options,
    namespaces: new Map(),
    uidMappings: undefined,
    gidMappings: undefined,
  };

  validateOciVersion(check, field(spec, "ociVersion"));

  // linux first: rules for process, hostname and mounts depend on its namespaces.
  const linux = field(spec, "linux");
  if (linux !== undefined && check.isObject("linux", linux)) {
    readNamespaces(context, linux);
    validateLinux(context, linux);
  } else if (options.forCreate) {
    check.report("linux.namespaces", 'must include a "mount" namespace');
  }

  const process = field(spec, "process");
  if (process === undefined) {
    if (options.forCreate) check.report("process", "is required to create a container");
  } else if (check.isObject("process", process)) {
    validateProcess(context, process);
  }

  const root = field(spec, "root");
  if (root === undefined) {
    if (options.forCreate) check.report("root", "is required on Linux");
  } else if (check.isObject("root", root)) {
    validateRoot(context, root);
  }

  validateNames(context, spec);
  validateMounts(context, spec);
  validateHooks(context, spec);
  validateAnnotations(check, spec);
  return inDocumentOrder(check.issues);
}

/** The order of runtime-spec's config.md, so issues read top to bottom like the file. */
const SECTION_ORDER = ["", "ociVersion", "root", "mounts", "process", "hostname", "domainname", "hooks", "annotations", "linux"];

function inDocumentOrder(issues: SpecIssue[]): SpecIssue[] {
  const rank = (issue: SpecIssue): number => {
    const section = /^[A-Za-z]*/.exec(issue.path)![0];
    const index = SECTION_ORDER.indexOf(section);
    return index === -1 ? SECTION_ORDER.length : index;
  };
  // Array.prototype.sort is stable, so issues keep their order within a section.
  return issues.sort((a, b) => rank(a) - rank(b));
}

/** Throws SpecError("invalid-spec") listing every issue, or narrows `spec` to Spec. */
export function assertValidSpec(spec: unknown, options: ValidateOptions): asserts spec is Spec {
  const issues = validateSpec(spec, options);
  if (issues.length > 0) throw SpecError.invalid(issues);
}

function validateOciVersion(check: Checker, version: unknown): void {
  if (!check.required("ociVersion", version) || !check.isString("ociVersion", version)) return;
  const match = SEMVER.exec(version);
  if (match === null) {
    check.report("ociVersion", `must be a SemVer 2.0.0 version like "1.2.0", got ${quote(version)}`);
  } else if (Number(match[1]) !== SUPPORTED_MAJOR) {
    check.report("ociVersion", `version ${quote(version)} is not supported (nano-kata implements runtime-spec 1.x)`);
  }
}

// ---------------------------------------------------------------- process

function validateProcess(context: ValidationContext, process: JsonObject): void {
  const { check } = context;
  check.optionalBoolean(process, "process", "terminal");
  // runtime-spec: runtimes MUST ignore consoleSize when terminal is false or
  // unset, so its presence alone is not an error; its shape still is checked.
  const consoleSize = field(process, "consoleSize");
  if (consoleSize !== undefined && check.isObject("process.consoleSize", consoleSize)) {
    check.requiredInteger(consoleSize, "process.consoleSize", "height", UINT32);
    check.requiredInteger(consoleSize, "process.consoleSize", "width", UINT32);
  }

  const user = field(process, "user");
  if (check.required("process.user", user) && check.isObject("process.user", user)) {
    validateUser(context, user);
  }

  const args = field(process, "args");
  if (check.required("process.args", args) && check.isStringArray("process.args", args)) {
    // runtime-spec extends execvp: at least one entry is REQUIRED on POSIX.
    if (args.length === 0) check.report("process.args", "must contain at least one entry");
    else if (args[0] === "") check.report("process.args[0]", "must not be empty");
    args.forEach((arg, i) => check.hasNoNul(indexPath("process.args", i), arg));
  }
  check.optionalString(process, "process", "commandLine");

  validateEnv(context, process, "process");

  const cwd = field(process, "cwd");
  if (check.required("process.cwd", cwd)) check.isAbsolutePath("process.cwd", cwd);

  validateCapabilities(context, process);
  validateRlimits(context, process);

  check.optionalBoolean(process, "process", "noNewPrivileges");
  check.optionalString(process, "process", "apparmorProfile");
  check.optionalString(process, "process", "selinuxLabel");
  // oom_score_adj accepts -1000 (never kill) to 1000 (kill first).
  check.optionalInteger(process, "process", "oomScoreAdj", intRange(-1000, 1000));

  const ioPriority = field(process, "ioPriority");
  if (ioPriority !== undefined && check.isObject("process.ioPriority", ioPriority)) {
    const ioClass = field(ioPriority, "class");
    if (check.required("process.ioPriority.class", ioClass)) {
      check.isOneOf("process.ioPriority.class", ioClass, IO_PRIORITY_CLASSES);
    }
    check.requiredInteger(ioPriority, "process.ioPriority", "priority", intRange(0, 7));
  }

  validateScheduler(context, process);

  const affinity = field(process, "execCPUAffinity");
  if (affinity !== undefined && check.isObject("process.execCPUAffinity", affinity)) {
    for (const key of ["initial", "final"]) {
      const list = check.optionalString(affinity, "process.execCPUAffinity", key);
      if (list !== undefined && !isCpuList(list)) {
        check.report(`process.execCPUAffinity.${key}`, `must be a CPU list like "0-3,7", got ${quote(list)}`);
      }
    }
  }
}

function validateUser(context: ValidationContext, user: JsonObject): void {
  const { check } = context;
  const uid = check.requiredInteger(user, "process.user", "uid", UINT32);
  const gid = check.requiredInteger(user, "process.user", "gid", UINT32);
  check.optionalInteger(user, "process.user", "umask", UINT32);
  const extraGids = field(user, "additionalGids");
  const validGids: number[] = [];
  if (extraGids !== undefined && check.isArray("process.user.additionalGids", extraGids)) {
    extraGids.forEach((g, i) => {
      if (check.isInteger(indexPath("process.user.additionalGids", i), g, UINT32)) validGids.push(g);
    });
  }
  check.optionalString(user, "process.user", "username");

  // In a new user namespace an unmapped id cannot be switched to: setuid(2)
  // fails with EINVAL late in create. Say which field is at fault instead.
  if (!hasNewNamespace(context, "user")) return;
  const { uidMappings, gidMappings } = context;
  if (uid !== undefined && uidMappings !== undefined && uidMappings.length > 0 && !isMappedInContainer(uidMappings, uid)) {
    check.report("process.user.uid", `${uid} is not mapped by linux.uidMappings`);
  }
  if (gidMappings === undefined || gidMappings.length === 0) return;
  if (gid !== undefined && !isMappedInContainer(gidMappings, gid)) {
    check.report("process.user.gid", `${gid} is not mapped by linux.gidMappings`);
  }
  validGids.forEach((g, i) => {
    if (!isMappedInContainer(gidMappings, g)) {
      check.report(indexPath("process.user.additionalGids", i), `${g} is not mapped by linux.gidMappings`);
    }
  });
}

/**
 * Environment entries: "KEY=value" with a non-empty key. runtime-spec gives
 * them environ semantics; an entry without '=' has no meaning to execve users
 * and runc rejects it too.
 */
function validateEnv(context: ValidationContext, owner: JsonObject, ownerPath: string): void {
  const { check } = context;
  const env = check.optionalStringArray(owner, ownerPath, "env");
  env?.forEach((entry, i) => {
    const path = indexPath(childPath(ownerPath, "env"), i);
    if (entry.indexOf("=") <= 0) check.report(path, `must be KEY=VALUE, got ${quote(entry)}`);
    else check.hasNoNul(path, entry);
  });
}

function validateCapabilities(context: ValidationContext, process: JsonObject): void {
  const { check } = context;
  const capabilities = field(process, "capabilities");
  if (capabilities === undefined) return;
  if (Array.isArray(capabilities)) {
    // The pre-1.0 flat list; 1.0 made it an object of sets.
    check.report("process.capabilities", "must be an object of capability sets (bounding, effective, ...), got array");
    return;
  }
  if (!check.isObject("process.capabilities", capabilities)) return;
  for (const set of CAPABILITY_SETS) {
    const names = check.optionalStringArray(capabilities, "process.capabilities", set);
    names?.forEach((name, i) => {
      // runtime-spec: "Any value which cannot be mapped to a relevant kernel interface MUST cause an error."
      if (!isKnownCapability(name)) {
        check.report(indexPath(`process.capabilities.${set}`, i), `unknown capability ${quote(name)}`);
      }
    });
  }
}

function validateRlimits(context: ValidationContext, process: JsonObject): void {
  const { check } = context;
  const seen = new Map<string, string>();
  check.eachObject(process, "process", "rlimits", (rlimit, path) => {
    const type = field(rlimit, "type");
    const typePath = childPath(path, "type");
    if (check.required(typePath, type) && check.isString(typePath, type)) {
      if (!isKnownRlimit(type)) {
        check.report(typePath, `unknown rlimit ${quote(type)}`);
      } else if (seen.has(type)) {
        // runtime-spec: duplicated types MUST generate an error.
        check.report(typePath, `duplicate rlimit ${quote(type)} (also at ${seen.get(type)})`);
      } else {
        seen.set(type, path);
      }
    }
    const soft = check.requiredInteger(rlimit, path, "soft", UINT64);
    const hard = check.requiredInteger(rlimit, path, "hard", UINT64);
    if (soft !== undefined && hard !== undefined && soft > hard) {
      // setrlimit(2) fails with EINVAL when rlim_cur > rlim_max.
      check.report(childPath(path, "soft"), `soft limit ${soft} exceeds hard limit ${hard}`);
    }
  });
}

function validateScheduler(context: ValidationContext, process: JsonObject): void {
  const { check } = context;
  const scheduler = field(process, "scheduler");
  const path = "process.scheduler";
  if (scheduler === undefined || !check.isObject(path, scheduler)) return;
  const policy = field(scheduler, "policy");
  if (check.required(`${path}.policy`, policy)) check.isOneOf(`${path}.policy`, policy, SCHEDULER_POLICIES);
  check.optionalInteger(scheduler, path, "nice", intRange(-20, 19));
  check.optionalInteger(scheduler, path, "priority", INT32);
  const flags = check.optionalStringArray(scheduler, path, "flags");
  flags?.forEach((flag, i) => check.isOneOf(indexPath(`${path}.flags`, i), flag, SCHEDULER_FLAGS));
  for (const key of ["runtime", "deadline", "period"]) check.optionalInteger(scheduler, path, key, UINT64);
}

// ---------------------------------------------------------------- root, names

function validateRoot(context: ValidationContext, root: JsonObject): void {
  const { check, options } = context;
  check.optionalBoolean(root, "root", "readonly");
  const rootPath = field(root, "path");
  if (!check.required("root.path", rootPath) || !check.isString("root.path", rootPath)) return;
  if (rootPath === "") {
    check.report("root.path", "must not be empty");
    return;
  }
  if (!check.hasNoNul("root.path", rootPath) || !options.forCreate) return;
  // runtime-spec: absolute, or relative to the bundle; "A directory MUST exist".
  const resolved = resolve(options.bundle, rootPath);
  let isDirectory: boolean;
  try {
    isDirectory = statSync(resolved).isDirectory();
  } catch {
    check.report("root.path", `${quote(resolved)} does not exist`);
    return;
  }
  if (!isDirectory) check.report("root.path", `${quote(resolved)} is not a directory`);
}

function validateNames(context: ValidationContext, spec: JsonObject): void {
  const { check } = context;
  for (const key of ["hostname", "domainname"] as const) {
    const name = check.optionalString(spec, "", key);
    if (name === undefined || name === "") continue;
    if (Buffer.byteLength(name) > HOST_NAME_MAX) {
      check.report(key, `must be at most ${HOST_NAME_MAX} bytes, got ${Buffer.byteLength(name)}`);
    }
    // Setting it in a joined or the host's UTS namespace would rename that
    // namespace's machine, not just this container.
    if (!hasNewNamespace(context, "uts")) {
      check.report(key, 'requires a new UTS namespace (a linux.namespaces entry {"type": "uts"} without a path)');
    }
  }
}

// ---------------------------------------------------------------- mounts

function validateMounts(context: ValidationContext, spec: JsonObject): void {
  const { check } = context;
  check.eachObject(spec, "", "mounts", (mount, path) => {
    const destination = field(mount, "destination");
    const destinationPath = childPath(path, "destination");
    // runtime-spec 1.1 only says SHOULD be absolute; nano-kata requires it so a
    // destination can never be read relative to a working directory.
    if (check.required(destinationPath, destination)) check.isAbsolutePath(destinationPath, destination);
    const source = check.optionalString(mount, path, "source");
    if (source !== undefined) check.hasNoNul(childPath(path, "source"), source);
    check.optionalString(mount, path, "type");
    check.optionalStringArray(mount, path, "options");

    const pair = readMappingPair(check, mount, path);
    // An id-mapped mount (MOUNT_ATTR_IDMAP) takes a whole user namespace, so
    // both maps are needed together.
    if (pair.uidGiven !== pair.gidGiven) {
      const missing = pair.uidGiven ? "gidMappings" : "uidMappings";
      check.report(childPath(path, missing), "is required when the other id mapping of an id-mapped mount is given");
    }
  });
}

// ---------------------------------------------------------------- hooks, annotations

function validateHooks(context: ValidationContext, spec: JsonObject): void {
  const { check } = context;
  const hooks = field(spec, "hooks");
  if (hooks === undefined || !check.isObject("hooks", hooks)) return;
  for (const kind of HOOK_KINDS) {
    check.eachObject(hooks, "hooks", kind, (hook, path) => {
      const hookPath = field(hook, "path");
      // runtime-spec extends execv: path MUST be absolute (no $PATH search in the runtime namespace).
      if (check.required(childPath(path, "path"), hookPath)) check.isAbsolutePath(childPath(path, "path"), hookPath);
      const args = check.optionalStringArray(hook, path, "args");
      args?.forEach((arg, i) => check.hasNoNul(indexPath(childPath(path, "args"), i), arg));
      validateEnv(context, hook, path);
      const timeout = check.optionalInteger(hook, path, "timeout", INT32);
      if (timeout !== undefined && timeout <= 0) {
        check.report(childPath(path, "timeout"), `must be greater than zero, got ${timeout}`);
      }
    });
  }
}

function validateAnnotations(check: Checker, spec: JsonObject): void {
  const annotations = field(spec, "annotations");
  if (annotations === undefined || !check.isStringMap("annotations", annotations)) return;
  // runtime-spec: "Keys MUST NOT be an empty string."
  if (Object.hasOwn(annotations, "")) check.report("annotations", "keys must not be empty");
}
