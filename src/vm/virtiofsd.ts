/**
 * The rootfs and bind sources reach a QEMU guest through one virtiofs share:
 * a directory whose entries (`rootfs`, `m0`, ...) are bind mounts of the host
 * paths. The binds are made in a private mount namespace that only virtiofsd
 * lives in -- set up by the executor from a plan, like a container -- so they
 * vanish with virtiofsd and never show on the host (nothing to unmount, even
 * after a crash).
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CLONE, MS } from "../plan/constants.ts";
import { OpCode, Section, type PlanOp } from "../plan/ops.ts";
import { runExecutor, runPreOnlyPlan } from "../linux/executor.ts";
import { Tracer } from "../linux/trace.ts";
import { listenUnix } from "../util/libc.ts";
import { VmError } from "./driver.ts";
import type { ShareEntry } from "./plan.ts";

export interface VirtiofsdSetup {
  binary: string;
  socket: string;
  shareDir: string;
  entries: ShareEntry[];
  logFile: string;
}

/**
 * The executor's plan: a new mount namespace, the binds, then exec virtiofsd.
 * Pure. virtiofsd gets its vhost-user socket already listening, as fd 3
 * (--fd): the host process makes it, so QEMU can start (and connect) at the
 * same time as virtiofsd instead of after it.
 */
export function virtiofsdPlan(s: VirtiofsdSetup): PlanOp[] {
  const op = (section: Section, code: OpCode, args: (string | number)[], source: string): PlanOp => ({
    code,
    section,
    source,
    args: args.map(String),
  });
  const argv = [s.binary, `--fd=${LISTEN_FD}`, "-o", `source=${s.shareDir}`, "-o", "cache=auto", "-o", "announce_submounts", "-o", "log_level=warn"];
  return [
    op(Section.Pre, OpCode.CLONE, [CLONE.NEWNS], "vm: virtiofsd in its own mount namespace"),
    op(Section.Parent, OpCode.SEND_PID, [], "vm: virtiofsd pid"),
    op(Section.Parent, OpCode.WAIT_GO, [], "vm"),
    op(Section.Parent, OpCode.RELEASE_CHILD, [], "vm"),
    op(Section.Parent, OpCode.EXIT, [], "vm"),
    op(Section.Init, OpCode.WAIT_RELEASE, [], "vm"),
    op(Section.Init, OpCode.MOUNT, ["", "/", "", MS.SLAVE | MS.REC, ""], "vm: no bind reaches the host"),
    ...s.entries.map((e) =>
      op(Section.Init, OpCode.MOUNT, [e.hostPath, join(s.shareDir, e.name), "", MS.BIND | MS.REC, ""], `vm: share ${e.name}`),
    ),
    op(Section.Init, OpCode.CLOSE_FDS, [1], "vm: keep the listening socket"),
    op(Section.Init, OpCode.EXEC_LOOKUP, [s.binary, ""], "vm: virtiofsd"),
    op(Section.Init, OpCode.REPORT_READY, [], "vm"),
    op(Section.Init, OpCode.EXEC, [argv.length, ...argv], "vm: virtiofsd"),
  ];
}

/** virtiofsd's listening vhost-user socket, in its fd table. */
const LISTEN_FD = 3;

/**
 * virtiofsd's vhost-user socket, listening at s.socket before virtiofsd (or
 * QEMU) runs: made by the host process, which hands it to startVirtiofsd.
 */
export function listenForVirtiofsd(s: VirtiofsdSetup): number {
  try {
    return listenUnix(s.socket);
  } catch (e) {
    throw new VmError("virtiofsd-failed", `cannot make virtiofsd's socket: ${(e as Error).message}`);
  }
}

/**
 * Start virtiofsd on the listening socket `listening` (listenForVirtiofsd;
 * closed here: from then on virtiofsd alone holds it); onPid hears its pid
 * first. Returns the pid once the executor is about to exec it. A QEMU
 * started meanwhile is already connected to the socket, and its first
 * vhost-user request waits for virtiofsd to answer. Should virtiofsd die,
 * the last fd on the socket goes with it and QEMU's connection fails: QEMU
 * exits.
 */
export async function startVirtiofsd(s: VirtiofsdSetup, listening: number, onPid: (pid: number) => void = () => {}): Promise<number> {
  let log = -1;
  let pid = 0;
  try {
    mkdirSync(s.shareDir, { recursive: true });
    // The mount points, made where only we can write (the share dir is ours).
    for (const e of s.entries) {
      const target = join(s.shareDir, e.name);
      if (e.isDirectory) mkdirSync(target, { recursive: true });
      else if (!existsSync(target)) writeFileSync(target, "");
    }
    log = openSync(s.logFile, "a");
    const run = await runExecutor(virtiofsdPlan(s), {
      preserveFds: 1,
      passFds: [listening],
      tracer: new Tracer(false),
      stdio: ["ignore", log, log],
      onPid: (p) => {
        pid = p;
        onPid(p);
      },
    });
    pid = run.initPid;
    await run.exited;
  } catch (e) {
    throw new VmError("virtiofsd-failed", `cannot start virtiofsd: ${(e as Error).message}`);
  } finally {
    closeSync(listening);
    if (log >= 0) closeSync(log);
  }
  return pid;
}

export function tail(path: string, lines = 5): string {
  try {
    return readFileSync(path, "utf8").trim().split("\n").slice(-lines).join(" | ") || "(empty log)";
  } catch {
    return "(no log)";
  }
}

/**
 * Add a share entry to a running virtiofsd: the host path is cloned as a
 * detached mount (open_tree), then attached inside virtiofsd's own mount
 * namespace (setns + move_mount), so the guest sees it under the share while
 * the host's mount table stays untouched. This is how a container that joins
 * an already running VM (a pod's second container) gets its rootfs there.
 */
export function sharePlan(virtiofsdPid: number, targetInNamespace: string, entry: ShareEntry): PlanOp[] {
  const op = (code: OpCode, args: (string | number)[], source: string): PlanOp => ({ code, section: Section.Pre, source, args: args.map(String) });
  return [
    op(OpCode.OPEN_TREE, [entry.hostPath], `vm: share ${entry.name}`),
    op(OpCode.SETNS, [`/proc/${virtiofsdPid}/ns/mnt`, "mnt"], "vm: virtiofsd's mount namespace"),
    op(OpCode.MOVE_MOUNT, [targetInNamespace], `vm: share ${entry.name}`),
  ];
}

/**
 * Where a share entry is, seen from inside virtiofsd's mount namespace.
 * virtiofsd sandboxes itself: QEMU's and the Rust one pivot_root into the
 * shared directory, so after setns(2) into that namespace the share is "/".
 * Without that sandbox the namespace's root is the host's and the path is
 * the host's. Told apart by comparing virtiofsd's root with the share dir.
 */
export function shareTargetIn(virtiofsdPid: number, shareDir: string, name: string): string {
  try {
    const root = statSync(`/proc/${virtiofsdPid}/root`);
    const share = statSync(shareDir);
    if (root.dev === share.dev && root.ino === share.ino) return `/${name}`;
  } catch {}
  return join(shareDir, name);
}

export async function addShareEntry(virtiofsdPid: number, shareDir: string, entry: ShareEntry, tracer = new Tracer(false)): Promise<void> {
  const target = join(shareDir, entry.name);
  // The mount point, on the host's file system (virtiofsd's namespace sees the same directory).
  if (entry.isDirectory) mkdirSync(target, { recursive: true });
  else if (!existsSync(target)) writeFileSync(target, "");
  try {
    await runPreOnlyPlan(sharePlan(virtiofsdPid, shareTargetIn(virtiofsdPid, shareDir, entry.name), entry), tracer);
  } catch (e) {
    throw new VmError("share-failed", `cannot share ${entry.hostPath} with the VM: ${(e as Error).message}`);
  }
}
