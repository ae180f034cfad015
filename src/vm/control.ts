/**
 * `pause`, `resume` and `ps` for VM-mode containers. The container's cgroup
 * is in the guest; what the host has is the VM: `pause` stops every vCPU
 * (QMP stop, through the host process's control socket), which freezes the
 * container and everything else in its guest at once, and `resume`
 * continues them. The host process marks a paused VM in the state directory,
 * so the status reads "paused" as with runc. `ps` lists the host processes
 * that make up the container: the host process, the VMM and virtiofsd.
 * `update` writes the guest's cgroup v2 files (container mode's conversions,
 * src/vm/guest-cgroup.ts) through a channel session whose plan is only those
 * writes; the VM's size stays what `create` chose. `events` reads the guest
 * cgroup's files (READ frames) and runs container mode's v2 stats readers on
 * them.
 */
import { existsSync } from "node:fs";
import { connect } from "node:net";
import type { RuntimeContext } from "../linux/container.ts";
import { containerStatus } from "../linux/container.ts";
import { isSameLiveProcess } from "../state/proc.ts";
import { validateContainerId, type ContainerRecord } from "../state/store.ts";
import { ContainerError } from "../util/errors.ts";
import { Control, encodeFrame, Frame, FrameReader, u32Payload } from "./channel.ts";
import { GUEST_CGROUP } from "./config.ts";
import { ControlFiles } from "../cgroups/control-files.ts";
import { emptyStats, type CgroupStats } from "../cgroups/stats.ts";
import { readV2CpuStats, readV2IoStats, readV2MemoryStats, readV2OomKills } from "../cgroups/v2.ts";
import { readPidsStats } from "../cgroups/shared.ts";
import { VmError } from "./driver.ts";
import { guestCgroupOps } from "./guest-cgroup.ts";
import { memberPath, readJson, readLaunch, readPids } from "./launch.ts";
import type { LinuxResources } from "../spec/types.ts";

/** One Control request to the host process; resolves when it replied ok. */
export function controlRequest(socketPath: string, type: (typeof Control)["PAUSE" | "RESUME" | "RESIZE_INIT"], timeoutMs = 10_000, payload?: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new VmError("vm-control-timeout", `no answer from the VM's host process within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (error?: Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve();
    };
    const reader = new FrameReader((frameType, payload) => {
      if (frameType !== Control.REPLY) return;
      const body = JSON.parse(new TextDecoder().decode(payload)) as { ok?: boolean; error?: string; code?: string };
      done(body.ok ? undefined : new VmError(body.code ?? "vm-control-failed", body.error ?? "failed"));
    });
    socket.on("connect", () => socket.write(encodeFrame(type, payload)));
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
    socket.on("error", (e) => done(new VmError("vm-not-running", `cannot reach the VM's host process (${socketPath}): ${e.message}`)));
    socket.on("close", () => done(new VmError("vm-not-running", "the VM's host process closed the control socket")));
  });
}

/**
 * pause/resume/update/stats act on the whole VM or its one cgroup: for a
 * container that joined its pod sandbox's VM (pod.ts) that would be the
 * sandbox's and every member's. Refused, naming the sandbox.
 */
function refuseForPodMember(ctx: RuntimeContext, id: string, verb: string): void {
  const path = memberPath(ctx.store.dir(id));
  if (!existsSync(path)) return;
  const { sandboxId } = readJson<{ sandboxId: string }>(path);
  throw new VmError("vm-pod-member", `${verb}: container ${id} runs in the VM of its pod sandbox ${sandboxId}, whose VM and cgroup it shares; ${verb} the sandbox instead`);
}

export async function pauseOrResumeVm(ctx: RuntimeContext, id: string, what: "pause" | "resume"): Promise<void> {
  const lock = ctx.store.lock(validateContainerId(id));
  try {
    refuseForPodMember(ctx, id, what);
    const record = ctx.store.read(id);
    const status = containerStatus(ctx, record);
    if (what === "pause" && status !== "running" && status !== "created") throw new ContainerError("container-not-running", `container ${id} is not running (${status})`);
    if (what === "resume" && status !== "paused") throw new ContainerError("container-not-paused", `container ${id} is not paused`);
    await controlRequest(readLaunch(ctx.store.dir(id)).controlSocket, what === "pause" ? Control.PAUSE : Control.RESUME);
  } finally {
    lock.release();
  }
}

/** The window size of a VM-mode container's init terminal (the shim's ResizePty); not for a pod member. */
export async function resizeVmInit(ctx: RuntimeContext, id: string, rows: number, cols: number): Promise<void> {
  refuseForPodMember(ctx, id, "resize");
  await controlRequest(readLaunch(ctx.store.dir(id)).controlSocket, Control.RESIZE_INIT, 10_000, u32Payload(rows, cols));
}

/** The host pids of a VM-mode container: its host process, the VMM, virtiofsd (those alive). */
export function vmProcesses(ctx: RuntimeContext, record: ContainerRecord): number[] {
  if (containerStatus(ctx, record) === "stopped") return [];
  const pids = readPids(ctx.store.dir(record.id));
  return [pids?.host, pids?.vmm, pids?.virtiofsd]
    .filter((ref) => ref && isSameLiveProcess(ref.pid, ref.startTime))
    .map((ref) => ref!.pid)
    .sort((a, b) => a - b);
}

export async function updateVm(ctx: RuntimeContext, id: string, resources: LinuxResources, merge: (base: LinuxResources, change: LinuxResources) => LinuxResources): Promise<void> {
  const lock = ctx.store.lock(validateContainerId(id));
  try {
    refuseForPodMember(ctx, id, "update");
    const record = ctx.store.read(id);
    const status = containerStatus(ctx, record);
    if (status === "stopped" || status === "creating") throw new ContainerError("container-not-running", `container ${id} is ${status}`);
    // A stopped VM runs nothing, the writes included.
    if (status === "paused") throw new ContainerError("container-paused", `container ${id} is paused: its VM cannot apply an update until \`resume\``);
    const { ops, notes } = guestCgroupOps(resources);
    for (const note of notes) ctx.log.warn(note);
    const writes = ops.filter((op) => !String(op.args[0]).endsWith("/cgroup.procs"));
    if (writes.length) {
      const { runExecRelay } = await import("./exec.ts");
      const exit = await runExecRelay({ id, controlSocket: readLaunch(ctx.store.dir(id)).controlSocket, ops: writes, trace: ctx.tracer.enabled, oneShot: true }, ctx.log, () => {});
      if (exit !== 0) throw new VmError("vm-update-failed", `container ${id}: the guest's cgroup update exited ${exit}`);
    }
    const linux = (record.spec.linux ??= {});
    linux.resources = merge(linux.resources ?? {}, resources);
    ctx.store.write(record);
  } finally {
    lock.release();
  }
}

/** The files container mode's v2 stats readers look at (hugetlb: the guest has none). */
const STATS_FILES = [
  "cpu.stat",
  "memory.stat",
  "memory.events",
  "memory.max",
  "memory.current",
  "memory.peak",
  "memory.swap.max",
  "memory.swap.current",
  "memory.swap.events",
  "pids.current",
  "pids.max",
  "io.stat",
];

/** Read guest files through the host process (READ/FILE frames); a missing file is undefined. */
export function readGuestFiles(socketPath: string, paths: readonly string[], timeoutMs = 10_000): Promise<Map<string, string | undefined>> {
  return new Promise((resolve, reject) => {
    const got = new Map<string, string | undefined>();
    const socket = connect(socketPath);
    const timer = setTimeout(() => done(new VmError("vm-control-timeout", `no answer from the VM's host process within ${timeoutMs} ms`)), timeoutMs);
    const done = (error?: Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(got);
    };
    // Answers come in the order asked.
    const reader = new FrameReader((type, payload) => {
      if (type !== Frame.FILE) return;
      const path = paths[got.size]!;
      const errno = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true);
      got.set(path, errno ? undefined : new TextDecoder().decode(payload.subarray(4)));
      if (got.size === paths.length) done();
    });
    socket.on("connect", () => {
      for (const path of paths) socket.write(encodeFrame(Frame.READ, path));
    });
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
    socket.on("error", (e) => done(new VmError("vm-not-running", `cannot reach the VM's host process (${socketPath}): ${e.message}`)));
    socket.on("close", () => done(new VmError("vm-not-running", "the VM's host process closed the control socket")));
  });
}

/** ControlFiles over contents read beforehand: the stats readers stay container mode's. */
class FetchedControlFiles extends ControlFiles {
  constructor(private readonly files: Map<string, string | undefined>) {
    super();
  }
  override has(dir: string, file: string): boolean {
    return this.files.get(`${dir}/${file}`) !== undefined;
  }
  override read(dir: string, file: string): string | undefined {
    return this.files.get(`${dir}/${file}`);
  }
}

async function guestCgroupFiles(ctx: RuntimeContext, record: ContainerRecord): Promise<ControlFiles> {
  refuseForPodMember(ctx, record.id, "events --stats");
  const socket = readLaunch(ctx.store.dir(record.id)).controlSocket;
  return new FetchedControlFiles(await readGuestFiles(socket, STATS_FILES.map((f) => `${GUEST_CGROUP}/${f}`)));
}

function statsFrom(io: ControlFiles): CgroupStats {
  const stats = emptyStats();
  readV2CpuStats(io, GUEST_CGROUP, stats);
  readV2MemoryStats(io, GUEST_CGROUP, stats);
  readPidsStats(io, GUEST_CGROUP, stats);
  readV2IoStats(io, GUEST_CGROUP, stats);
  return stats;
}

function liveVmRecord(ctx: RuntimeContext, id: string): ContainerRecord {
  const record = ctx.store.read(validateContainerId(id));
  const status = containerStatus(ctx, record);
  if (status === "stopped" || status === "creating") throw new ContainerError("container-not-running", `container ${id} is ${status}`);
  if (status === "paused") throw new ContainerError("container-paused", `container ${id} is paused: its VM cannot answer until \`resume\``);
  return record;
}

/** `events --stats` for a VM-mode container: the guest cgroup's stats, in runc's shape. */
export async function vmStats(ctx: RuntimeContext, id: string): Promise<{ type: "stats"; id: string; data: unknown }> {
  return { type: "stats", id, data: statsFrom(await guestCgroupFiles(ctx, liveVmRecord(ctx, id))) };
}

/** `events`: stats every interval, "oom" when the guest cgroup's OOM-kill count grows; ends with the container. */
export async function streamVmEvents(ctx: RuntimeContext, id: string, intervalMs: number, emit: (event: object) => void, shouldStop: () => boolean): Promise<void> {
  let ooms = readV2OomKills(await guestCgroupFiles(ctx, liveVmRecord(ctx, id)), GUEST_CGROUP);
  while (!shouldStop()) {
    let io: ControlFiles;
    try {
      io = await guestCgroupFiles(ctx, liveVmRecord(ctx, id));
    } catch {
      return; // stopped (the VM went with it), or deleted
    }
    const now = readV2OomKills(io, GUEST_CGROUP);
    if (now > ooms) emit({ type: "oom", id });
    ooms = now;
    emit({ type: "stats", id, data: statsFrom(io) });
    await Bun.sleep(intervalMs);
  }
}
