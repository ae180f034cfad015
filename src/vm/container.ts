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
import { existsSync, mkdirSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
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
import { checkBlockRootfs, GUEST_ROOT_DEVICE, makeRootfsImage, ROOTFS_IMAGE_NAME, selectRootfsSharing } from "./rootfs-image.ts";
import { findImage, sha256File } from "./image/build.ts";
import { readLaunch, readPids, writeLaunch, writePids, type ProcRef, type VmLaunch } from "./launch.ts";
import { inspectNetns, unwireMirror } from "./network.ts";
import { buildGuestPlan, checkVmSupport, GUEST_INIT_CONSOLE } from "./plan.ts";
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
  const rootfsSharing = selectRootfsSharing(spec, { driver, virtiofsd: virtiofsd !== undefined });
  const block = rootfsSharing.sharing === "block";
  if (block) checkBlockRootfs(spec, rootfsSharing.reason);
  ctx.log.debug(`vm ${id}: rootfs through ${block ? "a block image (ext4)" : "virtiofs"}: ${rootfsSharing.reason}`);

  const lock = ctx.store.claim(id);
  const stateDir = ctx.store.dir(id);
  let child: ChildProcess | undefined;
  // mkfs.ext4 runs while the rest of create plans (accelerator, network, seccomp, the guest plan).
  let imaging: Promise<{ made: Awaited<ReturnType<typeof makeRootfsImage>> } | { error: unknown }> | undefined;
  try {
    const record = newContainerRecord({ id, spec, bundle, rootfs, mode: "vm" });
    ctx.store.write(record);
    const imagePath = join(stateDir, ROOTFS_IMAGE_NAME);
    if (block) imaging = makeRootfsImage(rootfs, imagePath).then((made) => ({ made }), (error: unknown) => ({ error }));
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
    const guest = buildGuestPlan({
      spec,
      bundle,
      rootfs,
      containerId: id,
      network: inspected?.network,
      rootDevice: block ? { device: GUEST_ROOT_DEVICE, readOnly: spec.root?.readonly === true } : undefined,
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
    const runDir = vmRunDir(stateDir, id);
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    const hostFifo = ctx.store.fifoPath(id);
    const err = mkfifo(hostFifo, 0o622);
    if (err) throw new VmError("fifo-failed", `mkfifo ${hostFifo}: errno ${err}`);
    const size = vmSize(spec);
    let rootDrive: VmConfig["rootDrive"];
    if (imaging) {
      const imaged = await imaging;
      if ("error" in imaged) throw imaged.error;
      const { made } = imaged;
      rootDrive = { path: imagePath, readOnly: spec.root?.readonly === true };
      ctx.log.debug(`vm ${id}: rootfs image ${imagePath}: ${made.sizeMiB} MiB, ${made.inodes} inodes, ${Math.round(made.usedBytes / 1024)} KiB of files, made in ${made.ms} ms`);
      ctx.tracer.runtime(`rootfs image ${imagePath} (${made.sizeMiB} MiB, mkfs.ext4 -d in ${made.ms} ms)`, "vm");
    }
    const vsockPort = driver === "firecracker" ? AGENT_VSOCK_PORT : undefined;
    const launch: VmLaunch = {
      id,
      driver,
      vm: {
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
      },
      network: inspected?.network,
      virtiofsd: block ? undefined : { binary: virtiofsd!, socket: join(runDir, "virtiofsd.sock"), shareDir: join(runDir, "share"), entries: guest.shares, logFile: join(runDir, "virtiofsd.log") },
      ops: guest.ops,
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

    return await launchStandIn(ctx, { record, stateDir, verb: "host", opts, onChild: (c) => (child = c) });
  } catch (error) {
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await imaging; // a mkfs still writing would leave its image behind the removal
    await destroyVm(stateDir);
    ctx.store.remove(id);
    throw error;
  } finally {
    lock.release();
  }
}

/**
 * Start the process that stands for a VM-mode container (`vm host` for a
 * container with its own VM, `vm member` for one that joins its pod's VM)
 * and wait for its one-line report on fd 3. From then on its pid is the
 * container's: in state.json, --pid-file, and the target of `kill`.
 */
export async function launchStandIn(
  ctx: RuntimeContext,
  p: { record: ContainerRecord; stateDir: string; verb: "host" | "member"; opts: CreateOptions; onChild: (child: ChildProcess) => void },
): Promise<ExecutorRun & { record: ContainerRecord }> {
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
  const host = spawn(cliPath(), [...flags, "vm", p.verb, stateDir], { stdio: [...stdio, "pipe"] as never, detached: true });
  p.onChild(host);
  const exited = new Promise<number>((resolve) => {
    host.on("exit", (code, signal) => resolve(code ?? (signal === "SIGKILL" ? 137 : 128)));
    host.on("error", () => resolve(127));
  });
  // From here the stand-in is the container: a create killed midway is found by `delete --force`.
  record.pid = host.pid!;
  record.pidStartTime = readProcStat(host.pid!)?.startTime ?? "";
  ctx.store.write(record);
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
  let launch: VmLaunch | undefined;
  try {
    launch = readLaunch(stateDir);
  } catch {}
  // A host process that died before it could remove its tc mirroring (the taps went with QEMU).
  if (pids?.networkWired && launch?.network) {
    unwireMirror(launch.network);
    try {
      writePids(stateDir, { ...pids, networkWired: false });
    } catch {}
  }
  // The block rootfs (in the state directory, which `delete` removes too; named here for a state dir kept by a failed removal).
  if (launch?.vm.rootDrive) rmSync(launch.vm.rootDrive.path, { force: true });
  const runDir = launch?.vm.runDir;
  if (runDir && !runDir.startsWith(`${stateDir}/`)) rmSync(runDir, { recursive: true, force: true });
}
