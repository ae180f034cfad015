/**
 * The CgroupManager implementation: a container's cgroup as a list of
 * hierarchies (one per v1 mount, plus the cgroup2 mount), each with the
 * directory the container uses there. Every operation routes each controller
 * to the hierarchy that drives it: on a hybrid host a controller mounted as
 * v1 is driven by v1, and the unified hierarchy drives only what v1 does not
 * have (typically hugetlb).
 */
import { existsSync, mkdirSync, rmdirSync } from "node:fs";
import { dirname, relative } from "node:path";
import type { LinuxDeviceCgroup, LinuxResources } from "../spec/types.ts";
import { bpfSyscalls, type BpfSyscalls } from "./bpf-syscall.ts";
import { ControlFiles, sleepMs, type ControlWriteTracer } from "./control-files.ts";
import { emulateDeviceCgroup, type DeviceCgroupModel } from "./devices-ebpf.ts";
import { deviceRulesToV1Writes } from "./devices.ts";
import { CgroupError, errnoCode } from "./errors.ts";
import type { CgroupManager, SavedCgroup, SavedHierarchy } from "./index.ts";
import { applyCpusetLists, applyPids, applyRdma, childCgroupDirs, readPidsStats, readProcsRecursive } from "./shared.ts";
import { emptyStats, type CgroupStats } from "./stats.ts";
import * as v1 from "./v1.ts";
import * as v2 from "./v2.ts";

export interface ManagerOptions {
  /** Called with every control-file write (for --trace and tests). */
  trace?: ControlWriteTracer;
  /** Called for settings accepted but not carried out in full (a device rule v1 semantics make a no-op). */
  warn?: (message: string) => void;
  /** bpf(2) for the cgroup v2 device program; tests pass an in-memory kernel. Default: the real one. */
  bpf?: BpfSyscalls;
  /** How long destroy waits for the cgroup to empty (default 1000 ms). */
  destroyTimeoutMs?: number;
  /** How long freeze waits for FROZEN (default 2000 ms). */
  freezeTimeoutMs?: number;
}

type Driver = { driver: "v1" | "v2"; dir: string };

function depth(path: string): number {
  return path.split("/").length;
}

export class HierarchyCgroupManager implements CgroupManager {
  readonly paths: Record<string, string>;
  private readonly io: ControlFiles;
  /** Directories this manager made (undefined until create(); from the saved record when reopened). */
  private created: string[] | undefined;

  constructor(
    private readonly hierarchies: readonly SavedHierarchy[],
    created: string[] | undefined,
    private readonly options: ManagerOptions = {},
  ) {
    this.io = new ControlFiles(options.trace);
    this.created = created ? [...created] : undefined;
    const paths: Record<string, string> = {};
    for (const h of hierarchies) {
      if (h.driver === "v2") paths.unified = h.dir;
      else for (const controller of h.controllers) paths[controller] = h.dir;
    }
    this.paths = paths;
  }

  // ------------------------------------------------------------ routing

  private v1Dir(controller: string): string | undefined {
    return this.hierarchies.find((h) => h.driver === "v1" && h.controllers.includes(controller))?.dir;
  }

  private v2Hierarchy(): SavedHierarchy | undefined {
    return this.hierarchies.find((h) => h.driver === "v2");
  }

  /** The hierarchy that drives a controller, by its v1 and v2 names. */
  private driverOf(v1Name: string, v2Name: string | undefined): Driver | undefined {
    const v1Dir = this.v1Dir(v1Name);
    if (v1Dir !== undefined) return { driver: "v1", dir: v1Dir };
    const unified = this.v2Hierarchy();
    if (unified && v2Name !== undefined && unified.controllers.includes(v2Name)) return { driver: "v2", dir: unified.dir };
    return undefined;
  }

  private requireDriver(v1Name: string, v2Name: string | undefined, field: string): Driver {
    const driver = this.driverOf(v1Name, v2Name);
    if (driver) return driver;
    const onlyV2 = this.hierarchies.every((h) => h.driver === "v2");
    const why =
      onlyV2 && v2Name === undefined
        ? `cgroup v2 has no ${v1Name} controller`
        : `no ${onlyV2 ? v2Name : v1Name} controller is available`;
    throw new CgroupError("cgroup-resource-unsupported", `${field}: not supported by this host (${why})`);
  }

  /** Freezer: the v1 freezer hierarchy, else cgroup.freeze of the unified one. */
  private freezer(): Driver | undefined {
    const v1Dir = this.v1Dir("freezer");
    if (v1Dir !== undefined) return { driver: "v1", dir: v1Dir };
    const unified = this.v2Hierarchy();
    return unified ? { driver: "v2", dir: unified.dir } : undefined;
  }

  /** Distinct directories, one per hierarchy. */
  private dirs(): string[] {
    return [...new Set(this.hierarchies.map((h) => h.dir))];
  }

  // ------------------------------------------------------------ lifecycle

  create(): void {
    // Refuse a cgroup someone is using before touching anything, so a failed
    // create leaves nothing behind.
    const inUse = this.dirs()
      .map((dir) => ({ dir, pids: readProcsRecursive(dir, this.io) }))
      .filter((entry) => entry.pids.length > 0);
    if (inUse.length > 0) {
      const list = inUse.map((e) => `${e.dir} (pids ${e.pids.slice(0, 5).join(", ")})`).join("; ");
      throw new CgroupError("cgroup-not-empty", `cgroup already exists and has processes: ${list}`);
    }

    const created: string[] = [];
    try {
      for (const h of this.hierarchies) this.makeDirectory(h, created);
      for (const h of this.hierarchies) {
        if (h.driver === "v1" && h.controllers.includes("cpuset")) v1.prepareV1Cpuset(this.io, h.mountpoint, h.dir);
        if (h.driver === "v2") v2.enableV2Controllers(this.io, h.mountpoint, h.dir, h.controllers);
      }
    } catch (error) {
      this.removeQuietly(created);
      if (error instanceof CgroupError) throw error;
      throw new CgroupError("cgroup-create-failed", `creating the cgroup failed: ${(error as Error).message}`, errnoCode(error));
    }
    this.created = [...(this.created ?? []), ...created.filter((d) => !(this.created ?? []).includes(d))];
  }

  /**
   * mkdir -p, one level at a time, remembering each level we made. A level
   * vanishing between two mkdirs (another container's destroy removing a
   * shared, empty parent) is retried from the top.
   */
  private makeDirectory(h: SavedHierarchy, created: string[]): void {
    if (!existsSync(h.mountpoint)) {
      throw new CgroupError("cgroup-create-failed", `cgroup hierarchy ${h.mountpoint} is not mounted`);
    }
    const components = relative(h.mountpoint, h.dir).split("/");
    for (let attempt = 0; ; attempt++) {
      let current = h.mountpoint;
      try {
        for (const component of components) {
          current = `${current}/${component}`;
          try {
            mkdirSync(current);
            created.push(current);
          } catch (error) {
            if (errnoCode(error) !== "EEXIST") throw error;
          }
        }
        return;
      } catch (error) {
        if (errnoCode(error) === "ENOENT" && attempt < 3) continue;
        throw new CgroupError("cgroup-create-failed", `mkdir ${current} failed: ${errnoCode(error) ?? (error as Error).message}`, errnoCode(error));
      }
    }
  }

  addProcess(pid: number): void {
    if (!Number.isInteger(pid) || pid <= 0) {
      throw new CgroupError("cgroup-join-failed", `cannot add pid ${pid} to a cgroup`);
    }
    for (const dir of this.dirs()) {
      try {
        this.io.write(dir, "cgroup.procs", String(pid), "linux.cgroupsPath");
      } catch (error) {
        throw new CgroupError("cgroup-join-failed", `adding pid ${pid} to ${dir} failed: ${(error as Error).message}`, (error as CgroupError).errno);
      }
    }
  }

  processes(): number[] {
    const preferred =
      this.v1Dir("pids") ?? this.v1Dir("freezer") ?? this.v1Dir("memory") ?? this.v2Hierarchy()?.dir ?? this.hierarchies[0]?.dir;
    return preferred === undefined ? [] : readProcsRecursive(preferred, this.io).sort((a, b) => a - b);
  }

  // ------------------------------------------------------------ resources

  applyResources(resources: LinuxResources | undefined, opts: { update?: boolean } = {}): void {
    if (!resources) return;
    const update = opts.update ?? false;
    const r = resources;

    if (r.cpu && (r.cpu.cpus !== undefined || r.cpu.mems !== undefined)) {
      applyCpusetLists(this.io, this.requireDriver("cpuset", "cpuset", "linux.resources.cpu.cpus").dir, r.cpu);
    }
    if (r.devices !== undefined) this.applyDevices(r);
    if (r.memory) {
      const d = this.requireDriver("memory", "memory", "linux.resources.memory");
      if (d.driver === "v1") v1.applyV1Memory(this.io, d.dir, r.memory, update);
      else v2.applyV2Memory(this.io, d.dir, r.memory, update);
    }
    if (r.cpu && hasCpuBandwidthFields(r)) {
      const d = this.requireDriver("cpu", "cpu", "linux.resources.cpu");
      if (d.driver === "v1") v1.applyV1Cpu(this.io, d.dir, r.cpu);
      else v2.applyV2Cpu(this.io, d.dir, r.cpu, update);
    }
    if (r.pids) applyPids(this.io, this.requireDriver("pids", "pids", "linux.resources.pids").dir, r.pids);
    if (r.blockIO) {
      const d = this.requireDriver("blkio", "io", "linux.resources.blockIO");
      if (d.driver === "v1") v1.applyV1Blkio(this.io, d.dir, r.blockIO);
      else v2.applyV2Io(this.io, d.dir, r.blockIO);
    }
    if (r.hugepageLimits && r.hugepageLimits.length > 0) {
      const d = this.requireDriver("hugetlb", "hugetlb", "linux.resources.hugepageLimits");
      if (d.driver === "v1") v1.applyV1Hugetlb(this.io, d.dir, r.hugepageLimits);
      else v2.applyV2Hugetlb(this.io, d.dir, r.hugepageLimits);
    }
    if (r.network?.classID !== undefined) {
      v1.applyV1NetCls(this.io, this.requireDriver("net_cls", undefined, "linux.resources.network.classID").dir, r.network.classID);
    }
    if (r.network?.priorities && r.network.priorities.length > 0) {
      v1.applyV1NetPrio(this.io, this.requireDriver("net_prio", undefined, "linux.resources.network.priorities").dir, r.network.priorities);
    }
    if (r.rdma && Object.keys(r.rdma).length > 0) {
      applyRdma(this.io, this.requireDriver("rdma", "rdma", "linux.resources.rdma").dir, r.rdma);
    }
    // Last, so a raw v2 setting overrides the typed field it overlaps, as in runc.
    if (r.unified && Object.keys(r.unified).length > 0) {
      const unified = this.v2Hierarchy();
      if (!unified) {
        throw new CgroupError("cgroup-resource-unsupported", "linux.resources.unified: not supported by this host (cgroup v2 is not mounted)");
      }
      v2.applyV2Unified(this.io, unified.dir, r.unified);
    }
  }

  /**
   * Device rules: the v1 devices controller where it is mounted (hybrid hosts
   * included), else an eBPF program on the unified cgroup. Both give the
   * same answers for the same rules (devices-ebpf.ts).
   */
  private applyDevices(r: LinuxResources): void {
    const rules = r.devices ?? [];
    const dir = this.v1Dir("devices");
    if (dir !== undefined) {
      v1.applyV1Devices(this.io, dir, rules);
      this.warnIneffectiveDeviceRules(rules);
      return;
    }
    const unified = this.v2Hierarchy();
    if (unified) {
      const installed = v2.applyV2Devices(this.bpf(), unified.dir, rules);
      this.warnIneffectiveDeviceRules(rules, installed.program.model.ignored);
      return;
    }
    throw new CgroupError("cgroup-resource-unsupported", "linux.resources.devices: not supported by this host (no devices controller is mounted)");
  }

  private bpf(): BpfSyscalls {
    return this.options.bpf ?? bpfSyscalls();
  }

  /** The v2 device program lives on the unified cgroup when no v1 devices controller takes the rules. */
  private devicesOnV2(): SavedHierarchy | undefined {
    return this.v1Dir("devices") === undefined ? this.v2Hierarchy() : undefined;
  }

  private warnIneffectiveDeviceRules(rules: readonly LinuxDeviceCgroup[], ignored?: DeviceCgroupModel["ignored"]): void {
    if (!this.options.warn) return;
    for (const entry of ignored ?? emulateDeviceCgroup(deviceRulesToV1Writes(rules)).ignored) {
      this.options.warn(`${entry.field}: "${entry.rule}" does not change access granted or refused by "${entry.survivor}" (device cgroups match exceptions exactly)`);
    }
  }

  // ------------------------------------------------------------ freezer

  freeze(): void {
    const f = this.freezer();
    if (!f) throw new CgroupError("cgroup-freezer-unavailable", "pause: this host has no freezer (no v1 freezer hierarchy, no cgroup v2)");
    const timeout = this.options.freezeTimeoutMs ?? 2000;
    if (f.driver === "v1") v1.v1Freeze(this.io, f.dir, timeout);
    else v2.v2Freeze(this.io, f.dir, timeout);
  }

  thaw(): void {
    const f = this.freezer();
    if (!f) throw new CgroupError("cgroup-freezer-unavailable", "resume: this host has no freezer (no v1 freezer hierarchy, no cgroup v2)");
    if (f.driver === "v1") v1.v1Thaw(this.io, f.dir);
    else v2.v2Thaw(this.io, f.dir);
  }

  state(): "frozen" | "thawed" {
    const f = this.freezer();
    if (!f) return "thawed";
    return f.driver === "v1" ? v1.v1FreezerState(this.io, f.dir) : v2.v2FreezerState(this.io, f.dir);
  }

  /**
   * Sends signal to every process in the cgroup. On pure cgroup v2, SIGKILL
   * goes through cgroup.kill, which cannot miss a process forked meanwhile.
   * Otherwise, as runc does: freeze (so nothing forks while we list), signal
   * each pid, thaw (a frozen task handles its signal once thawed).
   */
  killAll(signal: number): void {
    const unified = this.v2Hierarchy();
    if (signal === 9 && unified && this.hierarchies.length === 1 && existsSync(unified.dir) && v2.v2KillAll(this.io, unified.dir)) return;

    const f = this.freezer();
    let frozen = false;
    if (f && existsSync(f.dir)) {
      try {
        this.freeze();
        frozen = true;
      } catch {
        // Signal anyway: a process that forks meanwhile is the lesser harm.
      }
    }
    try {
      for (const pid of this.processes()) {
        try {
          process.kill(pid, signal);
        } catch (error) {
          if (errnoCode(error) !== "ESRCH") throw error;
        }
      }
    } finally {
      if (frozen) this.thaw();
    }
  }

  // ------------------------------------------------------------ observation

  stats(): CgroupStats {
    const stats = emptyStats();
    const io = this.io;
    const cpuacct = this.v1Dir("cpuacct");
    const cpu = this.v1Dir("cpu");
    if (cpuacct !== undefined) v1.readV1CpuacctStats(io, cpuacct, stats);
    if (cpu !== undefined) v1.readV1CpuStats(io, cpu, stats);
    const unified = this.v2Hierarchy();
    // cpu.stat's usage lines are core v2 (present without the cpu controller).
    if (unified && cpuacct === undefined && cpu === undefined) v2.readV2CpuStats(io, unified.dir, stats);

    const memory = this.driverOf("memory", "memory");
    if (memory?.driver === "v1") v1.readV1MemoryStats(io, memory.dir, stats);
    else if (memory?.driver === "v2") v2.readV2MemoryStats(io, memory.dir, stats);

    const pids = this.driverOf("pids", "pids");
    if (pids) readPidsStats(io, pids.dir, stats);

    const blkio = this.driverOf("blkio", "io");
    if (blkio?.driver === "v1") v1.readV1BlkioStats(io, blkio.dir, stats);
    else if (blkio?.driver === "v2") v2.readV2IoStats(io, blkio.dir, stats);

    const hugetlb = this.driverOf("hugetlb", "hugetlb");
    if (hugetlb?.driver === "v1") v1.readV1HugetlbStats(io, hugetlb.dir, stats);
    else if (hugetlb?.driver === "v2") v2.readV2HugetlbStats(io, hugetlb.dir, stats);
    return stats;
  }

  oomKillCount(): number {
    const memory = this.driverOf("memory", "memory");
    if (!memory) return 0;
    return memory.driver === "v1" ? v1.readV1OomKills(this.io, memory.dir) : v2.readV2OomKills(this.io, memory.dir);
  }

  // ------------------------------------------------------------ removal

  destroy(): void {
    const created = this.created ?? [];
    if (created.length === 0) return;
    const deadline = Date.now() + (this.options.destroyTimeoutMs ?? 1000);
    const leaves = new Set(this.dirs());

    // Processes leave a cgroup when they exit, a moment after a kill.
    for (;;) {
      const busy = [...leaves]
        .filter((dir) => created.includes(dir))
        .map((dir) => ({ dir, pids: readProcsRecursive(dir, this.io) }))
        .filter((entry) => entry.pids.length > 0);
      if (busy.length === 0) break;
      if (Date.now() >= deadline) {
        const list = busy.map((e) => `${e.dir} (pids ${e.pids.slice(0, 5).join(", ")})`).join("; ");
        throw new CgroupError("cgroup-busy", `cgroup still has processes: ${list}`);
      }
      sleepMs(10);
    }

    // Processes are gone: take the device program off before rmdir, so it is
    // freed now rather than when the kernel releases the dead cgroup.
    const devices = this.devicesOnV2();
    if (devices && created.includes(devices.dir) && existsSync(devices.dir)) {
      try {
        v2.removeV2DevicePrograms(this.bpf(), devices.dir);
      } catch {
        // rmdir below releases the program as well.
      }
    }

    const remaining = new Set(created);
    try {
      for (const dir of [...created].sort((a, b) => depth(b) - depth(a))) {
        if (leaves.has(dir)) this.removeLeaf(dir, deadline);
        else removeSharedParent(dir);
        remaining.delete(dir);
      }
    } finally {
      this.created = [...remaining];
    }
  }

  /** Removes a container's own cgroup, with any sub-cgroups made inside it, deepest first. */
  private removeLeaf(dir: string, deadline: number): void {
    for (const child of childCgroupDirs(dir)) this.removeLeaf(child, deadline);
    for (;;) {
      try {
        rmdirSync(dir);
        return;
      } catch (error) {
        const code = errnoCode(error);
        if (code === "ENOENT") return;
        if (code !== "EBUSY" && code !== "ENOTEMPTY") {
          throw new CgroupError("cgroup-remove-failed", `rmdir ${dir} failed: ${code ?? (error as Error).message}`, code);
        }
        if (Date.now() >= deadline) throw new CgroupError("cgroup-busy", `rmdir ${dir}: cgroup is still busy`, code);
        sleepMs(10);
      }
    }
  }

  /** Best-effort removal after a failed create. */
  private removeQuietly(dirs: string[]): void {
    for (const dir of [...dirs].sort((a, b) => depth(b) - depth(a))) {
      try {
        rmdirSync(dir);
      } catch {
        // Nothing more to do; the error that brought us here is the one to report.
      }
    }
  }

  // ------------------------------------------------------------ persistence

  toJSON(): SavedCgroup {
    return {
      version: 1,
      hierarchies: this.hierarchies.map((h) => ({ ...h, controllers: [...h.controllers] })),
      created: this.created ? [...this.created] : this.plannedDirectories(),
    };
  }

  /**
   * Before create(): the directories create() is going to make (those missing
   * now), so a record saved early still lets a later `delete` clean up.
   */
  private plannedDirectories(): string[] {
    const planned: string[] = [];
    for (const h of this.hierarchies) {
      const missing: string[] = [];
      for (let dir = h.dir; dir !== h.mountpoint && dir.startsWith(h.mountpoint + "/"); dir = dirname(dir)) {
        if (!existsSync(dir) && !planned.includes(dir)) missing.unshift(dir);
      }
      planned.push(...missing);
    }
    return planned;
  }
}

function hasCpuBandwidthFields(r: LinuxResources): boolean {
  const c = r.cpu!;
  return [c.shares, c.quota, c.period, c.burst, c.realtimeRuntime, c.realtimePeriod, c.idle].some((v) => v !== undefined);
}

/**
 * A parent directory we made (/nano-kata-test, say) may be shared with other
 * containers created meanwhile: busy or gone is fine, it is theirs now.
 */
function removeSharedParent(dir: string): void {
  try {
    rmdirSync(dir);
  } catch (error) {
    const code = errnoCode(error);
    if (code === "ENOENT" || code === "EBUSY" || code === "ENOTEMPTY") return;
    throw new CgroupError("cgroup-remove-failed", `rmdir ${dir} failed: ${code ?? (error as Error).message}`, code);
  }
}
