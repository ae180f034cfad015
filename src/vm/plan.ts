/**
 * The plan for a VM-mode container: container mode's planner (src/plan/build.ts)
 * run on the guest's facts instead of the host's. Pure, like the planner.
 *
 * Guest facts: the rootfs and every bind source reach the guest through one
 * virtiofs share, mounted by the agent at GUEST_SHARE_DIR; the share holds
 * `rootfs` and `m<i>` for mounts[i]'s source (the host side binds them there,
 * see virtiofsd.ts) -- or, for a block rootfs (rootfs-image.ts), the
 * container's init mounts the image's device at GUEST_BLOCK_ROOTFS and
 * there is no share. The guest has cgroup v2 only; the container gets the
 * agent's cgroup with linux.resources applied (guest-cgroup.ts). stage0 stays as the
 * container's parent (MONITOR), so the agent's child exits with the
 * container's status. The exec fifo lives in the guest; `start` on the host
 * reaches it through the host process and the agent.
 */
import type { Mount, Spec } from "../spec/types.ts";
import { buildContainerPlan, type CompiledSeccompFilter } from "../plan/build.ts";
import { parseMountOptions } from "../plan/mount-options.ts";
import { MS } from "../plan/constants.ts";
import { OpCode, Section, type PlanOp } from "../plan/ops.ts";
import { GUEST_CGROUP, GUEST_FIFO_DIR, GUEST_SHARE_DIR } from "./config.ts";
import { guestCgroupOps } from "./guest-cgroup.ts";
import { guestNetworkOps, type VmNetwork } from "./network.ts";
import { VmError } from "./driver.ts";
import type { BlockBind } from "./rootfs-image.ts";

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
  /** The client's network namespace as read by network.ts (the spec's network namespace path), if any. */
  network?: VmNetwork;
  /**
   * A further container of a pod joining the sandbox's VM (pod.ts): its share
   * entries, exec fifo and console are named after it, the namespaces the
   * spec names by path are the sandbox init's in the guest, and the VM's
   * cgroup keeps the sandbox's limits.
   */
  podMember?: { name: string; sandboxGuestPid: number };
  /**
   * The rootfs as a block image (rootfs-image.ts) instead of the share: the
   * container's init mounts this device (ext4; read-only for root.readonly)
   * at GUEST_BLOCK_ROOTFS in its own mount namespace, first thing. No share
   * entries then: a bind mount needs its entry in binds (checkBlockRootfs
   * decided it: a file copied into the image, or /dev/shm as a tmpfs), any
   * other is refused (nothing could carry it).
   */
  rootDevice?: { device: string; readOnly: boolean; binds?: ReadonlyMap<number, BlockBind> };
}

export interface GuestPlan {
  ops: PlanOp[];
  shares: ShareEntry[];
  guestRootfs: string;
  guestFifo: string;
  /** process.terminal: the guest socket the agent takes the pty master on. */
  guestConsole?: string;
  notes: string[];
}

/** /proc/<pid>/ns/<file> for each namespace type. */
const NS_FILE: Record<string, string> = { pid: "pid", network: "net", mount: "mnt", ipc: "ipc", uts: "uts", user: "user", cgroup: "cgroup", time: "time" };

/** The guest socket on which the agent takes the pty master of session 0 (the container's init). */
export const GUEST_INIT_CONSOLE = `${GUEST_FIFO_DIR}/tty-0.sock`;

/** Where a block rootfs is mounted in the container's mount namespace (made by the mount op, in the agent's /run tmpfs). */
export const GUEST_BLOCK_ROOTFS = `${GUEST_FIFO_DIR}/rootfs`;

/**
 * A second mount of the block rootfs's device, outside the container's root
 * (in the agent's /run tmpfs; pivot_root detaches it with the old root): the
 * source of the bind mounts of files copied into the image, reachable even
 * where a mount of the spec covers their place in the root. nosymfollow: the
 * kernel refuses to follow any symlink on it, so a bind source can never be
 * led out of the image (CVE-2019-19921-style swaps).
 */
export const GUEST_BLOCK_IMAGE_VIEW = `${GUEST_FIFO_DIR}/image`;

/** What VM mode cannot do (yet): refused with the field's name, never silently dropped. */
export function checkVmSupport(spec: Spec, opts: { consoleSocket?: string; preserveFds: number; foreground?: boolean }): void {
  const refuse = (field: string, why: string) => {
    throw new VmError("vm-unsupported", `${field}: ${why} in VM mode`);
  };
  if (spec.process?.terminal && !opts.consoleSocket && !opts.foreground) {
    throw new VmError("console-socket-required", "process.terminal: cannot allocate a terminal for a detached container without --console-socket");
  }
  if (opts.preserveFds > 0) refuse("--preserve-fds", "passing extra fds is not possible (not implemented yet)");
  // No network namespace means the host's: a VM has its own kernel and cannot share it (nor may it take the host's interfaces).
  if (!(spec.linux?.namespaces ?? []).some((ns) => ns.type === "network")) {
    throw new VmError(
      "vm-unsupported",
      "linux.namespaces: no network namespace means the host's network, which a VM-mode container cannot share; give it a network namespace (podman: --network none, or a bridge/CNI network)",
    );
  }
  // These run in the container's namespaces, which are in the guest, where
  // the host's hook binaries are not (Kata does not run them either).
  for (const kind of ["createContainer", "startContainer"] as const) {
    if (spec.hooks?.[kind]?.length) refuse(`hooks.${kind}`, "hooks that run in the container's namespaces are not supported");
  }
}

export function buildGuestPlan(input: GuestPlanInput): GuestPlan {
  const { spec } = input;
  const notes: string[] = [];
  const member = input.podMember;
  // Share entry names: one VM's share holds the entries of every container of its pod.
  const shareName = (base: string) => (member ? `${member.name}-${base}` : base);
  const block = input.rootDevice;
  if (block && member) throw new VmError("vm-unsupported", "a container that joins its pod's VM cannot have a block rootfs (the pod shares through virtiofs)");
  const shares: ShareEntry[] = block ? [] : [{ name: shareName("rootfs"), hostPath: input.rootfs, isDirectory: true }];
  const guestRootfs = block ? GUEST_BLOCK_ROOTFS : `${GUEST_SHARE_DIR}/${shareName("rootfs")}`;
  const guestIsDirectory = new Map<string, boolean>();

  const mounts: Mount[] = (spec.mounts ?? []).map((m, i) => {
    if (!parseMountOptions(m.options, m.type).bind) return m;
    if (block) {
      const bind = block.binds?.get(i);
      if (!bind) throw new VmError("vm-unsupported", `mounts[${i}] (${m.destination}): a bind mount cannot reach a VM whose rootfs is a block image`);
      if (bind.kind === "tmpfs") return bind.mount;
      // The copy, bound from the image's second mount (withBlockRootfs): onto itself where the destination is the
      // image's, onto a file made in a tmpfs where an earlier mount covers it (as runc binds it there); ro as asked.
      const guestPath = `${GUEST_BLOCK_IMAGE_VIEW}${bind.imagePath}`;
      guestIsDirectory.set(guestPath, false);
      // The bind takes the view's flags, nosymfollow included; without flags of its own, a remount with ext4's
      // default (relatime) drops it, so the mount reads as it would under runc.
      const parsed = parseMountOptions(m.options, m.type);
      const options = parsed.flags | parsed.bindRemountFlags ? m.options : [...(m.options ?? []), "relatime"];
      return { ...m, source: guestPath, options };
    }
    const hostPath = m.source?.startsWith("/") ? m.source : `${input.bundle}/${m.source ?? ""}`;
    const entry: ShareEntry = { name: shareName(`m${i}`), hostPath, isDirectory: input.isDirectory(hostPath) };
    shares.push(entry);
    const guestPath = `${GUEST_SHARE_DIR}/${entry.name}`;
    guestIsDirectory.set(guestPath, entry.isDirectory);
    return { ...m, source: guestPath };
  });

  // A namespace path names a host file: the guest cannot join it. The
  // container gets a fresh namespace of that type inside the VM instead; a
  // network namespace's interfaces come with it (network.ts).
  const namespaces = (spec.linux?.namespaces ?? []).map((ns, i) => {
    if (!ns.path) return ns;
    // In a pod, a path names the sandbox's namespace (CRI passes /proc/<pause pid>/ns/*): join the sandbox init's in the guest.
    if (member) return { type: ns.type, path: `/proc/${member.sandboxGuestPid}/ns/${NS_FILE[ns.type]}` };
    if (!(ns.type === "network" && input.network)) notes.push(`linux.namespaces[${i}]: ${ns.type} namespace ${ns.path} is on the host; the guest makes a new one`);
    return { type: ns.type };
  });
  // prestart and createRuntime make init stop at the "hooks" sync point, where
  // the host process runs them; poststart and poststop are `start`'s and `delete`'s.
  const hooks = { prestart: spec.hooks?.prestart, createRuntime: spec.hooks?.createRuntime };
  const guestSpec: Spec = { ...spec, mounts, hooks, linux: { ...spec.linux, namespaces } };
  const fifoName = member ? `${member.name}.fifo` : "exec.fifo";
  const guestConsole = member ? `${GUEST_FIFO_DIR}/tty-${member.name}.sock` : GUEST_INIT_CONSOLE;

  const plan = buildContainerPlan({
    spec: guestSpec,
    bundle: input.bundle,
    rootfs: guestRootfs,
    fifoDir: GUEST_FIFO_DIR,
    fifoName,
    // A terminal's master goes to the agent, which relays it to the host's pty.
    consoleSocket: spec.process?.terminal ? guestConsole : undefined,
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
  // A pod member shares the VM's cgroup: its own limits would overwrite the sandbox's (the VM is sized from the sandbox).
  const cgroup = guestCgroupOps(member ? undefined : spec.linux?.resources);
  if (member && spec.linux?.resources && Object.keys(spec.linux.resources).some((k) => k !== "devices")) {
    notes.push("linux.resources: not applied to a container that joins its pod's VM (the sandbox's limits size and bound the VM)");
  }
  const planOps = block ? withBlockRootfs(plan.ops, block, [...(block.binds?.values() ?? [])].some((b) => b.kind === "file")) : plan.ops;
  const ops = input.network ? withGuestNetwork(planOps, input.network) : planOps;
  return {
    ops: [...cgroup.ops, ...ops],
    shares,
    guestRootfs,
    guestFifo: `${GUEST_FIFO_DIR}/${fifoName}`,
    guestConsole: spec.process?.terminal ? guestConsole : undefined,
    notes: [...notes, ...cgroup.notes, ...plan.notes],
  };
}

/**
 * The block rootfs, mounted by the container's init in its new mount
 * namespace before anything else touches its root: after the planner
 * makes "/" a slave (or private), so the ext4 mount never propagates to the
 * agent's namespace, and before the rootfs is bound onto itself. MOUNT_IN_ROOT makes the mount point
 * in the agent's /run tmpfs (GUEST_FIFO_DIR exists from boot).
 */
function withBlockRootfs(ops: PlanOp[], block: { device: string; readOnly: boolean }, fileCopies: boolean): PlanOp[] {
  const release = ops.findIndex((op) => op.section === Section.Init && op.code === OpCode.WAIT_RELEASE);
  if (release < 0) throw new VmError("vm-plan", "the guest plan has no init to mount the block rootfs in");
  // After the planner's propagation change of "/" (rslave/rprivate), before anything mounts onto the rootfs.
  const propagation = ops.findIndex((op, i) => i > release && op.code === OpCode.MOUNT && op.args[0] === "" && op.args[1] === "/");
  const firstUse = ops.findIndex((op, i) => i > release && op.args.includes(GUEST_BLOCK_ROOTFS));
  const at = propagation > 0 && (firstUse < 0 || propagation < firstUse) ? propagation + 1 : release + 1;
  const name = GUEST_BLOCK_ROOTFS.slice(GUEST_FIFO_DIR.length + 1);
  const mount: PlanOp = {
    code: OpCode.MOUNT_IN_ROOT,
    section: Section.Init,
    source: `vm: the rootfs block image (${block.device}, ext4${block.readOnly ? ", read-only: root.readonly" : ""})`,
    args: [GUEST_FIFO_DIR, name, block.device, "ext4", String(block.readOnly ? MS.RDONLY : 0), "", "dir", "1"],
  };
  if (!fileCopies) return [...ops.slice(0, at), mount, ...ops.slice(at)];
  // The same file system again (ext4 wants the same read-only state for a second mount), for the copies' binds.
  const view: PlanOp = {
    code: OpCode.MOUNT_IN_ROOT,
    section: Section.Init,
    source: `vm: the rootfs block image again, without following symlinks (the bind-mounted files copied into it)`,
    args: [GUEST_FIFO_DIR, GUEST_BLOCK_IMAGE_VIEW.slice(GUEST_FIFO_DIR.length + 1), block.device, "ext4", String((block.readOnly ? MS.RDONLY : 0) | MS.NOSYMFOLLOW), "", "dir", "1"],
  };
  return [...ops.slice(0, at), mount, view, ...ops.slice(at)];
}

/**
 * The NICs into the container's namespace: stage0 moves them before it
 * releases init; init configures them right after lo is up (before sysctls,
 * which may name an interface, and long before capabilities are dropped).
 */
function withGuestNetwork(ops: PlanOp[], network: VmNetwork): PlanOp[] {
  const net = guestNetworkOps(network);
  const release = ops.findIndex((op) => op.code === OpCode.RELEASE_CHILD);
  const loopback = ops.findIndex((op) => op.code === OpCode.LOOPBACK_UP);
  if (release < 0 || loopback < release) throw new VmError("vm-plan", "the guest plan has no new network namespace to put the VM's network cards in");
  return [...ops.slice(0, release), ...net.parent, ...ops.slice(release, loopback + 1), ...net.init, ...ops.slice(loopback + 1)];
}
