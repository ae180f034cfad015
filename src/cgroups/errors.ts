import { NanoKataError } from "../util/errors.ts";

/**
 * Stable codes of the cgroups area. The CLI and tests branch on these, never
 * on message text.
 */
export type CgroupErrorCode =
  /** /proc/self/mountinfo shows no cgroup or cgroup2 mount at all. */
  | "cgroup-unavailable"
  /** linux.cgroupsPath is "slice:prefix:name": the --systemd-cgroup driver is not implemented yet. */
  | "cgroup-systemd-unsupported"
  /** linux.cgroupsPath (or a saved state) names a path we refuse to use ("..", the hierarchy root). */
  | "cgroup-path-invalid"
  /** The target cgroup already exists and holds processes. */
  | "cgroup-not-empty"
  /** mkdir of a cgroup directory (or preparing it, e.g. cpuset, subtree_control) failed. */
  | "cgroup-create-failed"
  /** Writing a pid into cgroup.procs failed. */
  | "cgroup-join-failed"
  /** The spec asks for a resource this host cannot apply (controller or control file missing). */
  | "cgroup-resource-unsupported"
  /** The spec value itself is unusable (swap below limit, bad page size, bad device rule ...). */
  | "cgroup-resource-invalid"
  /** The kernel rejected a control-file write. */
  | "cgroup-write-failed"
  /** No freezer: neither a v1 freezer hierarchy nor cgroup.freeze on v2. */
  | "cgroup-freezer-unavailable"
  /** The cgroup did not reach FROZEN in time (it was thawed again). */
  | "cgroup-freeze-failed"
  /** destroy: processes remain after waiting, so the cgroup cannot be removed. */
  | "cgroup-busy"
  /** destroy: rmdir failed for another reason. */
  | "cgroup-remove-failed"
  /** A saved cgroup record (state file) is malformed or points outside the cgroup root. */
  | "cgroup-state-invalid"
  /** bpf(2) refused to load, attach, query or detach the cgroup v2 device program (errno set). */
  | "cgroup-bpf-failed"
  /** An eBPF program the test interpreter (ebpf-interpret.ts) refuses, as the kernel's verifier would. */
  | "cgroup-bpf-invalid";

/** The one error class of the cgroups area. */
export class CgroupError extends NanoKataError {
  declare readonly code: CgroupErrorCode;
  /** The errno name behind a failed write or rmdir ("EINVAL", "EBUSY"), when there was one. */
  readonly errno?: string;

  constructor(code: CgroupErrorCode, message: string, errno?: string) {
    super(code, message);
    if (errno !== undefined) this.errno = errno;
  }
}

/** The errno name of a Node fs error ("ENOENT"), or undefined for anything else. */
export function errnoCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}
