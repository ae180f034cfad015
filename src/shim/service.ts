/**
 * The task service (containerd.task.v2.Task), carried out in-process with
 * the runtime's own library: createContainer/startContainer/... from
 * src/linux, no runtime CLI started per operation.
 *
 * The shim is the parent that learns exit statuses: every process (the
 * container's init and each exec) is started in the executor's MONITOR mode,
 * so the executor's stage0 stays as the process's parent and exits with its
 * status, which the shim receives as the child's 'exit'.
 *
 * Event order (runtime v2 contract): TaskCreate, then TaskStart before that
 * process's TaskExit (an exit that races Start waits for Start's event), the
 * exits of a container's execs before its init's TaskExit, TaskExit before
 * TaskDelete. The Publisher sends them one at a time in queue order.
 */
import { join } from "node:path";
import type { Process, LinuxResources } from "../spec/types.ts";
import type { CgroupStats } from "../cgroups/index.ts";
import { createContainer, deleteContainer, reopenRecordCgroup, startContainer, type RuntimeContext } from "../linux/container.ts";
import { execInContainer } from "../linux/exec.ts";
import { containerProcesses, pauseContainer, resumeContainer, updateContainer } from "../linux/operations.ts";
import type { ExecutorRun } from "../linux/executor.ts";
import { StateStore } from "../state/store.ts";
import { Tracer } from "../linux/trace.ts";
import { Logger } from "../util/log.ts";
import { NanoKataError } from "../util/errors.ts";
import { ProcessIO, type StdioPaths } from "./io.ts";
import { mountRootfs, unmountAll } from "./mount.ts";
import { resizeProcessTty } from "./tty.ts";
import { encodeMetricsV1, encodeMetricsV2 } from "./metrics.ts";
import type { Publisher } from "./events.ts";
import * as m from "./messages.ts";
import { EMPTY } from "./proto.ts";
import { Code, TtrpcError, type Handler } from "./ttrpc.ts";
import { SHIM_VERSION } from "./flags.ts";

export const RUNTIME_SPEC_PROCESS = "types.containerd.io/opencontainers/runtime-spec/1/Process";
export const RUNTIME_SPEC_RESOURCES = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

type ProcStatus = "created" | "running" | "stopped";

interface Proc {
  containerId: string;
  execId: string;
  io: StdioPaths;
  pid: number;
  status: ProcStatus;
  exitStatus: number;
  exitedAt?: Date;
  /** Resolves once the exit is recorded and its TaskExit queued. */
  exited: Promise<void>;
  markExited: () => void;
  /** Set while Start runs: the exit handler waits for it, so TaskStart goes first. */
  starting?: Promise<void>;
  stdio?: ProcessIO;
  run?: ExecutorRun;
  spec?: Process;
  /** An exec in a VM-mode task: its pid is a guest pid, signals and window sizes go through its channel session. */
  signalGuest?: (signo: number) => boolean;
  resizeGuest?: (rows: number, cols: number) => void;
}

interface Task {
  id: string;
  bundle: string;
  init: Proc;
  execs: Map<string, Proc>;
  rootfs?: string;
  paused: boolean;
  /** The container has its own pid namespace (its processes all die with init). */
  ownPidNamespace: boolean;
  oomTimer?: ReturnType<typeof setInterval>;
  oomCheck?: () => void;
  deleting?: Promise<m.DeleteResponse>;
}

export interface ServiceOptions {
  namespace: string;
  /** The runtime state root for this namespace's containers. */
  stateRoot: string;
  publisher: Publisher;
  log: (msg: string) => void;
  debug: boolean;
  /** Called after Shutdown, when no task is left: the daemon exits. */
  onShutdown: () => void;
}

function newProc(containerId: string, execId: string, io: StdioPaths): Proc {
  let markExited!: () => void;
  const exited = new Promise<void>((resolve) => (markExited = resolve));
  return { containerId, execId, io, pid: 0, status: "created", exitStatus: 0, exited, markExited };
}

function grpc(code: number, message: string): TtrpcError {
  return new TtrpcError(code, message);
}

/** Runtime errors carry a code; map the ones containerd distinguishes. */
function mapError(e: unknown): unknown {
  if (e instanceof TtrpcError) return e;
  if (e instanceof NanoKataError) {
    const c = e.code;
    if (c === "container-not-found") return grpc(Code.NOT_FOUND, e.message);
    if (c === "container-exists") return grpc(Code.ALREADY_EXISTS, e.message);
    if (c === "invalid-id") return grpc(Code.INVALID_ARGUMENT, e.message);
    if (c.startsWith("container-not-") || c === "container-stopped" || c === "container-paused") return grpc(Code.FAILED_PRECONDITION, e.message);
    return grpc(Code.UNKNOWN, e.message);
  }
  return e;
}

export class TaskService {
  readonly tasks = new Map<string, Task>();
  private readonly ctx: RuntimeContext;
  private shuttingDown = false;

  constructor(private readonly opts: ServiceOptions) {
    this.ctx = {
      store: new StateStore(opts.stateRoot),
      log: new Logger(undefined, "text", opts.debug),
      tracer: new Tracer(false),
      // containerd-shim-nanokata-vm-v2 (runtime_type io.containerd.nanokata-vm.v2): VM mode for every container
      // (the io.nanokata.mode annotation still wins, as with --mode).
      mode: process.env.NK_SHIM_MODE === "vm" ? "vm" : undefined,
    };
  }

  /** The ttrpc method table. */
  handlers(): Record<string, Handler> {
    const wrap =
      <T>(decode: (b: Uint8Array) => T, fn: (req: T) => Promise<Uint8Array> | Uint8Array): Handler =>
      async (payload) => {
        try {
          return await fn(decode(payload));
        } catch (e) {
          throw mapError(e);
        }
      };
    return {
      State: wrap(m.decodeProcessRef, (r) => this.state(r)),
      Create: wrap(m.decodeCreateTaskRequest, (r) => this.create(r)),
      Start: wrap(m.decodeProcessRef, (r) => this.start(r)),
      Delete: wrap(m.decodeProcessRef, (r) => this.delete(r)),
      Pids: wrap(m.decodeIdOnly, (r) => this.pids(r.id)),
      Pause: wrap(m.decodeIdOnly, (r) => this.pause(r.id)),
      Resume: wrap(m.decodeIdOnly, (r) => this.resume(r.id)),
      Checkpoint: () => {
        throw grpc(Code.UNIMPLEMENTED, "checkpoint is not supported by the nano-kata shim");
      },
      Kill: wrap(m.decodeKillRequest, (r) => this.kill(r)),
      Exec: wrap(m.decodeExecProcessRequest, (r) => this.exec(r)),
      ResizePty: wrap(m.decodeResizePtyRequest, (r) => this.resizePty(r)),
      CloseIO: wrap(m.decodeCloseIORequest, (r) => this.closeIO(r)),
      Update: wrap(m.decodeUpdateTaskRequest, (r) => this.update(r)),
      Wait: wrap(m.decodeProcessRef, (r) => this.wait(r)),
      Stats: wrap(m.decodeIdOnly, (r) => this.stats(r.id)),
      Connect: wrap(m.decodeIdOnly, (r) => this.connect(r.id)),
      Shutdown: wrap(m.decodeShutdownRequest, (r) => this.shutdown(r)),
    };
  }

  // ------------------------------------------------------------ lookups

  private task(id: string): Task {
    const t = this.tasks.get(id);
    if (!t) throw grpc(Code.NOT_FOUND, `task ${id} not found`);
    return t;
  }

  private proc(id: string, execId: string): { task: Task; proc: Proc } {
    const task = this.task(id);
    if (!execId) return { task, proc: task.init };
    const proc = task.execs.get(execId);
    if (!proc) throw grpc(Code.NOT_FOUND, `exec ${execId} of task ${id} not found`);
    return { task, proc };
  }

  // ------------------------------------------------------------ lifecycle

  async create(r: m.CreateTaskRequest): Promise<Uint8Array> {
    if (this.shuttingDown) throw grpc(Code.UNAVAILABLE, "shim is shutting down");
    if (!r.id) throw grpc(Code.INVALID_ARGUMENT, "task id is required");
    if (this.tasks.has(r.id)) throw grpc(Code.ALREADY_EXISTS, `task ${r.id} already exists`);
    if (r.checkpoint || r.parentCheckpoint) throw grpc(Code.UNIMPLEMENTED, "restoring from a checkpoint is not supported");
    const io: StdioPaths = { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal };
    const proc = newProc(r.id, "", io);
    const task: Task = { id: r.id, bundle: r.bundle, init: proc, execs: new Map(), paused: false, ownPidNamespace: true };
    // Claim the id now: a second Create for it while this one runs must fail.
    this.tasks.set(r.id, task);
    let mounted = false;
    try {
      if (r.rootfs.length) {
        task.rootfs = join(r.bundle, "rootfs");
        mountRootfs(r.rootfs, task.rootfs);
        mounted = true;
      }
      proc.stdio = ProcessIO.open(io);
      const created = await createContainer(this.ctx, {
        id: r.id,
        bundle: r.bundle,
        noPivot: false,
        noNewKeyring: false,
        preserveFds: 0,
        foreground: true,
        stdio: proc.stdio.stdio,
      });
      proc.pid = created.initPid;
      proc.run = created;
      task.ownPidNamespace = (created.record.spec.linux?.namespaces ?? []).some((n) => n.type === "pid" && !n.path);
      created.exited.then((code) => this.onExit(task, proc, code));
    } catch (e) {
      this.tasks.delete(r.id);
      proc.stdio?.close();
      if (mounted) {
        try {
          unmountAll(task.rootfs!);
        } catch {}
      }
      throw e;
    }
    this.opts.publisher.publish({
      topic: "/tasks/create",
      containerId: r.id,
      bundle: r.bundle,
      rootfs: r.rootfs,
      io,
      checkpoint: r.checkpoint,
      pid: proc.pid,
    });
    return m.encodePidResponse(proc.pid);
  }

  async start(r: m.ProcessRef): Promise<Uint8Array> {
    const { task, proc } = this.proc(r.id, r.execId);
    if (proc.status !== "created" || proc.starting) throw grpc(Code.FAILED_PRECONDITION, `${describe(proc)} cannot be started: it is ${proc.status}`);
    let done!: () => void;
    proc.starting = new Promise<void>((resolve) => (done = resolve));
    try {
      if (!r.execId) {
        await startContainer(this.ctx, task.id);
        if (proc.status === "created") proc.status = "running";
        this.opts.publisher.publish({ topic: "/tasks/start", containerId: task.id, pid: proc.pid });
        this.watchOom(task);
      } else {
        if (task.init.status === "stopped") throw grpc(Code.FAILED_PRECONDITION, `task ${task.id} has stopped`);
        if (this.ctx.store.read(task.id).mode === "vm") {
          await this.startVmExec(task, proc);
          return m.encodePidResponse(proc.pid);
        }
        proc.stdio = ProcessIO.open(proc.io);
        let run: ExecutorRun;
        try {
          run = await execInContainer(this.ctx, task.id, {
            process: proc.spec!,
            preserveFds: 0,
            detach: false,
            ignorePaused: false,
            stdio: proc.stdio.stdio,
          });
        } catch (e) {
          proc.stdio.close();
          proc.stdio = undefined;
          throw e;
        }
        proc.pid = run.initPid;
        proc.run = run;
        proc.status = "running";
        this.opts.publisher.publish({ topic: "/tasks/exec-started", containerId: task.id, execId: proc.execId, pid: proc.pid });
        run.exited.then((code) => this.onExit(task, proc, code));
      }
      return m.encodePidResponse(proc.pid);
    } finally {
      done();
      proc.starting = undefined;
    }
  }

  /**
   * An exec in a VM-mode task runs in a channel session of the task's VM
   * (src/vm/exec.ts), relayed by the shim itself: no stand-in process. Its
   * pid is the guest's (the only pid it has), and Kill goes through the
   * session.
   */
  private async startVmExec(task: Task, proc: Proc): Promise<void> {
    const { prepareVmExec, runExecRelay } = await import("../vm/exec.ts");
    const request = await prepareVmExec(this.ctx, this.ctx.store.read(task.id), { process: proc.spec!, preserveFds: 0, detach: false, ignorePaused: false });
    proc.stdio = ProcessIO.open(proc.io);
    const [input, output, errors] = proc.stdio.stdio;
    // "ignore": a write to fd -1 fails quietly in the relay, as to a closed pipe.
    const fd = (s: number | "ignore") => (typeof s === "number" ? s : -1);
    let started!: (pid: number) => void;
    let failed!: (e: unknown) => void;
    const running = new Promise<number>((resolve, reject) => ((started = resolve), (failed = reject)));
    const exited = runExecRelay(request, this.ctx.log, (pid) => started(pid), {
      stdio: { input: typeof input === "number" ? input : undefined, output: fd(output), errors: fd(errors) },
      forwardSignals: false,
      signaller: (signal) => (proc.signalGuest = signal),
      // A terminal: the guest's pty master is relayed to the fifos as is; ResizePty goes to it as RESIZE.
      resizer: (resize) => (proc.resizeGuest = resize),
    });
    exited.catch(failed);
    try {
      proc.pid = await running;
    } catch (e) {
      proc.stdio.close();
      proc.stdio = undefined;
      throw e;
    }
    proc.status = "running";
    this.opts.publisher.publish({ topic: "/tasks/exec-started", containerId: task.id, execId: proc.execId, pid: proc.pid });
    exited.then(
      (code) => this.onExit(task, proc, code),
      () => this.onExit(task, proc, 255),
    );
  }

  private async onExit(task: Task, proc: Proc, code: number): Promise<void> {
    // TaskStart (or TaskExecStarted) must be queued before this TaskExit.
    if (proc.starting) await proc.starting;
    proc.status = "stopped";
    proc.exitStatus = code;
    proc.exitedAt = new Date();
    proc.stdio?.close();
    if (proc === task.init) {
      if (task.oomTimer) {
        clearInterval(task.oomTimer);
        // An OOM kill of init itself ends the container before the next poll: look once more.
        task.oomCheck?.();
      }
      task.oomTimer = undefined;
      task.paused = false;
      // Without a pid namespace of its own, the container's other processes
      // outlive init: they go with it, as with runc's shim.
      if (!task.ownPidNamespace) this.killAllQuietly(task, 9);
      // The execs' exits first: containerd expects init's TaskExit last.
      const running = [...task.execs.values()].filter((p) => p.status === "running");
      if (running.length) {
        const timeout = Bun.sleep(5000).then(() => this.killAllQuietly(task, 9));
        await Promise.race([Promise.all(running.map((p) => p.exited)), timeout]);
        await Promise.all(running.map((p) => p.exited));
      }
    }
    this.opts.publisher.publish({
      topic: "/tasks/exit",
      containerId: task.id,
      id: proc.execId || task.id,
      pid: proc.pid,
      exitStatus: proc.exitStatus,
      exitedAt: proc.exitedAt,
    });
    proc.markExited();
  }

  private killAllQuietly(task: Task, signal: number): void {
    try {
      const record = this.ctx.store.read(task.id);
      reopenRecordCgroup(record)?.killAll(signal);
    } catch {}
  }

  private watchOom(task: Task): void {
    let cgroup: ReturnType<typeof reopenRecordCgroup>;
    let seen = 0;
    try {
      cgroup = reopenRecordCgroup(this.ctx.store.read(task.id));
      seen = cgroup?.oomKillCount() ?? 0;
    } catch {
      return;
    }
    if (!cgroup) return;
    task.oomCheck = () => {
      let now = seen;
      try {
        now = cgroup!.oomKillCount();
      } catch {}
      if (now > seen) this.opts.publisher.publish({ topic: "/tasks/oom", containerId: task.id });
      seen = now;
    };
    task.oomTimer = setInterval(task.oomCheck, 1000);
    task.oomTimer.unref?.();
  }

  async delete(r: m.ProcessRef): Promise<Uint8Array> {
    const { task, proc } = this.proc(r.id, r.execId);
    if (r.execId) {
      if (proc.status === "running" || proc.starting) throw grpc(Code.FAILED_PRECONDITION, `${describe(proc)} is still running`);
      task.execs.delete(r.execId);
      proc.stdio?.close();
      // A Wait on an exec that never started ends with its deletion.
      if (proc.status === "created") proc.markExited();
      return m.encodeDeleteResponse({ pid: proc.pid, exitStatus: proc.exitStatus, exitedAt: proc.exitedAt });
    }
    if (proc.status === "running") throw grpc(Code.FAILED_PRECONDITION, `cannot delete task ${task.id}: it is running`);
    task.deleting ??= this.deleteTask(task);
    return m.encodeDeleteResponse(await task.deleting);
  }

  private async deleteTask(task: Task): Promise<m.DeleteResponse> {
    const proc = task.init;
    try {
      if (proc.status === "created" && proc.pid > 0) {
        // Never started: init is still waiting on the exec fifo.
        try {
          process.kill(proc.pid, "SIGKILL");
        } catch {}
      }
      if (proc.run) await proc.exited;
      for (const e of task.execs.values()) if (e.status === "running") await e.exited;
      await deleteContainer(this.ctx, task.id, { force: true });
      if (task.rootfs) unmountAll(task.rootfs);
    } catch (e) {
      task.deleting = undefined;
      throw e;
    }
    for (const e of task.execs.values()) e.stdio?.close();
    proc.stdio?.close();
    this.tasks.delete(task.id);
    const exitedAt = proc.exitedAt ?? new Date();
    this.opts.publisher.publish({ topic: "/tasks/delete", containerId: task.id, pid: proc.pid, exitStatus: proc.exitStatus, exitedAt, id: "" });
    return { pid: proc.pid, exitStatus: proc.exitStatus, exitedAt };
  }

  state(r: m.ProcessRef): Uint8Array {
    const { task, proc } = this.proc(r.id, r.execId);
    let status: m.TaskStatus;
    if (proc.status === "created") status = m.TaskStatus.CREATED;
    else if (proc.status === "stopped") status = m.TaskStatus.STOPPED;
    else status = task.paused ? m.TaskStatus.PAUSED : m.TaskStatus.RUNNING;
    return m.encodeStateResponse({
      id: r.execId || task.id,
      bundle: task.bundle,
      pid: proc.pid,
      status,
      stdin: proc.io.stdin,
      stdout: proc.io.stdout,
      stderr: proc.io.stderr,
      terminal: proc.io.terminal,
      exitStatus: proc.exitStatus,
      exitedAt: proc.exitedAt,
      execId: r.execId,
    });
  }

  kill(r: m.KillRequest): Uint8Array {
    const { task, proc } = this.proc(r.id, r.execId);
    if (proc.status === "stopped" || proc.pid <= 0) throw grpc(Code.NOT_FOUND, `${describe(proc)}: process already finished`);
    if (r.all && !r.execId) {
      const record = this.ctx.store.read(task.id);
      const cgroup = reopenRecordCgroup(record);
      if (cgroup) {
        cgroup.killAll(r.signal);
        this.thawIfKilled(task, r.signal);
        return EMPTY;
      }
    }
    if (proc.signalGuest) {
      if (!proc.signalGuest(r.signal)) throw grpc(Code.NOT_FOUND, `${describe(proc)}: process already finished`);
      return EMPTY;
    }
    try {
      process.kill(proc.pid, r.signal);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ESRCH") throw grpc(Code.NOT_FOUND, `${describe(proc)}: process already finished`);
      throw e;
    }
    if (!r.execId) this.thawIfKilled(task, r.signal);
    return EMPTY;
  }

  /** A frozen process cannot die: SIGKILL to a paused task thaws it (as runc does). */
  private thawIfKilled(task: Task, signal: number): void {
    if (signal !== 9 || !task.paused) return;
    try {
      reopenRecordCgroup(this.ctx.store.read(task.id))?.thaw();
      task.paused = false;
    } catch {}
  }

  exec(r: m.ExecProcessRequest): Uint8Array {
    const task = this.task(r.id);
    if (!r.execId) throw grpc(Code.INVALID_ARGUMENT, "exec id is required");
    if (task.execs.has(r.execId)) throw grpc(Code.ALREADY_EXISTS, `exec ${r.execId} of task ${r.id} already exists`);
    if (task.init.status === "stopped") throw grpc(Code.FAILED_PRECONDITION, `task ${r.id} has stopped`);
    if (!r.spec) throw grpc(Code.INVALID_ARGUMENT, "exec: a process spec is required");
    let spec: Process;
    try {
      spec = JSON.parse(new TextDecoder().decode(r.spec.value)) as Process;
    } catch (e) {
      throw grpc(Code.INVALID_ARGUMENT, `exec: the process spec is not JSON (${r.spec.typeUrl}): ${(e as Error).message}`);
    }
    if (!spec || typeof spec !== "object" || !Array.isArray(spec.args) || spec.args.length === 0) {
      throw grpc(Code.INVALID_ARGUMENT, "exec: process.args must not be empty");
    }
    spec.terminal = r.terminal;
    const proc = newProc(r.id, r.execId, { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal });
    proc.spec = spec;
    task.execs.set(r.execId, proc);
    this.opts.publisher.publish({ topic: "/tasks/exec-added", containerId: r.id, execId: r.execId });
    return EMPTY;
  }

  async resizePty(r: m.ResizePtyRequest): Promise<Uint8Array> {
    const { proc } = this.proc(r.id, r.execId);
    if (!proc.io.terminal) throw grpc(Code.FAILED_PRECONDITION, `${describe(proc)} has no terminal`);
    if (proc.resizeGuest) proc.resizeGuest(r.height, r.width);
    else if (!r.execId && proc.status === "running" && this.ctx.store.read(r.id).mode === "vm") {
      await (await import("../vm/control.ts")).resizeVmInit(this.ctx, r.id, r.height, r.width);
    }
    else if (proc.status === "running" && proc.pid > 0) resizeProcessTty(proc.pid, r.width, r.height);
    return EMPTY;
  }

  closeIO(r: m.CloseIORequest): Uint8Array {
    const { proc } = this.proc(r.id, r.execId);
    if (r.stdin) proc.stdio?.closeStdin();
    return EMPTY;
  }

  pids(id: string): Uint8Array {
    const task = this.task(id);
    if (task.init.status === "stopped") return m.encodePidsResponse([]);
    return m.encodePidsResponse(containerProcesses(this.ctx, id).map((pid) => ({ pid })));
  }

  async pause(id: string): Promise<Uint8Array> {
    const task = this.task(id);
    await pauseContainer(this.ctx, id);
    task.paused = true;
    this.opts.publisher.publish({ topic: "/tasks/paused", containerId: id });
    return EMPTY;
  }

  async resume(id: string): Promise<Uint8Array> {
    const task = this.task(id);
    await resumeContainer(this.ctx, id);
    task.paused = false;
    this.opts.publisher.publish({ topic: "/tasks/resumed", containerId: id });
    return EMPTY;
  }

  async update(r: m.UpdateTaskRequest): Promise<Uint8Array> {
    this.task(r.id);
    if (!r.resources) return EMPTY;
    let resources: LinuxResources;
    try {
      resources = JSON.parse(new TextDecoder().decode(r.resources.value)) as LinuxResources;
    } catch (e) {
      throw grpc(Code.INVALID_ARGUMENT, `update: the resources are not JSON (${r.resources.typeUrl}): ${(e as Error).message}`);
    }
    await updateContainer(this.ctx, r.id, resources);
    return EMPTY;
  }

  async wait(r: m.ProcessRef): Promise<Uint8Array> {
    const { proc } = this.proc(r.id, r.execId);
    await proc.exited;
    return m.encodeWaitResponse({ exitStatus: proc.exitStatus, exitedAt: proc.exitedAt });
  }

  async stats(id: string): Promise<Uint8Array> {
    this.task(id);
    const record = this.ctx.store.read(id);
    if (record.mode === "vm") {
      // The guest's cgroup v2, read through the VM's channel (a pod member has none of its own: refused, naming its sandbox).
      const { vmStats } = await import("../vm/control.ts");
      return m.encodeStatsResponse(encodeMetricsV2((await vmStats(this.ctx, id)).data as CgroupStats));
    }
    const cgroup = reopenRecordCgroup(record);
    if (!cgroup) throw grpc(Code.NOT_FOUND, `task ${id} has no cgroup`);
    const unifiedOnly = Object.keys(cgroup.paths).every((k) => k === "unified");
    const stats = cgroup.stats();
    return m.encodeStatsResponse(unifiedOnly ? encodeMetricsV2(stats) : encodeMetricsV1(stats));
  }

  connect(id: string): Uint8Array {
    const task = this.tasks.get(id);
    return m.encodeConnectResponse({ shimPid: process.pid, taskPid: task?.init.pid ?? 0, version: SHIM_VERSION });
  }

  shutdown(r: m.ShutdownRequest): Uint8Array {
    if (this.tasks.size > 0 && !r.now) return EMPTY;
    this.shuttingDown = true;
    // Answer first, then go: containerd also accepts the connection closing.
    setTimeout(() => this.opts.onShutdown(), 1);
    return EMPTY;
  }
}

function describe(p: Proc): string {
  return p.execId ? `exec ${p.execId} of task ${p.containerId}` : `task ${p.containerId}`;
}
