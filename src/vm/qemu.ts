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
 *
 * Templates (template.ts): a template's VM keeps its RAM in a named file
 * (share=on, so every guest write reaches it) and is saved with QMP
 * `migrate` and the x-ignore-shared capability (only the devices' state
 * goes to the state file); a container's VM maps that file privately
 * (share=off: copy-on-write, the template never changes) and loads the
 * devices' state with `-incoming defer` + `migrate-incoming`, from the state
 * file's fd it inherits.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { qemuPath } from "./config.ts";
import { HUGE_PAGE_BYTES, openHugeGuestRam } from "./guest-ram.ts";
import { VmError, type HypervisorDriver, type RunningVm, type VmConfig } from "./driver.ts";

/**
 * The guest RAM's backing: a file QEMU gets as an open fd (guest-ram.ts),
 * mapped 2 MiB-aligned so the host can map it with huge pages, or a memfd.
 */
export type RamBacking = { fd: number } | "memfd" | { file: string; shared: boolean };

/** The command line, pure (golden-tested). ram: the guest RAM file's fd number in QEMU, or a memfd. */
export function qemuArgs(c: VmConfig, sockets: { channel: string; qmp: string; console: string }, ram: RamBacking = "memfd"): string[] {
  const mem = `${c.memoryMiB}M`;
  const backend =
    ram === "memfd"
      ? `memory-backend-memfd,id=mem,size=${mem},share=on`
      : "file" in ram
        ? `memory-backend-file,id=mem,size=${mem},share=${ram.shared ? "on" : "off"},mem-path=${ram.file.replaceAll(",", ",,")}`
        : `memory-backend-file,id=mem,size=${mem},share=on,mem-path=/proc/self/fd/${ram.fd},align=${HUGE_PAGE_BYTES / 1024 / 1024}M`;
  const args = [
    "-M", `microvm,pit=on,pic=on,rtc=on,isa-serial=on,memory-backend=mem${c.acpi === false ? ",acpi=off" : ""}`,
    "-accel", c.accel === "kvm" ? "kvm" : "tcg",
    "-cpu", c.accel === "kvm" ? "host" : "max",
    "-m", mem,
    "-smp", String(c.vcpus),
    "-object", backend,
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
    // A clone's kernel is already in the template's RAM (and QEMU fills no ROM into RAM while a migration is
    // incoming): not loading the ~20 MB ELF again saves ~80 ms of QEMU's start under TCG.
    ...(c.template?.role === "restore" ? [] : ["-kernel", c.kernel, "-initrd", c.initramfs, "-append", c.cmdline]),
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
  // Restored from a template: the devices' state comes over QMP once it is up (launch()).
  if (c.template?.role === "restore") args.push("-incoming", "defer");
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
  command(execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const answer = this.next();
    this.socket.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + "\n");
    return answer;
  }
  /** A command's "return", or a VmError with QEMU's own message. */
  async run(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const answer = await this.command(execute, args);
    if ("error" in answer) {
      const e = answer.error as { desc?: string };
      throw new VmError("qmp-failed", `QMP ${execute}: ${e?.desc ?? JSON.stringify(answer.error)}`);
    }
    return answer.return;
  }
}

export class QemuDriver implements HypervisorDriver {
  readonly name = "qemu";
  readonly virtiofs = true;

  unavailable(): string | undefined {
    return qemuPath() ? undefined : "qemu-system-x86_64 not found (apt-get install qemu-system-x86, or set NK_QEMU)";
  }

  async launch(c: VmConfig, spawned?: (pid: number) => void): Promise<RunningVm> {
    const qemu = qemuPath();
    if (!qemu) throw new VmError("no-hypervisor", this.unavailable()!);
    const sockets = { channel: join(c.runDir, "channel.sock"), qmp: join(c.runDir, "qmp.sock"), console: join(c.runDir, "console.log") };
    const taps = (c.nics ?? []).map((nic) => {
      if (nic.tapFd === undefined) throw new VmError("no-tap", `network card ${nic.mac}: no tap fd`);
      return nic.tapFd;
    });
    // A template's RAM file (template.ts); else huge pages where the kernel lets us (else the memfd, as before):
    // ~10 000 fewer host page faults per boot.
    const template = c.template;
    const hugeRam: { fd: number } | { error: string } = template
      ? { error: "a VM template's RAM file" }
      : process.env.NK_VM_HUGE_RAM === "0"
        ? { error: "NK_VM_HUGE_RAM=0" }
        : openHugeGuestRam(c.memoryMiB);
    const ramFd = "fd" in hugeRam ? hugeRam.fd : undefined;
    // The saved devices' state, read by QEMU from the fd after the taps (migrate-incoming "fd:<n>").
    const stateFd = template?.role === "restore" ? openSync(template.state, "r") : undefined;
    const channel = listenOnce(sockets.channel);
    const qmpListen = listenOnce(sockets.qmp);
    let child: ChildProcess;
    try {
      const ram: RamBacking = template ? { file: template.ram, shared: template.role === "save" } : ramFd === undefined ? "memfd" : { fd: 3 + taps.length };
      const extraFds = [...taps, ...(ramFd === undefined ? [] : [ramFd]), ...(stateFd === undefined ? [] : [stateFd])];
      child = spawn(qemu, qemuArgs(c, sockets, ram), { stdio: ["ignore", "ignore", "pipe", ...extraFds] });
    } finally {
      if (ramFd !== undefined) closeSync(ramFd); // QEMU holds it now: the file lives exactly as long as QEMU (and virtiofsd's mapping)
      if (stateFd !== undefined) closeSync(stateFd);
    }
    const stateFdInChild = 3 + taps.length;
    if (child.pid) spawned?.(child.pid);
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
      if (template?.role === "restore") {
        // Both sides of a template migration skip the RAM (x-ignore-shared): it is the template's file.
        await qmp.run("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
        // No self-announcement after the load: it would send RARPs with the template's MACs into the container's
        // network; the agent gives each card the container's MAC first thing (WAKE).
        await qmp.run("migrate-set-parameters", { "announce-rounds": 0 });
        // Loads in the background; the guest runs when it is done (no -S). A failed load ends QEMU: `exited`.
        await qmp.run("migrate-incoming", { uri: `fd:${stateFdInChild}` });
      }
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
        memory: template
          ? `${template.role === "save" ? "the template's file, shared" : "a private copy-on-write mapping of the template's file"} ${template.ram}`
          : "error" in hugeRam
            ? `memfd (no huge-page tmpfs: ${hugeRam.error})`
            : "huge-page tmpfs",
        exited,
        stderr: () => stderr,
        async control(command) {
          await qmp.run(command);
        },
        qmp: (execute, args) => qmp.run(execute, args),
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
