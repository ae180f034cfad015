/**
 * Test bundles: a temporary directory holding config.json, whose root.path
 * points at the shared cached busybox rootfs (read-only, so nothing a test does
 * can dirty it) or, for tests that must write into the tree, at a private
 * `cp -a` copy inside the bundle.
 *
 * baseConfig() mirrors what `runc spec` produces (namespaces, mounts, masked
 * and read-only paths, capabilities, rlimits), with two deliberate changes:
 * a cgroupsPath under /nano-kata-test/<id> so every test cgroup is easy to
 * find and remove, and no `terminal`.
 */
import { spawnSync } from "node:child_process";
import { chownSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureBusyboxRootfs } from "./rootfs.ts";

/** A loosely typed OCI config: tests poke at arbitrary (and deliberately invalid) fields. */
export type OciConfig = Record<string, any>;

export const DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"] as const;

/** Cgroup parent (under every hierarchy) that all test containers live in. */
export const TEST_CGROUP_PARENT = "nano-kata-test";

let idCounter = 0;

/** A container id unique to this process and call: nkt-<pid>-<counter>-<random>. */
export function uniqueId(): string {
  idCounter += 1;
  return `nkt-${process.pid}-${idCounter}-${Math.random().toString(36).slice(2, 8)}`;
}

/** A runc-spec-default-like config (process args default to `sh -c true`). */
export function baseConfig(id: string, rootPath: string): OciConfig {
  const caps = [...DEFAULT_CAPS];
  return {
    ociVersion: "1.0.2",
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: ["sh", "-c", "true"],
      env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
      cwd: "/",
      capabilities: {
        bounding: [...caps],
        effective: [...caps],
        permitted: [...caps],
        ambient: [],
      },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: rootPath, readonly: true },
    hostname: "nkt",
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
      },
      { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
      { destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"] },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
    ],
    linux: {
      cgroupsPath: `/${TEST_CGROUP_PARENT}/${id}`,
      resources: { devices: [{ allow: false, access: "rwm" }] },
      namespaces: [{ type: "pid" }, { type: "network" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }],
      maskedPaths: [
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
      ],
      readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
  };
}

export interface BundleOptions {
  /** Container id; default uniqueId(). */
  id?: string;
  /** process.args; default ["sh", "-c", "true"]. */
  args?: string[];
  /** Give the bundle its own writable copy of the rootfs (at <bundle>/rootfs) instead of the shared tree. */
  copyRootfs?: boolean;
  /** chown -R the private rootfs copy to uid:gid (user-namespace tests); implies copyRootfs. */
  chownRootfs?: { uid: number; gid: number };
  /** Called with the private rootfs path before config.json is written (implies copyRootfs). */
  prepareRootfs?: (rootfs: string) => void;
  /** Deep mutation hook: change anything in the config (including making it invalid). */
  override?: (config: OciConfig) => void;
  /** Write this text as config.json instead of JSON.stringify(config) (malformed-input tests). */
  rawConfig?: string;
  /** Do not write config.json at all. */
  noConfig?: boolean;
}

export interface Bundle {
  dir: string;
  id: string;
  /** The root filesystem this bundle uses (shared cache or private copy). */
  rootfs: string;
  config: OciConfig;
  /** Re-write config.json from `config` (after further mutation). */
  writeConfig(): void;
  cleanup(): void;
}

export function makeBundle(opts: BundleOptions = {}): Bundle {
  const id = opts.id ?? uniqueId();
  const shared = ensureBusyboxRootfs();
  const dir = mkdtempSync(join(tmpdir(), "nkt-bundle-"));
  let rootfs = shared;
  const wantsCopy = opts.copyRootfs || opts.chownRootfs !== undefined || opts.prepareRootfs !== undefined;
  if (wantsCopy) {
    rootfs = join(dir, "rootfs");
    const cp = spawnSync("cp", ["-a", shared, rootfs], { encoding: "utf8" });
    if (cp.status !== 0) throw new Error(`cp -a ${shared} ${rootfs} failed: ${cp.stderr}`);
    if (opts.chownRootfs) chownTree(rootfs, opts.chownRootfs.uid, opts.chownRootfs.gid);
    opts.prepareRootfs?.(rootfs);
  }
  // The bundle dir itself must be traversable by mapped users (user namespaces).
  if (opts.chownRootfs) chownSync(dir, opts.chownRootfs.uid, opts.chownRootfs.gid);

  const config = baseConfig(id, rootfs);
  if (opts.args) config.process.args = opts.args;
  opts.override?.(config);

  const configPath = join(dir, "config.json");
  const writeConfig = (): void => {
    if (opts.noConfig) return;
    writeFileSync(configPath, opts.rawConfig ?? `${JSON.stringify(config, null, 2)}\n`);
  };
  writeConfig();
  return {
    dir,
    id,
    rootfs,
    config,
    writeConfig,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

function chownTree(path: string, uid: number, gid: number): void {
  // chown -h so symlinks (all the applets) change owner themselves instead of busybox 270 times.
  const r = spawnSync("chown", ["-R", "-h", `${uid}:${gid}`, path], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`chown -R ${uid}:${gid} ${path} failed: ${r.stderr}`);
}
