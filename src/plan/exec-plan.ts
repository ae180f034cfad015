/**
 * The plan for `exec`: join every namespace of a running container through
 * /proc/<init>/ns/*, fork (so the pid namespace applies), then the same
 * process setup as create, without the exec fifo.
 */
import type { LinuxNamespace, NamespaceType, Process } from "../spec/types.ts";
import { NAMESPACES } from "./constants.ts";
import { OpCode } from "./ops.ts";
import { assertLsmAvailable, NO_LSM, PlanBuilder, planProcess, type CompiledSeccompFilter, type ContainerPlan, type LsmFacts } from "./build.ts";
import { PlanError } from "./errors.ts";

export interface ExecPlanInput {
  process: Process;
  /** Host pid of the container's init, whose namespaces the new process joins. */
  initPid: number;
  /** The container's linux.namespaces: which of init's namespaces are the container's own. */
  namespaces: readonly LinuxNamespace[];
  consoleSocket?: string;
  preserveFds: number;
  foreground: boolean;
  seccomp?: CompiledSeccompFilter;
  /** Host fact: enforcing LSMs (default: none). */
  lsm?: LsmFacts;
  /** Host fact: /proc/<init>/setgroups says "deny" (a rootless container with only the caller's gid mapped). */
  setgroupsDenied?: boolean;
}

/**
 * The user namespace first (it decides what the later joins may do), the
 * mount namespace last (after it, /proc/<pid> paths would resolve in the
 * container's procfs).
 */
const JOIN_ORDER: NamespaceType[] = ["user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount"];

export function buildExecPlan(input: ExecPlanInput): ContainerPlan {
  const b = new PlanBuilder();
  const lsm = input.lsm ?? NO_LSM;
  assertLsmAvailable(input.process, undefined, lsm);
  const terminal: ContainerPlan["terminal"] = input.process.terminal
    ? input.consoleSocket
      ? "socket"
      : input.foreground
        ? "monitor"
        : "none"
    : "none";
  if (input.process.terminal && terminal === "none") {
    throw new PlanError("console-socket-required", "process.terminal: cannot allocate a terminal for a detached process without --console-socket");
  }
  if (terminal === "socket") b.pre(OpCode.CONNECT_CONSOLE, [input.consoleSocket!], "--console-socket");
  // A host path: connected now, used by SECCOMP after pivot_root to hand over the notify fd.
  if (input.seccomp?.listener) b.pre(OpCode.CONNECT_LISTENER, [input.seccomp.listener.path], "linux.seccomp.listenerPath");
  for (const type of JOIN_ORDER) {
    const index = input.namespaces.findIndex((n) => n.type === type);
    if (index < 0) continue;
    b.pre(OpCode.SETNS, [`/proc/${input.initPid}/ns/${NAMESPACES[type].file}`, type], `linux.namespaces[${index}] (join the container's)`);
  }
  b.pre(OpCode.CLONE, [0], "exec (fork: a joined pid namespace applies to children)");
  b.parent(OpCode.SEND_PID, [], "exec (report pid)");
  b.parent(OpCode.WAIT_GO, [], "linux.cgroupsPath (runtime adds the process to the container's cgroup)");
  b.parent(OpCode.RELEASE_CHILD, [], "exec");
  if (input.foreground) b.parent(OpCode.MONITOR, [terminal === "monitor" ? "copy" : "none"], "exec (foreground)");
  else b.parent(OpCode.EXIT, [], "exec --detach");
  b.init(OpCode.WAIT_RELEASE, [], "exec");
  planProcess(b, input.process, {
    terminal,
    preserveFds: input.preserveFds,
    waitForStart: false,
    seccomp: input.seccomp,
    verb: "exec",
    lsm,
    setgroupsDenied: input.setgroupsDenied ?? false,
  });
  return { ops: b.ops, cloneFlags: 0, terminal, notes: [] };
}
