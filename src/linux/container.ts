/**
 * Container-mode lifecycle: create, start, kill, delete (and the pieces `run`
 * combines). Policy lives here and in src/plan; the executor only carries out.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, realpathSync, statSync, unlinkSync, writeFileSync, renameSync, constants as fsConstants } from "node:fs";
import { resolve as resolvePath } from "node:path";
import type { Hook, Spec } from "../spec/types.ts";
import type { CgroupMountSource } from "../plan/build.ts";
import { openCgroupManager, ownCgroupPaths, reopenCgroupManager, undelegatedCgroupDir, DEFAULT_ALLOWED_DEVICE_RULES, type CgroupManager } from "../cgroups/index.ts";
import type { LinuxResources } from "../spec/types.ts";
import { StateStore, newContainerRecord, validateContainerId, type ContainerRecord, type ContainerStatus, notExist } from "../state/store.ts";
import { isSameLiveProcess, readProcStat } from "../state/proc.ts";
import { ContainerError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";
import type { ExecutorRun, ExecutorStdio } from "./executor.ts";
import { executorPath } from "../util/home.ts";
import { Tracer } from "./trace.ts";
import { waitReadable } from "../util/libc.ts";
// What only `create` uses (spec validation, the plan builder, seccomp, the
// executor, hooks) is imported inside createContainer: every CLI call is a
// new process, and `start`, `state` and `delete` should not pay for it.

export interface RuntimeContext {
  store: StateStore;
  log: Logger;
  tracer: Tracer;
  /** --mode (default container); the spec's io.nanokata.mode annotation overrides it. */
  mode?: "container" | "vm";
}

export interface CreateOptions {
  id: string;
  bundle: string;
  pidFile?: string;
  consoleSocket?: string;
  noPivot: boolean;
  noNewKeyring: boolean;
  preserveFds: number;
  /** `run` in the foreground: the executor stays as the container's parent. */
  foreground: boolean;
  /** The container's stdio (the containerd shim passes fifo fds); default: the runtime's own. */
  stdio?: ExecutorStdio;
  /** Wait for the executor with blocking reads (a CLI call); default: on the event loop (the shim). */
  blocking?: boolean;
}

const OCI_VERSION = "1.2.0";

/** The user who owns the container (runc's `owner` in state and list). */
function callerName(): string {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require("node:os") as typeof import("node:os")).userInfo().username;
  } catch {
    return String(process.getuid?.() ?? "");
  }
}

/** Build and carry out the plan; on any failure, nothing is left behind. */
export async function createContainer(ctx: RuntimeContext, opts: CreateOptions): Promise<ExecutorRun & { record: ContainerRecord }> {
  const id = validateContainerId(opts.id);
  const bundleDir = resolvePath(opts.bundle || ".");
  const [{ loadSpec }, validate, { buildContainerPlan }, { runExecutor }, { compileContainerSeccomp }, { runHooks }, { describeLsm, detectLsm }, rootless] =
    await Promise.all([
      import("../spec/load.ts"),
      import("../spec/validate.ts"),
      import("../plan/build.ts"),
      import("./executor.ts"),
      import("./seccomp.ts"),
      import("../hooks/run.ts"),
      import("./lsm.ts"),
      import("./rootless.ts"),
    ]);
  const { assertPrivateStateRoot, callerFacts, refuseLimitsWithoutCgroup, tmpStateRoot, withoutDeviceRules } = rootless;
  const assertValidSpec: typeof validate.assertValidSpec = validate.assertValidSpec;
  const { spec, bundle } = loadSpec(bundleDir);
  assertValidSpec(spec, { bundle, forCreate: true });
  if (spec.annotations?.["io.nanokata.mode"] !== undefined || ctx.mode === "vm") {
    const vm = await import("../vm/container.ts");
    if (vm.selectMode(spec, ctx.mode) === "vm") return vm.createVmContainer(ctx, opts, { spec, bundle });
  }
  const rootfs = realpathSync(resolvePath(bundle, spec.root!.path));
  const caller = callerFacts();
  const lsm = detectLsm();
  ctx.log.debug(describeLsm(lsm));
  if (caller.rootless) {
    ctx.log.debug(`rootless: uid ${caller.euid} gid ${caller.egid}; newuidmap ${caller.newuidmap ?? "absent"}, newgidmap ${caller.newgidmap ?? "absent"}`);
    if (ctx.store.root === tmpStateRoot(caller.euid)) assertPrivateStateRoot(ctx.store.root, caller.euid);
  }

  const lock = ctx.store.claim(id);
  let cgroup: CgroupManager | undefined;
  // Only a cgroup this create made is this create's to empty and remove: one
  // that already existed with processes in it (create() refuses it) belongs
  // to someone else, whose processes a cleanup must not kill.
  let cgroupCreated = false;
  let initPid = 0;
  try {
    const record = newContainerRecord({ id, spec, bundle, rootfs, mode: "container", owner: callerName() });
    cgroup = openCgroupManager({ cgroupsPath: spec.linux?.cgroupsPath, id, warn: (m) => ctx.log.warn(m) });
    let cgroupMounts = cgroupMountSources(cgroup.paths);
    let resources = effectiveResources(spec);
    if (caller.rootless) {
      const blocked = undelegatedCgroupDir(cgroup.paths);
      if (blocked) {
        refuseLimitsWithoutCgroup(spec.linux?.resources, blocked, caller.euid);
        const why = `rootless: no cgroup for container ${id}: ${blocked} is not writable by uid ${caller.euid} (not delegated); the container stays in the caller's cgroup`;
        // A cgroupsPath the config asked for and did not get is worth a warning (runc even fails then); the default one is not.
        if (spec.linux?.cgroupsPath) ctx.log.warn(`linux.cgroupsPath ${JSON.stringify(spec.linux.cgroupsPath)} ignored: ${why}`);
        else ctx.log.debug(why);
        ctx.tracer.note(why);
        cgroupMounts = cgroupMountSources(ownCgroupPaths());
        cgroup = undefined;
      } else if (resources?.devices) {
        ctx.log.debug("rootless: linux.resources.devices not applied (device cgroup rules need root; the container has only the host's device nodes bound in)");
        resources = withoutDeviceRules(resources);
      }
    }
    // Saved before any cgroup directory exists: a create that dies from here
    // on leaves a record from which `delete` can clean up.
    record.cgroup = cgroup?.toJSON();
    ctx.store.write(record);
    const plan = buildContainerPlan({
      spec,
      bundle,
      rootfs,
      fifoDir: ctx.store.dir(id),
      consoleSocket: opts.consoleSocket,
      noPivot: opts.noPivot,
      noNewKeyring: opts.noNewKeyring,
      preserveFds: opts.preserveFds,
      foreground: opts.foreground,
      containerId: id,
      cgroupMounts,
      seccomp: await compileContainerSeccomp(spec, ctx, { id, bundle, listenerAllowed: true }),
      isDirectory: (p) => {
        try {
          return statSync(p).isDirectory();
        } catch {
          return true;
        }
      },
      caller,
      lsm,
    });
    ctx.tracer.setRootfs(rootfs);
    for (const note of plan.notes) {
      ctx.log.warn(note);
      ctx.tracer.note(note);
    }
    const manager = cgroup;
    const run = await runExecutor(plan.ops, {
      preserveFds: opts.preserveFds,
      stdio: opts.stdio,
      tracer: ctx.tracer,
      blocking: opts.blocking,
      // The cgroup does not need init's pid: make it and set its limits while
      // the executor starts (init waits for "go" before it runs anything of
      // the container's, so the limits are in place before it joins).
      onSpawned: () => {
        if (!manager) return;
        manager.create();
        cgroupCreated = true;
        record.cgroup = manager.toJSON();
        ctx.tracer.runtime(`cgroup create ${Object.values(manager.paths)[0] ?? ""}`, "linux.cgroupsPath");
        manager.applyResources(resources);
        if (spec.linux?.resources) ctx.tracer.runtime("cgroup apply resources", "linux.resources");
      },
      onPid: (pid) => {
        initPid = pid;
        record.pid = pid;
        record.pidStartTime = readProcStat(pid)?.startTime ?? "";
        ctx.store.write(record);
        if (!manager) return;
        manager.addProcess(pid);
        ctx.tracer.runtime(`cgroup add pid ${pid}`, "linux.cgroupsPath");
      },
      onSync: async (name) => {
        // "startContainer": only the state those hooks read (init runs them after `start`).
        if (name === "startContainer") return JSON.stringify(hookState(record, "created"));
        // "hooks": ours run here; init runs the createContainer hooks next, in the container's namespaces.
        const state = hookState(record, "creating");
        for (const kind of ["prestart", "createRuntime"] as const) {
          await runHooks(kind, spec.hooks?.[kind], state);
          if (spec.hooks?.[kind]?.length) ctx.tracer.runtime(`ran ${spec.hooks[kind]!.length} ${kind} hook(s)`, `hooks.${kind}`);
        }
        return JSON.stringify(state);
      },
    });
    record.phase = "created";
    ctx.store.write(record);
    ctx.tracer.runtime(`state ${ctx.store.dir(id)}/state.json: created, pid ${run.initPid}`, "create");
    if (opts.pidFile) writePidFile(opts.pidFile, run.initPid);
    return { ...run, record };
  } catch (error) {
    initPid ||= (error as { initPid?: number }).initPid ?? 0;
    await cleanupFailedCreate(ctx, id, initPid, cgroupCreated ? cgroup : undefined);
    throw error;
  } finally {
    lock.release();
  }
}

async function cleanupFailedCreate(ctx: RuntimeContext, id: string, pid: number, cgroup: CgroupManager | undefined): Promise<void> {
  if (pid > 0) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
    await waitForExit(pid, undefined, 2000);
  }
  try {
    cgroup?.killAll(9);
    cgroup?.destroy();
  } catch (e) {
    ctx.log.warn(`cleanup of container ${id}: ${(e as Error).message}`);
  }
  ctx.store.remove(id);
}

/**
 * The spec's device rules plus runc's default set (null, zero, full, random,
 * urandom, tty, ptmx, pts), appended after the spec's own rules as runc does.
 * Nodes listed in linux.devices get no rule of their own: the spec's
 * linux.resources.devices decides whether the container may use them.
 */
export function effectiveResources(spec: Spec): LinuxResources | undefined {
  const resources = spec.linux?.resources;
  if (!resources?.devices) return resources;
  return { ...resources, devices: [...resources.devices, ...DEFAULT_ALLOWED_DEVICE_RULES] };
}

/** What each `cgroup` mount in the container shows, from the container's cgroup paths (CgroupManager.paths). */
function cgroupMountSources(paths: Record<string, string>): CgroupMountSource[] {
  // Co-mounted controllers (cpu,cpuacct) share one hierarchy: one mount for all of them.
  const byHierarchy = new Map<string, string[]>();
  for (const [controller, hostPath] of Object.entries(paths)) {
    byHierarchy.set(hostPath, [...(byHierarchy.get(hostPath) ?? []), controller]);
  }
  const sources: CgroupMountSource[] = [];
  for (const [hostPath, controllers] of byHierarchy) {
    if (controllers.includes("unified")) {
      if (byHierarchy.size === 1) sources.push({ dirName: "", fstype: "cgroup2", data: "", hostPath });
      continue;
    }
    const named = controllers.find((c) => c.startsWith("name="));
    const dirName = named ? named.slice(5) : controllers.sort().join(",");
    sources.push({ dirName, fstype: "cgroup", data: named ? `none,${named}` : controllers.join(","), hostPath });
  }
  return sources;
}

function writePidFile(path: string, pid: number): void {
  // Atomic, like runc: a reader never sees a half-written pid.
  const temp = `${path}.${process.pid}.tmp`;
  writeFileSync(temp, String(pid));
  renameSync(temp, path);
}

export function containerStatus(ctx: RuntimeContext, record: ContainerRecord): ContainerStatus {
  return ctx.store.status(record, () => {
    // VM mode: `pause` stops the whole VM; the host process marks it (src/vm/launch.ts pausedMarker).
    if (record.mode === "vm") return existsSync(`${ctx.store.dir(record.id)}/vm-paused`);
    const cgroup = reopenRecordCgroup(record);
    try {
      return cgroup?.state() === "frozen";
    } catch {
      return false;
    }
  });
}

export function reopenRecordCgroup(record: ContainerRecord): CgroupManager | undefined {
  return record.cgroup ? reopenCgroupManager(record.cgroup as never) : undefined;
}

/** `start`: release init from the exec fifo so it execs the user process. */
export async function startContainer(ctx: RuntimeContext, id: string): Promise<ContainerRecord> {
  validateContainerId(id);
  const lock = ctx.store.lock(id);
  try {
    const record = ctx.store.read(id);
    const status = containerStatus(ctx, record);
    if (status === "stopped") throw new ContainerError("container-stopped", `cannot start container ${id}: it has stopped`);
    if (status !== "created") throw new ContainerError("container-not-created", `cannot start container ${id}: it is already ${status}`);
    const fifo = ctx.store.fifoPath(id);
    const fd = openSync(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    try {
      const byte = new Uint8Array(1);
      const deadline = Date.now() + 10_000;
      // Init's blocking open returns once we hold the read end; then it writes one byte.
      const readByte = (): boolean => {
        try {
          return readSync(fd, byte, 0, 1, null) === 1;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
          return false;
        }
      };
      // poll(2) wakes us the moment init writes, instead of a sleep-and-retry
      // loop paying up to a tick per round.
      let woke = false;
      for (;;) {
        if (readByte()) break;
        // A short-lived process may open, write, exec and exit between our
        // read and this check: its byte is then waiting in the fifo.
        if (!isSameLiveProcess(record.pid, record.pidStartTime) && !readByte()) {
          const seen = readProcStat(record.pid);
          const what = !seen ? "gone" : seen.startTime !== record.pidStartTime ? `another process (start time ${seen.startTime}, recorded ${record.pidStartTime})` : `state ${seen.state}`;
          throw new ContainerError("container-stopped", `container ${id}: init exited before it could start (pid ${record.pid}: ${what})`);
        }
        if (Date.now() > deadline) throw new ContainerError("start-timeout", `container ${id}: init did not take the start signal`);
        // Readable yet empty: a writer came and went (hang-up); do not spin on it.
        if (woke) Bun.sleepSync(1);
        woke = waitReadable(fd, 50);
      }
    } finally {
      closeSync(fd);
    }
    unlinkSync(fifo);
    ctx.tracer.runtime(`open ${fifo}: init released to exec`, "start");
    const hooks = record.spec.hooks;
    if (hooks?.startContainer?.length || hooks?.poststart?.length) {
      // runtime-spec: poststart runs after the user's process is executed, and
      // a failed startContainer hook is an error of `start`. Init runs those
      // hooks after the fifo, so wait for its execve (or its death).
      const outcome = await waitForUserProcess(record, hooks.startContainer);
      ctx.tracer.runtime(`wait for init to execve process.args: ${outcome}`, hooks.startContainer?.length ? "hooks.startContainer" : "hooks.poststart");
      if (outcome === "died") {
        throw new ContainerError(
          "container-start-failed",
          `container ${id}: init exited before running process.args (a hooks.startContainer hook failed; the container's stderr says which)`,
        );
      }
    }
    if (record.spec.hooks?.poststart?.length) {
      const { runHooksLoggingFailures } = await import("../hooks/run.ts");
      await runHooksLoggingFailures("poststart", record.spec.hooks.poststart, hookState(record, "running"), (m) => ctx.log.warn(m));
      ctx.tracer.runtime(`ran ${record.spec.hooks.poststart.length} poststart hook(s)`, "hooks.poststart");
    }
    return record;
  } finally {
    lock.release();
  }
}

/**
 * After `start` released init: "exec" once init runs the container's program,
 * "died" if it exited still being the executor, "gone" if it was reaped before
 * we could tell, "timeout" past the startContainer hooks' timeouts (30 s each
 * when unset).
 */
async function waitForUserProcess(record: ContainerRecord, startHooks: readonly Hook[] | undefined): Promise<"exec" | "died" | "gone" | "timeout"> {
  const budgetMs = (startHooks ?? []).reduce((sum, h) => sum + (h.timeout ?? 30) * 1000, 0) + 5_000;
  const deadline = Date.now() + budgetMs;
  let executor: { dev: number; ino: number } | undefined;
  try {
    const st = statSync(executorPath());
    executor = { dev: st.dev, ino: st.ino };
  } catch {}
  for (;;) {
    const stat = readProcStat(record.pid);
    if (!stat || stat.startTime !== record.pidStartTime) return "gone";
    if (stat.state === "Z" || stat.state === "X") {
      // A zombie keeps its last name: still the executor's means no execve happened.
      try {
        return readFileSync(`/proc/${record.pid}/comm`, "utf8").trim() === "nk-exec" ? "died" : "exec";
      } catch {
        return "gone";
      }
    }
    try {
      const exe = statSync(`/proc/${record.pid}/exe`);
      if (!executor || exe.dev !== executor.dev || exe.ino !== executor.ino) return "exec";
    } catch {}
    if (Date.now() > deadline) return "timeout";
    await Bun.sleep(1);
  }
}

export function killContainer(ctx: RuntimeContext, id: string, signal: number, all: boolean): void {
  validateContainerId(id);
  const record = ctx.store.read(id);
  const status = containerStatus(ctx, record);
  if (status === "stopped" || status === "creating") throw new ContainerError("container-not-running", `container ${id} is not running (${status})`);
  if (all) {
    const cgroup = reopenRecordCgroup(record);
    if (cgroup) {
      cgroup.killAll(signal);
      return;
    }
  }
  process.kill(record.pid, signal);
}

export interface DeleteOptions {
  force: boolean;
}

/** `delete`: stop what remains (created, or anything with --force), remove the cgroup and the state. */
export async function deleteContainer(ctx: RuntimeContext, id: string, opts: DeleteOptions): Promise<void> {
  validateContainerId(id);
  if (!existsSync(ctx.store.dir(id))) {
    if (opts.force) return; // runc: --force on a container that is already gone succeeds.
    throw notExist(id);
  }
  const lock = ctx.store.lock(id);
  try {
    let record: ContainerRecord;
    try {
      record = ctx.store.read(id);
    } catch {
      // A create that died before writing its state: nothing but the directory to remove.
      ctx.store.remove(id);
      if (opts.force) return;
      throw notExist(id);
    }
    const status = containerStatus(ctx, record);
    if ((status === "running" || status === "paused" || status === "creating") && !opts.force) {
      throw new ContainerError("container-not-stopped", `cannot delete container ${id} that is not stopped: ${status}`);
    }
    await destroyContainer(ctx, record, status);
  } finally {
    lock.release();
  }
}

export async function destroyContainer(ctx: RuntimeContext, record: ContainerRecord, status: ContainerStatus): Promise<void> {
  const cgroup = reopenRecordCgroup(record);
  if (status !== "stopped") {
    if (status === "paused") cgroup?.thaw();
    try {
      process.kill(record.pid, "SIGKILL");
    } catch {}
    await waitForExit(record.pid, record.pidStartTime, 5000);
  }
  if (cgroup) {
    // Without a pid namespace, processes may outlive init: they go with the container.
    try {
      if (cgroup.processes().length) cgroup.killAll(9);
    } catch {}
    cgroup.destroy();
    ctx.tracer.runtime("cgroup remove", "linux.cgroupsPath");
  }
  if (record.mode === "vm") await (await import("../vm/container.ts")).destroyVm(ctx.store.dir(record.id));
  if (record.spec.hooks?.poststop?.length && record.phase === "created") {
    const { runHooksLoggingFailures } = await import("../hooks/run.ts");
    await runHooksLoggingFailures("poststop", record.spec.hooks.poststop, hookState(record, "stopped"), (m) => ctx.log.warn(m));
  }
  ctx.store.remove(record.id);
}

/** Poll until pid is gone or a zombie (it is not our child, so we cannot wait(2) for it). */
export async function waitForExit(pid: number, startTime: string | undefined, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stat = readProcStat(pid);
    if (!stat || stat.state === "Z" || stat.state === "X" || (startTime && stat.startTime !== startTime)) return true;
    if (Date.now() > deadline) return false;
    await Bun.sleep(2);
  }
}

/** The state document hooks read on stdin (runtime-spec runtime.md "State"). */
export function hookState(record: ContainerRecord, status: ContainerStatus): object {
  return { ociVersion: record.ociVersion, id: record.id, status, pid: record.pid, bundle: record.bundle, annotations: record.annotations };
}

export function stateJson(ctx: RuntimeContext, record: ContainerRecord): object {
  const status = containerStatus(ctx, record);
  return {
    ociVersion: record.ociVersion || OCI_VERSION,
    id: record.id,
    pid: status === "stopped" ? 0 : record.pid,
    status,
    bundle: record.bundle,
    rootfs: record.rootfs,
    created: record.created,
    owner: record.owner,
    annotations: record.annotations,
  };
}

export type { Spec };
