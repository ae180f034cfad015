/**
 * cgroups: one interface over cgroup v1, v2 and hybrid hosts.
 *
 *   openCgroupManager   spec + host layout -> a manager for a new container
 *   reopenCgroupManager state file record -> the same manager again
 *
 * Nothing here runs at import time; the host is read only when a manager is
 * opened (keeps CLI start-up lean).
 */
import { accessSync, constants as fsConstants, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import type { LinuxResources } from "../spec/types.ts";
import { detectCgroupLayout, v2DrivenControllers, type CgroupLayout } from "./detect.ts";
import { CgroupError } from "./errors.ts";
import { HierarchyCgroupManager, type ManagerOptions } from "./manager.ts";
import { parseSelfCgroup, readSelfCgroup, resolveCgroupPath, type CgroupPathResolver } from "./path.ts";
import type { CgroupStats } from "./stats.ts";

export { CgroupError, type CgroupErrorCode } from "./errors.ts";
export { detectCgroupLayout, parseMountInfo, v2DrivenControllers, type CgroupLayout, type CgroupLayoutKind } from "./detect.ts";
export { parseSelfCgroup, resolveCgroupPath, DEFAULT_CGROUP_PARENT, type SelfCgroup, type CgroupPathResolver } from "./path.ts";
export { deviceRulesToV1Writes, DEFAULT_ALLOWED_DEVICE_RULES, type DeviceWrite } from "./devices.ts";
export { compileDeviceProgram, emulateDeviceCgroup, type DeviceProgram, type DeviceCgroupModel } from "./devices-ebpf.ts";
export { bpfSyscalls, type BpfSyscalls, type BpfProgramInfo } from "./bpf-syscall.ts";
export { cpuSharesToWeight, blkioWeightToIoWeight, memorySwapToV2 } from "./convert.ts";
export type { ControlWrite, ControlWriteTracer } from "./control-files.ts";
export type { CgroupStats } from "./stats.ts";

export interface CgroupManager {
  /** Controller (each of a co-mounted pair, "name=systemd") or "unified" -> absolute directory. */
  readonly paths: Record<string, string>;
  /**
   * mkdir -p the container's directory in every hierarchy (cpuset lists
   * copied, v2 controllers enabled in the ancestors). Throws cgroup-not-empty,
   * touching nothing, if a directory already holds processes. Remembers which
   * directories it made so destroy removes exactly those.
   */
  create(): void;
  /** Moves pid into the cgroup of every hierarchy (cgroup.procs). */
  addProcess(pid: number): void;
  /** Pids in the cgroup and below it, read from one hierarchy (pids, freezer, memory or unified). */
  processes(): number[];
  /** Writes linux.resources; `update` for `runc update` (only the given fields change). */
  applyResources(resources: LinuxResources | undefined, opts?: { update?: boolean }): void;
  freeze(): void;
  thaw(): void;
  state(): "frozen" | "thawed";
  /** Usage figures shaped like `runc events --stats` data. */
  stats(): CgroupStats;
  /** How many processes the OOM killer has killed in this cgroup. */
  oomKillCount(): number;
  /** Sends signal to every process of the cgroup. */
  killAll(signal: number): void;
  /**
   * Waits (about a second) for the cgroup to empty, then removes the
   * directories create() made, deepest first. Throws cgroup-busy if processes
   * remain.
   */
  destroy(): void;
  /** What a state file keeps to reopen this manager later. */
  toJSON(): SavedCgroup;
}

/** One hierarchy of a container's cgroup, as saved in the state file. */
export interface SavedHierarchy {
  driver: "v1" | "v2";
  /** The hierarchy's mount point. */
  mountpoint: string;
  /** The container's directory in it. */
  dir: string;
  /** v1: the controllers mounted there ("name=systemd" for a named hierarchy); v2: those this manager drives there. */
  controllers: string[];
}

export interface SavedCgroup {
  version: 1;
  hierarchies: SavedHierarchy[];
  /** Directories the manager made (or, saved before create(), is about to make). */
  created: string[];
}

export const DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup";

export interface OpenCgroupOptions extends ManagerOptions {
  /** linux.cgroupsPath. */
  cgroupsPath?: string;
  /** Container id (names the default cgroup). */
  id: string;
  /** Host layout; default: detected from /proc/self/mountinfo. */
  layout?: CgroupLayout;
  /** Where the hierarchies under /sys/fs/cgroup are (tests pass a temp dir laid out like it). */
  root?: string;
  /** Text of /proc/self/cgroup (read only for a relative cgroupsPath). */
  selfCgroup?: string;
}

export interface ReopenCgroupOptions extends ManagerOptions {
  /** Every saved path must lie under this root (default /sys/fs/cgroup). */
  root?: string;
}

/** A mount point under /sys/fs/cgroup, moved under `root` when tests substitute one. */
function rebaseMountpoint(mountpoint: string, root: string): string {
  if (root === DEFAULT_CGROUP_ROOT) return mountpoint;
  if (mountpoint === DEFAULT_CGROUP_ROOT) return root;
  if (mountpoint.startsWith(DEFAULT_CGROUP_ROOT + "/")) return join(root, mountpoint.slice(DEFAULT_CGROUP_ROOT.length));
  return join(root, mountpoint);
}

export function openCgroupManager(opts: OpenCgroupOptions): CgroupManager {
  const layout = opts.layout ?? detectCgroupLayout();
  const root = opts.root ?? DEFAULT_CGROUP_ROOT;
  const resolve = resolveCgroupPath(opts.cgroupsPath, opts.id, () =>
    opts.selfCgroup !== undefined ? parseSelfCgroup(opts.selfCgroup) : readSelfCgroup(),
  );
  return new HierarchyCgroupManager(layoutHierarchies(layout, root, resolve), undefined, opts);
}

/** One hierarchy per v1 mount point (its controllers in the order met) plus cgroup2, with the directory `resolve` picks in each. */
function layoutHierarchies(layout: CgroupLayout, root: string, resolve: CgroupPathResolver): SavedHierarchy[] {
  const hierarchies: SavedHierarchy[] = [];
  // One hierarchy per v1 mount point, its controllers in the order met.
  const byMount = new Map<string, string[]>();
  for (const [controller, mountpoint] of layout.v1) {
    const list = byMount.get(mountpoint) ?? [];
    list.push(controller);
    byMount.set(mountpoint, list);
  }
  for (const [mountpoint, controllers] of byMount) {
    const cgroupPath = resolve(controllers[0]!, layout.mountRoots.get(mountpoint) ?? "/");
    const base = rebaseMountpoint(mountpoint, root);
    hierarchies.push({ driver: "v1", mountpoint: base, dir: join(base, cgroupPath), controllers });
  }
  if (layout.v2Mount !== undefined) {
    const cgroupPath = resolve("unified", layout.mountRoots.get(layout.v2Mount) ?? "/");
    const base = rebaseMountpoint(layout.v2Mount, root);
    hierarchies.push({ driver: "v2", mountpoint: base, dir: join(base, cgroupPath), controllers: v2DrivenControllers(layout) });
  }
  return hierarchies;
}

/**
 * The caller's own cgroup directory in every hierarchy, keyed like
 * CgroupManager.paths: where a container stays when the runtime cannot give
 * it a cgroup (rootless, not delegated), and what its `cgroup` mounts show.
 */
export function ownCgroupPaths(opts: Pick<OpenCgroupOptions, "layout" | "root" | "selfCgroup"> = {}): Record<string, string> {
  const layout = opts.layout ?? detectCgroupLayout();
  const self = opts.selfCgroup !== undefined ? parseSelfCgroup(opts.selfCgroup) : readSelfCgroup();
  const resolve: CgroupPathResolver = (hierarchy, mountRoot = "/") => {
    const own = (hierarchy === "unified" ? self.unified : self.v1.get(hierarchy)) ?? "/";
    // Inside a container without a cgroup namespace, paths are relative to the mount's root.
    if (mountRoot === "/" || mountRoot === "") return own;
    if (own === mountRoot) return "/";
    return own.startsWith(mountRoot + "/") ? own.slice(mountRoot.length) : own;
  };
  const paths: Record<string, string> = {};
  for (const h of layoutHierarchies(layout, opts.root ?? DEFAULT_CGROUP_ROOT, resolve)) {
    if (h.driver === "v2") paths.unified = h.dir;
    else for (const controller of h.controllers) paths[controller] = h.dir;
  }
  return paths;
}

/**
 * For a caller that is not root: the first of a container's cgroup
 * directories it could not make or use, or undefined when all of them are
 * delegated to it. A directory that exists must let it write cgroup.procs;
 * one that does not must have a nearest existing ancestor it may write
 * (mkdir). cgroup v1 hierarchies and a cgroup2 tree outside the user's
 * systemd delegation are root's: there the answer is the hierarchy's
 * directory the caller cannot write.
 */
export function undelegatedCgroupDir(paths: Record<string, string>): string | undefined {
  for (const dir of new Set(Object.values(paths))) {
    if (existsSync(dir)) {
      if (!writable(join(dir, "cgroup.procs"))) return dir;
      continue;
    }
    let ancestor = dirname(dir);
    while (ancestor !== "/" && !existsSync(ancestor)) ancestor = dirname(ancestor);
    if (!writable(ancestor)) return ancestor;
  }
  return undefined;
}

function writable(path: string): boolean {
  try {
    accessSync(path, fsConstants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function isUnder(path: string, base: string): boolean {
  return path.startsWith(base === "/" ? "/" : base + "/");
}

function isCleanAbsolute(path: unknown): path is string {
  return typeof path === "string" && path.startsWith("/") && !path.includes("\0") && !path.split("/").some((c) => c === ".." || c === ".") && !path.includes("//");
}

/**
 * Rebuilds a manager from a state file record. The record is checked first:
 * a tampered state file must not make `delete` rmdir (or `update` write)
 * outside the container's own cgroup directories.
 */
export function reopenCgroupManager(saved: SavedCgroup, opts: ReopenCgroupOptions = {}): CgroupManager {
  const root = opts.root ?? DEFAULT_CGROUP_ROOT;
  const invalid = (why: string): CgroupError => new CgroupError("cgroup-state-invalid", `saved cgroup record: ${why}`);
  if (saved === null || typeof saved !== "object" || saved.version !== 1 || !Array.isArray(saved.hierarchies) || !Array.isArray(saved.created)) {
    throw invalid("not a version 1 record");
  }
  const hierarchies: SavedHierarchy[] = [];
  for (const h of saved.hierarchies) {
    if ((h.driver !== "v1" && h.driver !== "v2") || !isCleanAbsolute(h.mountpoint) || !isCleanAbsolute(h.dir)) {
      throw invalid(`bad hierarchy ${JSON.stringify(h)}`);
    }
    if (!(h.mountpoint === root || isUnder(h.mountpoint, root)) || !isUnder(h.dir, h.mountpoint)) {
      throw invalid(`${h.dir} is not inside a cgroup hierarchy under ${root}`);
    }
    if (!Array.isArray(h.controllers) || !h.controllers.every((c) => typeof c === "string")) {
      throw invalid(`bad controller list for ${h.dir}`);
    }
    hierarchies.push({ driver: h.driver, mountpoint: h.mountpoint, dir: h.dir, controllers: [...h.controllers] });
  }
  for (const dir of saved.created) {
    // Only the container's directories or their ancestors below a mount point.
    const ok = isCleanAbsolute(dir) && hierarchies.some((h) => isUnder(dir, h.mountpoint) && (dir === h.dir || isUnder(h.dir, dir)));
    if (!ok) throw invalid(`${JSON.stringify(dir)} is not one of the container's cgroup directories`);
  }
  return new HierarchyCgroupManager(hierarchies, saved.created, opts);
}

