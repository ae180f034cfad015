/**
 * Can VM mode run here, and how: `nk-runtime vm check`, and the accelerator
 * choice `create` makes. KVM is used only when it can actually boot the
 * guest: /dev/kvm can exist and still refuse a stock kernel (a nested PVM
 * hypervisor does), so the choice rests on a probe -- boot the real guest
 * under KVM and wait for the agent's HELLO -- whose result is cached beside
 * the image, keyed by everything that could change it.
 */
import { spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Frame, FrameReader } from "./channel.ts";
import { mkfsPath } from "./rootfs-image.ts";
import { listTemplates, templateDir } from "./template.ts";
import { CHANNEL_PORT_NAME, firecrackerPath, guestCmdline, guestKernelKind, hostTscKhz, qemuPath, virtiofsdPath, vmCacheDir, type KernelKind } from "./config.ts";
import type { Accelerator } from "./driver.ts";
import { currentInputs, findImage, imageStatus, type GuestImage } from "./image/build.ts";

export interface AccelChoice {
  accel: Accelerator;
  reason: string;
}

export interface KvmProbe {
  key: string;
  ok: boolean;
  reason: string;
  probedAt: string;
}

export function kvmDevice(): { present: boolean; usable: boolean; reason: string } {
  if (!existsSync("/dev/kvm")) return { present: false, usable: false, reason: "/dev/kvm does not exist (no hardware virtualisation exposed to this machine)" };
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return { present: true, usable: true, reason: "/dev/kvm is present and read-write" };
  } catch {
    return { present: true, usable: false, reason: "/dev/kvm exists but is not read-write for this user" };
  }
}

export function qemuVersion(path = qemuPath()): string | undefined {
  if (!path) return undefined;
  const r = spawnSync(path, ["--version"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.split("\n")[0]?.trim() : undefined;
}

function probeKey(image: GuestImage): string {
  const host = readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
  const st = statSync(image.vmlinux);
  return JSON.stringify({ qemu: qemuVersion(), host, vmlinux: `${st.size}:${Math.trunc(st.mtimeMs)}` });
}

const probePath = (image: GuestImage) => join(image.dir, "kvm-probe.json");

export function cachedProbe(image: GuestImage): KvmProbe | undefined {
  try {
    const probe = JSON.parse(readFileSync(probePath(image), "utf8")) as KvmProbe;
    return probe.key === probeKey(image) ? probe : undefined;
  } catch {
    return undefined;
  }
}

/** Boot the guest under KVM and wait for the agent's HELLO. */
export async function probeKvm(image: GuestImage, timeoutMs = 10_000): Promise<KvmProbe> {
  const { QemuDriver } = await import("./qemu.ts");
  const runDir = mkdtempSync(join(tmpdir(), "nk-kvm-probe-"));
  const key = probeKey(image);
  const result = (ok: boolean, reason: string): KvmProbe => ({ key, ok, reason, probedAt: new Date().toISOString() });
  let probe: KvmProbe;
  try {
    const vm = await new QemuDriver().launch({
      runDir,
      kernel: image.vmlinux,
      initramfs: image.initramfs,
      cmdline: guestCmdline({ kernel: image.kernel, accel: "kvm", tscKhz: hostTscKhz(), share: false }),
      acpi: image.acpi,
      memoryMiB: 256,
      vcpus: 1,
      accel: "kvm",
      channelName: CHANNEL_PORT_NAME,
      startTimeoutMs: timeoutMs,
    });
    const started = Date.now();
    const hello = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      const reader = new FrameReader((type) => {
        if (type === Frame.HELLO) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      vm.channel.on("data", (b: Buffer) => reader.push(b));
      vm.exited.then(() => resolve(false));
    });
    await vm.shutdown(1000);
    let consoleTail = "";
    try {
      consoleTail = readFileSync(join(runDir, "console.log"), "utf8").trim().split("\n").slice(-3).join(" | ");
    } catch {}
    probe = hello
      ? result(true, `the guest booted under KVM (agent up after ${Date.now() - started} ms)`)
      : result(false, `the guest did not boot under KVM within ${timeoutMs} ms${consoleTail ? `: ${consoleTail}` : ""}${vm.stderr() ? `; qemu: ${vm.stderr().trim()}` : ""}`);
  } catch (e) {
    probe = result(false, `qemu could not start under KVM: ${(e as Error).message}`);
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
  try {
    writeFileSync(probePath(image), JSON.stringify(probe, null, 2) + "\n");
  } catch {}
  return probe;
}

/** KVM when it boots the guest, else TCG; NK_VM_ACCEL=kvm|tcg overrides. */
export async function chooseAccelerator(image: GuestImage, opts: { probe: boolean }): Promise<AccelChoice> {
  const forced = process.env.NK_VM_ACCEL;
  if (forced === "kvm" || forced === "tcg") return { accel: forced, reason: `NK_VM_ACCEL=${forced}` };
  const dev = kvmDevice();
  if (!dev.usable) return { accel: "tcg", reason: dev.reason };
  const probe = cachedProbe(image) ?? (opts.probe ? await probeKvm(image) : undefined);
  if (!probe) return { accel: "tcg", reason: "KVM not probed yet (run `nk-runtime vm check`)" };
  return probe.ok ? { accel: "kvm", reason: probe.reason } : { accel: "tcg", reason: `KVM probe failed: ${probe.reason}` };
}

export interface CheckReport {
  ok: boolean;
  kvm: { present: boolean; usable: boolean; reason: string; probe?: KvmProbe };
  qemu: { path?: string; version?: string };
  virtiofsd: { path?: string };
  firecracker: { path?: string; note: string };
  /** kernel: which guest kernel the image has ("minimal" or "debian"), and so whether its VMs get ACPI. */
  image: { dir: string; state: string; reason: string; kernel?: KernelKind; release?: string; acpi?: boolean };
  accelerator?: AccelChoice;
  /** VM templates (template.ts): where they are and how many are made. */
  templates: { dir: string; count: number };
  problems: string[];
}

export async function vmCheck(opts: { probe: boolean }): Promise<CheckReport> {
  const problems: string[] = [];
  const dir = vmCacheDir();
  const qemu = qemuPath();
  const version = qemuVersion(qemu);
  if (!qemu) problems.push("no qemu-system-x86_64 (apt-get install qemu-system-x86)");
  const virtiofsd = virtiofsdPath();
  // Without virtiofsd the rootfs can still come as an ext4 image (rootfs-image.ts), which needs mkfs.ext4.
  if (!virtiofsd && !mkfsPath()) problems.push("no virtiofsd (Debian: qemu-system-common ships /usr/lib/qemu/virtiofsd) and no mkfs.ext4 for a block rootfs (e2fsprogs)");
  let image: CheckReport["image"];
  const existing = findImage(dir);
  try {
    // Stale against the kind asked for (NK_VM_KERNEL), else against the kind it was built as.
    const kind = process.env.NK_VM_KERNEL ? guestKernelKind() : (existing?.kernel ?? guestKernelKind());
    const status = imageStatus(dir, currentInputs(kind));
    image = { dir, state: status.state, reason: status.reason, kernel: status.image?.kernel, release: status.image?.stamp.release, acpi: status.image?.acpi };
  } catch (e) {
    // No apt metadata (or no agent binary): whether it is stale cannot be told.
    image = { dir, state: existing ? "unverified" : "missing", reason: (e as Error).message, kernel: existing?.kernel, release: existing?.stamp.release, acpi: existing?.acpi };
  }
  if (image.state === "missing") problems.push(`no guest image in ${dir} (run \`nk-runtime vm build-image\`)`);
  else if (image.state === "stale") problems.push(`the guest image is stale: ${image.reason} (run \`nk-runtime vm build-image\`)`);
  const dev = kvmDevice();
  const kvm: CheckReport["kvm"] = { ...dev };
  const built = findImage(dir);
  let accelerator: AccelChoice | undefined;
  if (built && qemu) {
    if (dev.usable && !process.env.NK_VM_ACCEL) kvm.probe = opts.probe ? await probeKvm(built) : cachedProbe(built);
    accelerator = await chooseAccelerator(built, { probe: false });
  }
  return {
    ok: problems.length === 0,
    kvm,
    qemu: { path: qemu, version },
    virtiofsd: { path: virtiofsd },
    firecracker: {
      path: firecrackerPath(),
      note: firecrackerPath() ? "found (driver follows the documented API, untested here: the rootfs as a block image, the channel over vsock; NK_VM_DRIVER=firecracker)" : "not installed (the Firecracker driver is untested here)",
    },
    image,
    accelerator,
    templates: { dir: templateDir(), count: listTemplates().length },
    problems,
  };
}

export function formatCheck(r: CheckReport): string {
  const yes = (b: boolean) => (b ? "yes" : "no");
  const lines = [
    `/dev/kvm:     ${yes(r.kvm.present)}${r.kvm.present ? ` (usable: ${yes(r.kvm.usable)})` : ""} -- ${r.kvm.reason}`,
  ];
  if (r.kvm.probe) lines.push(`kvm probe:    ${r.kvm.probe.ok ? "boots the guest" : "fails"} -- ${r.kvm.probe.reason} (${r.kvm.probe.probedAt})`);
  lines.push(
    `qemu:         ${r.qemu.path ? `${r.qemu.path} (${r.qemu.version ?? "version unknown"})` : "not found"}`,
    `virtiofsd:    ${r.virtiofsd.path ?? `not found -- the rootfs comes as a block image (${mkfsPath() ?? "but no mkfs.ext4"}); bind mounts are refused`}`,
    `firecracker:  ${r.firecracker.path ? `${r.firecracker.path} -- ` : ""}${r.firecracker.note}`,
    `guest image:  ${r.image.state}${r.image.release ? ` (${r.image.kernel} kernel ${r.image.release}, ACPI ${r.image.acpi ? "on" : "off"})` : ""} in ${r.image.dir} -- ${r.image.reason}`,
    `accelerator:  ${r.accelerator ? `${r.accelerator.accel} -- ${r.accelerator.reason}` : "- (needs qemu and a guest image)"}`,
    `templates:    ${r.templates.count} made in ${r.templates.dir} (io.nanokata.vm.template=true; \`vm template status\`)`,
    r.ok ? "VM mode: can run here" : `VM mode: cannot run here: ${r.problems.join("; ")}`,
  );
  return lines.join("\n") + "\n";
}
