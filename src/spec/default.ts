/**
 * The config.json that `nk-runtime spec` writes: the same starting point as
 * `runc spec` (a busybox-style shell in a fully namespaced, minimally
 * privileged container), so bundles and tutorials written for runc work.
 */
import type { Mount, Spec } from "./types.ts";

export interface DefaultSpecOptions {
  /** A config for a container started by an unprivileged user (`spec --rootless`). */
  rootless: boolean;
  /** Host ids mapped to root in the rootless variant; default: the caller's effective ids. */
  hostUid?: number;
  hostGid?: number;
}

export const DEFAULT_OCI_VERSION = "1.2.0";
export const DEFAULT_HOSTNAME = "nano-kata";

/** The capabilities docker and runc leave to a default container's process. */
const DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/**
 * /proc and /sys files that leak host information or poke the host kernel,
 * over-mounted with an empty file/dir (runc's default list).
 */
export const DEFAULT_MASKED_PATHS: readonly string[] = [
  "/proc/acpi",
  "/proc/asound",
  "/proc/kcore",
  "/proc/keys",
  "/proc/latency_stats",
  "/proc/timer_list",
  "/proc/timer_stats",
  "/proc/sched_debug",
  "/sys/firmware",
  "/proc/scsi",
  // RAPL energy counters allow the PLATYPUS power side channel (CVE-2020-8694, CVE-2020-8695).
  "/sys/devices/virtual/powercap",
];

/** /proc files kept visible but read-only (runc's default list). */
export const DEFAULT_READONLY_PATHS: readonly string[] = [
  "/proc/bus",
  "/proc/fs",
  "/proc/irq",
  "/proc/sys",
  "/proc/sysrq-trigger",
];

function defaultMounts(rootless: boolean): Mount[] {
  const devptsOptions = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"];
  // gid 5 (tty) usually has no mapping in a rootless user namespace and
  // mounting devpts with an unmapped gid fails, so rootless leaves it out.
  if (!rootless) devptsOptions.push("gid=5");
  const sys: Mount = rootless
    ? // A new sysfs needs CAP_SYS_ADMIN over the network namespace, which a
      // rootless container (sharing the host's) lacks: bind the host's instead.
      { destination: "/sys", type: "none", source: "/sys", options: ["rbind", "nosuid", "noexec", "nodev", "ro"] }
    : { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] };
  return [
    { destination: "/proc", type: "proc", source: "proc" },
    { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    { destination: "/dev/pts", type: "devpts", source: "devpts", options: devptsOptions },
    { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
    { destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"] },
    sys,
    { destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["nosuid", "noexec", "nodev", "relatime", "ro"] },
  ];
}

export function defaultSpec(options: DefaultSpecOptions): Spec {
  const { rootless } = options;
  const spec: Spec = {
    ociVersion: DEFAULT_OCI_VERSION,
    process: {
      terminal: true,
      user: { uid: 0, gid: 0 },
      args: ["sh"],
      env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
      cwd: "/",
      capabilities: {
        bounding: [...DEFAULT_CAPABILITIES],
        effective: [...DEFAULT_CAPABILITIES],
        permitted: [...DEFAULT_CAPABILITIES],
        // Listed as runc lists them; without the same names in `inheritable`
        // the kernel will not raise them, and runtimes skip them quietly.
        ambient: [...DEFAULT_CAPABILITIES],
      },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: "rootfs", readonly: true },
    hostname: DEFAULT_HOSTNAME,
    mounts: defaultMounts(rootless),
    linux: {
      // Deny every device node by default; the runtime adds the standard safe set (null, zero, tty, ...).
      resources: { devices: [{ allow: false, access: "rwm" }] },
      namespaces: [{ type: "pid" }, { type: "network" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }, { type: "cgroup" }],
      maskedPaths: [...DEFAULT_MASKED_PATHS],
      readonlyPaths: [...DEFAULT_READONLY_PATHS],
    },
  };
  if (rootless) makeRootless(spec, options);
  return spec;
}

/** The changes `runc spec --rootless` makes. */
function makeRootless(spec: Spec, options: DefaultSpecOptions): void {
  const linux = spec.linux!;
  const hostUid = options.hostUid ?? process.geteuid?.() ?? 0;
  const hostGid = options.hostGid ?? process.getegid?.() ?? 0;
  // An unprivileged user may only map its own ids (one each) without newuidmap.
  linux.uidMappings = [{ containerID: 0, hostID: hostUid, size: 1 }];
  linux.gidMappings = [{ containerID: 0, hostID: hostGid, size: 1 }];
  // Without privileges the container cannot set up its own network (no veth
  // into the host), so it shares the caller's network namespace.
  linux.namespaces = linux.namespaces!.filter((ns) => ns.type !== "network");
  linux.namespaces.push({ type: "user" });
  // cgroup limits need write access to a delegated cgroup, which a rootless
  // caller may not have.
  delete linux.resources;
}
