/**
 * runc's operational verbs on a live container: pause/resume (freezer), ps,
 * update (resources), events (stats and OOM notices). All of them go through
 * the container's cgroup; for a VM-mode container, whose cgroup is in the
 * guest, src/vm/control.ts does them through its host process.
 */
import type { LinuxResources } from "../spec/types.ts";
import { DEFAULT_ALLOWED_DEVICE_RULES, type CgroupManager } from "../cgroups/index.ts";
import { validateContainerId, type ContainerRecord } from "../state/store.ts";
import { ContainerError } from "../util/errors.ts";
import { containerStatus, reopenRecordCgroup, type RuntimeContext } from "./container.ts";
import { vmProcesses } from "../vm/control.ts";

function liveCgroup(ctx: RuntimeContext, id: string): { record: ContainerRecord; cgroup: CgroupManager } {
  const record = ctx.store.read(validateContainerId(id));
  const cgroup = reopenRecordCgroup(record);
  if (!cgroup) throw new ContainerError("no-cgroup", `container ${id} has no cgroup`);
  return { record, cgroup };
}

/** VM mode: the whole VM stops (src/vm/control.ts); the promise is VM mode's only. */
export function pauseContainer(ctx: RuntimeContext, id: string): void | Promise<void> {
  if (ctx.store.read(validateContainerId(id)).mode === "vm") return import("../vm/control.ts").then((vm) => vm.pauseOrResumeVm(ctx, id, "pause"));
  const lock = ctx.store.lock(validateContainerId(id));
  try {
    const { record, cgroup } = liveCgroup(ctx, id);
    const status = containerStatus(ctx, record);
    if (status !== "running" && status !== "created") throw new ContainerError("container-not-running", `container ${id} is not running (${status})`);
    cgroup.freeze();
  } finally {
    lock.release();
  }
}

export function resumeContainer(ctx: RuntimeContext, id: string): void | Promise<void> {
  if (ctx.store.read(validateContainerId(id)).mode === "vm") return import("../vm/control.ts").then((vm) => vm.pauseOrResumeVm(ctx, id, "resume"));
  const lock = ctx.store.lock(validateContainerId(id));
  try {
    const { record, cgroup } = liveCgroup(ctx, id);
    if (containerStatus(ctx, record) !== "paused") throw new ContainerError("container-not-paused", `container ${id} is not paused`);
    cgroup.thaw();
  } finally {
    lock.release();
  }
}

/** VM mode: the host processes that make up the container (src/vm/control.ts), not the guest's. */
export function containerProcesses(ctx: RuntimeContext, id: string): number[] {
  const found = ctx.store.read(validateContainerId(id));
  if (found.mode === "vm") return vmProcesses(ctx, found);
  const { record, cgroup } = liveCgroup(ctx, id);
  if (containerStatus(ctx, record) === "stopped") return [];
  return cgroup.processes().sort((a, b) => a - b);
}

/** `update`: apply new resource values to a running container and remember them. */
export function updateContainer(ctx: RuntimeContext, id: string, resources: LinuxResources): void | Promise<void> {
  // VM mode: the guest's cgroup v2, through a channel session (src/vm/control.ts).
  if (ctx.store.read(validateContainerId(id)).mode === "vm") return import("../vm/control.ts").then((vm) => vm.updateVm(ctx, id, resources, mergeResources));
  const lock = ctx.store.lock(validateContainerId(id));
  try {
    const { record, cgroup } = liveCgroup(ctx, id);
    if (containerStatus(ctx, record) === "stopped") throw new ContainerError("container-not-running", `container ${id} is stopped`);
    // New device rules replace the old ones: keep the defaults every container gets.
    cgroup.applyResources(resources.devices ? { ...resources, devices: [...resources.devices, ...DEFAULT_ALLOWED_DEVICE_RULES] } : resources, { update: true });
    const linux = (record.spec.linux ??= {});
    linux.resources = mergeResources(linux.resources ?? {}, resources);
    ctx.store.write(record);
  } finally {
    lock.release();
  }
}

function mergeResources(base: LinuxResources, change: LinuxResources): LinuxResources {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(change)) {
    const prior = out[key];
    out[key] =
      value && typeof value === "object" && !Array.isArray(value) && prior && typeof prior === "object" && !Array.isArray(prior)
        ? { ...prior, ...value }
        : value;
  }
  return out as LinuxResources;
}

export function containerStats(ctx: RuntimeContext, id: string): { type: "stats"; id: string; data: unknown } | Promise<{ type: "stats"; id: string; data: unknown }> {
  // VM mode: the guest cgroup's files, read through the host process (src/vm/control.ts).
  if (ctx.store.read(validateContainerId(id)).mode === "vm") return import("../vm/control.ts").then((vm) => vm.vmStats(ctx, id));
  const { cgroup } = liveCgroup(ctx, id);
  return { type: "stats", id, data: cgroup.stats() };
}

/** The event stream: stats every interval, and an "oom" event whenever the OOM-kill count grows. */
export async function streamEvents(
  ctx: RuntimeContext,
  id: string,
  intervalMs: number,
  emit: (event: object) => void,
  shouldStop: () => boolean = () => false,
): Promise<void> {
  if (ctx.store.read(validateContainerId(id)).mode === "vm") return (await import("../vm/control.ts")).streamVmEvents(ctx, id, intervalMs, emit, shouldStop);
  const { record, cgroup } = liveCgroup(ctx, id);
  let ooms = cgroup.oomKillCount();
  while (!shouldStop()) {
    const stopped = containerStatus(ctx, ctx.store.exists(id) ? ctx.store.read(id) : record) === "stopped";
    // Read the OOM count even when the container just stopped: the OOM killer
    // taking init is exactly what stops it, and that kill must be reported.
    const now = cgroup.oomKillCount();
    if (now > ooms) emit({ type: "oom", id });
    ooms = now;
    if (stopped) return;
    emit({ type: "stats", id, data: cgroup.stats() });
    await Bun.sleep(intervalMs);
  }
}
