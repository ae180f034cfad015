/**
 * Where in each hierarchy a container's cgroup lives, from linux.cgroupsPath.
 *
 * runtime-spec config-linux.md "Cgroups Path": an absolute path is relative
 * to the cgroup mount point (the hierarchy root); a relative one is relative
 * to "a runtime-determined location", which runc (and nano-kata) take as the
 * calling process's own cgroup in that hierarchy. No path at all gets a
 * runtime default, here /nano-kata/<id>.
 */
import { readFileSync } from "node:fs";
import { posix } from "node:path";
import { CgroupError } from "./errors.ts";

/** /proc/<pid>/cgroup, parsed: the process's cgroup path in each hierarchy. */
export interface SelfCgroup {
  /** v1 controller (each one of a co-mounted pair, and "name=systemd") -> path. */
  v1: Map<string, string>;
  /** The "0::/path" line of cgroup v2, if any. */
  unified?: string;
}

/** Parses /proc/<pid>/cgroup ("hierarchy-ID:controller-list:cgroup-path" per line, cgroups(7)). */
export function parseSelfCgroup(text: string): SelfCgroup {
  const result: SelfCgroup = { v1: new Map() };
  for (const line of text.split("\n")) {
    const first = line.indexOf(":");
    const second = line.indexOf(":", first + 1);
    if (first < 0 || second < 0) continue;
    const hierarchyId = line.slice(0, first);
    const controllers = line.slice(first + 1, second);
    // The kernel appends " (deleted)" when the cgroup was removed under us.
    const path = line.slice(second + 1).replace(/ \(deleted\)$/, "");
    if (hierarchyId === "0" && controllers === "") {
      result.unified = path;
      continue;
    }
    for (const controller of controllers.split(",")) {
      if (controller !== "") result.v1.set(controller, path);
    }
  }
  return result;
}

export function readSelfCgroup(): SelfCgroup {
  return parseSelfCgroup(readFileSync("/proc/self/cgroup", "utf8"));
}

/**
 * Gives the container's cgroup path inside one hierarchy (always starting with
 * "/", relative to that hierarchy's mount point). `hierarchy` is a v1
 * controller name or "unified"; `mountRoot` is the mount's root (mountinfo
 * field 4), which a relative path's base is taken relative to.
 */
export type CgroupPathResolver = (hierarchy: string, mountRoot?: string) => string;

/** The default cgroup of a container when config.json names none. */
export const DEFAULT_CGROUP_PARENT = "/nano-kata";

/** runc's --systemd-cgroup form "slice:prefix:name" (three parts, no slash). */
const SYSTEMD_STYLE = /^[^/:]*:[^/:]*:[^/:]*$/;

export function isSystemdCgroupsPath(cgroupsPath: string): boolean {
  return SYSTEMD_STYLE.test(cgroupsPath);
}

/**
 * The validated components of a cgroup path. ".." is refused rather than
 * normalized: a config.json must not be able to climb out of the hierarchy or
 * out of the runtime's own cgroup into a sibling's (path traversal, the same
 * class of bug as CVE-2021-30465 for mounts).
 */
function cgroupPathComponents(path: string, field: string): string[] {
  if (path.includes("\0")) {
    throw new CgroupError("cgroup-path-invalid", `${field}: ${JSON.stringify(path)} contains a NUL byte`);
  }
  const components = path.split("/").filter((c) => c !== "" && c !== ".");
  if (components.includes("..")) {
    throw new CgroupError("cgroup-path-invalid", `${field}: ${JSON.stringify(path)} must not contain ".." components`);
  }
  return components;
}

function stripMountRoot(selfPath: string, mountRoot: string): string {
  if (mountRoot === "/" || mountRoot === "") return selfPath;
  if (selfPath === mountRoot) return "/";
  if (selfPath.startsWith(mountRoot + "/")) return selfPath.slice(mountRoot.length);
  return selfPath;
}

export function resolveCgroupPath(
  cgroupsPath: string | undefined,
  id: string,
  selfCgroup?: SelfCgroup | (() => SelfCgroup),
): CgroupPathResolver {
  const field = "linux.cgroupsPath";
  if (cgroupsPath === undefined || cgroupsPath === "") {
    const idParts = cgroupPathComponents(id, "container id");
    if (idParts.length !== 1 || idParts[0] !== id) {
      throw new CgroupError("cgroup-path-invalid", `container id ${JSON.stringify(id)} cannot name a cgroup directory`);
    }
    const path = `${DEFAULT_CGROUP_PARENT}/${id}`;
    return () => path;
  }
  if (isSystemdCgroupsPath(cgroupsPath)) {
    throw new CgroupError(
      "cgroup-systemd-unsupported",
      `${field}: ${JSON.stringify(cgroupsPath)} is a systemd "slice:prefix:name" path; ` +
        "the --systemd-cgroup driver is not supported yet, use a plain path such as /mygroup/" + id,
    );
  }
  const components = cgroupPathComponents(cgroupsPath, field);
  if (cgroupsPath.startsWith("/")) {
    if (components.length === 0) {
      throw new CgroupError("cgroup-path-invalid", `${field}: ${JSON.stringify(cgroupsPath)} names the hierarchy root itself`);
    }
    const path = "/" + components.join("/");
    return () => path;
  }
  if (components.length === 0) {
    // "." would be the caller's own cgroup: the container's delete would then
    // kill the caller and everything beside it.
    throw new CgroupError("cgroup-path-invalid", `${field}: ${JSON.stringify(cgroupsPath)} names the runtime's own cgroup`);
  }
  // Relative: under our own cgroup in each hierarchy, which can differ per
  // hierarchy (on this kind of host, memory may sit deeper than the rest).
  let self: SelfCgroup | undefined;
  return (hierarchy, mountRoot = "/") => {
    self ??= typeof selfCgroup === "function" ? selfCgroup() : (selfCgroup ?? readSelfCgroup());
    const own = (hierarchy === "unified" ? self.unified : self.v1.get(hierarchy)) ?? "/";
    return posix.join("/", stripMountRoot(own, mountRoot), ...components);
  };
}
