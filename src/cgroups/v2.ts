/**
 * The cgroup v2 driver: controller enabling, linux.resources -> v2 control
 * files (with the v1 -> v2 unit conversions of convert.ts), the cgroup.freeze
 * freezer, cgroup.kill, and stats.
 *
 * File names and value formats: Documentation/admin-guide/cgroup-v2.rst.
 *
 * Devices: v2 has no devices.allow/deny; device access is an eBPF program
 * (BPF_PROG_TYPE_CGROUP_DEVICE, compiled by devices-ebpf.ts) attached to the
 * cgroup with bpf(2) (bpf-syscall.ts).
 */
import { readdirSync } from "node:fs";
import { dirname } from "node:path";
import type { LinuxBlockIO, LinuxCPU, LinuxDeviceCgroup, LinuxHugepageLimit, LinuxMemory } from "../spec/types.ts";
import { BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, BPF_PROG_TYPE_CGROUP_DEVICE, type BpfSyscalls } from "./bpf-syscall.ts";
import { formatInteger, parseIntegerFile, parseKeyValues, sleepMs, type ControlFiles } from "./control-files.ts";
import { blkioWeightToIoWeight, cpuSharesToWeight, memorySwapToV2, requireInteger, requirePageSize, requireRange } from "./convert.ts";
import { compileDeviceProgram, type DeviceProgram } from "./devices-ebpf.ts";
import { CgroupError } from "./errors.ts";
import { UNLIMITED, hugetlbPageSizes, type BlkioEntry, type CgroupStats, type MemoryEntryStats } from "./stats.ts";
import { deviceId } from "./v1.ts";

function unsupportedOnV2(field: string, why: string): CgroupError {
  return new CgroupError("cgroup-resource-unsupported", `${field}: not supported on cgroup v2 (${why})`);
}

// ---------------------------------------------------------------- controllers

/**
 * A v2 controller works in a cgroup only if every ancestor lists it in
 * cgroup.subtree_control. For each ancestor of dir (from the hierarchy root
 * down, dir itself excluded: a cgroup with processes may not delegate), enable
 * the wanted controllers that the ancestor has available and has not enabled
 * yet. If the batch write fails (one controller can be refused, e.g. a
 * threaded subtree), try each alone so the others still get enabled; a
 * controller left disabled surfaces later as an error naming the spec field
 * that needed it.
 */
export function enableV2Controllers(io: ControlFiles, mountpoint: string, dir: string, wanted: readonly string[]): void {
  if (wanted.length === 0) return;
  const ancestors: string[] = [];
  for (let current = dirname(dir); current.startsWith(mountpoint); current = dirname(current)) {
    ancestors.unshift(current);
    if (current === mountpoint) break;
  }
  for (const ancestor of ancestors) {
    const available = new Set((io.read(ancestor, "cgroup.controllers") ?? "").split(/\s+/));
    const enabled = new Set((io.read(ancestor, "cgroup.subtree_control") ?? "").split(/\s+/));
    const missing = wanted.filter((c) => available.has(c) && !enabled.has(c));
    if (missing.length === 0) continue;
    const field = "linux.cgroupsPath (enable controllers)";
    try {
      io.write(ancestor, "cgroup.subtree_control", missing.map((c) => `+${c}`).join(" "), field);
    } catch {
      for (const controller of missing) {
        try {
          io.write(ancestor, "cgroup.subtree_control", `+${controller}`, field);
        } catch {
          // Reported when a resource needs it; see above.
        }
      }
    }
  }
}

// ---------------------------------------------------------------- memory

export function applyV2Memory(io: ControlFiles, dir: string, memory: LinuxMemory, update: boolean): void {
  const base = "linux.resources.memory";
  const limit = memory.limit === undefined || memory.limit === 0 ? undefined : requireInteger(memory.limit, `${base}.limit`);
  const swapRequested = memory.swap === undefined ? undefined : requireInteger(memory.swap, `${base}.swap`);
  const swap = memorySwapToV2(swapRequested, limit);

  if (memory.swappiness !== undefined) throw unsupportedOnV2(`${base}.swappiness`, "the kernel has no per-cgroup swappiness");
  if (memory.disableOOMKiller === true) throw unsupportedOnV2(`${base}.disableOOMKiller`, "the OOM killer cannot be disabled per cgroup");

  if (update && memory.checkBeforeUpdate && limit !== undefined && limit > 0) {
    const usage = parseIntegerFile(io.read(dir, "memory.current"));
    if (usage > limit) {
      throw new CgroupError("cgroup-resource-invalid", `${base}.limit: ${limit} is below the current usage ${usage} (checkBeforeUpdate)`);
    }
  }
  if (memory.reservation !== undefined && memory.reservation !== 0) {
    const reservation = requireInteger(memory.reservation, `${base}.reservation`);
    io.write(dir, "memory.low", reservation === -1 ? "max" : formatInteger(reservation), `${base}.reservation`);
  }
  if (swap !== undefined) {
    const value = swap === -1 ? "max" : formatInteger(swap);
    // Without swap accounting there is no memory.swap.max; "unlimited" then needs no write.
    if (value !== "max" || io.has(dir, "memory.swap.max")) io.write(dir, "memory.swap.max", value, `${base}.swap`);
  }
  if (limit !== undefined) {
    io.write(dir, "memory.max", limit === -1 ? "max" : formatInteger(limit), `${base}.limit`);
  }
  // kernel / kernelTCP: deprecated, no v2 equivalent; ignored as runc does.
}

// ---------------------------------------------------------------- cpu

export function applyV2Cpu(io: ControlFiles, dir: string, cpu: LinuxCPU, update: boolean): void {
  const base = "linux.resources.cpu";
  if ((cpu.realtimePeriod ?? 0) !== 0 || (cpu.realtimeRuntime ?? 0) !== 0) {
    throw unsupportedOnV2(`${base}.realtimeRuntime`, "real-time bandwidth is not delegated on cgroup v2");
  }
  if (cpu.shares !== undefined && cpu.shares !== 0) {
    const weight = cpuSharesToWeight(requireInteger(cpu.shares, `${base}.shares`));
    io.write(dir, "cpu.weight", String(weight), `${base}.shares`);
  }
  const quota = cpu.quota === undefined || cpu.quota === 0 ? undefined : requireInteger(cpu.quota, `${base}.quota`);
  const period = cpu.period === undefined || cpu.period === 0 ? undefined : requireInteger(cpu.period, `${base}.period`);
  if (quota !== undefined || period !== undefined) {
    // cpu.max is "$QUOTA $PERIOD" in one file; on an update that sets only one
    // of them, keep the other as it is now.
    const [currentQuota, currentPeriod] = (update ? (io.read(dir, "cpu.max") ?? "") : "").trim().split(/\s+/);
    const quotaText = quota !== undefined ? (quota > 0 ? formatInteger(quota) : "max") : currentQuota || "max";
    const periodText = period !== undefined ? formatInteger(period) : currentPeriod;
    const field = quota !== undefined ? `${base}.quota` : `${base}.period`;
    io.write(dir, "cpu.max", periodText ? `${quotaText} ${periodText}` : quotaText, field);
  }
  if (cpu.burst !== undefined) {
    io.write(dir, "cpu.max.burst", formatInteger(requireInteger(cpu.burst, `${base}.burst`)), `${base}.burst`);
  }
  if (cpu.idle !== undefined) {
    io.write(dir, "cpu.idle", String(requireRange(cpu.idle, 0, 1, `${base}.idle`)), `${base}.idle`);
  }
}

// ---------------------------------------------------------------- io

export function applyV2Io(io: ControlFiles, dir: string, blkio: LinuxBlockIO): void {
  const base = "linux.resources.blockIO";
  if ((blkio.leafWeight ?? 0) !== 0) throw unsupportedOnV2(`${base}.leafWeight`, "v2 has no leaf weights");
  // BFQ's io.bfq.weight speaks blkio's own 1..1000 scale; io.weight (iocost) is 1..10000.
  const bfq = io.has(dir, "io.bfq.weight");
  const weightFile = bfq ? "io.bfq.weight" : "io.weight";
  const toWeight = (w: number): number => (bfq ? w : blkioWeightToIoWeight(w));

  if (blkio.weight !== undefined && blkio.weight !== 0) {
    const weight = requireRange(blkio.weight, 10, 1000, `${base}.weight`);
    io.write(dir, weightFile, `default ${toWeight(weight)}`, `${base}.weight`);
  }
  (blkio.weightDevice ?? []).forEach((device, index) => {
    const field = `${base}.weightDevice[${index}]`;
    if ((device.leafWeight ?? 0) !== 0) throw unsupportedOnV2(`${field}.leafWeight`, "v2 has no leaf weights");
    if (device.weight === undefined) return;
    const weight = requireRange(device.weight, 10, 1000, `${field}.weight`);
    io.write(dir, weightFile, `${deviceId(device.major, device.minor, field)} ${toWeight(weight)}`, `${field}.weight`);
  });

  // io.max takes all four limits of a device in one line; group the spec's
  // four lists by device, keeping the order devices first appear in.
  const keys: [keyof LinuxBlockIO, string][] = [
    ["throttleReadBpsDevice", "rbps"],
    ["throttleWriteBpsDevice", "wbps"],
    ["throttleReadIOPSDevice", "riops"],
    ["throttleWriteIOPSDevice", "wiops"],
  ];
  const lines = new Map<string, { parts: string[]; fields: string[] }>();
  for (const [key, name] of keys) {
    const list = (blkio[key] ?? []) as { major: number; minor: number; rate: number }[];
    list.forEach((device, index) => {
      const field = `${base}.${key}[${index}]`;
      const id = deviceId(device.major, device.minor, field);
      const rate = requireInteger(device.rate, `${field}.rate`);
      const line = lines.get(id) ?? { parts: [], fields: [] };
      // A rate of 0 removes the limit, as writing 0 does on v1.
      line.parts.push(`${name}=${rate > 0 ? formatInteger(rate) : "max"}`);
      line.fields.push(field);
      lines.set(id, line);
    });
  }
  for (const [id, line] of lines) io.write(dir, "io.max", `${id} ${line.parts.join(" ")}`, line.fields.join(", "));
}

// ---------------------------------------------------------------- hugetlb, unified

export function applyV2Hugetlb(io: ControlFiles, dir: string, limits: LinuxHugepageLimit[]): void {
  limits.forEach((entry, index) => {
    const field = `linux.resources.hugepageLimits[${index}]`;
    const size = requirePageSize(entry.pageSize, `${field}.pageSize`);
    const limit = formatInteger(requireInteger(entry.limit, `${field}.limit`));
    io.write(dir, `hugetlb.${size}.max`, limit, `${field}.limit`);
    io.writeIfPresent(dir, `hugetlb.${size}.rsvd.max`, limit, `${field}.limit`);
  });
}

/**
 * linux.resources.unified: file name -> value, written verbatim. The key must
 * be a plain control-file name ("memory.high"): a "/" or ".." would let a
 * config.json write any file under (or above) the cgroup.
 */
export function applyV2Unified(io: ControlFiles, dir: string, unified: Record<string, string>): void {
  for (const [key, value] of Object.entries(unified)) {
    const field = `linux.resources.unified[${JSON.stringify(key)}]`;
    if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/.test(key)) {
      throw new CgroupError("cgroup-resource-invalid", `${field}: not a cgroup control file name like "memory.high"`);
    }
    if (typeof value !== "string") {
      throw new CgroupError("cgroup-resource-invalid", `${field}: value must be a string`);
    }
    if (!io.has(dir, key)) {
      const controller = key.slice(0, key.indexOf("."));
      throw new CgroupError(
        "cgroup-resource-unsupported",
        `${field}: not supported by this host (${key} missing; is the ${controller} controller available on cgroup v2?)`,
      );
    }
    io.write(dir, key, value, field);
  }
}

// ---------------------------------------------------------------- devices

/**
 * prog_name of nano-kata's device programs. Update and destroy find the
 * program to replace by it (and by type), among those attached to the
 * container's own cgroup, so nothing has to be saved in the state file and a
 * program someone else attached there is left alone.
 */
export const DEVICE_PROGRAM_NAME = "nk_devices";
/** Device programs use no GPL-only helpers, so any license string loads. */
const DEVICE_PROGRAM_LICENSE = "Apache-2.0";

export interface InstalledDeviceProgram {
  program: DeviceProgram;
  /** The kernel's id of the attached program (bpftool prog show id N). */
  id: number;
  /** Size after the verifier, in bytes. */
  xlatedBytes: number;
  /** How many earlier nano-kata device programs it replaced. */
  replaced: number;
}

function devicesError(error: unknown, dir: string): CgroupError {
  if (error instanceof CgroupError) {
    const message = error.message.startsWith("linux.resources.devices") ? error.message : `linux.resources.devices: ${error.message} (cgroup ${dir})`;
    return new CgroupError(error.code, message, error.errno);
  }
  return new CgroupError("cgroup-bpf-failed", `linux.resources.devices: ${(error as Error).message} (cgroup ${dir})`);
}

/** Fds of nano-kata's device programs attached to the cgroup itself; other fds are closed. */
function ourDevicePrograms(bpf: BpfSyscalls, cgroupFd: number): number[] {
  const fds: number[] = [];
  for (const id of bpf.progQuery(cgroupFd, BPF_CGROUP_DEVICE)) {
    let fd: number;
    try {
      fd = bpf.progFdById(id);
    } catch (error) {
      // Detached and freed since the query: nothing to replace.
      if ((error as CgroupError).errno === "ENOENT") continue;
      throw error;
    }
    const info = bpf.progInfo(fd);
    if (info.type === BPF_PROG_TYPE_CGROUP_DEVICE && info.name === DEVICE_PROGRAM_NAME) fds.push(fd);
    else bpf.close(fd);
  }
  return fds;
}

/**
 * Enforces linux.resources.devices on a v2 cgroup: compiles the rules, loads
 * the program and attaches it (BPF_F_ALLOW_MULTI, so programs of ancestor
 * cgroups keep applying too), then detaches the program it replaces. Between
 * attach and detach both apply, which can only refuse more, never allow
 * more; if loading or attaching fails, the previous program stays.
 */
export function applyV2Devices(bpf: BpfSyscalls, dir: string, rules: readonly LinuxDeviceCgroup[]): InstalledDeviceProgram {
  const program = compileDeviceProgram(rules);
  const fds: number[] = [];
  try {
    const cgroupFd = bpf.openCgroup(dir);
    fds.push(cgroupFd);
    const previous = ourDevicePrograms(bpf, cgroupFd);
    fds.push(...previous);
    const progFd = bpf.progLoad({ type: BPF_PROG_TYPE_CGROUP_DEVICE, bytecode: program.bytecode, license: DEVICE_PROGRAM_LICENSE, name: DEVICE_PROGRAM_NAME });
    fds.push(progFd);
    bpf.progAttach(cgroupFd, progFd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI);
    for (const fd of previous) bpf.progDetach(cgroupFd, fd, BPF_CGROUP_DEVICE);
    const info = bpf.progInfo(progFd);
    return { program, id: info.id, xlatedBytes: info.xlatedBytes, replaced: previous.length };
  } catch (error) {
    throw devicesError(error, dir);
  } finally {
    // The cgroup holds its own reference to an attached program.
    for (const fd of fds.reverse()) bpf.close(fd);
  }
}

/**
 * Detaches nano-kata's device programs from a cgroup (destroy does this just
 * before rmdir, which would release them anyway, a moment later). Returns how
 * many; a cgroup already gone has none.
 */
export function removeV2DevicePrograms(bpf: BpfSyscalls, dir: string): number {
  const fds: number[] = [];
  try {
    let cgroupFd: number;
    try {
      cgroupFd = bpf.openCgroup(dir);
    } catch (error) {
      if ((error as CgroupError).errno === "ENOENT") return 0;
      throw error;
    }
    fds.push(cgroupFd);
    const ours = ourDevicePrograms(bpf, cgroupFd);
    fds.push(...ours);
    for (const fd of ours) bpf.progDetach(cgroupFd, fd, BPF_CGROUP_DEVICE);
    return ours.length;
  } catch (error) {
    throw devicesError(error, dir);
  } finally {
    for (const fd of fds.reverse()) bpf.close(fd);
  }
}

// ---------------------------------------------------------------- freezer, kill

export function v2FreezerState(io: ControlFiles, dir: string): "frozen" | "thawed" {
  return (io.read(dir, "cgroup.freeze") ?? "").trim() === "1" ? "frozen" : "thawed";
}

/** Writes cgroup.freeze and waits until cgroup.events reports "frozen 1"; thaws again on timeout. */
export function v2Freeze(io: ControlFiles, dir: string, timeoutMs: number): void {
  io.write(dir, "cgroup.freeze", "1", "pause");
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    if (parseKeyValues(io.read(dir, "cgroup.events")).frozen === 1) return;
    if (Date.now() > deadline) {
      io.write(dir, "cgroup.freeze", "0", "pause (giving up)");
      throw new CgroupError("cgroup-freeze-failed", `${dir}: processes did not freeze within ${timeoutMs} ms`);
    }
    sleepMs(Math.min(1 + attempt, 10));
  }
}

export function v2Thaw(io: ControlFiles, dir: string): void {
  io.write(dir, "cgroup.freeze", "0", "resume");
}

/** cgroup.kill (Linux 5.14+): SIGKILL to every process of the subtree, race-free against forks. */
export function v2KillAll(io: ControlFiles, dir: string): boolean {
  return io.writeIfPresent(dir, "cgroup.kill", "1", "kill --all");
}

// ---------------------------------------------------------------- stats

export function readV2CpuStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  const cpuStat = parseKeyValues(io.read(dir, "cpu.stat"));
  const usage = stats.cpu.usage;
  usage.total = (cpuStat.usage_usec ?? 0) * 1000;
  usage.user = (cpuStat.user_usec ?? 0) * 1000;
  usage.kernel = (cpuStat.system_usec ?? 0) * 1000;
  stats.cpu.throttling = {
    periods: cpuStat.nr_periods ?? 0,
    throttledPeriods: cpuStat.nr_throttled ?? 0,
    throttledTime: (cpuStat.throttled_usec ?? 0) * 1000,
  };
}

export function readV2MemoryStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  const raw = parseKeyValues(io.read(dir, "memory.stat"));
  const events = parseKeyValues(io.read(dir, "memory.events"));
  const usage: MemoryEntryStats = {
    limit: parseIntegerFile(io.read(dir, "memory.max"), UNLIMITED),
    usage: parseIntegerFile(io.read(dir, "memory.current")),
    max: parseIntegerFile(io.read(dir, "memory.peak")),
    failcnt: events.max ?? 0,
  };
  // v2 accounts swap alone; report memory+swap like v1 (and runc) do.
  const swapLimit = parseIntegerFile(io.read(dir, "memory.swap.max"), UNLIMITED);
  const swap: MemoryEntryStats = {
    limit: swapLimit === UNLIMITED || usage.limit === UNLIMITED ? UNLIMITED : swapLimit + usage.limit,
    usage: parseIntegerFile(io.read(dir, "memory.swap.current")) + usage.usage,
    max: 0,
    failcnt: parseKeyValues(io.read(dir, "memory.swap.events")).max ?? 0,
  };
  stats.memory = { ...stats.memory, cache: raw.file ?? 0, usage, swap, raw };
}

/** io.stat lines: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0". */
export function parseV2IoStat(text: string | undefined): { bytes: BlkioEntry[]; ios: BlkioEntry[] } {
  const bytes: BlkioEntry[] = [];
  const ios: BlkioEntry[] = [];
  const names: Record<string, [BlkioEntry[], string]> = {
    rbytes: [bytes, "Read"],
    wbytes: [bytes, "Write"],
    dbytes: [bytes, "Discard"],
    rios: [ios, "Read"],
    wios: [ios, "Write"],
    dios: [ios, "Discard"],
  };
  for (const line of (text ?? "").split("\n")) {
    const [device, ...pairs] = line.trim().split(/\s+/);
    const match = /^(\d+):(\d+)$/.exec(device ?? "");
    if (!match) continue;
    for (const pair of pairs) {
      const [key, value] = pair.split("=");
      const target = names[key ?? ""];
      if (target && value !== undefined) {
        target[0].push({ major: Number(match[1]), minor: Number(match[2]), op: target[1], value: Number(value) });
      }
    }
  }
  return { bytes, ios };
}

export function readV2IoStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  const { bytes, ios } = parseV2IoStat(io.read(dir, "io.stat"));
  stats.blkio = { ioServiceBytesRecursive: bytes, ioServicedRecursive: ios };
}

export function readV2HugetlbStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const size of hugetlbPageSizes(names, "current")) {
    stats.hugetlb[size] = {
      usage: parseIntegerFile(io.read(dir, `hugetlb.${size}.current`)),
      max: 0, // v2 keeps no high-water mark for hugetlb
      failcnt: parseKeyValues(io.read(dir, `hugetlb.${size}.events`)).max ?? 0,
    };
  }
}

export function readV2OomKills(io: ControlFiles, dir: string): number {
  return parseKeyValues(io.read(dir, "memory.events")).oom_kill ?? 0;
}
