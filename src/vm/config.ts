/**
 * Where VM mode finds its tools and artefacts, and the facts the guest is
 * built around. Every path can be overridden from the environment, so a
 * packaged install, CI and the tests can each point at their own.
 */
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { projectHome } from "../util/home.ts";
import { VmError } from "./driver.ts";

/** Guest artefacts: the kernel, the initramfs, their stamp (never committed). */
export function vmCacheDir(): string {
  return process.env.NK_VM_CACHE ?? "/var/cache/nano-kata/vm";
}

export function agentBinaryPath(): string {
  return process.env.NK_AGENT ?? `${projectHome()}/native/build/nk-agent`;
}

/**
 * The guest kernel: "minimal" (built from Debian's linux-source with our
 * config fragment; the fast one, the default) or "debian" (the stock cloud
 * kernel package and its modules; nothing to compile).
 */
export type KernelKind = "minimal" | "debian";
export const KERNEL_KINDS: readonly KernelKind[] = ["minimal", "debian"];

export function parseKernelKind(value: string, from: string): KernelKind {
  if ((KERNEL_KINDS as readonly string[]).includes(value)) return value as KernelKind;
  throw new VmError("invalid-kernel-kind", `${from}: ${JSON.stringify(value)} is not a guest kernel kind (${KERNEL_KINDS.join(", ")})`);
}

/** The kind `vm build-image` builds when not told (--kernel): NK_VM_KERNEL, else minimal. */
export function guestKernelKind(): KernelKind {
  return process.env.NK_VM_KERNEL ? parseKernelKind(process.env.NK_VM_KERNEL, "NK_VM_KERNEL") : "minimal";
}

/** Debian's package whose dependency names the current cloud kernel (kind "debian"). */
export function kernelPackageName(): string {
  return process.env.NK_VM_KERNEL_PACKAGE ?? "linux-image-cloud-amd64";
}

/** Debian's kernel source package (kind "minimal"): /usr/src/<name>.tar.xz inside. */
export function kernelSourcePackageName(): string {
  return process.env.NK_VM_KERNEL_SOURCE ?? "linux-source-6.1";
}

/** The minimal kernel's Kconfig fragment: ours, committed; NK_VM_KERNEL_CONFIG points at another. */
export function kernelConfigFragmentPath(): string {
  return process.env.NK_VM_KERNEL_CONFIG ?? `${projectHome()}/src/vm/image/guest-kernel.config`;
}

export const BUSYBOX = "/bin/busybox";

/**
 * What the guest needs beyond the kernel: virtio over MMIO, the channel port,
 * virtiofs, overlay, and virtio_net for the NIC of a container with a network
 * (Debian's virtio_net needs net_failover and failover, pulled in from its .modinfo).
 */
export const GUEST_MODULES = ["virtio_mmio", "virtio_console", "virtiofs", "overlay", "virtio_net"];

/** Names shared by the host side and the agent (which learns them from the kernel command line). */
export const CHANNEL_PORT_NAME = "nk.0";
export const SHARE_TAG = "nkshare";
/** Firecracker: the vsock port the agent listens on (nk.vsock=) and the host connects to through Firecracker's unix socket. */
export const AGENT_VSOCK_PORT = 1024;
/** Where the agent mounts the share, and so where the guest plan finds the rootfs and bind sources. */
export const GUEST_SHARE_DIR = "/run/nk/share";
export const GUEST_FIFO_DIR = "/run/nk";
/** The container's cgroup in the guest: the agent makes it at boot (nk.cgroup=), the plan fills it. */
export const GUEST_CGROUP = "/sys/fs/cgroup/nk";

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(":")) {
    if (!dir) continue;
    const path = `${dir}/${name}`;
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {}
  }
  return undefined;
}

export function qemuPath(): string | undefined {
  if (process.env.NK_QEMU) return existsSync(process.env.NK_QEMU) ? process.env.NK_QEMU : undefined;
  return findOnPath("qemu-system-x86_64");
}

export function virtiofsdPath(): string | undefined {
  if (process.env.NK_VIRTIOFSD) return existsSync(process.env.NK_VIRTIOFSD) ? process.env.NK_VIRTIOFSD : undefined;
  // Debian's qemu-system-common ships it outside PATH; the Rust virtiofsd package in /usr/libexec.
  for (const p of ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]) if (existsSync(p)) return p;
  return findOnPath("virtiofsd");
}

export function firecrackerPath(): string | undefined {
  if (process.env.NK_FIRECRACKER) return existsSync(process.env.NK_FIRECRACKER) ? process.env.NK_FIRECRACKER : undefined;
  return findOnPath("firecracker");
}

/**
 * The host TSC frequency in kHz, for the guest's tsc_early_khz: without it the
 * guest calibrates its TSC against the emulated PIT, which under TCG is slow
 * and sometimes hangs the boot. undefined when /proc/cpuinfo does not say.
 */
export function hostTscKhz(): number | undefined {
  try {
    const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    return m ? Math.round(Number(m[1]) * 1000) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The guest kernel's command line. Trimmed for boot time: quiet (every
 * console byte is an emulated UART write), one 8250 UART (the console, for
 * diagnostics), no mitigations (the VM boundary is the isolation),
 * triple-fault reboot, panic reboots at once (with -no-reboot: the VMM
 * exits), no IO-APIC timer check (a delay loop), and no patching of the
 * kernel's lock prefixes for a single CPU (noreplace-smp: thousands of code
 * writes, each one flushing TCG's translations).
 *
 * Under TCG also tsc=reliable: the emulated TSC is the host's, but the
 * clocksource watchdog, comparing it with emulated timers, finds it
 * "unstable" and falls back to jiffies. And for the minimal kernel under TCG,
 * no local APIC timer (noapictimer): TCG's CPU has no TSC-deadline timer, so
 * the kernel would measure the APIC timer against the TSC for 100 ms and
 * verify it for another 100 ms; the PIT serves as the clock event device
 * instead (with several vCPUs, by broadcast).
 *
 * For Debian's stock kernel also: no i8042 probing, no PCI (microvm has
 * none), no crypto self-tests, and init_on_alloc=0 (Debian turns it on:
 * ~130 ms of page zeroing under TCG; the guest holds one container, so what
 * uninitialised kernel memory could leak is that container's own). The
 * minimal kernel has none of those drivers or defaults, and an unknown
 * parameter would be handed to the agent's environment.
 */
export function guestCmdline(opts: { kernel?: KernelKind; accel?: "kvm" | "tcg"; tscKhz?: number; share: boolean; extra?: string; vsockPort?: number }): string {
  const parts = ["console=ttyS0", "quiet", "loglevel=3", "panic=-1", "reboot=t", "mitigations=off", "random.trust_cpu=on", "no_timer_check", "noreplace-smp"];
  if (opts.accel === "tcg") parts.push("tsc=reliable");
  // Debian's stock kernel, with ACPI, never fires a timer without its local APIC timer (a sleep hangs): minimal kernel only.
  if (opts.accel === "tcg" && opts.kernel === "minimal") parts.push("noapictimer");
  if (opts.kernel !== "minimal") {
    parts.push("i8042.noaux", "i8042.nomux", "i8042.nokbd", "i8042.nopnp", "8250.nr_uarts=1", "pci=off", "cryptomgr.notests", "init_on_alloc=0");
  }
  // The channel: a virtio-serial port by name (QEMU), or a vsock port the agent listens on (Firecracker).
  parts.push(opts.vsockPort ? `nk.vsock=${opts.vsockPort}` : `nk.port=${CHANNEL_PORT_NAME}`, `nk.cgroup=${GUEST_CGROUP.slice(GUEST_CGROUP.lastIndexOf("/") + 1)}`);
  if (opts.tscKhz) parts.push(`tsc_early_khz=${opts.tscKhz}`);
  if (opts.share) parts.push(`nk.share=${SHARE_TAG}`);
  if (opts.extra) parts.push(opts.extra);
  return parts.join(" ");
}
