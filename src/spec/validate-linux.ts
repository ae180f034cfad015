/**
 * Rules for the `linux` object (runtime-spec config-linux.md), except
 * `resources` and `seccomp`, which have their own modules.
 */
import {
  childPath,
  field,
  INT64,
  intRange,
  indexPath,
  type JsonObject,
  mapKeyPath,
  quote,
  UINT32,
} from "./check.ts";
import { hasNamespace, hasNewNamespace, type ValidationContext } from "./context.ts";
import { readMappingPair } from "./validate-idmap.ts";
import { validateResources } from "./validate-resources.ts";
import { validateSeccomp } from "./validate-seccomp.ts";
import type { NamespaceType, RootfsPropagation } from "./types.ts";

export const NAMESPACE_TYPES: readonly NamespaceType[] = [
  "pid",
  "network",
  "mount",
  "ipc",
  "uts",
  "user",
  "cgroup",
  "time",
];

export const ROOTFS_PROPAGATIONS: readonly RootfsPropagation[] = [
  "shared",
  "slave",
  "private",
  "unbindable",
  "rshared",
  "rslave",
  "rprivate",
  "runbindable",
];

const DEVICE_TYPES = ["c", "b", "u", "p"] as const;
const TIME_OFFSET_CLOCKS = ["monotonic", "boottime"] as const;
const PERSONALITY_DOMAINS = ["LINUX", "LINUX32"] as const;

/**
 * Reads linux.namespaces first: several rules elsewhere (hostname, sysctl,
 * mappings) depend on which namespaces the container gets.
 */
export function readNamespaces(context: ValidationContext, linux: JsonObject): void {
  const { check } = context;
  check.eachObject(linux, "linux", "namespaces", (entry, path, index) => {
    const typePath = childPath(path, "type");
    const type = field(entry, "type");
    if (!check.required(typePath, type) || !check.isOneOf(typePath, type, NAMESPACE_TYPES)) return;
    // An empty path means "new namespace" to the Go runtimes too.
    const rawPath = field(entry, "path");
    const nsPath = rawPath === "" ? undefined : rawPath;
    if (nsPath !== undefined && !check.isAbsolutePath(childPath(path, "path"), nsPath)) return;
    const earlier = context.namespaces.get(type);
    if (earlier !== undefined) {
      // runtime-spec: "If a namespace type is specified more than once, the runtime MUST generate an error."
      check.report(typePath, `duplicate namespace ${quote(type)} (also at linux.namespaces[${earlier.index}])`);
      return;
    }
    context.namespaces.set(type, { index, path: nsPath });
  });
}

export function validateLinux(context: ValidationContext, linux: JsonObject): void {
  const { check, options } = context;

  if (options.forCreate && !hasNamespace(context, "mount")) {
    // The executor pivots into root.path; doing that in the runtime's own mount
    // namespace would change the host's root for every process.
    check.report("linux.namespaces", 'must include a "mount" namespace');
  }

  validateUserNamespaceMappings(context, linux);
  validateTimeOffsets(context, linux);
  validateDevices(context, linux);
  validateNetDevices(context, linux);

  const cgroupsPath = check.optionalString(linux, "linux", "cgroupsPath");
  if (cgroupsPath !== undefined) validateCgroupsPath(context, cgroupsPath);

  const resources = field(linux, "resources");
  if (resources !== undefined && check.isObject("linux.resources", resources)) {
    validateResources(check, "linux.resources", resources);
  }

  const sysctl = field(linux, "sysctl");
  if (sysctl !== undefined && check.isStringMap("linux.sysctl", sysctl)) {
    for (const key of Object.keys(sysctl)) validateSysctl(context, key);
  }

  const seccomp = field(linux, "seccomp");
  if (seccomp !== undefined && check.isObject("linux.seccomp", seccomp)) {
    validateSeccomp(check, "linux.seccomp", seccomp);
  }

  const propagation = field(linux, "rootfsPropagation");
  if (propagation !== undefined) check.isOneOf("linux.rootfsPropagation", propagation, ROOTFS_PROPAGATIONS);

  for (const key of ["maskedPaths", "readonlyPaths"]) {
    const paths = check.optionalStringArray(linux, "linux", key);
    paths?.forEach((p, i) => check.isAbsolutePath(indexPath(`linux.${key}`, i), p));
  }

  check.optionalString(linux, "linux", "mountLabel");
  validateIntelRdt(context, linux);
  validatePersonality(context, linux);
}

function validateUserNamespaceMappings(context: ValidationContext, linux: JsonObject): void {
  const { check } = context;
  const pair = readMappingPair(check, linux, "linux");
  context.uidMappings = pair.uid;
  context.gidMappings = pair.gid;

  if (!hasNamespace(context, "user")) {
    const hint = 'requires a user namespace (a linux.namespaces entry {"type": "user"})';
    if (pair.uidGiven) check.report("linux.uidMappings", hint);
    if (pair.gidGiven) check.report("linux.gidMappings", hint);
    return;
  }
  if (hasNewNamespace(context, "user")) {
    // A fresh user namespace with no map leaves every id unmapped (overflow
    // uid 65534) and setuid/setgid inside it fail.
    if (!pair.uidGiven) check.report("linux.uidMappings", "a new user namespace needs at least one uid mapping");
    if (!pair.gidGiven) check.report("linux.gidMappings", "a new user namespace needs at least one gid mapping");
  }
}

function validateTimeOffsets(context: ValidationContext, linux: JsonObject): void {
  const { check } = context;
  const offsets = field(linux, "timeOffsets");
  if (offsets === undefined || !check.isObject("linux.timeOffsets", offsets)) return;
  for (const [clock, offset] of Object.entries(offsets)) {
    const path = mapKeyPath("linux.timeOffsets", clock);
    if (!(TIME_OFFSET_CLOCKS as readonly string[]).includes(clock)) {
      check.report(path, `unknown clock ${quote(clock)}; a time namespace offsets only ${TIME_OFFSET_CLOCKS.join(", ")}`);
      continue;
    }
    if (offset === null || !check.isObject(path, offset)) continue;
    check.optionalInteger(offset, path, "secs", INT64);
    check.optionalInteger(offset, path, "nanosecs", intRange(0, 999_999_999));
  }
  // Offsets can only be written before any process enters the namespace, so
  // they need a namespace created for this container.
  if (Object.keys(offsets).length > 0 && !hasNewNamespace(context, "time")) {
    check.report("linux.timeOffsets", 'requires a new time namespace (a linux.namespaces entry {"type": "time"} without a path)');
  }
}

function validateDevices(context: ValidationContext, linux: JsonObject): void {
  const { check } = context;
  const seen = new Map<string, string>();
  check.eachObject(linux, "linux", "devices", (device, path) => {
    const devicePath = field(device, "path");
    if (check.required(childPath(path, "path"), devicePath) && check.isAbsolutePath(childPath(path, "path"), devicePath)) {
      const earlier = seen.get(devicePath);
      if (earlier !== undefined) check.report(childPath(path, "path"), `duplicate device ${quote(devicePath)} (also at ${earlier})`);
      else seen.set(devicePath, path);
    }
    const type = field(device, "type");
    const typeOk = check.required(childPath(path, "type"), type) && check.isOneOf(childPath(path, "type"), type, DEVICE_TYPES);
    if (typeOk && type !== "p") {
      // A fifo has no device number; character and block devices need both.
      check.requiredInteger(device, path, "major", INT64);
      check.requiredInteger(device, path, "minor", INT64);
    } else {
      check.optionalInteger(device, path, "major", INT64);
      check.optionalInteger(device, path, "minor", INT64);
    }
    for (const key of ["major", "minor"]) {
      const value = field(device, key);
      if (typeof value === "number" && value < 0) check.report(childPath(path, key), `must not be negative, got ${value}`);
    }
    check.optionalInteger(device, path, "fileMode", UINT32);
    check.optionalInteger(device, path, "uid", UINT32);
    check.optionalInteger(device, path, "gid", UINT32);
  });
}

/** Interface names: at most 15 bytes (IFNAMSIZ - 1), no '/', no whitespace, not "." or "..". */
function isInterfaceName(name: string): boolean {
  return name.length > 0 && name.length <= 15 && !/[\s/:]/.test(name) && name !== "." && name !== "..";
}

function validateNetDevices(context: ValidationContext, linux: JsonObject): void {
  const { check } = context;
  const devices = field(linux, "netDevices");
  if (devices === undefined || !check.isObject("linux.netDevices", devices)) return;
  for (const [hostName, device] of Object.entries(devices)) {
    const path = mapKeyPath("linux.netDevices", hostName);
    if (!isInterfaceName(hostName)) check.report(path, `${quote(hostName)} is not a valid interface name`);
    if (device === null || !check.isObject(path, device)) continue;
    const name = check.optionalString(device, path, "name");
    if (name !== undefined && !isInterfaceName(name)) check.report(`${path}.name`, `${quote(name)} is not a valid interface name`);
  }
  if (Object.keys(devices).length > 0 && !hasNamespace(context, "network")) {
    check.report("linux.netDevices", 'requires a network namespace (a linux.namespaces entry {"type": "network"})');
  }
}

function validateCgroupsPath(context: ValidationContext, cgroupsPath: string): void {
  const { check } = context;
  if (!check.hasNoNul("linux.cgroupsPath", cgroupsPath)) return;
  // ".." would climb out of the cgroup hierarchy the runtime manages.
  if (cgroupsPath.split("/").includes("..")) {
    check.report("linux.cgroupsPath", `must not contain ".." components, got ${quote(cgroupsPath)}`);
  }
}

/** IPC-namespaced sysctls as listed in runtime-spec's sysctl guidance (and sysctl(8)). */
const IPC_SYSCTLS = new Set([
  "kernel.msgmax",
  "kernel.msgmnb",
  "kernel.msgmni",
  "kernel.sem",
  "kernel.shmall",
  "kernel.shmmax",
  "kernel.shmmni",
  "kernel.shm_rmid_forced",
]);

/**
 * A sysctl is written to /proc/sys/<key> while the container's namespaces are in
 * place. Only namespaced keys are allowed, and only when the container has the
 * namespace; anything else would change the host's kernel setting.
 */
function validateSysctl(context: ValidationContext, key: string): void {
  const { check } = context;
  const path = mapKeyPath("linux.sysctl", key);
  // Both "net.ipv4.ip_forward" and "net/ipv4/ip_forward" spellings exist; the
  // key becomes a path under /proc/sys, so "..", "." and empty components would
  // let it point elsewhere (path traversal out of /proc/sys).
  const components = key.includes("/") ? key.split("/") : key.split(".");
  if (components.some((c) => c === "" || c === "." || c === ".." || c.includes("\0"))) {
    check.report(path, "is not a valid sysctl name");
    return;
  }
  const dotted = components.join(".");
  const needs = (type: NamespaceType, what: string): void => {
    if (!hasNamespace(context, type)) {
      check.report(path, `is not allowed without ${what} namespace of the container's own (the host's would change)`);
    }
  };
  if (IPC_SYSCTLS.has(dotted) || dotted.startsWith("fs.mqueue.")) needs("ipc", "an ipc");
  else if (dotted.startsWith("net.")) needs("network", "a network");
  else if (dotted === "kernel.domainname") needs("uts", "a uts");
  else if (dotted === "kernel.hostname") check.report(path, "is not allowed; set the top-level hostname field instead");
  else check.report(path, "is not namespaced: setting it would change the host's kernel");
}

function validateIntelRdt(context: ValidationContext, linux: JsonObject): void {
  const { check } = context;
  const rdt = field(linux, "intelRdt");
  if (rdt === undefined || !check.isObject("linux.intelRdt", rdt)) return;
  const closID = check.optionalString(rdt, "linux.intelRdt", "closID");
  // closID names a directory under /sys/fs/resctrl.
  if (closID !== undefined && (closID === "" || closID === "." || closID === ".." || closID.includes("/") || closID.includes("\0"))) {
    check.report("linux.intelRdt.closID", `must be a plain directory name, got ${quote(closID)}`);
  }
  check.optionalString(rdt, "linux.intelRdt", "l3CacheSchema");
  check.optionalString(rdt, "linux.intelRdt", "memBwSchema");
  check.optionalBoolean(rdt, "linux.intelRdt", "enableCMT");
  check.optionalBoolean(rdt, "linux.intelRdt", "enableMBM");
}

function validatePersonality(context: ValidationContext, linux: JsonObject): void {
  const { check } = context;
  const personality = field(linux, "personality");
  if (personality === undefined || !check.isObject("linux.personality", personality)) return;
  const domain = field(personality, "domain");
  if (check.required("linux.personality.domain", domain)) {
    check.isOneOf("linux.personality.domain", domain, PERSONALITY_DOMAINS);
  }
  check.optionalStringArray(personality, "linux.personality", "flags");
}
