/**
 * The cgroup v1 driver: one function per controller turning a piece of
 * linux.resources into control-file writes, plus cpuset preparation, the
 * freezer and stats. Each function gets the directory of the hierarchy that
 * carries its controller; the manager decides which hierarchy that is.
 *
 * File names and value formats: Documentation/admin-guide/cgroup-v1/*.rst.
 */
import { readdirSync } from "node:fs";
import { dirname, relative } from "node:path";
import type { LinuxBlockIO, LinuxCPU, LinuxDeviceCgroup, LinuxHugepageLimit, LinuxInterfacePriority, LinuxMemory } from "../spec/types.ts";
import { formatInteger, parseIntegerFile, parseKeyValues, sleepMs, type ControlFiles } from "./control-files.ts";
import { requireInteger, requirePageSize, requireRange, requireToken } from "./convert.ts";
import { deviceRulesToV1Writes } from "./devices.ts";
import { CgroupError } from "./errors.ts";
import { hugetlbPageSizes, type BlkioEntry, type CgroupStats, type HugetlbStats, type MemoryEntryStats } from "./stats.ts";

// ---------------------------------------------------------------- cpuset

/**
 * A new v1 cpuset cgroup starts with empty cpuset.cpus and cpuset.mems, and
 * the kernel refuses to move a task into it (ENOSPC) until both are set. Walk
 * from the hierarchy root down to dir and copy the parent's lists into every
 * level that still has them empty.
 */
export function prepareV1Cpuset(io: ControlFiles, mountpoint: string, dir: string): void {
  const levels: string[] = [];
  for (let current = dir; current !== mountpoint && current.startsWith(mountpoint + "/"); current = dirname(current)) {
    levels.unshift(current);
  }
  let parent = mountpoint;
  for (const level of levels) {
    for (const file of ["cpuset.cpus", "cpuset.mems"]) {
      // A missing file (a noprefix mount names them "cpus"/"mems") is left to
      // fail loudly at addProcess rather than guessed at here.
      if (!io.has(level, file) || (io.read(level, file) ?? "").trim() !== "") continue;
      const inherited = (io.read(parent, file) ?? "").trim();
      if (inherited !== "") io.write(level, file, inherited, `linux.cgroupsPath (${file} copied from ${relative(mountpoint, parent) || "root"})`);
    }
    parent = level;
  }
}

// ---------------------------------------------------------------- memory

const MEMSW = "memory.memsw.limit_in_bytes";

/**
 * memory.limit_in_bytes and memory.memsw.limit_in_bytes must keep
 * limit <= memsw at every moment, or the kernel answers EINVAL. When both
 * change, raise memsw first if the new memsw still covers the current limit;
 * otherwise the new limit fits under the current memsw, so lower the limit
 * first.
 */
export function applyV1Memory(io: ControlFiles, dir: string, memory: LinuxMemory, update: boolean): void {
  const base = "linux.resources.memory";
  // 0 means "not set" for these fields, as in runc (tools emit zeros for unset).
  const limit = memory.limit === undefined || memory.limit === 0 ? undefined : requireInteger(memory.limit, `${base}.limit`);
  let swap = memory.swap === undefined || memory.swap === 0 ? undefined : requireInteger(memory.swap, `${base}.swap`);
  const hasMemsw = io.has(dir, MEMSW);

  if (memory.reservation !== undefined && memory.reservation !== 0) {
    const reservation = requireInteger(memory.reservation, `${base}.reservation`);
    io.write(dir, "memory.soft_limit_in_bytes", formatInteger(reservation), `${base}.reservation`);
  }

  if (update && memory.checkBeforeUpdate && limit !== undefined && limit > 0) {
    const usage = parseIntegerFile(io.read(dir, "memory.usage_in_bytes"));
    if (usage > limit) {
      throw new CgroupError("cgroup-resource-invalid", `${base}.limit: ${limit} is below the current usage ${usage} (checkBeforeUpdate)`);
    }
  }

  // An unlimited memory limit without a swap setting means unlimited swap too;
  // otherwise the old memsw would cap the "unlimited" memory.
  if (limit === -1 && swap === undefined && hasMemsw) swap = -1;
  if (swap !== undefined && !hasMemsw) {
    throw new CgroupError("cgroup-resource-unsupported", `${base}.swap: not supported by this host (${MEMSW} missing)`);
  }
  if (limit !== undefined && swap !== undefined && limit !== -1 && swap !== -1 && swap < limit) {
    throw new CgroupError("cgroup-resource-invalid", `${base}.swap: ${swap} is below ${base}.limit ${limit} (swap is memory+swap)`);
  }

  const writeLimit = (): void => io.write(dir, "memory.limit_in_bytes", formatInteger(limit!), `${base}.limit`);
  const writeSwap = (): void => io.write(dir, MEMSW, formatInteger(swap!), `${base}.swap`);
  if (limit !== undefined && swap !== undefined) {
    const currentLimit = parseIntegerFile(io.read(dir, "memory.limit_in_bytes"));
    if (swap === -1 || swap >= currentLimit) {
      writeSwap();
      writeLimit();
    } else {
      writeLimit();
      writeSwap();
    }
  } else if (limit !== undefined) {
    writeLimit();
  } else if (swap !== undefined) {
    writeSwap();
  }

  if (memory.swappiness !== undefined) {
    const swappiness = requireRange(memory.swappiness, 0, 100, `${base}.swappiness`);
    io.write(dir, "memory.swappiness", String(swappiness), `${base}.swappiness`);
  }
  if (memory.disableOOMKiller === true) {
    io.write(dir, "memory.oom_control", "1", `${base}.disableOOMKiller`);
  }
  // memory.kernel and memory.kernelTCP are deprecated in runtime-spec and the
  // kernel dropped kmem limits in 5.16; like runc we ignore them.
  // memory.useHierarchy: always on since Linux 6.x (and the default before).
}

// ---------------------------------------------------------------- cpu

export function applyV1Cpu(io: ControlFiles, dir: string, cpu: LinuxCPU): void {
  const base = "linux.resources.cpu";
  if (cpu.shares !== undefined && cpu.shares !== 0) {
    io.write(dir, "cpu.shares", formatInteger(requireInteger(cpu.shares, `${base}.shares`)), `${base}.shares`);
  }
  // 0 means "not set" for quota and period, as in runc.
  const period = cpu.period === undefined || cpu.period === 0 ? undefined : requireInteger(cpu.period, `${base}.period`);
  const quota = cpu.quota === undefined || cpu.quota === 0 ? undefined : requireInteger(cpu.quota, `${base}.quota`);
  const writePeriod = (): void => io.write(dir, "cpu.cfs_period_us", formatInteger(period!), `${base}.period`);
  const writeQuota = (): void => io.write(dir, "cpu.cfs_quota_us", formatInteger(quota!), `${base}.quota`);
  if (period !== undefined && quota !== undefined) {
    // The kernel checks quota/period against the parent's bandwidth at every
    // write; a new period can be refused under the old quota but accepted after
    // the new quota, so retry in the other order on EINVAL.
    try {
      writePeriod();
      writeQuota();
    } catch (error) {
      if (!(error instanceof CgroupError) || error.errno !== "EINVAL") throw error;
      writeQuota();
      writePeriod();
    }
  } else if (period !== undefined) {
    writePeriod();
  } else if (quota !== undefined) {
    writeQuota();
  }
  if (cpu.burst !== undefined) {
    io.write(dir, "cpu.cfs_burst_us", formatInteger(requireInteger(cpu.burst, `${base}.burst`)), `${base}.burst`);
  }
  // Real-time bandwidth: the period first, so the runtime is checked against it.
  if (cpu.realtimePeriod !== undefined && cpu.realtimePeriod !== 0) {
    io.write(dir, "cpu.rt_period_us", formatInteger(requireInteger(cpu.realtimePeriod, `${base}.realtimePeriod`)), `${base}.realtimePeriod`);
  }
  if (cpu.realtimeRuntime !== undefined && cpu.realtimeRuntime !== 0) {
    io.write(dir, "cpu.rt_runtime_us", formatInteger(requireInteger(cpu.realtimeRuntime, `${base}.realtimeRuntime`)), `${base}.realtimeRuntime`);
  }
  if (cpu.idle !== undefined) {
    io.write(dir, "cpu.idle", String(requireRange(cpu.idle, 0, 1, `${base}.idle`)), `${base}.idle`);
  }
}

// ---------------------------------------------------------------- blkio

export function applyV1Blkio(io: ControlFiles, dir: string, blkio: LinuxBlockIO): void {
  const base = "linux.resources.blockIO";
  // Without CFQ (gone since 5.0) only BFQ offers weights, under its own names.
  const weightFile = io.has(dir, "blkio.weight") ? "blkio.weight" : io.has(dir, "blkio.bfq.weight") ? "blkio.bfq.weight" : "blkio.weight";
  const weightDeviceFile = weightFile === "blkio.bfq.weight" ? "blkio.bfq.weight_device" : "blkio.weight_device";

  if (blkio.weight !== undefined && blkio.weight !== 0) {
    io.write(dir, weightFile, String(requireRange(blkio.weight, 10, 1000, `${base}.weight`)), `${base}.weight`);
  }
  if (blkio.leafWeight !== undefined && blkio.leafWeight !== 0) {
    io.write(dir, "blkio.leaf_weight", String(requireRange(blkio.leafWeight, 10, 1000, `${base}.leafWeight`)), `${base}.leafWeight`);
  }
  (blkio.weightDevice ?? []).forEach((device, index) => {
    const field = `${base}.weightDevice[${index}]`;
    const id = deviceId(device.major, device.minor, field);
    if (device.weight !== undefined) {
      io.write(dir, weightDeviceFile, `${id} ${requireRange(device.weight, 10, 1000, `${field}.weight`)}`, `${field}.weight`);
    }
    if (device.leafWeight !== undefined) {
      io.write(dir, "blkio.leaf_weight_device", `${id} ${requireRange(device.leafWeight, 10, 1000, `${field}.leafWeight`)}`, `${field}.leafWeight`);
    }
  });
  const throttles: [keyof LinuxBlockIO, string][] = [
    ["throttleReadBpsDevice", "blkio.throttle.read_bps_device"],
    ["throttleWriteBpsDevice", "blkio.throttle.write_bps_device"],
    ["throttleReadIOPSDevice", "blkio.throttle.read_iops_device"],
    ["throttleWriteIOPSDevice", "blkio.throttle.write_iops_device"],
  ];
  for (const [key, file] of throttles) {
    const list = (blkio[key] ?? []) as { major: number; minor: number; rate: number }[];
    list.forEach((device, index) => {
      const field = `${base}.${key}[${index}]`;
      const rate = requireInteger(device.rate, `${field}.rate`);
      io.write(dir, file, `${deviceId(device.major, device.minor, field)} ${formatInteger(rate)}`, field);
    });
  }
}

export function deviceId(major: unknown, minor: unknown, field: string): string {
  const majorNumber = requireInteger(major, `${field}.major`);
  const minorNumber = requireInteger(minor, `${field}.minor`);
  if (majorNumber < 0 || minorNumber < 0) {
    throw new CgroupError("cgroup-resource-invalid", `${field}: device numbers must not be negative`);
  }
  return `${majorNumber}:${minorNumber}`;
}

// ---------------------------------------------------------------- hugetlb, network, devices

export function applyV1Hugetlb(io: ControlFiles, dir: string, limits: LinuxHugepageLimit[]): void {
  limits.forEach((entry, index) => {
    const field = `linux.resources.hugepageLimits[${index}]`;
    const size = requirePageSize(entry.pageSize, `${field}.pageSize`);
    const limit = formatInteger(requireInteger(entry.limit, `${field}.limit`));
    io.write(dir, `hugetlb.${size}.limit_in_bytes`, limit, `${field}.limit`);
    // Reservations are limited too where the kernel has them (5.7+), so a
    // mapping cannot reserve pages it could never fault in.
    io.writeIfPresent(dir, `hugetlb.${size}.rsvd.limit_in_bytes`, limit, `${field}.limit`);
  });
}

export function applyV1NetCls(io: ControlFiles, dir: string, classID: number): void {
  const field = "linux.resources.network.classID";
  io.write(dir, "net_cls.classid", formatInteger(requireRange(classID, 0, 0xffffffff, field)), field);
}

export function applyV1NetPrio(io: ControlFiles, dir: string, priorities: LinuxInterfacePriority[]): void {
  priorities.forEach((entry, index) => {
    const field = `linux.resources.network.priorities[${index}]`;
    const name = requireToken(entry.name, `${field}.name`);
    io.write(dir, "net_prio.ifpriomap", `${name} ${formatInteger(requireInteger(entry.priority, `${field}.priority`))}`, field);
  });
}

export function applyV1Devices(io: ControlFiles, dir: string, rules: LinuxDeviceCgroup[]): void {
  for (const write of deviceRulesToV1Writes(rules)) io.write(dir, write.file, write.value, write.field);
}

// ---------------------------------------------------------------- freezer

export function v1FreezerState(io: ControlFiles, dir: string): "frozen" | "thawed" {
  return (io.read(dir, "freezer.state") ?? "").trim() === "FROZEN" ? "frozen" : "thawed";
}

/**
 * Writes FROZEN and waits for the state to leave FREEZING (tasks in
 * uninterruptible sleep can hold it there). Rewriting FROZEN retries the
 * tasks that were not frozen yet. Gives up after timeoutMs and thaws.
 */
export function v1Freeze(io: ControlFiles, dir: string, timeoutMs: number): void {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    io.write(dir, "freezer.state", "FROZEN", "pause");
    for (let poll = 0; poll < 10; poll++) {
      if ((io.read(dir, "freezer.state") ?? "").trim() === "FROZEN") return;
      sleepMs(Math.min(1 + attempt, 10));
    }
    if (Date.now() > deadline) {
      io.write(dir, "freezer.state", "THAWED", "pause (giving up)");
      throw new CgroupError("cgroup-freeze-failed", `${dir}: processes did not freeze within ${timeoutMs} ms`);
    }
  }
}

export function v1Thaw(io: ControlFiles, dir: string): void {
  io.write(dir, "freezer.state", "THAWED", "resume");
}

// ---------------------------------------------------------------- stats

/** USER_HZ: the unit of cpuacct.stat. Fixed at 100 on every Linux architecture's user ABI. */
const CLOCK_TICKS_PER_SECOND = 100;

function numberList(text: string | undefined): number[] {
  return (text ?? "").split(/\s+/).filter((t) => t !== "").map(Number);
}

export function readV1CpuacctStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  const usage = stats.cpu.usage;
  usage.total = parseIntegerFile(io.read(dir, "cpuacct.usage"));
  usage.percpu = numberList(io.read(dir, "cpuacct.usage_percpu"));
  usage.percpu_kernel = numberList(io.read(dir, "cpuacct.usage_percpu_sys"));
  usage.percpu_user = numberList(io.read(dir, "cpuacct.usage_percpu_user"));
  const ticks = parseKeyValues(io.read(dir, "cpuacct.stat"));
  usage.user = ((ticks.user ?? 0) * 1e9) / CLOCK_TICKS_PER_SECOND;
  usage.kernel = ((ticks.system ?? 0) * 1e9) / CLOCK_TICKS_PER_SECOND;
}

export function readV1CpuStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  const cpuStat = parseKeyValues(io.read(dir, "cpu.stat"));
  stats.cpu.throttling = {
    periods: cpuStat.nr_periods ?? 0,
    throttledPeriods: cpuStat.nr_throttled ?? 0,
    throttledTime: cpuStat.throttled_time ?? 0,
  };
}

function v1MemoryEntry(io: ControlFiles, dir: string, prefix: string): MemoryEntryStats {
  return {
    limit: parseIntegerFile(io.read(dir, `${prefix}.limit_in_bytes`)),
    usage: parseIntegerFile(io.read(dir, `${prefix}.usage_in_bytes`)),
    max: parseIntegerFile(io.read(dir, `${prefix}.max_usage_in_bytes`)),
    failcnt: parseIntegerFile(io.read(dir, `${prefix}.failcnt`)),
  };
}

export function readV1MemoryStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  const raw = parseKeyValues(io.read(dir, "memory.stat"));
  stats.memory = {
    cache: raw.cache ?? 0,
    usage: v1MemoryEntry(io, dir, "memory"),
    swap: v1MemoryEntry(io, dir, "memory.memsw"),
    kernel: v1MemoryEntry(io, dir, "memory.kmem"),
    kernelTCP: v1MemoryEntry(io, dir, "memory.kmem.tcp"),
    raw,
  };
}

/** "8:0 Read 4096" lines; the closing "Total N" line has no device and is skipped. */
export function parseV1BlkioEntries(text: string | undefined): BlkioEntry[] {
  const entries: BlkioEntry[] = [];
  for (const line of (text ?? "").split("\n")) {
    const [device, op, value] = line.trim().split(/\s+/);
    const match = /^(\d+):(\d+)$/.exec(device ?? "");
    if (!match || op === undefined || value === undefined) continue;
    entries.push({ major: Number(match[1]), minor: Number(match[2]), op, value: Number(value) });
  }
  return entries;
}

export function readV1BlkioStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  // Prefer the scheduler's own accounting (BFQ, or CFQ on old kernels); the
  // throttle files count only I/O that went through blk-throttle.
  for (const prefix of ["blkio.bfq.", "blkio.", "blkio.throttle."]) {
    const bytes = io.read(dir, `${prefix}io_service_bytes_recursive`);
    if (bytes === undefined) continue;
    stats.blkio.ioServiceBytesRecursive = parseV1BlkioEntries(bytes);
    stats.blkio.ioServicedRecursive = parseV1BlkioEntries(io.read(dir, `${prefix}io_serviced_recursive`));
    return;
  }
}

export function readV1HugetlbStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const size of hugetlbPageSizes(names, "usage_in_bytes")) {
    const entry: HugetlbStats = {
      usage: parseIntegerFile(io.read(dir, `hugetlb.${size}.usage_in_bytes`)),
      max: parseIntegerFile(io.read(dir, `hugetlb.${size}.max_usage_in_bytes`)),
      failcnt: parseIntegerFile(io.read(dir, `hugetlb.${size}.failcnt`)),
    };
    stats.hugetlb[size] = entry;
  }
}

export function readV1OomKills(io: ControlFiles, dir: string): number {
  return parseKeyValues(io.read(dir, "memory.oom_control")).oom_kill ?? 0;
}

