/**
 * Value checks and the v1 -> v2 unit conversions. The spec speaks cgroup v1
 * units (cpu shares, blkio weight, memory+swap); cgroup v2 files want others.
 * The formulas are the ones runc and crun document, so a config.json means
 * the same thing under every runtime.
 */
import { CgroupError } from "./errors.ts";

export function requireInteger(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new CgroupError("cgroup-resource-invalid", `${field}: ${JSON.stringify(value)} is not an integer`);
  }
  return value;
}

export function requireRange(value: unknown, min: number, max: number, field: string): number {
  const n = requireInteger(value, field);
  if (n < min || n > max) {
    throw new CgroupError("cgroup-resource-invalid", `${field}: ${n} is outside ${min}..${max}`);
  }
  return n;
}

/**
 * cpu.shares (2..262144, default 1024) -> cpu.weight (1..10000, default 100):
 * a linear map of one range onto the other, 1 + ((shares - 2) * 9999) / 262142.
 * 0 means "not set".
 */
export function cpuSharesToWeight(shares: number): number {
  if (shares === 0) return 0;
  const clamped = Math.min(Math.max(shares, 2), 262144);
  return 1 + Math.floor(((clamped - 2) * 9999) / 262142);
}

/**
 * blkio.weight (10..1000) -> io.weight (1..10000): the same linear style,
 * 1 + ((weight - 10) * 9999) / 990. 0 means "not set".
 */
export function blkioWeightToIoWeight(weight: number): number {
  if (weight === 0) return 0;
  const clamped = Math.min(Math.max(weight, 10), 1000);
  return 1 + Math.floor(((clamped - 10) * 9999) / 990);
}

/**
 * The spec's memory.swap is v1's memsw: memory PLUS swap. v2's memory.swap.max
 * is swap alone, so it is swap - limit. Returns undefined for "leave as is",
 * -1 for "max".
 */
export function memorySwapToV2(swap: number | undefined, limit: number | undefined): number | undefined {
  const field = "linux.resources.memory.swap";
  // As with v1: an unlimited memory limit and no swap setting means both unlimited.
  if (limit === -1 && (swap === undefined || swap === 0)) return -1;
  if (swap === undefined || swap === 0) return undefined;
  if (swap === -1) return -1;
  if (limit === undefined || limit === 0 || limit === -1) {
    throw new CgroupError(
      "cgroup-resource-invalid",
      `${field}: cgroup v2 cannot limit swap without a memory limit (linux.resources.memory.limit)`,
    );
  }
  if (swap < limit) {
    throw new CgroupError(
      "cgroup-resource-invalid",
      `${field}: ${swap} is below linux.resources.memory.limit ${limit} (swap is memory+swap)`,
    );
  }
  return swap - limit;
}

/** A hugepage size as the kernel names its files ("2MB", "1GB", "64KB"); anything else could escape the directory. */
export function requirePageSize(pageSize: unknown, field: string): string {
  if (typeof pageSize !== "string" || !/^[1-9][0-9]*[KMGTP]B$/.test(pageSize)) {
    throw new CgroupError("cgroup-resource-invalid", `${field}: ${JSON.stringify(pageSize)} is not a page size like "2MB"`);
  }
  return pageSize;
}

/** cpuset lists ("0-3,7"); an empty string means "not set". */
export function requireCpuList(list: unknown, field: string): string {
  if (typeof list !== "string" || !/^[0-9,\- ]*$/.test(list)) {
    throw new CgroupError("cgroup-resource-invalid", `${field}: ${JSON.stringify(list)} is not a list like "0-3,7"`);
  }
  return list.trim();
}

/** A single-token name (network interface, RDMA device) written into a multi-field line. */
export function requireToken(name: unknown, field: string): string {
  if (typeof name !== "string" || !/^[^\s/]+$/.test(name)) {
    throw new CgroupError("cgroup-resource-invalid", `${field}: ${JSON.stringify(name)} is not a valid name`);
  }
  return name;
}
