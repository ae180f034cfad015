/**
 * What `nk-runtime features` prints: the runtime-spec "Features Structure"
 * (features.md, features-linux.md), the same shape as `runc features`, so
 * higher-level tools can ask what this runtime can do before writing a config.
 *
 * Keep it honest: list only what the plan builder and executor carry out.
 */
import { allCapabilityNames } from "./capabilities.ts";
import { DEFAULT_OCI_VERSION } from "./default.ts";
import type { HookKind, NamespaceType } from "./types.ts";
import { NAMESPACE_TYPES } from "./validate-linux.ts";
import { SECCOMP_ACTIONS, SECCOMP_ARCHITECTURES, SECCOMP_FLAGS, SECCOMP_OPERATORS } from "./validate-seccomp.ts";

export const NANO_KATA_VERSION = "0.1.0";

export interface RuntimeFeatures {
  ociVersionMin: string;
  ociVersionMax: string;
  hooks: HookKind[];
  mountOptions: string[];
  linux: {
    namespaces: NamespaceType[];
    capabilities: string[];
    cgroup: { v1: boolean; v2: boolean; systemd: boolean; systemdUser: boolean; rdma: boolean };
    seccomp: {
      enabled: boolean;
      actions: string[];
      operators: string[];
      archs: string[];
      knownFlags: string[];
      supportedFlags: string[];
    };
    apparmor: { enabled: boolean };
    selinux: { enabled: boolean };
    intelRdt: { enabled: boolean };
    mountExtensions: { idmap: { enabled: boolean } };
  };
  annotations: Record<string, string>;
  potentiallyUnsafeConfigAnnotations: string[];
}

/**
 * Mount options the plan builder turns into mount(2) flags or propagation
 * (src/plan/mount-options.ts). Options it ignores (tmpcopyup) or rejects
 * (idmap, recursive rro/rnosuid/...) are left out; anything else in a config
 * is passed to the filesystem as data (size=, mode=, ...), which is not listed,
 * following features.md.
 */
const SUPPORTED_MOUNT_OPTIONS = [
  "async",
  "atime",
  "bind",
  "defaults",
  "dev",
  "diratime",
  "dirsync",
  "exec",
  "lazytime",
  "mand",
  "noatime",
  "nodev",
  "nodiratime",
  "noexec",
  "nolazytime",
  "nomand",
  "norelatime",
  "nostrictatime",
  "nosuid",
  "nosymfollow",
  "private",
  "rbind",
  "relatime",
  "remount",
  "ro",
  "rprivate",
  "rshared",
  "rslave",
  "runbindable",
  "rw",
  "shared",
  "slave",
  "strictatime",
  "suid",
  "symfollow",
  "sync",
  "unbindable",
];

const HOOKS: HookKind[] = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];

export function runtimeFeatures(): RuntimeFeatures {
  return {
    ociVersionMin: "1.0.0",
    ociVersionMax: DEFAULT_OCI_VERSION,
    hooks: [...HOOKS],
    mountOptions: [...SUPPORTED_MOUNT_OPTIONS],
    linux: {
      namespaces: [...NAMESPACE_TYPES].sort(),
      capabilities: allCapabilityNames(),
      cgroup: { v1: true, v2: true, systemd: false, systemdUser: false, rdma: false },
      seccomp: {
        // Compiled in TypeScript (src/seccomp); SCMP_ACT_NOTIFY hands the fd to listenerPath.
        enabled: true,
        actions: [...SECCOMP_ACTIONS].sort(),
        operators: [...SECCOMP_OPERATORS].sort(),
        archs: [...SECCOMP_ARCHITECTURES].sort(),
        knownFlags: [...SECCOMP_FLAGS],
        supportedFlags: ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
      },
      // Supported by the runtime (applied when the host has the LSM, refused when it does not, as runc).
      apparmor: { enabled: true },
      selinux: { enabled: true },
      intelRdt: { enabled: false },
      mountExtensions: { idmap: { enabled: false } },
    },
    annotations: { "io.nanokata.version": NANO_KATA_VERSION },
    potentiallyUnsafeConfigAnnotations: [],
  };
}
