/**
 * Rules for linux.resources (runtime-spec config-linux.md "Control groups").
 * Only shapes and ranges are checked here; whether a controller exists on this
 * host (v1 or v2, hugetlb sizes, rdma devices) is the cgroups module's question.
 */
import {
  type Checker,
  childPath,
  field,
  INT64,
  intRange,
  type JsonObject,
  mapKeyPath,
  quote,
  UINT16,
  UINT32,
  UINT64,
} from "./check.ts";

/** -1 means "unlimited" for memory limits; anything below is meaningless. */
const LIMIT: typeof INT64 = { min: -1, max: 2 ** 63, description: "an integer >= -1" };
const DEVICE_NUMBER: typeof INT64 = { min: -1, max: 2 ** 63, description: "an integer >= -1 (-1 means any)" };

/** "0-3,7" style lists used by cpuset.cpus, cpuset.mems and execCPUAffinity. */
export function isCpuList(value: string): boolean {
  return /^\s*\d+(-\d+)?(\s*,\s*\d+(-\d+)?)*\s*$/.test(value);
}

export function validateResources(check: Checker, path: string, resources: JsonObject): void {
  validateDeviceRules(check, path, resources);
  validateMemory(check, path, resources);
  validateCpu(check, path, resources);
  validatePids(check, path, resources);
  validateBlockIO(check, path, resources);
  validateHugepages(check, path, resources);
  validateNetwork(check, path, resources);
  validateRdma(check, path, resources);
  validateUnified(check, path, resources);
}

function section(check: Checker, path: string, resources: JsonObject, key: string): [JsonObject, string] | undefined {
  const value = field(resources, key);
  const sectionPath = childPath(path, key);
  if (value === undefined || !check.isObject(sectionPath, value)) return undefined;
  return [value, sectionPath];
}

function validateDeviceRules(check: Checker, path: string, resources: JsonObject): void {
  check.eachObject(resources, path, "devices", (rule, rulePath) => {
    const allow = field(rule, "allow");
    if (check.required(childPath(rulePath, "allow"), allow)) check.isBoolean(childPath(rulePath, "allow"), allow);
    const type = field(rule, "type");
    if (type !== undefined) check.isOneOf(childPath(rulePath, "type"), type, ["a", "c", "b"] as const);
    check.optionalInteger(rule, rulePath, "major", DEVICE_NUMBER);
    check.optionalInteger(rule, rulePath, "minor", DEVICE_NUMBER);
    const access = check.optionalString(rule, rulePath, "access");
    if (access !== undefined && !/^[rwm]*$/.test(access)) {
      check.report(childPath(rulePath, "access"), `must be a combination of r, w and m, got ${quote(access)}`);
    }
  });
}

function validateMemory(check: Checker, path: string, resources: JsonObject): void {
  const found = section(check, path, resources, "memory");
  if (found === undefined) return;
  const [memory, memoryPath] = found;
  const limit = check.optionalInteger(memory, memoryPath, "limit", LIMIT);
  check.optionalInteger(memory, memoryPath, "reservation", LIMIT);
  const swap = check.optionalInteger(memory, memoryPath, "swap", LIMIT);
  check.optionalInteger(memory, memoryPath, "kernel", LIMIT);
  check.optionalInteger(memory, memoryPath, "kernelTCP", LIMIT);
  check.optionalInteger(memory, memoryPath, "swappiness", intRange(0, 100));
  check.optionalBoolean(memory, memoryPath, "disableOOMKiller");
  check.optionalBoolean(memory, memoryPath, "useHierarchy");
  check.optionalBoolean(memory, memoryPath, "checkBeforeUpdate");
  // runtime-spec's swap is memory+swap (memory.memsw.limit_in_bytes), so it
  // cannot be below the memory limit; the kernel would reject the write.
  if (limit !== undefined && swap !== undefined && limit > 0 && swap > 0 && swap < limit) {
    check.report(childPath(memoryPath, "swap"), `memory+swap limit ${swap} is below the memory limit ${limit}`);
  }
}

function validateCpu(check: Checker, path: string, resources: JsonObject): void {
  const found = section(check, path, resources, "cpu");
  if (found === undefined) return;
  const [cpu, cpuPath] = found;
  check.optionalInteger(cpu, cpuPath, "shares", UINT64);
  check.optionalInteger(cpu, cpuPath, "quota", INT64);
  check.optionalInteger(cpu, cpuPath, "burst", UINT64);
  check.optionalInteger(cpu, cpuPath, "period", UINT64);
  check.optionalInteger(cpu, cpuPath, "realtimeRuntime", INT64);
  check.optionalInteger(cpu, cpuPath, "realtimePeriod", UINT64);
  check.optionalInteger(cpu, cpuPath, "idle", intRange(0, 1));
  for (const key of ["cpus", "mems"]) {
    const list = check.optionalString(cpu, cpuPath, key);
    if (list !== undefined && list !== "" && !isCpuList(list)) {
      check.report(childPath(cpuPath, key), `must be a list like "0-3,7", got ${quote(list)}`);
    }
  }
}

function validatePids(check: Checker, path: string, resources: JsonObject): void {
  const found = section(check, path, resources, "pids");
  if (found === undefined) return;
  const [pids, pidsPath] = found;
  // limit <= 0 means "max"; it is REQUIRED by the spec when pids is present.
  check.requiredInteger(pids, pidsPath, "limit", INT64);
}

function validateBlockIO(check: Checker, path: string, resources: JsonObject): void {
  const found = section(check, path, resources, "blockIO");
  if (found === undefined) return;
  const [blockIO, blockPath] = found;
  check.optionalInteger(blockIO, blockPath, "weight", UINT16);
  check.optionalInteger(blockIO, blockPath, "leafWeight", UINT16);
  check.eachObject(blockIO, blockPath, "weightDevice", (device, devicePath) => {
    check.requiredInteger(device, devicePath, "major", INT64);
    check.requiredInteger(device, devicePath, "minor", INT64);
    check.optionalInteger(device, devicePath, "weight", UINT16);
    check.optionalInteger(device, devicePath, "leafWeight", UINT16);
  });
  for (const key of ["throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice", "throttleWriteIOPSDevice"]) {
    check.eachObject(blockIO, blockPath, key, (device, devicePath) => {
      check.requiredInteger(device, devicePath, "major", INT64);
      check.requiredInteger(device, devicePath, "minor", INT64);
      check.requiredInteger(device, devicePath, "rate", UINT64);
    });
  }
}

function validateHugepages(check: Checker, path: string, resources: JsonObject): void {
  check.eachObject(resources, path, "hugepageLimits", (limit, limitPath) => {
    const pageSize = field(limit, "pageSize");
    const sizePath = childPath(limitPath, "pageSize");
    if (check.required(sizePath, pageSize) && check.isString(sizePath, pageSize) && !/^\d+(KB|MB|GB|TB|PB)$/.test(pageSize)) {
      check.report(sizePath, `must look like "2MB" or "1GB", got ${quote(pageSize)}`);
    }
    check.requiredInteger(limit, limitPath, "limit", UINT64);
  });
}

function validateNetwork(check: Checker, path: string, resources: JsonObject): void {
  const found = section(check, path, resources, "network");
  if (found === undefined) return;
  const [network, networkPath] = found;
  check.optionalInteger(network, networkPath, "classID", UINT32);
  check.eachObject(network, networkPath, "priorities", (priority, priorityPath) => {
    const name = field(priority, "name");
    if (check.required(childPath(priorityPath, "name"), name)) check.isString(childPath(priorityPath, "name"), name);
    check.requiredInteger(priority, priorityPath, "priority", UINT32);
  });
}

function validateRdma(check: Checker, path: string, resources: JsonObject): void {
  const rdma = field(resources, "rdma");
  const rdmaPath = childPath(path, "rdma");
  if (rdma === undefined || !check.isObject(rdmaPath, rdma)) return;
  for (const [device, limits] of Object.entries(rdma)) {
    const devicePath = mapKeyPath(rdmaPath, device);
    if (!check.isObject(devicePath, limits)) continue;
    check.optionalInteger(limits, devicePath, "hcaHandles", UINT32);
    check.optionalInteger(limits, devicePath, "hcaObjects", UINT32);
  }
}

/** Files moving processes between cgroups; only the runtime may write them. */
const FORBIDDEN_UNIFIED_FILES = new Set(["cgroup.procs", "cgroup.threads"]);

function validateUnified(check: Checker, path: string, resources: JsonObject): void {
  const unified = field(resources, "unified");
  const unifiedPath = childPath(path, "unified");
  if (unified === undefined || !check.isStringMap(unifiedPath, unified)) return;
  for (const key of Object.keys(unified)) {
    // Each key is written as <cgroup dir>/<key>: a '/' or ".." would let the
    // config write files of another cgroup (path traversal).
    if (key === "" || key === "." || key === ".." || key.includes("/") || key.includes("\0")) {
      check.report(mapKeyPath(unifiedPath, key), "must be a plain cgroup file name");
    } else if (FORBIDDEN_UNIFIED_FILES.has(key)) {
      check.report(mapKeyPath(unifiedPath, key), "may not be set: moving processes is the runtime's job");
    }
  }
}
