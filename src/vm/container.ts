/**
 * VM-mode lifecycle, the counterpart of src/linux/container.ts for a
 * container that lives in its own microVM. `create` computes everything on
 * the host (the guest plan, the VM's size, the accelerator, and how the
 * rootfs reaches the guest: a virtiofs share, or an ext4 image made in the
 * state directory, rootfs-image.ts), writes it as
 * vm.json and starts the host process (host.ts), which boots the VM and
 * reports back once the container's init is ready. From then on the host
 * process is the container as far as state, `start` (the same exec fifo),
 * `kill` (signals to its pid) and exit statuses go: container mode's code
 * serves those verbs unchanged. `delete` adds destroyVm().
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, realpathSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join, resolve as resolvePath } from "node:path";
import type { Spec } from "../spec/types.ts";
import type { CreateOptions, RuntimeContext } from "../linux/container.ts";
import type { ExecutorRun } from "../linux/executor.ts";
import { compileContainerSeccomp } from "../linux/seccomp.ts";
import { newContainerRecord, validateContainerId, type ContainerRecord } from "../state/store.ts";
import { isSameLiveProcess, readProcStat } from "../state/proc.ts";
import { mkfifo } from "../util/libc.ts";
import { projectHome } from "../util/home.ts";
import { chooseAccelerator } from "./check.ts";
import { AGENT_VSOCK_PORT, agentBinaryPath, CHANNEL_PORT_NAME, firecrackerPath, guestCmdline, hostTscKhz, qemuPath, SHARE_TAG, virtiofsdPath, vmCacheDir } from "./config.ts";
import { VmError, type VmConfig } from "./driver.ts";
import { checkBlockRootfs, GUEST_ROOT_DEVICE, makeRootfsImage, ROOTFS_ANNOTATION, ROOTFS_IMAGE_NAME, selectRootfsSharing } from "./rootfs-image.ts";
import { TEMPLATE_ANNOTATION, TEMPLATE_FAILED, templateDiskMiB, templateRequested } from "./template.ts";
import { findImage, sha256File } from "./image/build.ts";
import { GO_FD, readBootOrLaunch, readPids, writeBoot, writeLaunch, writePids, type ProcRef, type VmBoot, type VmLaunch } from "./launch.ts";
import { inspectNetns, unwireMirror } from "./network.ts";
import { buildGuestPlan, checkVmSupport, GUEST_INIT_CONSOLE, type ShareEntry } from "./plan.ts";
import { readReport } from "./report.ts";

/** The annotation that asks for VM mode per container (podman --annotation, Kubernetes pod annotations). */
export const MODE_ANNOTATION = "io.nanokata.mode";

export type RuntimeMode = "container" | "vm";

/** The annotation wins over the runtime-wide --mode (a pod can ask for isolation). */
export function selectMode(spec: Spec, globalMode: RuntimeMode | undefined): RuntimeMode {
  const annotated = spec.annotations?.[MODE_ANNOTATION];
  if (annotated === "vm" || annotated === "container") return annotated;
  if (annotated !== undefined) throw new VmError("bad-mode", `annotations["${MODE_ANNOTATION}"]: must be "vm" or "container", not ${JSON.stringify(annotated)}`);
  return globalMode ?? "container";
}

const MIB = 1 << 20;
/** Guest kernel, agent and page cache on top of what the container may use. */
const MEMORY_OVERHEAD_MIB = 96;
const DEFAULT_MEMORY_MIB = 256;

/** linux.resources -> the VM's size: the memory limit plus overhead, vCPUs from the CPU quota or cpuset. */
export function vmSize(spec: Spec, hostCpus = availableParallelism()): { memoryMiB: number; vcpus: number } {
  const r = spec.linux?.resources;
  const limit = r?.memory?.limit;
  const memoryMiB = limit && limit > 0 ? Math.max(128, Math.ceil(limit / MIB) + MEMORY_OVERHEAD_MIB) : DEFAULT_MEMORY_MIB;
  let vcpus = 1;
  if (r?.cpu?.quota && r.cpu.quota > 0) vcpus = Math.ceil(r.cpu.quota / (r.cpu.period || 100_000));
  else if (r?.cpu?.cpus) vcpus = cpusetCount(r.cpu.cpus);
  return { memoryMiB, vcpus: Math.max(1, Math.min(vcpus, hostCpus)) };
}

function cpusetCount(list: string): number {
  let n = 0;
  for (const part of list.split(",").filter(Boolean)) {
    const [a, b] = part.split("-").map(Number);
    n += b === undefined ? 1 : b! - a! + 1;
  }
  return n || 1;
}

const envMs = (name: string, fallback: number) => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : fallback;
};

/** Unix socket paths must fit in 108 bytes: a long root or id moves the VM's sockets to a short private dir. */
function vmRunDir(stateDir: string, id: string): string {
  const preferred = join(stateDir, "vm");
  if (preferred.length + "/channel.sock".length < 100) return preferred;
  const hash = new Bun.CryptoHasher("sha256").update(`${stateDir}\0${id}`).digest("hex").slice(0, 16);
  return join(tmpdir(), `nk-vm-${hash}`);
}

/** The CLI, however it is built (bin/nk-runtime picks the compiled binary or the sources). */
function cliPath(): string {
  return `${projectHome()}/bin/nk-runtime`;
}

export async function createVmContainer(
  ctx: RuntimeContext,
  opts: CreateOptions,
  loaded: { spec: Spec; bundle: string },
): Promise<ExecutorRun & { record: ContainerRecord }> {
  const { spec, bundle } = loaded;
  const id = validateContainerId(opts.id);
  // A pod's further container joins the sandbox's VM (pod.ts).
  const pod = await import("./pod.ts");
  const sandbox = pod.findSandbox(ctx, spec);
  if (sandbox) return pod.createVmMember(ctx, opts, loaded, sandbox, (p) => launchStandIn(ctx, p));
  checkVmSupport(spec, opts);
  const rootfs = realpathSync(resolvePath(bundle, spec.root!.path));
  const cache = vmCacheDir();
  const image = findImage(cache);
  if (!image) throw new VmError("no-guest-image", `VM mode: no guest kernel and initramfs in ${cache}: run \`nk-runtime vm build-image\` (or point NK_VM_CACHE at a built one)`);
  // The agent speaks the channel protocol of this runtime's build: an image made from an older agent may not.
  if (existsSync(agentBinaryPath()) && sha256File(agentBinaryPath()) !== image.stamp.inputs.agentSha256) {
    ctx.log.warn(`the guest image in ${cache} was built from another nk-agent: run \`nk-runtime vm build-image\``);
  }
  const driver = process.env.NK_VM_DRIVER === "firecracker" || (!qemuPath() && firecrackerPath()) ? "firecracker" : "qemu";
  if (driver === "qemu" && !qemuPath()) throw new VmError("no-hypervisor", "VM mode: qemu-system-x86_64 not found (apt-get install qemu-system-x86, or set NK_QEMU)");
  if (driver === "firecracker" && !firecrackerPath()) throw new VmError("no-hypervisor", "VM mode: firecracker not found (put it on PATH, or set NK_FIRECRACKER)");
  const virtiofsd = virtiofsdPath();
  // The rootfs: a virtiofs share, or an ext4 image (Firecracker, no virtiofsd, or the annotation). Refused before anything is made.
  let rootfsSharing = selectRootfsSharing(spec, { driver, virtiofsd: virtiofsd !== undefined });
  // A template's clone has no virtiofs (template.ts): asking for a template asks for a block rootfs.
  let fromTemplate = templateRequested(spec.annotations);
  // Why a container that asked for a template boots instead: a warning when its annotation asked, a debug line when NK_VM_TEMPLATE did.
  const bootsInstead = (why: string) => {
    const note = `vm ${id}: ${TEMPLATE_ANNOTATION}: ${why}: the VM boots instead of starting from a template`;
    if (spec.annotations?.[TEMPLATE_ANNOTATION] === "true") {
      ctx.log.warn(note);
      ctx.tracer.note(note);
    } else ctx.log.debug(note);
    fromTemplate = false;
  };
  if (fromTemplate && driver === "firecracker") bootsInstead("VM templates are QEMU's");
  // A pod's VM takes its further containers' rootfs through its virtiofs share (pod.ts), which a clone has not.
  if (fromTemplate && spec.annotations?.["io.kubernetes.cri.container-type"] === "sandbox") bootsInstead("a pod sandbox's VM needs virtiofs for the pod's containers");
  const templateDisk = fromTemplate ? templateDiskMiB() : 0;
  if (fromTemplate && rootfsSharing.sharing === "virtiofs") {
    if (spec.annotations?.[ROOTFS_ANNOTATION] === "virtiofs") {
      throw new VmError("vm-unsupported", `annotations["${TEMPLATE_ANNOTATION}"]: a VM started from a template has no virtiofs, but annotations["${ROOTFS_ANNOTATION}"] asks for it`);
    }
    rootfsSharing = { sharing: "block", reason: `a VM template (${TEMPLATE_ANNOTATION}, or NK_VM_TEMPLATE) has no virtiofs` };
  }
  const block = rootfsSharing.sharing === "block";
  // What a block rootfs does with the spec's bind mounts: small files copied into the image, /dev/shm a tmpfs, the rest refused.
  const blockMounts = block ? checkBlockRootfs(spec, rootfsSharing.reason, { bundle, rootfs }) : undefined;
  ctx.log.debug(`vm ${id}: rootfs through ${block ? "a block image (ext4)" : "virtiofs"}: ${rootfsSharing.reason}`);
  for (const note of blockMounts?.notes ?? []) ctx.log.debug(`vm ${id}: ${note}`);

  const lock = ctx.store.claim(id);
  const stateDir = ctx.store.dir(id);
  let child: ChildProcess | undefined;
  let standIn: StandIn | undefined;
  let imaging: Promise<{ made: Awaited<ReturnType<typeof makeRootfsImage>> } | { error: unknown }> | undefined;
  try {
    const record = newContainerRecord({ id, spec, bundle, rootfs, mode: "vm" });
    ctx.store.write(record);
    const imagePath = join(stateDir, ROOTFS_IMAGE_NAME);
    // Firecracker runs on KVM only; QEMU's accelerator is probed.
    const accel = driver === "firecracker" ? { accel: "kvm" as const, reason: "Firecracker needs KVM" } : await chooseAccelerator(image, { probe: true });
    ctx.log.debug(`vm ${id}: accelerator ${accel.accel} (${accel.reason})`);
    ctx.tracer.runtime(`accelerator ${accel.accel}: ${accel.reason}`, "vm");
    // The client's network namespace (podman/CNI, a test): its interfaces are mirrored into the VM.
    const netnsIndex = (spec.linux?.namespaces ?? []).findIndex((ns) => ns.type === "network" && ns.path);
    const inspected = netnsIndex >= 0 ? inspectNetns(spec.linux!.namespaces![netnsIndex]!.path!, netnsIndex, id) : undefined;
    if (driver === "firecracker" && inspected?.network.interfaces.length) {
      throw new VmError("vm-unsupported", `linux.namespaces[${netnsIndex}]: the Firecracker driver cannot take network interfaces yet (use QEMU, or --network none)`);
    }
    if (inspected) ctx.log.debug(`vm ${id}: network ${inspected.network.netnsPath}: ${inspected.network.interfaces.map((i) => `${i.name} ${i.mac} via ${i.tap}`).join(", ") || "no interface to mirror"}`);
    const size = vmSize(spec);
    const runDir = vmRunDir(stateDir, id);
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    const vsockPort = driver === "firecracker" ? AGENT_VSOCK_PORT : undefined;
    const vmConfig = (rootDrive: VmConfig["rootDrive"]): VmConfig => ({
      runDir,
      kernel: image.vmlinux,
      initramfs: image.initramfs,
      cmdline: guestCmdline({ kernel: image.kernel, accel: accel.accel, tscKhz: hostTscKhz(), share: !block, vsockPort, extra: process.env.NK_VM_CMDLINE_EXTRA }),
      acpi: image.acpi,
      memoryMiB: size.memoryMiB,
      vcpus: size.vcpus,
      accel: accel.accel,
      channelName: CHANNEL_PORT_NAME,
      share: block ? undefined : { tag: SHARE_TAG, socket: join(runDir, "virtiofsd.sock") },
      rootDrive,
      vsockPort,
      startTimeoutMs: 10_000,
      nics: inspected?.network.interfaces.map((i) => ({ mac: i.mac })),
    });
    const rootDrive = block ? { path: imagePath, readOnly: spec.root?.readonly === true } : undefined;
    const standInRequest = { record, stateDir, verb: "host" as const, opts, onChild: (c: ChildProcess) => (child = c) };
    const virtiofsdSetup = (entries: ShareEntry[]): VmLaunch["virtiofsd"] =>
      block ? undefined : { binary: virtiofsd!, socket: join(runDir, "virtiofsd.sock"), shareDir: join(runDir, "share"), entries, logFile: join(runDir, "virtiofsd.log") };
    // Starting the VM needs nothing of the plan: the host process starts it now, while create compiles seccomp,
    // builds the plan and makes the rootfs image (~0.1 s that QEMU's own start then no longer adds to `create`);
    // virtiofsd follows with the plan's share entries. Not for a block image made to the rootfs's measure (QEMU
    // opens the image at once, and its size is known only once measured); a template's image has a fixed size,
    // so it exists first, at that size, and mkfs.ext4 -F writes into that same file.
    if (fromTemplate || !block) {
      if (fromTemplate) {
        writeFileSync(imagePath, "");
        truncateSync(imagePath, templateDisk * MIB);
      }
      writeBoot(stateDir, { id, driver, vm: vmConfig(rootDrive), fromTemplate, trace: ctx.tracer.enabled, network: inspected?.network, virtiofsd: virtiofsdSetup([]) });
      standIn = spawnStandIn(ctx, { ...standInRequest, early: true });
      ctx.log.debug(`vm ${id}: host process ${standIn.host.pid} started early: the VM starts while create plans`);
    }
    // mkfs.ext4 runs while the rest of create plans (seccomp, the guest plan).
    const imageSize = fromTemplate ? { sizeMiB: templateDisk } : {};
    if (block) imaging = makeRootfsImage(rootfs, imagePath, { ...imageSize, contents: blockMounts }).then((made) => ({ made }), (error: unknown) => ({ error }));
    const guest = buildGuestPlan({
      spec,
      bundle,
      rootfs,
      containerId: id,
      network: inspected?.network,
      rootDevice: block ? { device: GUEST_ROOT_DEVICE, readOnly: spec.root?.readonly === true, binds: blockMounts?.binds } : undefined,
      noPivot: opts.noPivot,
      noNewKeyring: opts.noNewKeyring,
      seccomp: await compileContainerSeccomp(spec, ctx, { id, bundle, listenerAllowed: false }),
      isDirectory: (p) => {
        try {
          return statSync(p).isDirectory();
        } catch {
          return true;
        }
      },
    });
    for (const note of [...(inspected?.notes ?? []), ...guest.notes]) {
      ctx.log.warn(note);
      ctx.tracer.note(note);
    }
    const hostFifo = ctx.store.fifoPath(id);
    const err = mkfifo(hostFifo, 0o622);
    if (err) throw new VmError("fifo-failed", `mkfifo ${hostFifo}: errno ${err}`);
    if (imaging) {
      const imaged = await imaging;
      if ("error" in imaged) throw imaged.error;
      const { made } = imaged;
      ctx.log.debug(`vm ${id}: rootfs image ${imagePath}: ${made.sizeMiB} MiB, ${made.inodes} inodes, ${Math.round(made.usedBytes / 1024)} KiB of files, made in ${made.ms} ms${made.filesMs !== undefined ? ` (${blockMounts!.files.length} bind-mounted file(s), ${blockMounts!.dirs.length} directories written with debugfs in ${made.filesMs} ms)` : ""}`);
      ctx.tracer.runtime(`rootfs image ${imagePath} (${made.sizeMiB} MiB, mkfs.ext4 -d in ${made.ms} ms)`, "vm");
      if (fromTemplate && made.sizeMiB !== templateDisk) {
        bootsInstead(`the rootfs needs a ${made.sizeMiB} MiB image, more than a template's ${templateDisk} MiB disk (NK_VM_TEMPLATE_DISK_MIB)`);
        // The early host process started a clone with a disk too small: stop it; a booting one follows.
        if (standIn) await abandonStandIn(stateDir, standIn, runDir);
        standIn = undefined;
      }
    }
    const launch: VmLaunch = {
      id,
      driver,
      vm: vmConfig(rootDrive),
      network: inspected?.network,
      virtiofsd: virtiofsdSetup(guest.shares),
      ops: guest.ops,
      fromTemplate,
      hostFifo,
      guestFifo: guest.guestFifo,
      bootTimeoutMs: envMs("NK_VM_BOOT_TIMEOUT_MS", 60_000),
      readyTimeoutMs: envMs("NK_VM_READY_TIMEOUT_MS", 60_000),
      trace: ctx.tracer.enabled,
      controlSocket: join(runDir, "control.sock"),
      consoleSocket: spec.process?.terminal ? opts.consoleSocket : undefined,
      guestConsole: spec.process?.terminal ? GUEST_INIT_CONSOLE : undefined,
      hooks: { prestart: spec.hooks?.prestart, createRuntime: spec.hooks?.createRuntime },
      hookState: { ociVersion: record.ociVersion, id, bundle, annotations: record.annotations },
    };
    writeLaunch(stateDir, launch);

    try {
      return await awaitStandIn(ctx, standInRequest, standIn ?? spawnStandIn(ctx, standInRequest));
    } catch (error) {
      if (!(error instanceof VmError && error.code === TEMPLATE_FAILED)) throw error;
      // A template that does not load is the runtime's problem, not the container's: its host process has
      // removed it and stopped the clone; boot the VM instead (the next create makes a new template).
      ctx.log.warn(`${error.message}; the VM boots instead`); // "container <id>: restoring VM template ..."
      ctx.tracer.note(`${error.message}; the VM boots instead`);
      if (standIn) await abandonStandIn(stateDir, standIn, runDir, { exitsByItself: true });
      standIn = undefined;
      writeLaunch(stateDir, { ...launch, fromTemplate: false });
      return await awaitStandIn(ctx, standInRequest, spawnStandIn(ctx, standInRequest));
    }
  } catch (error) {
    standIn?.release(false);
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await imaging; // a mkfs still writing would leave its image behind the removal
    await destroyVm(stateDir);
    ctx.store.remove(id);
    throw error;
  } finally {
    lock.release();
  }
}

interface StandInRequest {
  record: ContainerRecord;
  stateDir: string;
  verb: "host" | "member";
  opts: CreateOptions;
  onChild: (child: ChildProcess) => void;
  /** An early start (VmBoot): the host process waits for "go" on fd GO_FD before it reads vm.json. */
  early?: boolean;
}

interface StandIn {
  host: ChildProcess;
  exited: Promise<number>;
  /** An early start: vm.json is written (true), or create gave up (false). */
  release(ok: boolean): void;
}

/**
 * Start the process that stands for a VM-mode container (`vm host` for a
 * container with its own VM, `vm member` for one that joins its pod's VM)
 * and wait for its one-line report on fd 3. From then on its pid is the
 * container's: in state.json, --pid-file, and the target of `kill`.
 */
export async function launchStandIn(ctx: RuntimeContext, p: StandInRequest): Promise<ExecutorRun & { record: ContainerRecord }> {
  return awaitStandIn(ctx, p, spawnStandIn(ctx, p));
}

function spawnStandIn(ctx: RuntimeContext, p: StandInRequest): StandIn {
  const { record, stateDir, opts } = p;
  const flags = [
    ...(ctx.log.file ? ["--log", ctx.log.file] : []),
    ...(ctx.log.format !== "text" ? ["--log-format", ctx.log.format] : []),
    // Without a log file the stand-in logs to its stderr, which is the container's: given the container's own
    // streams (the shim's fifos), keep debug chatter out of them.
    ...(ctx.log.debugEnabled && (ctx.log.file || !opts.stdio) ? ["--debug"] : []),
  ];
  // The container's stdio: the caller's own, or what it was given (the shim: containerd's fifos).
  const stdio = opts.stdio ? [...opts.stdio] : ["inherit", "inherit", "inherit"];
  // Its own session: a terminal's ^C reaches the container through `run`'s relay only, once.
  // fd 3: its report; fd 4 (an early start): create's "go".
  const host = spawn(cliPath(), [...flags, "vm", p.verb, stateDir], { stdio: [...stdio, "pipe", ...(p.early ? ["pipe"] : [])] as never, detached: true });
  p.onChild(host);
  const exited = new Promise<number>((resolve) => {
    host.on("exit", (code, signal) => resolve(code ?? (signal === "SIGKILL" ? 137 : 128)));
    host.on("error", () => resolve(127));
  });
  // From here the stand-in is the container: a create killed midway is found by `delete --force`.
  record.pid = host.pid!;
  record.pidStartTime = readProcStat(host.pid!)?.startTime ?? "";
  ctx.store.write(record);
  const go = p.early ? (host.stdio[GO_FD] as NodeJS.WritableStream) : undefined;
  go?.on("error", () => {}); // a host process that already died: its report says why
  let released = !go;
  return {
    host,
    exited,
    release(ok) {
      if (released) return;
      released = true;
      go!.end(ok ? "go\n" : "");
    },
  };
}

async function awaitStandIn(ctx: RuntimeContext, p: StandInRequest, standIn: StandIn): Promise<ExecutorRun & { record: ContainerRecord }> {
  const { record, stateDir, opts } = p;
  const { host, exited } = standIn;
  standIn.release(true);
  const report = await readReport(host);
  if (report.ready !== true) {
    const message = typeof report.error === "string" ? report.error : `the VM ${p.verb} process exited (${await exited}) without a report`;
    await exited;
    throw new VmError(typeof report.code === "string" ? report.code : "vm-create-failed", `container ${record.id}: ${message}`);
  }
  record.phase = "created";
  ctx.store.write(record);
  ctx.tracer.runtime(`state ${stateDir}/state.json: created, ${p.verb} process ${record.pid} (guest init ${report.guestPid})`, "create");
  if (opts.pidFile) writePidFile(opts.pidFile, record.pid);
  if (!opts.foreground) host.unref();
  return { initPid: record.pid, exited: opts.foreground ? exited : Promise.resolve(0), executor: host, record };
}

function writePidFile(path: string, pid: number): void {
  const temp = `${path}.${process.pid}.tmp`;
  writeFileSync(temp, String(pid));
  renameSync(temp, path);
}

/** Stop an early host process and the VM it started (its pids file names the VMM). */
async function abandonStandIn(stateDir: string, standIn: StandIn, runDir: string, opts: { exitsByItself?: boolean } = {}): Promise<void> {
  standIn.release(false);
  // One that reported a failure is on its way out, undoing its network wiring: let it finish (bounded).
  const killer = setTimeout(() => standIn.host.kill("SIGKILL"), opts.exitsByItself ? 5000 : 0);
  await standIn.exited;
  clearTimeout(killer);
  await stop(readPids(stateDir)?.vmm);
  // Its sockets (the next host process listens on the same paths) and console log.
  rmSync(runDir, { recursive: true, force: true });
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
}

async function stop(ref: ProcRef | undefined): Promise<void> {
  if (!ref || !isSameLiveProcess(ref.pid, ref.startTime)) return;
  try {
    process.kill(ref.pid, "SIGKILL");
  } catch {}
  const deadline = Date.now() + 5000;
  while (isSameLiveProcess(ref.pid, ref.startTime) && Date.now() < deadline) await Bun.sleep(2);
}

/**
 * Stop whatever of a VM is still running -- the host process, the VMM,
 * virtiofsd, by the pids the host process recorded -- and remove its
 * socket directory when that lives outside the state directory.
 */
export async function destroyVm(stateDir: string): Promise<void> {
  const pod = await import("./pod.ts");
  if (pod.readMember(stateDir)) return pod.destroyMember(stateDir);
  const pids = readPids(stateDir);
  await stop(pids?.host);
  await stop(pids?.vmm);
  await stop(pids?.virtiofsd);
  let launch: VmBoot | VmLaunch | undefined;
  try {
    launch = readBootOrLaunch(stateDir);
  } catch {}
  // A host process that died before it could remove its tc mirroring (the taps went with QEMU).
  const network = launch && "network" in launch ? launch.network : undefined;
  if (pids?.networkWired && network) {
    unwireMirror(network);
    try {
      writePids(stateDir, { ...pids, networkWired: false });
    } catch {}
  }
  // The block rootfs (in the state directory, which `delete` removes too; named here for a state dir kept by a failed removal).
  if (launch?.vm.rootDrive) rmSync(launch.vm.rootDrive.path, { force: true });
  const runDir = launch?.vm.runDir;
  if (runDir && !runDir.startsWith(`${stateDir}/`)) rmSync(runDir, { recursive: true, force: true });
}
