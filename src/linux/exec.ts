/** `exec`: run another process inside a running container. */
import { renameSync, writeFileSync } from "node:fs";
import type { Process } from "../spec/types.ts";
import { buildExecPlan } from "../plan/exec-plan.ts";
import { validateContainerId } from "../state/store.ts";
import { ContainerError } from "../util/errors.ts";
import { containerStatus, reopenRecordCgroup, type RuntimeContext } from "./container.ts";
import { runExecutor, type ExecutorRun, type ExecutorStdio } from "./executor.ts";
import { compileContainerSeccomp } from "./seccomp.ts";
import { describeLsm, detectLsm } from "./lsm.ts";
import { setgroupsDenied } from "./rootless.ts";

export interface ExecOptions {
  process: Process;
  consoleSocket?: string;
  pidFile?: string;
  preserveFds: number;
  detach: boolean;
  ignorePaused: boolean;
  /** The process's stdio (the containerd shim passes fifo fds); default: the runtime's own. */
  stdio?: ExecutorStdio;
  /** Wait for the executor with blocking reads (a CLI call); default: on the event loop (the shim). */
  blocking?: boolean;
}

export async function execInContainer(ctx: RuntimeContext, id: string, opts: ExecOptions): Promise<ExecutorRun> {
  const record = ctx.store.read(validateContainerId(id));
  // record.pid of a VM-mode container is its host process, in the host's namespaces: never join those.
  // (`nk-runtime exec` takes src/vm/exec.ts for those; this in-process path, the shim's, does not yet.)
  if (record.mode === "vm") throw new ContainerError("vm-exec-unsupported", `cannot exec in container ${id}: exec into a VM-mode container through this path is not implemented yet (nk-runtime exec does it)`);
  const status = containerStatus(ctx, record);
  if (status === "stopped" || status === "creating") throw new ContainerError("container-not-running", `cannot exec in a stopped container: ${id}`);
  if (status === "paused" && !opts.ignorePaused) throw new ContainerError("container-paused", `cannot exec in a paused container: ${id} (resume it first)`);
  const lsm = detectLsm();
  ctx.log.debug(describeLsm(lsm));
  const plan = buildExecPlan({
    process: opts.process,
    initPid: record.pid,
    namespaces: record.spec.linux?.namespaces ?? [],
    consoleSocket: opts.consoleSocket,
    preserveFds: opts.preserveFds,
    foreground: !opts.detach,
    seccomp: await compileContainerSeccomp(record.spec, ctx, { id: record.id, bundle: record.bundle, listenerAllowed: true }),
    lsm,
    setgroupsDenied: setgroupsDenied(record.pid),
  });
  const cgroup = reopenRecordCgroup(record);
  const run = await runExecutor(plan.ops, {
    preserveFds: opts.preserveFds,
    stdio: opts.stdio,
    tracer: ctx.tracer,
    blocking: opts.blocking,
    onPid: (pid) => {
      if (!cgroup) return; // a rootless container without a delegated cgroup
      cgroup.addProcess(pid);
      ctx.tracer.runtime(`cgroup add pid ${pid}`, "linux.cgroupsPath");
    },
  });
  if (opts.pidFile) {
    const temp = `${opts.pidFile}.${process.pid}.tmp`;
    writeFileSync(temp, String(run.initPid));
    renameSync(temp, opts.pidFile);
  }
  return run;
}
