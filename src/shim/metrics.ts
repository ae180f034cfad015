/**
 * Stats: the container's cgroup figures as containerd's metrics messages,
 * io.containerd.cgroups.v1.Metrics on cgroup v1 hosts and
 * io.containerd.cgroups.v2.Metrics on unified ones (what `ctr task metrics`
 * and the CRI plugin decode). Only the figures the cgroup drivers read are
 * filled in; the rest stay zero.
 */
import type { CgroupStats } from "../cgroups/index.ts";
import { Writer, type Any } from "./proto.ts";

export const METRICS_V1 = "io.containerd.cgroups.v1.Metrics";
export const METRICS_V2 = "io.containerd.cgroups.v2.Metrics";

function entry(e: { limit: number; usage: number; max: number; failcnt: number }): Uint8Array {
  return new Writer().uint(1, e.limit).uint(2, e.usage).uint(3, e.max).uint(4, e.failcnt).finish();
}

export function encodeMetricsV1(s: CgroupStats): Any {
  const w = new Writer();
  for (const [pagesize, h] of Object.entries(s.hugetlb)) {
    w.message(1, new Writer().uint(1, h.usage).uint(2, h.max).uint(3, h.failcnt).string(4, pagesize).finish());
  }
  w.message(2, new Writer().uint(1, s.pids.current).uint(2, s.pids.limit).finish());
  const usage = new Writer().uint(1, s.cpu.usage.total).uint(2, s.cpu.usage.kernel).uint(3, s.cpu.usage.user);
  for (const c of s.cpu.usage.percpu) usage.tag(4, 0).varint(c);
  const throttle = new Writer().uint(1, s.cpu.throttling.periods).uint(2, s.cpu.throttling.throttledPeriods).uint(3, s.cpu.throttling.throttledTime);
  w.message(3, new Writer().message(1, usage.finish()).message(2, throttle.finish()).finish());
  const raw = s.memory.raw;
  const mem = new Writer();
  const rawFields: [number, string][] = [
    [1, "cache"], [2, "rss"], [3, "rss_huge"], [4, "mapped_file"], [5, "dirty"], [6, "writeback"], [7, "pgpgin"], [8, "pgpgout"],
    [9, "pgfault"], [10, "pgmajfault"], [11, "inactive_anon"], [12, "active_anon"], [13, "inactive_file"], [14, "active_file"],
    [15, "unevictable"], [16, "hierarchical_memory_limit"], [17, "hierarchical_memsw_limit"], [18, "total_cache"], [19, "total_rss"],
    [20, "total_rss_huge"], [21, "total_mapped_file"], [22, "total_dirty"], [23, "total_writeback"], [24, "total_pgpgin"],
    [25, "total_pgpgout"], [26, "total_pgfault"], [27, "total_pgmajfault"], [28, "total_inactive_anon"], [29, "total_active_anon"],
    [30, "total_inactive_file"], [31, "total_active_file"], [32, "total_unevictable"],
  ];
  for (const [field, name] of rawFields) mem.uint(field, raw[name]);
  mem.message(33, entry(s.memory.usage)).message(34, entry(s.memory.swap)).message(35, entry(s.memory.kernel)).message(36, entry(s.memory.kernelTCP));
  w.message(4, mem.finish());
  const blkio = new Writer();
  for (const [field, list] of [[1, s.blkio.ioServiceBytesRecursive], [2, s.blkio.ioServicedRecursive]] as const) {
    for (const e of list) blkio.message(field, new Writer().string(1, e.op).uint(3, e.major).uint(4, e.minor).uint(5, e.value).finish());
  }
  w.message(5, blkio.finish());
  return { typeUrl: METRICS_V1, value: w.finish() };
}

export function encodeMetricsV2(s: CgroupStats): Any {
  const w = new Writer();
  w.message(1, new Writer().uint(1, s.pids.current).uint(2, s.pids.limit).finish());
  const us = (ns: number) => Math.floor(ns / 1000);
  w.message(
    2,
    new Writer()
      .uint(1, us(s.cpu.usage.total))
      .uint(2, us(s.cpu.usage.user))
      .uint(3, us(s.cpu.usage.kernel))
      .uint(4, s.cpu.throttling.periods)
      .uint(5, s.cpu.throttling.throttledPeriods)
      .uint(6, us(s.cpu.throttling.throttledTime))
      .finish(),
  );
  const raw = s.memory.raw;
  const mem = new Writer()
    .uint(1, raw.anon)
    .uint(2, raw.file)
    .uint(3, raw.kernel_stack)
    .uint(4, raw.slab)
    .uint(5, raw.sock)
    .uint(6, raw.shmem)
    .uint(7, raw.file_mapped)
    .uint(8, raw.file_dirty)
    .uint(9, raw.file_writeback)
    .uint(18, raw.pgfault)
    .uint(19, raw.pgmajfault)
    .uint(32, s.memory.usage.usage)
    .uint(33, s.memory.usage.limit)
    .uint(34, s.memory.swap.usage)
    .uint(35, s.memory.swap.limit)
    .uint(36, s.memory.usage.max);
  w.message(4, mem.finish());
  return { typeUrl: METRICS_V2, value: w.finish() };
}
