/**
 * Resource usage of a container's cgroup, shaped like the `data` object of
 * `runc events --stats` so tools that parse runc's output can parse ours.
 * Field names are runc's JSON names. All numbers are bytes, nanoseconds or
 * counts; "unlimited" is UNLIMITED (v2 "max"), or the kernel's own huge number
 * on v1 (which is what runc prints there too).
 */

export interface CpuUsageStats {
  /** Total CPU time consumed, ns. */
  total: number;
  /** Per-CPU totals, ns (v1 cpuacct only). */
  percpu: number[];
  percpu_kernel: number[];
  percpu_user: number[];
  /** Time in kernel mode, ns. */
  kernel: number;
  /** Time in user mode, ns. */
  user: number;
}

export interface CpuThrottlingStats {
  periods: number;
  throttledPeriods: number;
  /** ns */
  throttledTime: number;
}

export interface MemoryEntryStats {
  limit: number;
  usage: number;
  max: number;
  failcnt: number;
}

export interface MemoryStats {
  /** Page cache bytes (v1 "cache", v2 "file" in memory.stat). */
  cache: number;
  usage: MemoryEntryStats;
  /** memory+swap, as on v1 (v2 figures are converted to the same meaning). */
  swap: MemoryEntryStats;
  kernel: MemoryEntryStats;
  kernelTCP: MemoryEntryStats;
  /** memory.stat verbatim. */
  raw: Record<string, number>;
}

export interface PidsStats {
  current: number;
  /** 0 means unlimited, as in runc. */
  limit: number;
}

export interface BlkioEntry {
  major: number;
  minor: number;
  /** "Read", "Write", "Sync", "Async", "Discard", "Total". */
  op: string;
  value: number;
}

export interface BlkioStats {
  ioServiceBytesRecursive: BlkioEntry[];
  ioServicedRecursive: BlkioEntry[];
}

export interface HugetlbStats {
  usage: number;
  max: number;
  failcnt: number;
}

export interface CgroupStats {
  cpu: { usage: CpuUsageStats; throttling: CpuThrottlingStats };
  memory: MemoryStats;
  pids: PidsStats;
  blkio: BlkioStats;
  /** Keyed by page size ("2MB"). */
  hugetlb: Record<string, HugetlbStats>;
}

/** v2's "max", as runc reports it (math.MaxUint64; a double cannot hold it exactly). */
export const UNLIMITED = 2 ** 64 - 1;

export function emptyMemoryEntry(): MemoryEntryStats {
  return { limit: 0, usage: 0, max: 0, failcnt: 0 };
}

export function emptyStats(): CgroupStats {
  return {
    cpu: {
      usage: { total: 0, percpu: [], percpu_kernel: [], percpu_user: [], kernel: 0, user: 0 },
      throttling: { periods: 0, throttledPeriods: 0, throttledTime: 0 },
    },
    memory: {
      cache: 0,
      usage: emptyMemoryEntry(),
      swap: emptyMemoryEntry(),
      kernel: emptyMemoryEntry(),
      kernelTCP: emptyMemoryEntry(),
      raw: {},
    },
    pids: { current: 0, limit: 0 },
    blkio: { ioServiceBytesRecursive: [], ioServicedRecursive: [] },
    hugetlb: {},
  };
}

/** Page sizes with hugetlb files in dir, from names like "hugetlb.2MB.current". */
export function hugetlbPageSizes(fileNames: string[], suffix: string): string[] {
  const sizes: string[] = [];
  for (const name of fileNames) {
    const match = /^hugetlb\.([0-9]+[KMGTP]B)\.(.+)$/.exec(name);
    if (match && match[2] === suffix) sizes.push(match[1]!);
  }
  return sizes.sort();
}
