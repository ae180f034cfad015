/**
 * Controllers whose files are the same on cgroup v1 and v2: pids, the cpuset
 * lists, rdma. Also reading cgroup.procs, which both versions have.
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import type { LinuxCPU, LinuxPids, LinuxRdma } from "../spec/types.ts";
import { formatInteger, parseIntegerFile, type ControlFiles } from "./control-files.ts";
import type { CgroupStats } from "./stats.ts";
import { requireCpuList, requireInteger, requireToken } from "./convert.ts";
import { errnoCode } from "./errors.ts";

export function applyPids(io: ControlFiles, dir: string, pids: LinuxPids): void {
  const field = "linux.resources.pids.limit";
  const limit = requireInteger(pids.limit, field);
  // 0 and negative mean "no limit" (runtime-spec: "limit <= 0" is unlimited in practice).
  io.write(dir, "pids.max", limit > 0 ? formatInteger(limit) : "max", field);
}

export function applyCpusetLists(io: ControlFiles, dir: string, cpu: LinuxCPU): void {
  if (cpu.cpus !== undefined) {
    const cpus = requireCpuList(cpu.cpus, "linux.resources.cpu.cpus");
    if (cpus !== "") io.write(dir, "cpuset.cpus", cpus, "linux.resources.cpu.cpus");
  }
  if (cpu.mems !== undefined) {
    const mems = requireCpuList(cpu.mems, "linux.resources.cpu.mems");
    if (mems !== "") io.write(dir, "cpuset.mems", mems, "linux.resources.cpu.mems");
  }
}

/** rdma.max lines: "<device> hca_handle=<n> hca_object=<n>" (only the limits given). */
export function applyRdma(io: ControlFiles, dir: string, rdma: Record<string, LinuxRdma>): void {
  for (const [device, limits] of Object.entries(rdma)) {
    const field = `linux.resources.rdma["${device}"]`;
    requireToken(device, field);
    const parts = [device];
    if (limits.hcaHandles !== undefined) parts.push(`hca_handle=${formatInteger(requireInteger(limits.hcaHandles, `${field}.hcaHandles`))}`);
    if (limits.hcaObjects !== undefined) parts.push(`hca_object=${formatInteger(requireInteger(limits.hcaObjects, `${field}.hcaObjects`))}`);
    if (parts.length > 1) io.write(dir, "rdma.max", parts.join(" "), field);
  }
}

/** The pids in cgroup.procs of dir; a missing directory has none. */
export function readProcs(dir: string, io: ControlFiles): number[] {
  const text = io.read(dir, "cgroup.procs") ?? "";
  return text
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => Number(line.trim()))
    .filter((pid) => Number.isInteger(pid) && pid > 0);
}

/** Child cgroup directories of dir (a container may create its own sub-cgroups). */
export function childCgroupDirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => join(dir, entry.name));
  } catch (error) {
    const code = errnoCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    throw error;
  }
}

/** The pids of dir and every cgroup below it, each once. */
export function readProcsRecursive(dir: string, io: ControlFiles): number[] {
  const pids = new Set<number>();
  const walk = (current: string): void => {
    for (const pid of readProcs(current, io)) pids.add(pid);
    for (const child of childCgroupDirs(current)) walk(child);
  };
  walk(dir);
  return [...pids];
}

/** pids.current and pids.max (same files on v1 and v2); "max" reads as 0, as runc reports it. */
export function readPidsStats(io: ControlFiles, dir: string, stats: CgroupStats): void {
  stats.pids = {
    current: parseIntegerFile(io.read(dir, "pids.current")),
    limit: parseIntegerFile(io.read(dir, "pids.max"), 0),
  };
}
