/**
 * The plan for a VM-mode container: container mode's planner (src/plan/build.ts)
 * run on the guest's facts instead of the host's. Pure, like the planner.
 *
 * Guest facts: the rootfs and every bind source reach the guest through one
 * virtiofs share, mounted by the agent at GUEST_SHARE_DIR; the share holds
 * `rootfs` and `m<i>` for mounts[i]'s source (the host side binds them there,
 * see virtiofsd.ts). The guest has cgroup v2 only; the container gets the
 * agent's cgroup with linux.resources applied (guest-cgroup.ts). stage0 stays as the
 * container's parent (MONITOR), so the agent's child exits with the
 * container's status. The exec fifo lives in the guest; `start` on the host
 * reaches it through the host process and the agent.
 */
import type { Mount, Spec } from "../spec/types.ts";
import { buildContainerPlan, type CompiledSeccompFilter } from "../plan/build.ts";
import { parseMountOptions } from "../plan/mount-options.ts";
import type { PlanOp } from "../plan/ops.ts";
import { GUEST_CGROUP, GUEST_FIFO_DIR, GUEST_SHARE_DIR } from "./config.ts";
import { guestCgroupOps } from "./guest-cgroup.ts";
import { VmError } from "./driver.ts";

/** One host path the guest needs, and its name in the share. */
export interface ShareEntry {
  name: string;
  hostPath: string;
  isDirectory: boolean;
}

export interface GuestPlanInput {
  spec: Spec;
  bundle: string;
  /** Host rootfs (absolute, symlink-free). */
  rootfs: string;
  containerId: string;
  noPivot: boolean;
  noNewKeyring: boolean;
  seccomp?: CompiledSeccompFilter;
  isDirectory: (hostPath: string) => boolean;
}

export interface GuestPlan {
  ops: PlanOp[];
  shares: ShareEntry[];
  guestRootfs: string;
  guestFifo: string;
  notes: string[];
}

/** What VM mode cannot do yet: refused with the field's name, never silently dropped. */
export function checkVmSupport(spec: Spec, opts: { consoleSocket?: string; preserveFds: number }): void {
  const refuse = (field: string, why: string) => {
    throw new VmError("vm-unsupported", `${field}: ${why} in VM mode (not implemented yet)`);
  };
  if (spec.process?.terminal) refuse("process.terminal", "a terminal is not supported");
  if (opts.consoleSocket) refuse("--console-socket", "a console socket is not supported");
  if (opts.preserveFds > 0) refuse("--preserve-fds", "passing extra fds is not possible");
  for (const kind of Object.keys(spec.hooks ?? {})) {
    if ((spec.hooks as Record<string, unknown[]>)[kind]?.length) refuse(`hooks.${kind}`, "hooks are not supported");
  }
}

export function buildGuestPlan(input: GuestPlanInput): GuestPlan {
  const { spec } = input;
  const notes: string[] = [];
  const shares: ShareEntry[] = [{ name: "rootfs", hostPath: input.rootfs, isDirectory: true }];
  const guestRootfs = `${GUEST_SHARE_DIR}/rootfs`;
  const guestIsDirectory = new Map<string, boolean>();

  const mounts: Mount[] = (spec.mounts ?? []).map((m, i) => {
    if (!parseMountOptions(m.options, m.type).bind) return m;
    const hostPath = m.source?.startsWith("/") ? m.source : `${input.bundle}/${m.source ?? ""}`;
    const entry: ShareEntry = { name: `m${i}`, hostPath, isDirectory: input.isDirectory(hostPath) };
    shares.push(entry);
    const guestPath = `${GUEST_SHARE_DIR}/${entry.name}`;
    guestIsDirectory.set(guestPath, entry.isDirectory);
    return { ...m, source: guestPath };
  });

  // A namespace path names a host file: the guest cannot join it. The
  // container gets a fresh namespace of that type inside the VM instead.
  const namespaces = (spec.linux?.namespaces ?? []).map((ns, i) => {
    if (!ns.path) return ns;
    notes.push(`linux.namespaces[${i}]: ${ns.type} namespace ${ns.path} is on the host; the guest makes a new one`);
    return { type: ns.type };
  });
  const guestSpec: Spec = { ...spec, mounts, linux: { ...spec.linux, namespaces } };

  const plan = buildContainerPlan({
    spec: guestSpec,
    bundle: input.bundle,
    rootfs: guestRootfs,
    fifoDir: GUEST_FIFO_DIR,
    noPivot: input.noPivot,
    noNewKeyring: input.noNewKeyring,
    preserveFds: 0,
    foreground: true,
    containerId: input.containerId,
    cgroupMounts: [{ dirName: "", fstype: "cgroup2", data: "", hostPath: GUEST_CGROUP }],
    seccomp: input.seccomp,
    isDirectory: (p) => guestIsDirectory.get(p) ?? true,
  });
  // Limits apply in the guest's cgroup too (the device rules of runc's default spec are moot: the devices are the guest's).
  const cgroup = guestCgroupOps(spec.linux?.resources);
  return { ops: [...cgroup.ops, ...plan.ops], shares, guestRootfs, guestFifo: `${GUEST_FIFO_DIR}/exec.fifo`, notes: [...notes, ...cgroup.notes, ...plan.notes] };
}
