/**
 * Which cgroup hierarchies this host has, read from /proc/self/mountinfo
 * (proc(5) documents the format):
 *
 *   36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
 *   (1)(2) (3)  (4)   (5)     (6)       (7)    (8) (9)   (10)       (11)
 *
 * (4) is the mount's root inside its filesystem, (5) the mount point, (7) zero
 * or more optional fields ended by "-", (9) the filesystem type and (11) the
 * super-block options, which for a v1 cgroup mount list its controllers.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CgroupError, errnoCode } from "./errors.ts";

export type CgroupLayoutKind = "v1" | "v2" | "hybrid";

export interface CgroupLayout {
  /** v1: only cgroup (v1) mounts; v2: only cgroup2; hybrid: both (v1 drives what it mounts). */
  kind: CgroupLayoutKind;
  /**
   * v1 controller -> mount point. A co-mounted hierarchy ("cpu,cpuacct") maps
   * each controller to the same mount point; a named hierarchy maps
   * "name=systemd".
   */
  v1: Map<string, string>;
  /** Where cgroup2 is mounted (/sys/fs/cgroup on a pure v2 host, .../unified on hybrid). */
  v2Mount?: string;
  /** Controllers listed in the cgroup2 mount's cgroup.controllers. */
  v2Controllers: string[];
  /**
   * Mount point -> the mount's root inside its hierarchy (field 4). Usually
   * "/"; inside a container without a cgroup namespace it is the container's
   * own cgroup, and paths from /proc/self/cgroup must be taken relative to it.
   */
  mountRoots: Map<string, string>;
}

export interface DetectOptions {
  /** Text of /proc/self/mountinfo (tests pass a fixture). */
  mountinfo?: string;
  /** Text of the cgroup2 mount's cgroup.controllers (default: read it from the mount). */
  v2Controllers?: string;
}

/** One line of mountinfo, reduced to what cgroup detection needs. */
export interface MountInfoEntry {
  root: string;
  mountPoint: string;
  fsType: string;
  superOptions: string[];
}

/**
 * Super-block options of a v1 cgroup mount that are flags, not controllers
 * (cgroups(7), kernel/cgroup/cgroup-v1.c parse_cgroup_root_flags).
 */
const V1_NON_CONTROLLER_OPTIONS = new Set([
  "rw",
  "ro",
  "none",
  "all",
  "noprefix",
  "clone_children",
  "xattr",
  "cpuset_v2_mode",
  "favordynmods",
]);

/** Undo mountinfo's octal escapes of space, tab, newline and backslash ("\040"). */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

export function parseMountInfo(text: string): MountInfoEntry[] {
  const entries: MountInfoEntry[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const fields = line.split(" ");
    const separator = fields.indexOf("-", 6);
    if (separator < 0 || fields.length < separator + 4) continue;
    entries.push({
      root: unescapeMountField(fields[3]!),
      mountPoint: unescapeMountField(fields[4]!),
      fsType: fields[separator + 1]!,
      superOptions: fields[separator + 3]!.split(","),
    });
  }
  return entries;
}

/** The controllers (and "name=X") a v1 cgroup mount carries, from its super options. */
export function v1ControllersOf(superOptions: string[]): string[] {
  return superOptions.filter((option) => {
    if (option.startsWith("name=")) return true;
    if (option.includes("=")) return false; // release_agent=..., and other valued flags
    return !V1_NON_CONTROLLER_OPTIONS.has(option);
  });
}

export function detectCgroupLayout(opts: DetectOptions = {}): CgroupLayout {
  const mountinfo = opts.mountinfo ?? readFileSync("/proc/self/mountinfo", "utf8");
  const v1 = new Map<string, string>();
  const mountRoots = new Map<string, string>();
  let v2Mount: string | undefined;

  // The first mount of a hierarchy wins: later ones are usually bind mounts of
  // the same hierarchy (for instance into a container) and add nothing.
  for (const entry of parseMountInfo(mountinfo)) {
    if (entry.fsType === "cgroup2") {
      if (v2Mount === undefined) {
        v2Mount = entry.mountPoint;
        mountRoots.set(entry.mountPoint, entry.root);
      }
    } else if (entry.fsType === "cgroup") {
      const controllers = v1ControllersOf(entry.superOptions);
      if (controllers.length === 0 || controllers.some((c) => v1.has(c))) continue;
      for (const controller of controllers) v1.set(controller, entry.mountPoint);
      mountRoots.set(entry.mountPoint, entry.root);
    }
  }

  if (v1.size === 0 && v2Mount === undefined) {
    throw new CgroupError("cgroup-unavailable", "no cgroup or cgroup2 filesystem is mounted (see /proc/self/mountinfo)");
  }

  let v2Controllers: string[] = [];
  if (v2Mount !== undefined) {
    let text = opts.v2Controllers;
    if (text === undefined) {
      try {
        text = readFileSync(join(v2Mount, "cgroup.controllers"), "utf8");
      } catch (error) {
        if (errnoCode(error) !== "ENOENT") throw error;
        text = "";
      }
    }
    v2Controllers = text.split(/\s+/).filter((c) => c !== "");
  }

  const kind: CgroupLayoutKind = v2Mount === undefined ? "v1" : v1.size === 0 ? "v2" : "hybrid";
  return { kind, v1, v2Mount, v2Controllers, mountRoots };
}

/**
 * The v2 controllers the unified hierarchy should drive. Pure v2: all of
 * them. Hybrid: only those that no v1 hierarchy already drives (a controller
 * can be attached to one hierarchy at a time, so on this kind of host that is
 * typically just hugetlb).
 */
export function v2DrivenControllers(layout: CgroupLayout): string[] {
  if (layout.v2Mount === undefined) return [];
  if (layout.kind === "v2") return [...layout.v2Controllers];
  // The kernel already leaves controllers bound to a v1 hierarchy out of
  // cgroup.controllers; filtering again keeps a stale or hand-written list honest.
  // (blkio is the io subsystem under its v1 name; cpuacct is its own subsystem.)
  const takenByV1 = new Set([...layout.v1.keys()].map((c) => (c === "blkio" ? "io" : c)));
  return layout.v2Controllers.filter((c) => !takenByV1.has(c));
}
