/**
 * The QEMU driver: qemu-system-x86_64 -M microvm (no PCI, no firmware: the
 * ELF vmlinux is entered through its PVH note), virtio over MMIO with the
 * modern interface (force-legacy=false, which virtiofs needs), guest RAM in a
 * shared file (vhost-user-fs needs it: a huge-page tmpfs file, guest-ram.ts,
 * else a memfd), the channel as a virtio-serial port
 * and QMP for shutdown. Both are unix sockets on which we listen and QEMU
 * connects while it starts -- so the channel is connected before the guest
 * runs a single instruction, and if this process dies QEMU sees the hangup,
 * the guest agent reads EOF and powers off.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { qemuPath } from "./config.ts";
import { HUGE_PAGE_BYTES, openHugeGuestRam } from "./guest-ram.ts";
import { VmError, type HypervisorDriver, type RunningVm, type VmConfig } from "./driver.ts";

/**
 * The guest RAM's backing: a file QEMU gets as an open fd (guest-ram.ts),
 * mapped 2 MiB-aligned so the host can map it with huge pages, or a memfd.
 */
export type RamBacking = { fd: number } | "memfd";

/** The command line, pure (golden-tested). ram: the guest RAM file's fd number in QEMU, or a memfd. */
export function qemuArgs(c: VmConfig, sockets: { channel: string; qmp: string; console: string }, ram: RamBacking = "memfd"): string[] {
  const mem = `${c.memoryMiB}M`;
  const backend =
    ram === "memfd"
      ? `memory-backend-memfd,id=mem,size=${mem},share=on`
      : `memory-backend-file,id=mem,size=${mem},share=on,mem-path=/proc/self/fd/${ram.fd},align=${HUGE_PAGE_BYTES / 1024 / 1024}M`;
  const args = [
    "-M", `microvm,pit=on,pic=on,rtc=on,isa-serial=on,memory-backend=mem${c.acpi === false ? ",acpi=off" : ""}`,
    "-accel", c.accel === "kvm" ? "kvm" : "tcg",
    "-cpu", c.accel === "kvm" ? "host" : "max",
    "-m", mem,
    "-smp", String(c.vcpus),
    "-object", backend,
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
    "-kernel", c.kernel,
    "-initrd", c.initramfs,
    "-append", c.cmdline,
    "-serial", `file:${sockets.console}`,
    "-global", "virtio-mmio.force-legacy=false",
    "-device", "virtio-serial-device,max_ports=2", // port 0 is reserved for a console
    "-chardev", `socket,id=nkch,path=${sockets.channel}`,
    "-device", `virtserialport,chardev=nkch,name=${c.channelName}`,
    "-chardev", `socket,id=qmp,path=${sockets.qmp}`,
    "-mon", "chardev=qmp,mode=control",
  ];
  if (c.share) args.push("-chardev", `socket,id=fs,path=${c.share.socket}`, "-device", `vhost-user-fs-device,chardev=fs,tag=${c.share.tag}`);
  // The rootfs as a block image (rootfs-image.ts): the guest's only disk, so /dev/vda. "," in a path is doubled (QEMU's option syntax).
  if (c.rootDrive) {
    args.push(
      "-drive", `file=${c.rootDrive.path.replaceAll(",", ",,")},if=none,format=raw,id=nkroot${c.rootDrive.readOnly ? ",readonly=on" : ""}`,
      "-device", "virtio-blk-device,drive=nkroot",
    );
  }
  // Each tap's fd is the child's fd 3 + i, the guest RAM file's the one after them (see launch's stdio).
  (c.nics ?? []).forEach((nic, i) => args.push("-netdev", `tap,id=nkn${i},fd=${3 + i}`, "-device", `virtio-net-device,netdev=nkn${i},mac=${nic.mac}`));
  return args;
}

/** Accept exactly one connection on a fresh unix socket. */
function listenOnce(path: string): { server: Server; connection: Promise<Socket> } {
  const server = createServer();
  const connection = new Promise<Socket>((resolve, reject) => {
    server.once("connection", (s) => {
      server.close();
      resolve(s);
    });
    server.once("error", reject);
  });
  server.listen(path);
  return { server, connection };
}

/** A line-oriented QMP client: enough for capabilities negotiation and quit. */
class Qmp {
  private buffered = "";
  private waiters: Array<{ resolve: (msg: Record<string, unknown>) => void; reject: (e: Error) => void }> = [];
  constructor(private readonly socket: Socket) {
    socket.on("close", () => {
      for (const w of this.waiters.splice(0)) w.reject(new VmError("qmp-closed", "QMP connection closed"));
    });
    socket.on("data", (chunk: Buffer) => {
      this.buffered += chunk.toString("utf8");
      let nl: number;
      while ((nl = this.buffered.indexOf("\n")) >= 0) {
        const line = this.buffered.slice(0, nl).trim();
        this.buffered = this.buffered.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line);
        } catch {
          continue;
        }
        if ("event" in msg) continue; // asynchronous events: not needed here
        this.waiters.shift()?.resolve(msg);
      }
    });
    socket.on("error", () => {});
  }
  /** The greeting, then each command's answer, in order. */
  next(): Promise<Record<string, unknown>> {
    if (this.socket.destroyed) return Promise.reject(new VmError("qmp-closed", "QMP connection closed"));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
  command(execute: string): Promise<Record<string, unknown>> {
    const answer = this.next();
    this.socket.write(JSON.stringify({ execute }) + "\n");
    return answer;
  }
}

export class QemuDriver implements HypervisorDriver {
  readonly name = "qemu";
  readonly virtiofs = true;

  unavailable(): string | undefined {
    return qemuPath() ? undefined : "qemu-system-x86_64 not found (apt-get install qemu-system-x86, or set NK_QEMU)";
  }

  async launch(c: VmConfig): Promise<RunningVm> {
    const qemu = qemuPath();
    if (!qemu) throw new VmError("no-hypervisor", this.unavailable()!);
    const sockets = { channel: join(c.runDir, "channel.sock"), qmp: join(c.runDir, "qmp.sock"), console: join(c.runDir, "console.log") };
    const taps = (c.nics ?? []).map((nic) => {
      if (nic.tapFd === undefined) throw new VmError("no-tap", `network card ${nic.mac}: no tap fd`);
      return nic.tapFd;
    });
    // Huge pages where the kernel lets us (else the memfd, as before): ~10 000 fewer host page faults per boot.
    const hugeRam = process.env.NK_VM_HUGE_RAM === "0" ? { error: "NK_VM_HUGE_RAM=0" } : openHugeGuestRam(c.memoryMiB);
    const ramFd = "fd" in hugeRam ? hugeRam.fd : undefined;
    const channel = listenOnce(sockets.channel);
    const qmpListen = listenOnce(sockets.qmp);
    let child: ChildProcess;
    try {
      const ram: RamBacking = ramFd === undefined ? "memfd" : { fd: 3 + taps.length };
      child = spawn(qemu, qemuArgs(c, sockets, ram), { stdio: ["ignore", "ignore", "pipe", ...taps, ...(ramFd === undefined ? [] : [ramFd])] });
    } finally {
      if (ramFd !== undefined) closeSync(ramFd); // QEMU holds it now: the file lives exactly as long as QEMU (and virtiofsd's mapping)
    }
    let stderr = "";
    child.stderr!.on("data", (b: Buffer) => {
      if (stderr.length < 16384) stderr += b.toString("utf8");
    });
    const exited = new Promise<number>((resolve) => {
      child.on("exit", (code, signal) => resolve(code ?? (signal === "SIGKILL" ? 137 : 128)));
      child.on("error", () => resolve(127));
    });
    const closeServers = () => {
      channel.server.close();
      qmpListen.server.close();
    };
    let timer: ReturnType<typeof setTimeout> | undefined;
    // Until QMP has answered, QEMU may still refuse its command line (it
    // connects its sockets before it checks every device).
    const starting = async () => {
      const [channelSocket, qmpSocket] = await Promise.all([channel.connection, qmpListen.connection]);
      const qmp = new Qmp(qmpSocket);
      await qmp.next(); // greeting
      await qmp.command("qmp_capabilities");
      return { channelSocket, qmpSocket, qmp };
    };
    try {
      const { channelSocket, qmpSocket, qmp } = await Promise.race([
        starting(),
        exited.then(async (code) => {
          await new Promise((r) => setTimeout(r, 10)); // the last of stderr
          throw new VmError("hypervisor-failed", `qemu exited with ${code} while starting: ${stderr.trim() || "(no message)"}`);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new VmError("hypervisor-timeout", `qemu did not start within ${c.startTimeoutMs} ms`)), c.startTimeoutMs);
        }),
      ]);
      const pid = child.pid!;
      return {
        pid,
        channel: channelSocket,
        memory: "error" in hugeRam ? `memfd (no huge-page tmpfs: ${hugeRam.error})` : "huge-page tmpfs",
        exited,
        stderr: () => stderr,
        async control(command) {
          const answer = await qmp.command(command);
          if ("error" in answer) throw new VmError("qmp-failed", `QMP ${command}: ${JSON.stringify(answer.error)}`);
        },
        async shutdown(graceMs = 2000) {
          if (child.exitCode !== null || child.signalCode !== null) return;
          qmp.command("quit").catch(() => {});
          const killer = setTimeout(() => child.kill("SIGKILL"), graceMs);
          await exited;
          clearTimeout(killer);
          qmpSocket.destroy();
        },
      };
    } catch (error) {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
      throw error;
    } finally {
      clearTimeout(timer);
      closeServers();
    }
  }
}
