/**
 * spec + host facts -> ExecPlan. Pure: it reads nothing from the host itself
 * (the caller passes facts in), so every decision the runtime makes about a
 * container is visible here and golden-testable. Every op records the
 * config.json field (or CLI flag) that caused it; `--trace` prints that.
 */
import type { Hook, LinuxDevice, Mount, Process, Spec } from "../spec/types.ts";
import { capabilityNumber } from "../spec/capabilities.ts";
import { rlimitNumber } from "../spec/rlimits.ts";
import { CLONE, MS, NAMESPACES } from "./constants.ts";
import { parseMountOptions } from "./mount-options.ts";
import { CHILD_PID_PLACEHOLDER, OpCode, Section, type PlanOp } from "./ops.ts";
import { PlanError } from "./errors.ts";

/** One cgroup hierarchy as the container should see it at a `cgroup` mount. */
export interface CgroupMountSource {
  /** Directory name under the mount destination ("memory", "cpu,cpuacct", "systemd"); "" for cgroup2 mounted at the destination itself. */
  dirName: string;
  fstype: "cgroup" | "cgroup2";
  /** Mount data with a cgroup namespace, e.g. "memory" or "none,name=systemd". */
  data: string;
  /** The container's own cgroup directory on the host, bind-mounted when there is no cgroup namespace. */
  hostPath: string;
}

/**
 * Who runs the runtime, for user namespace id maps (src/linux/rootless.ts
 * gathers it). The kernel lets a process without CAP_SETUID/CAP_SETGID in
 * the parent namespace write only a one-line map of its own effective id,
 * and a gid map only after "deny" went to /proc/<pid>/setgroups
 * (user_namespaces(7)); other ranges need the setuid helpers.
 */
export interface CallerFacts {
  /** Not root (effective uid != 0): rootless rules apply. */
  rootless: boolean;
  euid: number;
  egid: number;
  /** Absolute paths of newuidmap/newgidmap (Debian package uidmap), when installed. */
  newuidmap?: string;
  newgidmap?: string;
}

export const ROOT_CALLER: CallerFacts = { rootless: false, euid: 0, egid: 0 };

/** Which Linux security modules the host enforces (src/linux/lsm.ts detects them). */
export interface LsmFacts {
  apparmor: boolean;
  /**
   * Where AppArmor takes "exec <profile>", below /proc/self/attr:
   * "apparmor/exec" (the per-LSM directory, Linux 5.8+) or the older shared
   * "exec".
   */
  apparmorExecAttr: "apparmor/exec" | "exec";
  selinux: boolean;
}

export const NO_LSM: LsmFacts = { apparmor: false, apparmorExecAttr: "exec", selinux: false };

export interface PlanInput {
  spec: Spec;
  /** Absolute bundle directory (relative bind sources resolve against it). */
  bundle: string;
  /** Absolute, symlink-free rootfs path. */
  rootfs: string;
  /** Where create made the exec fifo (the container's state directory). */
  fifoDir: string;
  /** The fifo's name in fifoDir (default exec.fifo; a VM's guest holds one per container of a pod). */
  fifoName?: string;
  consoleSocket?: string;
  noPivot: boolean;
  noNewKeyring: boolean;
  preserveFds: number;
  /** Keep stage0 as the container's parent (foreground `run`) instead of exiting (create). */
  foreground: boolean;
  containerId: string;
  cgroupMounts: CgroupMountSource[];
  seccomp?: CompiledSeccompFilter;
  /** Host fact: is this bind source a directory (else the target is created as a file)? */
  isDirectory: (hostPath: string) => boolean;
  /** Host fact: who runs the runtime (default: root). */
  caller?: CallerFacts;
  /** Host fact: enforcing LSMs (default: none). */
  lsm?: LsmFacts;
}

const DEFAULT_DEVICES: Array<{ path: string; major: number; minor: number }> = [
  { path: "/dev/null", major: 1, minor: 3 },
  { path: "/dev/zero", major: 1, minor: 5 },
  { path: "/dev/full", major: 1, minor: 7 },
  { path: "/dev/random", major: 1, minor: 8 },
  { path: "/dev/urandom", major: 1, minor: 9 },
  { path: "/dev/tty", major: 5, minor: 0 },
];

const DEV_SYMLINKS: Array<[target: string, link: string]> = [
  ["/proc/self/fd", "/dev/fd"],
  ["/proc/self/fd/0", "/dev/stdin"],
  ["/proc/self/fd/1", "/dev/stdout"],
  ["/proc/self/fd/2", "/dev/stderr"],
];

const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export class PlanBuilder {
  readonly ops: PlanOp[] = [];
  add(section: Section, code: OpCode, args: (string | number | Uint8Array)[], source: string): void {
    this.ops.push({ code, section, source, args: args.map((a) => (typeof a === "number" ? String(a) : a)) });
  }
  pre(code: OpCode, args: (string | number | Uint8Array)[], source: string): void {
    this.add(Section.Pre, code, args, source);
  }
  parent(code: OpCode, args: (string | number | Uint8Array)[], source: string): void {
    this.add(Section.Parent, code, args, source);
  }
  init(code: OpCode, args: (string | number | Uint8Array)[], source: string): void {
    this.add(Section.Init, code, args, source);
  }
}

export interface ContainerPlan {
  ops: PlanOp[];
  /** Clone flags of the namespaces the container gets fresh. */
  cloneFlags: number;
  terminal: "none" | "socket" | "monitor";
  /** Notes for --debug/--trace: options accepted but not acted upon. */
  notes: string[];
}

export function buildContainerPlan(input: PlanInput): ContainerPlan {
  const { spec, rootfs } = input;
  const process = spec.process!;
  const b = new PlanBuilder();
  const notes: string[] = [];
  const namespaces = spec.linux?.namespaces ?? [];
  const nsIndex = (type: string) => namespaces.findIndex((n) => n.type === type);
  const isNew = (type: keyof typeof NAMESPACES) => {
    const i = nsIndex(type);
    return i >= 0 && !namespaces[i]!.path;
  };
  const hasNs = (type: keyof typeof NAMESPACES) => nsIndex(type) >= 0;
  if (!hasNs("mount")) {
    throw new PlanError("mount-ns-required", "linux.namespaces: a mount namespace is required (nano-kata sets up the rootfs inside it)");
  }
  const userNs = hasNs("user");
  const caller = input.caller ?? ROOT_CALLER;
  if (caller.rootless && !userNs) {
    throw new PlanError(
      "rootless-user-ns-required",
      `linux.namespaces: nk-runtime runs as uid ${caller.euid}, not root, so the container needs a user namespace (\`nk-runtime spec --rootless\` writes one)`,
    );
  }
  const lsm = input.lsm ?? NO_LSM;
  assertLsmAvailable(process, spec.linux?.mountLabel, lsm);
  const mountLabel = lsm.selinux ? spec.linux?.mountLabel || undefined : undefined;

  // ---- Pre: host-side preparations, then join existing namespaces ----
  b.pre(OpCode.FIFO_PREPARE, [input.fifoDir, input.fifoName ?? "exec.fifo"], "create (exec fifo: start releases the container)");
  const terminal: ContainerPlan["terminal"] = process.terminal
    ? input.consoleSocket
      ? "socket"
      : input.foreground
        ? "monitor"
        : "none"
    : "none";
  if (process.terminal && terminal === "none") {
    throw new PlanError("console-socket-required", "process.terminal: cannot allocate a terminal for a detached container without --console-socket");
  }
  if (terminal === "socket") b.pre(OpCode.CONNECT_CONSOLE, [input.consoleSocket!], "--console-socket");
  // A host path: connected now, used by SECCOMP after pivot_root to hand over the notify fd.
  if (input.seccomp?.listener) b.pre(OpCode.CONNECT_LISTENER, [input.seccomp.listener.path], "linux.seccomp.listenerPath");

  // The user namespace first: joining it decides what the other joins are allowed to do.
  const joins = namespaces
    .map((ns, i) => ({ ns, i }))
    .filter(({ ns }) => ns.path)
    .sort((a, c) => Number(c.ns.type === "user") - Number(a.ns.type === "user"));
  for (const { ns, i } of joins) b.pre(OpCode.SETNS, [ns.path!, ns.type], `linux.namespaces[${i}]`);

  if (isNew("time")) {
    // A time namespace applies to children only, and its offsets must be set before any process enters it.
    b.pre(OpCode.UNSHARE, [CLONE.NEWTIME], `linux.namespaces[${nsIndex("time")}]`);
    const offsets = Object.entries(spec.linux?.timeOffsets ?? {})
      .map(([clock, o]) => `${clock} ${o.secs ?? 0} ${o.nanosecs ?? 0}`)
      .join("\n");
    if (offsets) b.pre(OpCode.WRITE_FILE, ["/proc/self/timens_offsets", offsets], "linux.timeOffsets");
  }

  // cgroup: unshared later by init, once the runtime has placed it in its cgroup.
  let cloneFlags = 0;
  for (const type of ["user", "pid", "network", "ipc", "uts", "mount"] as const) {
    if (isNew(type)) cloneFlags |= NAMESPACES[type].flag;
  }
  const rootlessUserNs = caller.rootless && isNew("user");
  if (rootlessUserNs) {
    // The child inherits stage0's non-dumpable flag, and a non-dumpable
    // process's /proc files belong to root: stage0 (or newuidmap, which
    // checks who owns /proc/<pid>) could not open the child's uid_map.
    b.pre(OpCode.SET_DUMPABLE, [1], "linux.namespaces (rootless: the child's /proc/<pid> must be the caller's for its id maps)");
  }
  b.pre(OpCode.CLONE, [cloneFlags], "linux.namespaces");

  // ---- Parent: id maps, report the pid, wait for the cgroup, release ----
  if (rootlessUserNs) b.parent(OpCode.SET_DUMPABLE, [0], "create (stage0 non-dumpable again, CVE-2019-5736)");
  const { setgroupsDenied } = isNew("user") ? planIdMaps(b, spec, caller) : { setgroupsDenied: false };
  b.parent(OpCode.SEND_PID, [], "create (report init pid)");
  b.parent(OpCode.WAIT_GO, [], "linux.cgroupsPath (runtime places init in its cgroup)");
  b.parent(OpCode.RELEASE_CHILD, [], "create");
  if (input.foreground) b.parent(OpCode.MONITOR, [terminal === "monitor" ? "copy" : "none"], "run (foreground)");
  else b.parent(OpCode.EXIT, [], "create (detached: init lives on)");

  // ---- Init: the container's first process ----
  b.init(OpCode.WAIT_RELEASE, [], "create");
  if (isNew("user")) {
    b.init(OpCode.SET_DUMPABLE, [1], "linux.namespaces (user: /proc/self must belong to the container's root)");
    b.init(OpCode.SETRESGID, [0], "linux.namespaces (become root of the new user namespace)");
    b.init(OpCode.SETRESUID, [0], "linux.namespaces (become root of the new user namespace)");
  }
  if (isNew("cgroup")) b.init(OpCode.UNSHARE, [CLONE.NEWCGROUP], `linux.namespaces[${nsIndex("cgroup")}]`);
  if (!input.noNewKeyring && lsm.selinux && process.selinuxLabel) {
    // runc's order: new keys (the session keyring first) take the process's label.
    b.init(OpCode.WRITE_PROC_ATTR, ["keycreate", process.selinuxLabel], "process.selinuxLabel (label of the session keyring)");
  }
  if (!input.noNewKeyring) b.init(OpCode.JOIN_KEYRING, [`_ses.${input.containerId}`], "create (session keyring; --no-new-keyring skips)");

  planRootfs(b, input, userNs, mountLabel, notes);

  if (spec.hostname !== undefined && isNew("uts")) b.init(OpCode.SETHOSTNAME, [spec.hostname], "hostname");
  if (spec.domainname !== undefined && isNew("uts")) b.init(OpCode.SETDOMAINNAME, [spec.domainname], "domainname");
  if (isNew("network")) b.init(OpCode.LOOPBACK_UP, [], `linux.namespaces[${nsIndex("network")}] (new network namespace: lo up, as runc)`);
  for (const [key, value] of Object.entries(spec.linux?.sysctl ?? {})) {
    b.init(OpCode.WRITE_PROC, [`/proc/sys/${key.replaceAll(".", "/")}`, value], `linux.sysctl["${key}"]`);
  }
  (spec.linux?.maskedPaths ?? []).forEach((p, i) => b.init(OpCode.MASK_PATH, [p], `linux.maskedPaths[${i}]`));
  (spec.linux?.readonlyPaths ?? []).forEach((p, i) => b.init(OpCode.READONLY_PATH, [p], `linux.readonlyPaths[${i}]`));
  if (spec.root?.readonly) b.init(OpCode.REMOUNT_RO, ["/"], "root.readonly");

  planProcess(b, process, {
    terminal,
    preserveFds: input.preserveFds,
    waitForStart: true,
    seccomp: input.seccomp,
    verb: "create",
    startContainerHooks: spec.hooks?.startContainer,
    lsm,
    setgroupsDenied,
  });
  return { ops: b.ops, cloneFlags, terminal, notes };
}

type IdMapping = { containerID: number; hostID: number; size: number };

/**
 * The uid/gid maps of a new user namespace, written by stage0 once the
 * child exists. Root writes any map itself. A rootless caller writes a map
 * that is just its own id ("0 <uid> 1"), with setgroups denied before the
 * gid map as the kernel demands of it; any other map goes through
 * newuidmap/newgidmap, which check /etc/subuid and /etc/subgid and leave
 * setgroups allowed. Returns whether setgroups(2) is denied in the namespace.
 */
export function planIdMaps(b: PlanBuilder, spec: Spec, caller: CallerFacts): { setgroupsDenied: boolean } {
  const uidMappings = spec.linux?.uidMappings ?? [];
  const gidMappings = spec.linux?.gidMappings ?? [];
  const lines = (m: IdMapping[]) => m.map((e) => `${e.containerID} ${e.hostID} ${e.size}`).join("\n");
  if (!caller.rootless) {
    if (uidMappings.length) b.parent(OpCode.WRITE_CHILD_PROC, ["uid_map", lines(uidMappings)], "linux.uidMappings");
    if (gidMappings.length) b.parent(OpCode.WRITE_CHILD_PROC, ["gid_map", lines(gidMappings)], "linux.gidMappings");
    return { setgroupsDenied: false };
  }
  const ownIdOnly = (m: IdMapping[], id: number) => m.length === 1 && m[0]!.size === 1 && m[0]!.hostID === id;
  const helperArgs = (m: IdMapping[]) => m.flatMap((e) => [e.containerID, e.hostID, e.size]);
  const needMapping = (field: string, kind: string, id: number) =>
    new PlanError("rootless-mapping-required", `${field}: a rootless container needs a mapping of the caller's ${kind} (e.g. {"containerID": 0, "hostID": ${id}, "size": 1})`);
  const needHelper = (field: string, kind: string, id: number, helper: string, file: string) =>
    new PlanError(
      "rootless-mapping-unsupported",
      `${field}: without root, only the caller's own ${kind} ${id} (one id) can be mapped directly; other ids need ${helper} ` +
        `(apt-get install uidmap) and ranges in ${file}`,
    );

  if (!uidMappings.length) throw needMapping("linux.uidMappings", "uid", caller.euid);
  if (!gidMappings.length) throw needMapping("linux.gidMappings", "gid", caller.egid);
  if (ownIdOnly(uidMappings, caller.euid)) {
    b.parent(OpCode.WRITE_CHILD_PROC, ["uid_map", lines(uidMappings)], "linux.uidMappings (the caller's own uid)");
  } else if (caller.newuidmap) {
    const args = [caller.newuidmap, "newuidmap", CHILD_PID_PLACEHOLDER, ...helperArgs(uidMappings)];
    b.parent(OpCode.RUN_ID_MAP_HELPER, args, "linux.uidMappings (ranges from /etc/subuid: newuidmap)");
  } else {
    throw needHelper("linux.uidMappings", "uid", caller.euid, "newuidmap", "/etc/subuid");
  }
  if (ownIdOnly(gidMappings, caller.egid)) {
    b.parent(OpCode.WRITE_CHILD_PROC, ["setgroups", "deny"], "linux.gidMappings (an unprivileged gid map needs setgroups denied first)");
    b.parent(OpCode.WRITE_CHILD_PROC, ["gid_map", lines(gidMappings)], "linux.gidMappings (the caller's own gid)");
    return { setgroupsDenied: true };
  }
  if (caller.newgidmap) {
    const args = [caller.newgidmap, "newgidmap", CHILD_PID_PLACEHOLDER, ...helperArgs(gidMappings)];
    b.parent(OpCode.RUN_ID_MAP_HELPER, args, "linux.gidMappings (ranges from /etc/subgid: newgidmap)");
    return { setgroupsDenied: false };
  }
  throw needHelper("linux.gidMappings", "gid", caller.egid, "newgidmap", "/etc/subgid");
}

/**
 * runc's behaviour when the host lacks the LSM a field asks for: it refuses
 * rather than run the container unconfined (checked against runc 1.1.5 on a
 * host with neither LSM). An SELinux label fails its config validation; an
 * AppArmor profile fails at init, when the write to /proc/self/attr/exec
 * returns EINVAL; a mount label makes the first tmpfs mount fail with
 * EINVAL. nano-kata refuses all three before anything runs.
 */
export function assertLsmAvailable(process: Process, mountLabel: string | undefined, lsm: LsmFacts): void {
  if (process.apparmorProfile && !lsm.apparmor) {
    throw new PlanError(
      "apparmor-unavailable",
      `process.apparmorProfile: apparmor profile ${JSON.stringify(process.apparmorProfile)} is specified in config, but apparmor is disabled or not supported on this host`,
    );
  }
  if (process.selinuxLabel && !lsm.selinux) {
    throw new PlanError("selinux-unavailable", "process.selinuxLabel: selinux label is specified in config, but selinux is disabled or not supported");
  }
  if (mountLabel && !lsm.selinux) {
    throw new PlanError("selinux-unavailable", "linux.mountLabel: selinux mount label is specified in config, but selinux is disabled or not supported");
  }
}

/** runc's label.FormatMountLabel: the mount label as a context= option after the mount's own data. */
export function withMountLabel(data: string, mountLabel: string | undefined): string {
  if (!mountLabel) return data;
  const context = `context="${mountLabel}"`;
  return data ? `${data},${context}` : context;
}

/** Filesystems that take linux.mountLabel (the ones without labels of their own on disk). */
const LABELLED_FSTYPES = new Set(["tmpfs", "devpts", "mqueue"]);

function planRootfs(b: PlanBuilder, input: PlanInput, userNs: boolean, mountLabel: string | undefined, notes: string[]): void {
  const { spec, rootfs } = input;
  const propagationName = spec.linux?.rootfsPropagation;
  // Stop mount events flowing back to the host before touching anything.
  const rootPropagation = propagationName === "private" || propagationName === "rprivate" ? MS.PRIVATE | MS.REC : MS.SLAVE | MS.REC;
  b.init(OpCode.MOUNT, ["", "/", "", rootPropagation, ""], propagationName ? "linux.rootfsPropagation" : "create (make / rslave)");
  b.init(OpCode.MOUNT, [rootfs, rootfs, "", MS.BIND | MS.REC, ""], "root.path (bind onto itself for pivot_root)");

  const mounts = spec.mounts ?? [];
  mounts.forEach((m, i) => planMount(b, input, m, `mounts[${i}]`, mountLabel, notes));

  const devBound = mounts.some((m) => m.destination === "/dev" && parseMountOptions(m.options, m.type).bind);
  if (!devBound) {
    for (const d of DEFAULT_DEVICES) planDevice(b, rootfs, { path: d.path, type: "c", major: d.major, minor: d.minor, fileMode: 0o666, uid: 0, gid: 0 }, userNs, "create (default device)");
    (spec.linux?.devices ?? []).forEach((d, i) => planDevice(b, rootfs, d, userNs, `linux.devices[${i}]`));
    for (const [target, link] of DEV_SYMLINKS) b.init(OpCode.SYMLINK_IN_ROOT, [rootfs, target, link], "create (default /dev symlink)");
    if (mounts.some((m) => m.destination === "/dev/pts")) b.init(OpCode.SYMLINK_IN_ROOT, [rootfs, "pts/ptmx", "/dev/ptmx"], "mounts (devpts: /dev/ptmx -> pts/ptmx)");
  }

  const hooks = spec.hooks ?? {};
  if (hooks.prestart?.length || hooks.createRuntime?.length || hooks.createContainer?.length) {
    // With the namespaces made and the rootfs mounted, before pivot_root
    // (runc's point): the runtime runs prestart and createRuntime hooks in its
    // own namespaces and answers with the state JSON; then init runs the
    // createContainer hooks in the container's namespaces (runtime-spec), their
    // paths still resolving in the runtime's mount view, that state on stdin.
    b.init(OpCode.SYNC, ["hooks"], "hooks (prestart, createRuntime: run by the runtime)");
    (hooks.createContainer ?? []).forEach((hook, i) => b.init(OpCode.RUN_HOOK, hookArgs(hook), `hooks.createContainer[${i}]`));
  }
  if (input.noPivot) b.init(OpCode.CHROOT, [rootfs], "--no-pivot");
  else b.init(OpCode.PIVOT_ROOT, [rootfs], "root.path");
  if (propagationName && rootPropagation !== propagationFlag(propagationName)) {
    b.init(OpCode.MOUNT, ["", "/", "", propagationFlag(propagationName), ""], "linux.rootfsPropagation");
  }
}

function propagationFlag(name: string): number {
  const base = name.replace(/^r/, "");
  const flag = { shared: MS.SHARED, slave: MS.SLAVE, private: MS.PRIVATE, unbindable: MS.UNBINDABLE }[base] ?? MS.SLAVE;
  return name.startsWith("r") ? flag | MS.REC : flag;
}

function planMount(b: PlanBuilder, input: PlanInput, m: Mount, source: string, mountLabel: string | undefined, notes: string[]): void {
  const { rootfs } = input;
  const options = parseMountOptions(m.options, m.type);
  if (options.unsupported.length) {
    throw new PlanError("mount-option-unsupported", `${source}.options: not supported: ${options.unsupported.join(", ")}`);
  }
  for (const why of options.ignored) notes.push(`${source}.options: ignored ${why}`);
  const dest = m.destination;

  if (m.type === "cgroup" || m.type === "cgroup2") {
    planCgroupMount(b, input, m, options.flags, source, mountLabel);
    return;
  }
  if (options.bind) {
    const hostSource = resolveBindSource(m.source ?? "", input.bundle);
    b.init(
      OpCode.MOUNT_IN_ROOT,
      [rootfs, dest, hostSource, "", MS.BIND | (options.recursive ? MS.REC : 0), "", input.isDirectory(hostSource) ? "dir" : "file", "0"],
      source,
    );
    if (options.bindRemountFlags || options.flags) {
      b.init(OpCode.REMOUNT_IN_ROOT, [rootfs, dest, options.bindRemountFlags | options.flags], `${source}.options`);
    }
  } else {
    const fstype = m.type ?? "";
    const strict = fstype === "proc" || fstype === "sysfs" ? "1" : "0";
    const data = LABELLED_FSTYPES.has(fstype) ? withMountLabel(options.data, mountLabel) : options.data;
    b.init(OpCode.MOUNT_IN_ROOT, [rootfs, dest, m.source ?? fstype, fstype, options.flags, data, "dir", strict], source);
  }
  if (options.propagation) {
    b.init(OpCode.MOUNT_IN_ROOT, [rootfs, dest, "", "", options.propagation, "", "none", "0"], `${source}.options (propagation)`);
  }
}

/** runc's `cgroup` mount: a tmpfs with one directory per v1 hierarchy, or cgroup2 itself. */
function planCgroupMount(b: PlanBuilder, input: PlanInput, m: Mount, flags: number, source: string, mountLabel: string | undefined): void {
  const { rootfs } = input;
  const cgroupNs = (input.spec.linux?.namespaces ?? []).some((n) => n.type === "cgroup" && !n.path);
  const dest = m.destination;
  const v2 = input.cgroupMounts.find((c) => c.fstype === "cgroup2" && c.dirName === "");
  if (v2) {
    if (cgroupNs) b.init(OpCode.MOUNT_IN_ROOT, [rootfs, dest, "cgroup2", "cgroup2", flags, "", "dir", "1"], source);
    else {
      b.init(OpCode.MOUNT_IN_ROOT, [rootfs, dest, v2.hostPath, "", MS.BIND, "", "dir", "1"], source);
      b.init(OpCode.REMOUNT_IN_ROOT, [rootfs, dest, flags], `${source}.options`);
    }
    return;
  }
  // The tmpfs stays writable until every hierarchy is in place, then takes the mount's flags.
  b.init(OpCode.MOUNT_IN_ROOT, [rootfs, dest, "tmpfs", "tmpfs", MS.NOSUID | MS.NODEV | MS.NOEXEC, withMountLabel("mode=755", mountLabel), "dir", "1"], source);
  for (const c of input.cgroupMounts) {
    const sub = `${dest}/${c.dirName}`;
    if (cgroupNs) {
      b.init(OpCode.MOUNT_IN_ROOT, [rootfs, sub, "cgroup", c.fstype, flags, c.data, "dir", "1"], `${source} (${c.dirName})`);
    } else {
      b.init(OpCode.MOUNT_IN_ROOT, [rootfs, sub, c.hostPath, "", MS.BIND, "", "dir", "1"], `${source} (${c.dirName})`);
      b.init(OpCode.REMOUNT_IN_ROOT, [rootfs, sub, flags], `${source}.options (${c.dirName})`);
    }
  }
  if (flags & MS.RDONLY) b.init(OpCode.REMOUNT_IN_ROOT, [rootfs, dest, flags], `${source}.options`);
}

function resolveBindSource(source: string, bundle: string): string {
  return source.startsWith("/") ? source : `${bundle}/${source}`;
}

function planDevice(b: PlanBuilder, rootfs: string, d: LinuxDevice, userNs: boolean, source: string): void {
  // A user namespace may not mknod: bind the host's node instead, as runc does.
  if (userNs) {
    b.init(OpCode.BIND_DEVICE_IN_ROOT, [rootfs, d.path, d.path], source);
    return;
  }
  const mode = (d.fileMode ?? 0o666) & 0o7777;
  b.init(
    OpCode.MKNOD_IN_ROOT,
    [rootfs, d.path, d.type, d.major ?? 0, d.minor ?? 0, mode.toString(8), d.uid ?? 0, d.gid ?? 0],
    source,
  );
}

/** RUN_HOOK's arguments; stdin "" means the state the runtime sent at the last SYNC. */
function hookArgs(hook: Hook): (string | number)[] {
  const argv = hook.args?.length ? hook.args : [hook.path];
  return [hook.path, hook.timeout ?? 0, "", argv.length, ...argv, ...(hook.env ?? [])];
}

function capabilityMask(names: readonly string[] | undefined): string {
  let mask = 0n;
  for (const name of names ?? []) {
    const n = capabilityNumber(name);
    if (n !== undefined) mask |= 1n << BigInt(n);
  }
  return mask.toString(16);
}

export interface ProcessPlanOptions {
  terminal: ContainerPlan["terminal"];
  preserveFds: number;
  /** create: report ready, then wait on the exec fifo for `start`; exec: go straight on. */
  waitForStart: boolean;
  /** A compiled linux.seccomp filter (src/seccomp), if any. */
  seccomp?: CompiledSeccompFilter;
  /** Which verb the process setup belongs to, for the trace. */
  verb: "create" | "exec";
  /** hooks.startContainer: run in the container, after start, before the user's program. */
  startContainerHooks?: Hook[];
  /** Enforcing LSMs (assertLsmAvailable has accepted the process's labels for them). */
  lsm: LsmFacts;
  /** setgroups(2) is denied in the container's user namespace (rootless, own-gid map). */
  setgroupsDenied: boolean;
}

export interface CompiledSeccompFilter {
  flags: number;
  program: Uint8Array;
  /** SCMP_ACT_NOTIFY: where the notify fd goes, and the containerProcessState JSON ("{pid}" filled in by the executor). */
  listener?: { path: string; payloadTemplate: string };
}

function seccompArgs(filter: CompiledSeccompFilter): (string | number | Uint8Array)[] {
  return filter.listener ? [filter.flags, filter.program, filter.listener.payloadTemplate] : [filter.flags, filter.program];
}

/** The process part shared by create and exec: limits, terminal, credentials, caps, seccomp, cwd, exec. */
export function planProcess(b: PlanBuilder, process: Process, opts: ProcessPlanOptions): void {
  const user = process.user;
  const caps = process.capabilities;
  const seccompSource = "linux.seccomp";

  if (process.oomScoreAdj !== undefined) b.init(OpCode.WRITE_PROC, ["/proc/self/oom_score_adj", process.oomScoreAdj], "process.oomScoreAdj");
  // JSON numbers lose precision above 2^53: Go's "unlimited" (2^64-1) arrives as 2^64.
  const limit = (n: number) => (n >= 2 ** 63 ? "unlimited" : n);
  (process.rlimits ?? []).forEach((r, i) =>
    b.init(OpCode.SETRLIMIT, [rlimitNumber(r.type)!, limit(r.soft), limit(r.hard)], `process.rlimits[${i}] (${r.type})`),
  );
  if (opts.terminal !== "none") b.init(OpCode.SETUP_TERMINAL, [opts.terminal, user.uid, user.gid], "process.terminal");

  // The labels the execve of process.args takes (and, as in runc, the
  // startContainer hooks init forks after this). Before any seccomp filter,
  // which could refuse the write, and before no_new_privs, under which a
  // confined task may only move to a subset profile (runc's order).
  if (process.apparmorProfile && opts.lsm.apparmor) {
    b.init(OpCode.WRITE_PROC_ATTR, [opts.lsm.apparmorExecAttr, `exec ${process.apparmorProfile}`], "process.apparmorProfile");
  }
  if (process.selinuxLabel && opts.lsm.selinux) b.init(OpCode.WRITE_PROC_ATTR, ["exec", process.selinuxLabel], "process.selinuxLabel");

  // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it before
  // the capabilities go (runc's order). With it, as late as possible.
  if (opts.seccomp && !process.noNewPrivileges) b.init(OpCode.SECCOMP, seccompArgs(opts.seccomp), seccompSource);

  // Capabilities: shrink the bounding set while still root, keep the permitted
  // set across setuid, then set the final sets (runc's order).
  b.init(OpCode.CAP_BOUNDING, [capabilityMask(caps?.bounding)], "process.capabilities.bounding");
  b.init(OpCode.KEEPCAPS, [1], "process.user (keep capabilities across setuid)");
  if (!opts.setgroupsDenied) b.init(OpCode.SETGROUPS, [...(user.additionalGids ?? [])], "process.user.additionalGids");
  else if (user.additionalGids?.length) {
    // runc: "cannot set any additional groups in a rootless container".
    throw new PlanError(
      "setgroups-denied",
      "process.user.additionalGids: cannot set any additional groups in a rootless container whose gid mapping is only the caller's gid (setgroups is denied there; map ranges from /etc/subgid to allow it)",
    );
  }
  b.init(OpCode.SETRESGID, [user.gid], "process.user.gid");
  b.init(OpCode.SETRESUID, [user.uid], "process.user.uid");
  b.init(OpCode.KEEPCAPS, [0], "process.user");
  b.init(
    OpCode.CAPSET,
    [capabilityMask(caps?.effective), capabilityMask(caps?.permitted), capabilityMask(caps?.inheritable)],
    "process.capabilities",
  );
  b.init(OpCode.CAP_AMBIENT, [capabilityMask(caps?.ambient)], "process.capabilities.ambient");
  b.init(OpCode.UMASK, [(user.umask ?? 0o022).toString(8)], user.umask !== undefined ? "process.user.umask" : `${opts.verb} (default umask 0022)`);
  b.init(OpCode.CHDIR, [process.cwd], "process.cwd");
  if (process.noNewPrivileges) b.init(OpCode.NO_NEW_PRIVS, [], "process.noNewPrivileges");
  b.init(OpCode.CLOSE_FDS, [opts.preserveFds], opts.preserveFds ? "--preserve-fds" : `${opts.verb} (no runtime fd may reach the container)`);
  const env = process.env ?? [];
  const pathEnv = env.findLast((e) => e.startsWith("PATH="))?.slice(5) ?? DEFAULT_PATH;
  const args = process.args ?? [];
  b.init(OpCode.EXEC_LOOKUP, [args[0] ?? "", pathEnv], "process.args[0]");
  // The state the startContainer hooks get on stdin (status "created"), fetched while init can still ask.
  if (opts.startContainerHooks?.length) b.init(OpCode.SYNC, ["startContainer"], "hooks.startContainer (state JSON for the hooks)");
  b.init(OpCode.REPORT_READY, [], `${opts.verb} (process is ready)`);
  if (opts.waitForStart) b.init(OpCode.WAIT_FIFO, [], "start (blocks until `start`)");
  (opts.startContainerHooks ?? []).forEach((hook, i) => b.init(OpCode.RUN_HOOK, hookArgs(hook), `hooks.startContainer[${i}]`));
  if (opts.seccomp && process.noNewPrivileges) b.init(OpCode.SECCOMP, seccompArgs(opts.seccomp), seccompSource);
  b.init(OpCode.EXEC, [args.length, ...args, ...env], "process.args, process.env");
}
