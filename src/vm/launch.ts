/**
 * What `create` decides and the host process carries out: written as
 * <state dir>/vm.json, so the host process needs no spec, planner or
 * seccomp compiler of its own. The host process records the pids it starts
 * in <state dir>/vm-pids.json, so `delete` can stop them even when the host
 * process itself was killed.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import type { PlanOp } from "../plan/ops.ts";
import type { Hook } from "../spec/types.ts";
import type { VmConfig } from "./driver.ts";
import type { VmNetwork } from "./network.ts";
import type { ShareEntry } from "./plan.ts";

/**
 * What the host process needs to start the VM, and nothing of the plan: a
 * VM cloned from a template starts from this alone (<state dir>/vm-boot.json)
 * while `create` still plans and makes the rootfs image; the whole VmLaunch
 * follows as vm.json, and "go" on the host process's fd 4 says it is there.
 */
export interface VmBoot {
  id: string;
  driver: "qemu" | "firecracker";
  vm: VmConfig;
  /** Start the VM as a clone of the template for its shape (template.ts), made first if there is none. */
  fromTemplate?: boolean;
  trace: boolean;
  /** The client's network namespace and the interfaces mirrored into the VM (network.ts), if the spec named one. */
  network?: VmNetwork;
  /** virtiofsd: its socket listens from the start; it runs once vm.json (whose copy has the share's entries) is there. */
  virtiofsd?: { binary: string; socket: string; shareDir: string; entries: ShareEntry[]; logFile: string };
}

export interface VmLaunch extends VmBoot {
  ops: PlanOp[];
  /** The host's exec fifo (`start` opens it) and the guest's (the agent opens it). */
  hostFifo: string;
  guestFifo: string;
  /** Give up when the agent has not said HELLO by then. */
  bootTimeoutMs: number;
  /** Give up when the container's init is not ready by then (after HELLO). */
  readyTimeoutMs: number;
  /** The host process's control socket (exec sessions, pause/resume); in vm.runDir. */
  controlSocket: string;
  /** --console-socket (host path) and the guest socket the agent takes init's pty master on (process.terminal). */
  consoleSocket?: string;
  guestConsole?: string;
  /** Hooks the host process runs at init's "hooks" point, and the state they read (status and pid filled in). */
  hooks?: { prestart?: Hook[]; createRuntime?: Hook[] };
  hookState: { ociVersion: string; id: string; bundle: string; annotations: Record<string, string> };
}

/** A pid and its start time (field 22 of /proc/<pid>/stat): a reused pid has another. */
export interface ProcRef {
  pid: number;
  startTime: string;
}

export interface VmPids {
  host: ProcRef;
  vmm?: ProcRef;
  virtiofsd?: ProcRef;
  /** The container's init, a pid in the guest. */
  guestInit?: ProcRef;
  /** Set before the host process adds tc mirroring in the client's namespace, cleared once it is removed. */
  networkWired?: boolean;
}

// Uint8Array arguments (seccomp BPF) travel as {"$b64": ...}.
export const replacer = (_key: string, value: unknown) =>
  value instanceof Uint8Array ? { $b64: Buffer.from(value).toString("base64") } : value;
export const reviver = (_key: string, value: unknown) =>
  value && typeof value === "object" && "$b64" in value ? new Uint8Array(Buffer.from((value as { $b64: string }).$b64, "base64")) : value;

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, "utf8"), reviver) as T;
}

export function writeJsonAtomic(path: string, data: unknown): void {
  writeFileSync(`${path}.tmp`, JSON.stringify(data, replacer), { mode: 0o600 });
  renameSync(`${path}.tmp`, path);
}

export const launchPath = (stateDir: string) => `${stateDir}/vm.json`;
export const bootPath = (stateDir: string) => `${stateDir}/vm-boot.json`;
/** The host process's fd on which `create` says "go" once vm.json is written (an early start, see VmBoot). */
export const GO_FD = 4;
export const pidsPath = (stateDir: string) => `${stateDir}/vm-pids.json`;
/** Present while the VM is stopped by `pause` (the container's status reads "paused"). */
export const pausedMarker = (stateDir: string) => `${stateDir}/vm-paused`;

export function writeLaunch(stateDir: string, launch: VmLaunch): void {
  writeJsonAtomic(launchPath(stateDir), launch);
}

export function readLaunch(stateDir: string): VmLaunch {
  return JSON.parse(readFileSync(launchPath(stateDir), "utf8"), reviver) as VmLaunch;
}

export function writeBoot(stateDir: string, boot: VmBoot): void {
  writeJsonAtomic(bootPath(stateDir), boot);
}

/** vm.json, or while an early start waits for it, vm-boot.json (what `delete` needs of either: the VM's files). */
export function readBootOrLaunch(stateDir: string): VmBoot | VmLaunch {
  return existsSync(launchPath(stateDir)) ? readLaunch(stateDir) : readJson<VmBoot>(bootPath(stateDir));
}

/** A pod member's launch (pod.ts): present instead of vm.json when the container joined its sandbox's VM. */
export const memberPath = (stateDir: string) => `${stateDir}/vm-member.json`;

/** The control socket of the VM a container runs in: its own host process's, or its pod sandbox's. */
export function controlSocketOf(stateDir: string): string {
  if (existsSync(memberPath(stateDir))) return readJson<{ controlSocket: string }>(memberPath(stateDir)).controlSocket;
  return readLaunch(stateDir).controlSocket;
}

export function writePids(stateDir: string, pids: VmPids): void {
  writeJsonAtomic(pidsPath(stateDir), pids);
}

export function readPids(stateDir: string): VmPids | undefined {
  try {
    return JSON.parse(readFileSync(pidsPath(stateDir), "utf8")) as VmPids;
  } catch {
    return undefined;
  }
}
