/**
 * Rootless containers: the facts and checks that apply when nk-runtime runs
 * as a user other than root. The planner (src/plan/build.ts) turns the facts
 * into id-map ops; this module gathers them and decides what the runtime
 * itself does differently (state directory, cgroups).
 *
 * What changes for a rootless caller:
 *   - the container must have a user namespace (`nk-runtime spec --rootless`);
 *   - the id maps are the caller's own uid/gid, written by stage0 with
 *     setgroups denied, or subuid/subgid ranges written by newuidmap/newgidmap;
 *   - cgroups are used only where the caller may write (a delegated subtree);
 *     otherwise the container stays in the caller's cgroup, and limits in
 *     linux.resources are refused, naming the field (runc's rule);
 *   - state lives under $XDG_RUNTIME_DIR/nano-kata, else /tmp/nano-kata-<uid>,
 *     which must then be the caller's own directory (assertPrivateStateRoot).
 */
import { accessSync, constants as fsConstants, lstatSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { delimiter } from "node:path";
import type { CallerFacts } from "../plan/build.ts";
import type { LinuxResources } from "../spec/types.ts";
import { NanoKataError } from "../util/errors.ts";

export class RootlessError extends NanoKataError {}

/** Who runs the runtime, and which id-map helpers it could use. */
export function callerFacts(): CallerFacts {
  const euid = process.geteuid?.() ?? 0;
  const egid = process.getegid?.() ?? 0;
  if (euid === 0) return { rootless: false, euid, egid };
  return { rootless: true, euid, egid, newuidmap: findExecutable("newuidmap"), newgidmap: findExecutable("newgidmap") };
}

/** name in $PATH or the usual system directories (Debian's uidmap installs to /usr/bin). */
export function findExecutable(name: string, pathEnv = process.env.PATH ?? ""): string | undefined {
  const dirs = [...pathEnv.split(delimiter), "/usr/bin", "/usr/sbin", "/bin", "/sbin"].filter((d) => d.startsWith("/"));
  for (const dir of dirs) {
    const candidate = `${dir}/${name}`;
    try {
      if (!statSync(candidate).isFile()) continue;
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Where src/cli/main.ts keeps a non-root caller's state without
 * $XDG_RUNTIME_DIR. runc falls back to /run/runc there, which a user cannot
 * create, so `runc` fails; nano-kata uses this directory instead (a shell
 * without a login session -- su, runuser, cron -- still works), and checks
 * its ownership before trusting it (assertPrivateStateRoot).
 */
export function tmpStateRoot(uid: number): string {
  return `/tmp/nano-kata-${uid}`;
}

/**
 * Make sure a rootless caller's state root is its own: created now with
 * mode 0700, or an existing real directory owned by the caller that nobody
 * else may write. In a shared directory such as /tmp another user could
 * otherwise create it first and feed us state files (pids to signal, paths
 * to remove) of their choosing.
 */
export function assertPrivateStateRoot(root: string, uid: number): void {
  try {
    mkdirSync(root, { mode: 0o700 });
    return;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      mkdirSync(root, { recursive: true, mode: 0o700 });
      return;
    }
    if (code !== "EEXIST") throw e;
  }
  const st = lstatSync(root);
  if (!st.isDirectory()) throw new RootlessError("state-root-unsafe", `state directory ${root} is not a directory (a symlink?): refusing to use it`);
  if (st.uid !== uid) {
    throw new RootlessError("state-root-unsafe", `state directory ${root} belongs to uid ${st.uid}, not to uid ${uid}: refusing to use it (pass --root, or set XDG_RUNTIME_DIR)`);
  }
  if (st.mode & 0o022) {
    throw new RootlessError("state-root-unsafe", `state directory ${root} is writable by other users (mode ${(st.mode & 0o777).toString(8)}): refusing to use it`);
  }
}

/**
 * The linux.resources fields that ask for a limit, by JSON path. Device
 * rules are not among them: a rootless container can only use devices bound
 * from the host, which the caller can already open, and runc ignores device
 * cgroup errors for rootless containers too.
 */
export function requestedLimits(resources: LinuxResources | undefined): string[] {
  const fields: string[] = [];
  for (const [key, value] of Object.entries(resources ?? {})) {
    if (key === "devices" || value === undefined || value === null) continue;
    const asks = Array.isArray(value) ? value.length > 0 : typeof value === "object" ? Object.values(value).some((v) => v !== undefined && v !== null) : true;
    if (asks) fields.push(`linux.resources.${key}`);
  }
  return fields;
}

/**
 * Without a cgroup of its own the container cannot have limits. runc, when
 * a rootless container's cgroup cannot be made: "cannot set <x> limit:
 * container could not join or create cgroup". The same, naming the field.
 */
export function refuseLimitsWithoutCgroup(resources: LinuxResources | undefined, blockedDir: string, uid: number): void {
  const fields = requestedLimits(resources);
  if (fields.length === 0) return;
  throw new RootlessError(
    "rootless-cgroup-unavailable",
    `${fields[0]}: cannot set limits: the container could not create its cgroup (${blockedDir} is not writable by uid ${uid}: not delegated)` +
      (fields.length > 1 ? `; also ${fields.slice(1).join(", ")}` : ""),
  );
}

/** linux.resources without the device rules, which a rootless caller cannot write (v1 devices.allow needs CAP_SYS_ADMIN). */
export function withoutDeviceRules(resources: LinuxResources | undefined): LinuxResources | undefined {
  if (!resources?.devices) return resources;
  const { devices: _devices, ...rest } = resources;
  return rest;
}

/** /proc/<pid>/setgroups of a running container's init: "deny" in a rootless container with only the caller's gid mapped. */
export function setgroupsDenied(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/setgroups`, "utf8").trim() === "deny";
  } catch {
    return false;
  }
}
