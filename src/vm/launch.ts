/**
 * What `create` decides and the host process carries out: written as
 * <state dir>/vm.json, so the host process needs no spec, planner or
 * seccomp compiler of its own. The host process records the pids it starts
 * in <state dir>/vm-pids.json, so `delete` can stop them even when the host
 * process itself was killed.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import type { PlanOp } from "../plan/ops.ts";
import type { VmConfig } from "./driver.ts";
import type { ShareEntry } from "./plan.ts";

export interface VmLaunch {
  id: string;
  driver: "qemu" | "firecracker";
  vm: VmConfig;
  virtiofsd?: { binary: string; socket: string; shareDir: string; entries: ShareEntry[]; logFile: string };
  ops: PlanOp[];
  /** The host's exec fifo (`start` opens it) and the guest's (the agent opens it). */
  hostFifo: string;
  guestFifo: string;
  /** Give up when the agent has not said HELLO by then. */
  bootTimeoutMs: number;
  /** Give up when the container's init is not ready by then (after HELLO). */
  readyTimeoutMs: number;
  trace: boolean;
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
}

// Uint8Array arguments (seccomp BPF) travel as {"$b64": ...}.
const replacer = (_key: string, value: unknown) =>
  value instanceof Uint8Array ? { $b64: Buffer.from(value).toString("base64") } : value;
const reviver = (_key: string, value: unknown) =>
  value && typeof value === "object" && "$b64" in value ? new Uint8Array(Buffer.from((value as { $b64: string }).$b64, "base64")) : value;

function writeJsonAtomic(path: string, data: unknown): void {
  writeFileSync(`${path}.tmp`, JSON.stringify(data, replacer), { mode: 0o600 });
  renameSync(`${path}.tmp`, path);
}

export const launchPath = (stateDir: string) => `${stateDir}/vm.json`;
export const pidsPath = (stateDir: string) => `${stateDir}/vm-pids.json`;

export function writeLaunch(stateDir: string, launch: VmLaunch): void {
  writeJsonAtomic(launchPath(stateDir), launch);
}

export function readLaunch(stateDir: string): VmLaunch {
  return JSON.parse(readFileSync(launchPath(stateDir), "utf8"), reviver) as VmLaunch;
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
