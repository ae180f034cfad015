/**
 * One VM per pod: a container whose sandbox (the pod's first, "pause"
 * container) runs in VM mode joins the sandbox's VM instead of booting its
 * own, as Kata runs a pod. The sandbox is named by CRI's annotations
 * (io.kubernetes.cri.container-type=container, io.kubernetes.cri.sandbox-id),
 * which containerd's CRI plugin sets on every container of a pod, or by
 * io.nanokata.sandbox for other clients.
 *
 * A member is another channel session in the sandbox's VM (through the
 * sandbox host process's control socket, like an `exec`), with:
 * - its rootfs and bind sources added to the running virtiofsd's share
 *   (virtiofsd.ts addShareEntry: open_tree + move_mount in virtiofsd's own
 *   mount namespace, nothing mounted on the host), under names of its own;
 * - the namespaces its spec names by path (CRI: the sandbox's network, ipc,
 *   uts) joined as the sandbox init's namespaces in the guest -- so it shares
 *   the pod's network, mirrored into the VM when the sandbox was created;
 * - its own exec fifo in the guest, so create/start split as usual;
 * - a stand-in on the host (`vm member DIR`) that is the container to its
 *   clients, as the host process is for a sandbox: pid in state, signals
 *   relayed, exits with the status, blocks on the host exec fifo for start.
 * The VM keeps the sandbox's size and cgroup; the VM goes when the sandbox
 * is deleted, which ends every member still running.
 */
import { existsSync, realpathSync, rmSync, statSync } from "node:fs";
import { dirname, join, resolve as resolvePath } from "node:path";
import type { Spec } from "../spec/types.ts";
import type { CreateOptions, RuntimeContext } from "../linux/container.ts";
import { containerStatus } from "../linux/container.ts";
import type { ExecutorRun } from "../linux/executor.ts";
import { runPreOnlyPlan } from "../linux/executor.ts";
import { compileContainerSeccomp } from "../linux/seccomp.ts";
import { Tracer } from "../linux/trace.ts";
import { OpCode, Section, type PlanOp } from "../plan/ops.ts";
import { newContainerRecord, validateContainerId, type ContainerRecord } from "../state/store.ts";
import { isSameLiveProcess, readProcStat } from "../state/proc.ts";
import { mkfifo } from "../util/libc.ts";
import type { Logger } from "../util/log.ts";
import { ROOTFS_ANNOTATION } from "./rootfs-image.ts";
import { VmError } from "./driver.ts";
import { runExecRelay, type VmExecRequest } from "./exec.ts";
import { memberPath, readJson, readLaunch, readPids, writeJsonAtomic, writePids, type VmPids } from "./launch.ts";
import { buildGuestPlan, checkVmSupport, type ShareEntry } from "./plan.ts";
import { reporter } from "./report.ts";
import { addShareEntry, shareTargetIn } from "./virtiofsd.ts";

/** Names the sandbox container whose VM this container joins (for clients other than CRI). */
export const SANDBOX_ANNOTATION = "io.nanokata.sandbox";
const CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id";

/** What `create` computed for a member; its stand-in (`vm member DIR`) carries it out. */
export interface VmMemberLaunch {
  id: string;
  sandboxId: string;
  /** The sandbox host process's control socket: the way into the VM. */
  controlSocket: string;
  ops: PlanOp[];
  hostFifo: string;
  guestFifo: string;
  guestConsole?: string;
  consoleSocket?: string;
  /** The share entries this member added to the sandbox's virtiofsd (removed on delete). */
  shares: ShareEntry[];
  shareDir: string;
  trace: boolean;
}

export function readMember(stateDir: string): VmMemberLaunch | undefined {
  return existsSync(memberPath(stateDir)) ? readJson<VmMemberLaunch>(memberPath(stateDir)) : undefined;
}

/** The sandbox id this spec names, if it is a pod's non-sandbox container (or says so explicitly). */
export function sandboxOf(spec: Spec): { id: string; field: string } | undefined {
  const a = spec.annotations ?? {};
  if (a[SANDBOX_ANNOTATION]) return { id: a[SANDBOX_ANNOTATION], field: `annotations["${SANDBOX_ANNOTATION}"]` };
  if (a[CRI_CONTAINER_TYPE] === "container" && a[CRI_SANDBOX_ID]) return { id: a[CRI_SANDBOX_ID], field: `annotations["${CRI_SANDBOX_ID}"]` };
  return undefined;
}

/**
 * The sandbox this container joins: a VM-mode container with its own VM, in
 * this runtime root, that has not stopped. undefined when the spec names no
 * sandbox, or (CRI only) when the sandbox is not a VM-mode container here --
 * then the container gets a VM of its own. An explicit io.nanokata.sandbox
 * that cannot be joined is an error.
 */
export function findSandbox(ctx: RuntimeContext, spec: Spec): ContainerRecord | undefined {
  const named = sandboxOf(spec);
  if (!named) return undefined;
  const explicit = named.field.includes(SANDBOX_ANNOTATION);
  const refuse = (why: string) => {
    if (explicit) throw new VmError("pod-sandbox-unusable", `${named.field}: ${why}`);
    return undefined;
  };
  let record: ContainerRecord;
  try {
    record = ctx.store.read(named.id);
  } catch {
    return refuse(`no container ${named.id} in this runtime root`);
  }
  if (record.mode !== "vm") return refuse(`container ${named.id} does not run in VM mode`);
  const stateDir = ctx.store.dir(named.id);
  if (readMember(stateDir)) return refuse(`container ${named.id} itself joined ${readMember(stateDir)!.sandboxId}'s VM; name that sandbox`);
  const status = containerStatus(ctx, record);
  if (status !== "created" && status !== "running") {
    throw new VmError("pod-sandbox-not-running", `${named.field}: the pod's sandbox ${named.id} is ${status}; its VM cannot take another container`);
  }
  return record;
}

const isDirectory = (p: string) => {
  try {
    return statSync(p).isDirectory();
  } catch {
    return true;
  }
};

export async function createVmMember(
  ctx: RuntimeContext,
  opts: CreateOptions,
  loaded: { spec: Spec; bundle: string },
  sandbox: ContainerRecord,
  launchStandIn: (p: { record: ContainerRecord; stateDir: string; verb: "member"; opts: CreateOptions; onChild: (c: import("node:child_process").ChildProcess) => void }) => Promise<ExecutorRun & { record: ContainerRecord }>,
): Promise<ExecutorRun & { record: ContainerRecord }> {
  const { spec, bundle } = loaded;
  const id = validateContainerId(opts.id);
  checkVmSupport(spec, opts);
  // The sandbox's host process runs these at its own init's hooks point; a member's init has no such runner.
  for (const kind of ["prestart", "createRuntime"] as const) {
    if (spec.hooks?.[kind]?.length) throw new VmError("vm-unsupported", `hooks.${kind}: not supported for a container that joins its pod's VM`);
  }
  const sandboxDir = ctx.store.dir(sandbox.id);
  const sandboxLaunch = readLaunch(sandboxDir);
  // A member's rootfs joins the sandbox's running virtiofs share: a block rootfs has neither (rootfs-image.ts).
  if (spec.annotations?.[ROOTFS_ANNOTATION] === "block") {
    throw new VmError("vm-unsupported", `annotations["${ROOTFS_ANNOTATION}"]: a container that joins its pod's VM cannot have a block rootfs (the pod shares through virtiofs)`);
  }
  if (sandboxLaunch.vm.rootDrive) {
    throw new VmError("vm-unsupported", `container ${id}: its pod's sandbox ${sandbox.id} has its rootfs as a block image and no virtiofs share; a pod's containers need virtiofs`);
  }
  const sandboxPids = readPids(sandboxDir);
  const virtiofsd = sandboxPids?.virtiofsd;
  const sandboxInit = sandboxPids?.guestInit?.pid;
  if (!sandboxLaunch.virtiofsd || !virtiofsd || !isSameLiveProcess(virtiofsd.pid, virtiofsd.startTime) || !sandboxInit) {
    throw new VmError("pod-sandbox-not-running", `container ${id}: the VM of its pod's sandbox ${sandbox.id} is not running`);
  }
  const rootfs = realpathSync(resolvePath(bundle, spec.root!.path));

  const lock = ctx.store.claim(id);
  const stateDir = ctx.store.dir(id);
  let child: import("node:child_process").ChildProcess | undefined;
  const added: ShareEntry[] = [];
  try {
    const record = newContainerRecord({ id, spec, bundle, rootfs, mode: "vm" });
    ctx.store.write(record);
    ctx.tracer.runtime(`joins the VM of pod sandbox ${sandbox.id} (guest init ${sandboxInit})`, "vm");
    const guest = buildGuestPlan({
      spec,
      bundle,
      rootfs,
      containerId: id,
      noPivot: opts.noPivot,
      noNewKeyring: opts.noNewKeyring,
      seccomp: await compileContainerSeccomp(spec, ctx, { id, bundle, listenerAllowed: false }),
      isDirectory,
      podMember: { name: `ct-${id}`, sandboxGuestPid: sandboxInit },
    });
    for (const note of guest.notes) {
      ctx.log.warn(note);
      ctx.tracer.note(note);
    }
    const shareDir = sandboxLaunch.virtiofsd.shareDir;
    // Recorded before each is added, so that a failure midway removes what was added.
    const member: VmMemberLaunch = {
      id,
      sandboxId: sandbox.id,
      controlSocket: sandboxLaunch.controlSocket,
      ops: guest.ops,
      hostFifo: ctx.store.fifoPath(id),
      guestFifo: guest.guestFifo,
      guestConsole: guest.guestConsole,
      consoleSocket: guest.guestConsole ? opts.consoleSocket : undefined,
      shares: added,
      shareDir,
      trace: ctx.tracer.enabled,
    };
    for (const entry of guest.shares) {
      added.push(entry);
      writeJsonAtomic(memberPath(stateDir), member);
      await addShareEntry(virtiofsd.pid, shareDir, entry, ctx.tracer);
    }
    writeJsonAtomic(memberPath(stateDir), member);
    const err = mkfifo(member.hostFifo, 0o622);
    if (err) throw new VmError("fifo-failed", `mkfifo ${member.hostFifo}: errno ${err}`);
    return await launchStandIn({ record, stateDir, verb: "member", opts, onChild: (c) => (child = c) });
  } catch (error) {
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await destroyMember(stateDir);
    ctx.store.remove(id);
    throw error;
  } finally {
    lock.release();
  }
}

/** `vm member DIR`: the stand-in of a pod member; reports on fd 3 once its init is ready in the guest. */
export async function runMember(stateDir: string, log: Logger): Promise<number> {
  const member = readMember(stateDir);
  if (!member) throw new VmError("vm-member-missing", `${memberPath(stateDir)}: no pod member here`);
  const self = { pid: process.pid, startTime: readProcStat(process.pid)?.startTime ?? "" };
  writePids(stateDir, { host: self });
  const { report } = reporter();
  const request: VmExecRequest = {
    id: member.id,
    controlSocket: member.controlSocket,
    ops: member.ops,
    guestConsole: member.guestConsole,
    consoleSocket: member.consoleSocket,
    trace: member.trace,
    start: { hostFifo: member.hostFifo, guestFifo: member.guestFifo },
  };
  try {
    return await runExecRelay(request, log, (guestPid) => {
      const pids: VmPids = { host: self, guestInit: { pid: guestPid, startTime: "" } };
      writePids(stateDir, pids);
      report({ ready: true, guestPid });
    });
  } catch (e) {
    report({ error: (e as Error).message, code: (e as { code?: string }).code ?? "vm-member-failed" });
    return 1;
  }
}

/** SETNS into virtiofsd's mount namespace, then detach each of the member's share mounts. */
export function unsharePlan(virtiofsdPid: number, shareDir: string, entries: ShareEntry[]): PlanOp[] {
  const op = (code: OpCode, args: string[], source: string): PlanOp => ({ code, section: Section.Pre, source, args });
  return [
    op(OpCode.SETNS, [`/proc/${virtiofsdPid}/ns/mnt`, "mnt"], "vm: virtiofsd's mount namespace"),
    ...entries.map((e) => op(OpCode.UMOUNT, [shareTargetIn(virtiofsdPid, shareDir, e.name)], `vm: unshare ${e.name}`)),
  ];
}

/**
 * Undo a member: stop its stand-in (its guest process dies with the
 * session), and take its entries out of the sandbox's share if that VM still
 * runs (a dead virtiofsd took them along). Safe to repeat.
 */
export async function destroyMember(stateDir: string): Promise<void> {
  const member = readMember(stateDir);
  const pids = readPids(stateDir);
  if (pids?.host && isSameLiveProcess(pids.host.pid, pids.host.startTime) && pids.host.pid !== process.pid) {
    try {
      process.kill(pids.host.pid, "SIGKILL");
    } catch {}
    const deadline = Date.now() + 5000;
    while (isSameLiveProcess(pids.host.pid, pids.host.startTime) && Date.now() < deadline) await Bun.sleep(2);
  }
  if (!member || member.shares.length === 0) return;
  // Members live in the same runtime root as their sandbox.
  const virtiofsd = readPids(join(dirname(stateDir), member.sandboxId))?.virtiofsd;
  if (virtiofsd && isSameLiveProcess(virtiofsd.pid, virtiofsd.startTime)) {
    for (const entry of member.shares) {
      try {
        await runPreOnlyPlan(unsharePlan(virtiofsd.pid, member.shareDir, [entry]), new Tracer(false));
      } catch {
        // Not mounted (its add failed) or already taken out: nothing is held.
      }
      // The mount point: an empty directory (or file) on the host, where the mount never was.
      rmSync(join(member.shareDir, entry.name), { recursive: true, force: true });
    }
  }
  writeJsonAtomic(memberPath(stateDir), { ...member, shares: [] });
}
