/**
 * One interface, several hypervisors (Kata runtime-rs' shape): a driver
 * boots a microVM from the guest artefacts and hands back the channel to the
 * guest agent. Everything else -- the plan, stdio, signals, exit status -- is
 * the same whatever the hypervisor (src/vm/host.ts).
 */
import type { Socket } from "node:net";
import { NanoKataError } from "../util/errors.ts";

export type Accelerator = "kvm" | "tcg";

export interface VmConfig {
  /** Private directory for this VM's sockets and console log (short path: unix sockets allow 107 bytes). */
  runDir: string;
  kernel: string;
  initramfs: string;
  /** Kernel command line, complete (the driver adds nothing; QEMU microvm appends virtio_mmio.device= itself when ACPI is off). */
  cmdline: string;
  /**
   * Whether the guest gets ACPI tables (default true): Debian's stock kernel
   * finds its virtio-mmio devices only there; the minimal kernel has no ACPI
   * and boots faster without (the image says which: GuestImage.acpi).
   */
  acpi?: boolean;
  memoryMiB: number;
  vcpus: number;
  accel: Accelerator;
  /** The virtio-serial port name (QEMU) the agent looks for; Firecracker uses vsock instead. */
  channelName: string;
  /** A vhost-user-fs socket (virtiofsd) to attach with this tag, if any. */
  share?: { tag: string; socket: string };
  /**
   * The container's rootfs as a block image (rootfs-image.ts), the guest's
   * only disk (/dev/vda): instead of the share, where virtiofs is not
   * available or not wanted. readOnly: root.readonly.
   */
  rootDrive?: { path: string; readOnly: boolean };
  /** Firecracker: the guest's vsock port the agent listens on (nk.vsock=), instead of a virtio-serial port. */
  vsockPort?: number;
  /** Give up if the VMM has not connected its channel by then. */
  startTimeoutMs: number;
  /**
   * Network cards: a virtio-net device with this MAC on a tap whose open fd
   * the host process fills in just before launch (network.ts, tap.ts).
   */
  nics?: VmNic[];
  /**
   * QEMU templating (template.ts). "save": the guest RAM lives in the file
   * `ram`, shared, so that the template being made can be saved without it.
   * "restore": the RAM is a private copy-on-write mapping of the template's
   * file and the devices' state is loaded from `state` before the guest runs.
   */
  template?: { role: "save" | "restore"; ram: string; state: string };
}

export interface VmNic {
  mac: string;
  tapFd?: number;
}

export interface RunningVm {
  /** The VMM process (qemu-system-x86_64, firecracker). */
  pid: number;
  /** A byte stream to the guest agent (see channel.ts). */
  channel: Socket;
  /** Resolves with the VMM's exit code once it is gone. */
  exited: Promise<number>;
  /** Orderly stop (QMP quit / SendCtrlAltDel), then SIGKILL after graceMs. */
  shutdown(graceMs?: number): Promise<void>;
  /** The VMM's stderr so far (for error messages). */
  stderr(): string;
  /** How the guest RAM is backed, for --debug (e.g. "huge-page tmpfs", or "memfd" and why). */
  memory?: string;
  /** Stop or continue every vCPU (QMP stop/cont): `pause` and `resume`. */
  control?(command: "stop" | "cont"): Promise<void>;
  /** Any QMP command (QEMU only): its "return", or a VmError carrying QEMU's message. */
  qmp?(execute: string, args?: Record<string, unknown>): Promise<unknown>;
}

export interface HypervisorDriver {
  readonly name: string;
  /** Why this driver cannot run here, or undefined when it can. */
  unavailable(): string | undefined;
  /** Whether the guest can read a virtiofs share (else the rootfs must come as a block device). */
  readonly virtiofs: boolean;
  /**
   * spawned: called with the VMM's pid as soon as it exists, so that it can be
   * recorded before the launch can fail or its caller be killed (a QEMU left
   * waiting for an incoming migration would never end by itself).
   */
  launch(config: VmConfig, spawned?: (pid: number) => void): Promise<RunningVm>;
}

/** VM mode's errors: no hypervisor, no guest image, a guest that never answers, ... */
export class VmError extends NanoKataError {}
