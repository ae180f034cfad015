/**
 * VM templating (Kata's `enable_template`, QEMU flavour): boot a guest once
 * per VM shape, save it just after its agent said HELLO, and start each
 * container's VM as a copy-on-write clone of that saved guest instead of
 * booting a kernel. Under TCG a boot costs ~0.45 s of kernel and init; a
 * restore costs the devices' state (~90 KB) and whatever guest pages the
 * container touches.
 *
 * A template is a directory <templateDir()>/<key>:
 *   ram        the guest's RAM, written by the template's own VM (QEMU
 *              memory-backend-file, share=on); each clone maps it privately
 *              (share=off), so clones never see each other's writes and the
 *              file never changes after it is made
 *   state      the devices' state: QMP `migrate` with x-ignore-shared, so
 *              without the RAM
 *   meta.json  what it was made from (TemplateInputs) and when
 * The key is a hash of everything on QEMU's command line that reaches the
 * guest (kernel, initramfs, command line, memory, vCPUs, accelerator, the
 * root disk's size) and of the QEMU binary: a VM whose shape differs boots
 * cold, and a rebuilt guest image or QEMU gets new templates. Templates are
 * made on first use (under a lock, so concurrent creates make one) or by
 * `nk-runtime vm template init`, and live in /run by default: RAM-backed,
 * gone at reboot, like Kata's factory.
 *
 * What a clone must not keep of its template (see the agent's WAKE): its
 * CRNG state and its stopped wall clock. What it cannot have: virtiofs (QEMU
 * does not migrate vhost-user-fs, and vhost-user needs shared RAM), so the
 * rootfs is a block image of exactly the template's disk size, the guest's
 * view of the disk having been fixed when the template probed it. Network
 * cards must be there at boot (microvm has no hotplug): a template has as
 * many as its clones, on taps in a network namespace of its own while it
 * boots; a clone gets the container's taps, and WAKE gives each card the
 * container's MAC.
 */
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isSameLiveProcess, readProcStat } from "../state/proc.ts";
import { flock, LOCK_EX } from "../util/libc.ts";
import type { Logger } from "../util/log.ts";
import { CLONE } from "../plan/constants.ts";
import { encodeFrame, Frame, FrameReader, readU32, u32Payload } from "./channel.ts";
import { qemuPath } from "./config.ts";
import { VmError, type RunningVm, type VmConfig } from "./driver.ts";
import type { ProcRef } from "./launch.ts";

/** The error code of a clone that could not be restored (its template is removed; create then boots the VM). */
export const TEMPLATE_FAILED = "template-failed";

/** Per container: "true" to start from a template, "false" never (NK_VM_TEMPLATE=1 makes "true" the runtime-wide default). */
export const TEMPLATE_ANNOTATION = "io.nanokata.vm.template";

/**
 * The root disk's size in a template, and so the size of a templated
 * container's rootfs image (sparse: mkfs writes only what it copies; 2 GiB
 * or 256 MiB costs the same ~30 ms): NK_VM_TEMPLATE_DISK_MIB, default 2048.
 * The guest learnt the disk's size when the template probed it, so a clone's
 * image must have exactly that size; a rootfs that needs more boots instead.
 */
export function templateDiskMiB(): number {
  const raw = process.env.NK_VM_TEMPLATE_DISK_MIB;
  if (raw === undefined) return 2048;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 64) throw new VmError("bad-template", `NK_VM_TEMPLATE_DISK_MIB: expected a whole number of MiB, at least 64, not ${JSON.stringify(raw)}`);
  return n;
}

/** The namespaces of a container (runc's default spec has these), made once in the template (WARM). */
const WARM_NAMESPACES = CLONE.NEWNS | CLONE.NEWPID | CLONE.NEWNET | CLONE.NEWIPC | CLONE.NEWUTS | CLONE.NEWCGROUP;

/** Bumped when what a template holds changes meaning (the agent's WAKE, the save procedure). */
const TEMPLATE_LAYOUT = 3;

export function templateDir(): string {
  return process.env.NK_VM_TEMPLATE_DIR ?? "/run/nano-kata/vm-templates";
}

/** Whether a container asked for a template: its annotation, else NK_VM_TEMPLATE. A bad value is an error naming the field. */
export function templateRequested(annotations: Record<string, string> | undefined): boolean {
  const value = annotations?.[TEMPLATE_ANNOTATION];
  if (value === undefined) return process.env.NK_VM_TEMPLATE === "1" || process.env.NK_VM_TEMPLATE === "true";
  if (value === "true" || value === "false") return value === "true";
  throw new VmError("bad-template", `annotations["${TEMPLATE_ANNOTATION}"]: must be "true" or "false", not ${JSON.stringify(value)}`);
}

interface FileIdentity {
  path: string;
  size: number;
  mtimeMs: number;
}

/** Everything that makes two VMs clones of one template. */
export interface TemplateInputs {
  layout: number;
  qemu: FileIdentity;
  kernel: FileIdentity;
  initramfs: FileIdentity;
  cmdline: string;
  acpi: boolean;
  memoryMiB: number;
  vcpus: number;
  accel: string;
  driveMiB: number;
  /** Network cards: a template has as many as its clones (microvm has no hotplug), with templateMac(i). */
  nics: number;
}

export interface TemplateMeta {
  key: string;
  inputs: TemplateInputs;
  madeAt: string;
  /** Boot to HELLO, and the save, in ms. */
  bootMs: number;
  saveMs: number;
}

export interface Template {
  dir: string;
  ram: string;
  state: string;
  meta: TemplateMeta;
}

function identity(path: string): FileIdentity {
  const st = statSync(path);
  return { path, size: st.size, mtimeMs: st.mtimeMs };
}

/** The inputs of the template a VM with this configuration would be cloned from. */
export function templateInputs(vm: VmConfig): TemplateInputs {
  const qemu = qemuPath();
  if (!qemu) throw new VmError("no-hypervisor", "qemu-system-x86_64 not found (apt-get install qemu-system-x86, or set NK_QEMU)");
  return {
    layout: TEMPLATE_LAYOUT,
    qemu: identity(qemu),
    kernel: identity(vm.kernel),
    initramfs: identity(vm.initramfs),
    cmdline: vm.cmdline,
    acpi: vm.acpi !== false,
    memoryMiB: vm.memoryMiB,
    vcpus: vm.vcpus,
    accel: vm.accel,
    driveMiB: templateDiskMiB(),
    nics: vm.nics?.length ?? 0,
  };
}

export function templateKey(inputs: TemplateInputs): string {
  return new Bun.CryptoHasher("sha256").update(JSON.stringify(inputs)).digest("hex").slice(0, 20);
}

function readTemplate(dir: string): Template | undefined {
  try {
    const meta = JSON.parse(readFileSync(join(dir, "meta.json"), "utf8")) as TemplateMeta;
    const t = { dir, ram: join(dir, "ram"), state: join(dir, "state"), meta };
    return existsSync(t.ram) && existsSync(t.state) ? t : undefined;
  } catch {
    return undefined;
  }
}

/** The finished template for these inputs, if one was made. */
export function findTemplate(inputs: TemplateInputs): Template | undefined {
  return readTemplate(join(templateDir(), templateKey(inputs)));
}

/** Every finished template (`vm template status`). */
export function listTemplates(): Template[] {
  const root = templateDir();
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((name) => /^[0-9a-f]{20}$/.test(name))
    .map((name) => readTemplate(join(root, name)))
    .filter((t): t is Template => t !== undefined);
}

/** Remove every template (and any half-made one). Running clones keep their private mappings of the RAM file. */
export function removeTemplates(): number {
  const root = templateDir();
  if (!existsSync(root)) return 0;
  let removed = 0;
  for (const name of readdirSync(root)) {
    if (/^[0-9a-f]{20}$/.test(name)) removed++;
    rmSync(join(root, name), { recursive: true, force: true });
  }
  return removed;
}

/**
 * Whether a template was made from files that are no longer there as they
 * were (a rebuilt guest image, an upgraded QEMU): no create will find it
 * again (its key names the old files), so it only holds RAM in /run.
 */
export function isStale(t: Template): boolean {
  const { qemu, kernel, initramfs } = t.meta.inputs;
  return [qemu, kernel, initramfs].some((f) => {
    try {
      const st = statSync(f.path);
      return st.size !== f.size || st.mtimeMs !== f.mtimeMs;
    } catch {
      return true;
    }
  });
}

/** Remove the stale templates (made whenever a new one is made); their keys. Running clones keep their mappings. */
export function removeStaleTemplates(): string[] {
  const stale = listTemplates().filter(isStale);
  for (const t of stale) rmSync(t.dir, { recursive: true, force: true });
  return stale.map((t) => t.meta.key);
}

/** Remove one template: a clone of it failed to load, so the next create makes it again. */
export function discardTemplate(t: Template): void {
  rmSync(t.dir, { recursive: true, force: true });
}

/**
 * The template for this VM's shape: found, or made now. Concurrent callers
 * for one key wait on its lock file and then find the one that was made.
 */
export async function ensureTemplate(vm: VmConfig, log: Logger): Promise<{ template: Template; made: boolean }> {
  const inputs = templateInputs(vm);
  const found = findTemplate(inputs);
  if (found) return { template: found, made: false };
  const root = templateDir();
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const key = templateKey(inputs);
  const lockFd = openSync(join(root, `${key}.lock`), "a", 0o600);
  try {
    if (flock(lockFd, LOCK_EX) !== 0) throw new VmError("template-lock", `cannot lock ${join(root, `${key}.lock`)}`);
    const madeMeanwhile = findTemplate(inputs);
    if (madeMeanwhile) return { template: madeMeanwhile, made: false };
    removeAbandonedScratch(root, key);
    for (const old of removeStaleTemplates()) log.debug(`vm template ${old} removed: its guest image or QEMU has changed since it was made`);
    return { template: await makeTemplate(vm, inputs, key, log), made: true };
  } finally {
    closeSync(lockFd); // releases the lock
  }
}

/**
 * A maker killed midway (its `create` was) leaves its scratch directory, and
 * perhaps its QEMU: one stopped after the save never exits by itself. Under
 * the key's lock no other maker of this key runs, so every scratch
 * directory of the key is abandoned: stop the QEMU it names, remove it.
 */
export function removeAbandonedScratch(root: string, key: string): void {
  for (const name of readdirSync(root)) {
    if (!name.startsWith(`${key}.making-`)) continue;
    try {
      const vmm = JSON.parse(readFileSync(join(root, name, "vmm.json"), "utf8")) as ProcRef;
      if (isSameLiveProcess(vmm.pid, vmm.startTime)) process.kill(vmm.pid, "SIGKILL");
    } catch {}
    rmSync(join(root, name), { recursive: true, force: true });
  }
}

const quoteForShell = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** Wait for the first frame of `type` on a VM's channel. */
function nextFrame(vm: RunningVm, type: number, what: string, timeoutMs: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new VmError("template-timeout", `the template's guest did not ${what} within ${timeoutMs} ms`)), timeoutMs);
    const reader = new FrameReader((t, payload) => {
      if (t === type) done(undefined, payload);
    });
    const onData = (chunk: Buffer) => reader.push(chunk);
    const onExit = (code: number) => done(new VmError("template-failed", `the template's VM exited (${code}) before it could ${what}: ${vm.stderr().trim() || "(no message)"}`));
    const done = (error?: Error, payload?: Uint8Array) => {
      clearTimeout(timer);
      vm.channel.off("data", onData);
      if (error) reject(error);
      else resolve(payload!);
    };
    vm.channel.on("data", onData);
    void vm.exited.then(onExit);
  });
}

/**
 * Boot the template's VM with its RAM in a file, wait for HELLO, have the
 * agent WARM up, wait until it is back in its loop (the answer to a READ),
 * and save the devices' state (migrate stops the vCPUs itself). Everything
 * is made in a scratch directory that becomes the template by one rename;
 * on failure nothing is left.
 */
async function makeTemplate(vm: VmConfig, inputs: TemplateInputs, key: string, log: Logger): Promise<Template> {
  const root = templateDir();
  const scratch = mkdtempSync(join(root, `${key}.making-`));
  // Unix socket paths are short (108 bytes): the template's sockets live apart from the (configurable) template directory.
  const runDir = mkdtempSync(join(tmpdir(), "nk-template-"));
  let running: RunningVm | undefined;
  let taps: { fds: number[]; netnsFd: number } | undefined;
  try {
    const placeholder = join(scratch, "drive");
    writeFileSync(placeholder, "");
    truncateSync(placeholder, inputs.driveMiB * 1024 * 1024); // sparse: the guest reads zeros
    const { QemuDriver } = await import("./qemu.ts");
    const started = Date.now();
    const recordVmm = (pid: number) => writeFileSync(join(scratch, "vmm.json"), JSON.stringify({ pid, startTime: readProcStat(pid)?.startTime ?? "" }));
    // Network cards need a backend while the template boots: taps in a network namespace of their own,
    // which nothing else sees (a clone gets the container's taps instead).
    if (inputs.nics) {
      const { openTapsInNewNetns } = await import("./tap.ts");
      taps = openTapsInNewNetns(Array.from({ length: inputs.nics }, (_, i) => ({ name: `nktmpl${i}`, mtu: 0 })));
    }
    const launching = new QemuDriver().launch(
      {
        ...vm,
        runDir,
        share: undefined,
        nics: taps?.fds.map((tapFd, i) => ({ mac: templateMac(i), tapFd })),
        rootDrive: { path: placeholder, readOnly: false },
        template: { role: "save", ram: join(scratch, "ram"), state: join(scratch, "state") },
      },
      recordVmm,
    );
    for (const fd of taps?.fds.splice(0) ?? []) closeSync(fd); // QEMU holds them now
    running = await launching;
    await nextFrame(running, Frame.HELLO, "say HELLO", 60_000);
    const bootMs = Date.now() - started;
    // The kernel's first-time work of a container (its first namespaces, proc mount, exec) done once, here,
    // rather than in every clone's plan: ~50 ms of each clone's plan under TCG.
    const warmed = nextFrame(running, Frame.HELLO, "warm up", 10_000);
    running.channel.write(encodeFrame(Frame.WARM, u32Payload(WARM_NAMESPACES)));
    const warm = new TextDecoder().decode(await warmed);
    if (!/ warm 0$/.test(warm)) throw new VmError("template-failed", `the template's agent could not warm up: ${warm}`);
    // A READ's answer: the agent has finished its boot and waits in its loop, where every clone will start.
    const answered = nextFrame(running, Frame.FILE, "answer a READ", 10_000);
    running.channel.write(encodeFrame(Frame.READ, "/proc/uptime"));
    const file = await answered;
    if (readU32(file) !== 0) throw new VmError("template-failed", `the template's agent could not read /proc/uptime (errno ${readU32(file)})`);
    const saveStarted = Date.now();
    const qmp = running.qmp!;
    // No `stop` first: migrate stops the vCPUs itself before it saves the devices, and a template saved
    // running makes clones that run as soon as they are loaded (a stopped one would wait for `cont`).
    await qmp("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
    await qmp("migrate", { uri: `exec:cat > ${quoteForShell(join(scratch, "state"))}` });
    for (;;) {
      const status = (await qmp("query-migrate")) as { status?: string; "error-desc"?: string };
      if (status.status === "completed") break;
      if (status.status === "failed" || status.status === "cancelled") throw new VmError("template-failed", `saving the template's state failed: ${status["error-desc"] ?? status.status}`);
      if (Date.now() - saveStarted > 30_000) throw new VmError("template-timeout", "saving the template's state took over 30 s");
      await Bun.sleep(5);
    }
    const saveMs = Date.now() - saveStarted;
    await running.shutdown(2000);
    running = undefined;
    rmSync(placeholder);
    rmSync(join(scratch, "vmm.json"));
    const meta: TemplateMeta = { key, inputs, madeAt: new Date().toISOString(), bootMs, saveMs };
    writeFileSync(join(scratch, "meta.json"), JSON.stringify(meta, null, 2) + "\n");
    const dir = join(root, key);
    renameSync(scratch, dir);
    log.debug(`vm template ${key} made in ${dir}: boot ${bootMs} ms, save ${saveMs} ms (${statSync(join(dir, "state")).size} bytes of state)`);
    return { dir, ram: join(dir, "ram"), state: join(dir, "state"), meta };
  } catch (e) {
    await running?.shutdown(0).catch(() => {});
    rmSync(scratch, { recursive: true, force: true });
    throw e instanceof VmError ? e : new VmError("template-failed", `making the VM template: ${(e as Error).message}`);
  } finally {
    rmSync(runDir, { recursive: true, force: true });
    for (const fd of taps?.fds ?? []) closeSync(fd);
    if (taps) closeSync(taps.netnsFd); // the taps' namespace goes with it
  }
}

/** The MAC of a template's network card i; a clone's agent gives each card the container's (WAKE). */
export function templateMac(i: number): string {
  return `02:6e:6b:7e:00:${i.toString(16).padStart(2, "0")}`;
}

/**
 * `vm template init`: make the template a container of this size would use
 * (256 MiB and 1 vCPU unless told: what a spec without linux.resources gets),
 * with the same guest image, accelerator and command line as create.
 */
export async function initTemplate(size: { memoryMiB: number; vcpus: number }, log: Logger): Promise<{ template: Template; made: boolean }> {
  const { findImage } = await import("./image/build.ts");
  const { chooseAccelerator } = await import("./check.ts");
  const { CHANNEL_PORT_NAME, guestCmdline, hostTscKhz, vmCacheDir } = await import("./config.ts");
  const image = findImage(vmCacheDir());
  if (!image) throw new VmError("no-guest-image", `VM mode: no guest kernel and initramfs in ${vmCacheDir()}: run \`nk-runtime vm build-image\``);
  const accel = await chooseAccelerator(image, { probe: true });
  const runDir = mkdtempSync(join(tmpdir(), "nk-template-init-"));
  try {
    return await ensureTemplate(
      {
        runDir,
        kernel: image.vmlinux,
        initramfs: image.initramfs,
        cmdline: guestCmdline({ kernel: image.kernel, accel: accel.accel, tscKhz: hostTscKhz(), share: false, extra: process.env.NK_VM_CMDLINE_EXTRA }),
        acpi: image.acpi,
        memoryMiB: size.memoryMiB,
        vcpus: size.vcpus,
        accel: accel.accel,
        channelName: CHANNEL_PORT_NAME,
        startTimeoutMs: 10_000,
      },
      log,
    );
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
}

/** `vm template status`: one line per template. */
export function describeTemplates(templates: Template[]): string {
  if (templates.length === 0) return `no VM templates in ${templateDir()}\n`;
  const mib = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MiB`;
  return (
    templates
      .map((t) => {
        const i = t.meta.inputs;
        const ramUsed = statSync(t.ram).blocks * 512;
        const cards = i.nics ? `, ${i.nics} network card${i.nics > 1 ? "s" : ""}` : "";
        const stale = isStale(t) ? "; STALE (its guest image or QEMU changed: removed when the next template is made)" : "";
        return `${t.meta.key}  ${i.memoryMiB} MiB, ${i.vcpus} vCPU, ${i.accel}, disk ${i.driveMiB} MiB${cards}; RAM file ${mib(ramUsed)} used; made ${t.meta.madeAt} (boot ${t.meta.bootMs} ms, save ${t.meta.saveMs} ms)${stale}`;
      })
      .join("\n") + "\n"
  );
}
