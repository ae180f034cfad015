/**
 * The Firecracker driver, following its documented HTTP API on a unix socket
 * (firecracker --api-sock): PUT /machine-config, /boot-source (the same ELF
 * vmlinux and initramfs), /drives/rootfs (the rootfs block image,
 * rootfs-image.ts: Firecracker has no virtiofs), /vsock, then PUT /actions
 * InstanceStart. The channel is a vsock stream: the host connects to the
 * vsock's unix socket and says "CONNECT <port>\n"; Firecracker answers
 * "OK <host port>\n" and joins it to the agent listening on that port
 * (nk.vsock=<port> on the kernel command line); then the same frames as over
 * QEMU's virtio-serial port (channel.ts).
 *
 * UNTESTED HERE: no firecracker binary can be installed on this machine and
 * it has no vsock transport (no /dev/vhost-vsock), so only the request
 * bodies and the vsock handshake (against a fake unix socket server) are
 * unit-tested.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createConnection, type Socket } from "node:net";
import { closeSync, existsSync, openSync } from "node:fs";
import { join } from "node:path";
import { AGENT_VSOCK_PORT, firecrackerPath } from "./config.ts";
import { VmError, type HypervisorDriver, type RunningVm, type VmConfig } from "./driver.ts";

export const VSOCK_PORT = AGENT_VSOCK_PORT;
/** The guest's context id (0-2 are reserved: hypervisor, local, host). */
const GUEST_CID = 3;

/** The API calls, in order, for a config (pure: unit-tested against the documented shapes). */
export function firecrackerRequests(c: VmConfig, vsockPath: string): Array<{ path: string; body: object }> {
  if (!c.rootDrive) throw new VmError("vm-unsupported", "Firecracker has no virtiofs: the rootfs must come as a block image");
  return [
    { path: "/machine-config", body: { vcpu_count: c.vcpus, mem_size_mib: c.memoryMiB, smt: false } },
    { path: "/boot-source", body: { kernel_image_path: c.kernel, initrd_path: c.initramfs, boot_args: c.cmdline } },
    // The guest boots from the initramfs (the agent is /init); the image is its first virtio-blk device, /dev/vda, which the plan mounts.
    { path: "/drives/rootfs", body: { drive_id: "rootfs", path_on_host: c.rootDrive.path, is_root_device: true, is_read_only: c.rootDrive.readOnly } },
    { path: "/vsock", body: { guest_cid: GUEST_CID, uds_path: vsockPath } },
    { path: "/actions", body: { action_type: "InstanceStart" } },
  ];
}

/**
 * Firecracker's answer to "CONNECT <port>\n" on its vsock unix socket:
 * "OK <host port>\n" once the guest accepted, anything else (or a hang-up)
 * when nothing listens on the port yet. undefined while the line is
 * incomplete; `rest` is what followed the line (the agent's first frames).
 */
export function parseVsockAnswer(received: Buffer): { ok: true; hostPort: number; rest: Buffer } | { ok: false; line: string } | undefined {
  const nl = received.indexOf(0x0a);
  if (nl < 0) return received.length > 64 ? { ok: false, line: received.toString("latin1").slice(0, 64) } : undefined;
  const line = received.subarray(0, nl).toString("latin1");
  const m = /^OK (\d+)$/.exec(line);
  if (!m) return { ok: false, line };
  return { ok: true, hostPort: Number(m[1]), rest: received.subarray(nl + 1) };
}

/** One PUT to Firecracker's API socket; anything but 204/200 is an error with Firecracker's fault message. */
export async function api(socket: string, path: string, body: object): Promise<void> {
  const res = await fetch(`http://localhost${path}`, {
    method: "PUT",
    unix: socket,
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  } as RequestInit);
  if (res.status !== 204 && res.status !== 200) {
    throw new VmError("hypervisor-failed", `firecracker PUT ${path}: ${res.status} ${await res.text()}`);
  }
}

/**
 * Connect to the guest's vsock port through Firecracker's unix socket
 * (retries until the agent listens: before that Firecracker closes the
 * connection). Exported for the unit test's fake server.
 */
export async function connectVsock(path: string, port: number, deadline: number): Promise<Socket> {
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = createConnection(path);
        let received = Buffer.alloc(0);
        const fail = (e: Error) => {
          s.destroy();
          reject(e);
        };
        const onData = (b: Buffer) => {
          received = Buffer.concat([received, b]);
          const answer = parseVsockAnswer(received);
          if (!answer) return;
          s.off("data", onData);
          s.off("close", onClose);
          s.off("error", fail);
          if (!answer.ok) return fail(new Error(`firecracker answered ${JSON.stringify(answer.line)}`));
          // What came after the line is the agent's first frames. The stream stays paused until the host's
          // reader attaches: then those bytes first, then the rest (unshift() would lose them in Bun).
          s.pause();
          s.on("newListener", function handOver(event: string) {
            if (event !== "data") return;
            s.off("newListener", handOver);
            queueMicrotask(() => {
              if (answer.rest.length) s.emit("data", answer.rest);
              s.resume();
            });
          });
          resolve(s);
        };
        const onClose = () => fail(new Error("closed before an answer"));
        s.on("data", onData);
        s.once("error", fail);
        s.once("close", onClose);
        s.once("connect", () => s.write(`CONNECT ${port}\n`));
      });
    } catch (e) {
      if (Date.now() > deadline) throw new VmError("vm-boot-timeout", `no answer on vsock port ${port}: ${(e as Error).message}`);
      await Bun.sleep(20);
    }
  }
}

export class FirecrackerDriver implements HypervisorDriver {
  readonly name = "firecracker";
  readonly virtiofs = false;

  unavailable(): string | undefined {
    return firecrackerPath() ? undefined : "firecracker not found on PATH (or set NK_FIRECRACKER)";
  }

  async launch(c: VmConfig, spawned?: (pid: number) => void): Promise<RunningVm> {
    const binary = firecrackerPath();
    if (!binary) throw new VmError("no-hypervisor", this.unavailable()!);
    const apiSock = join(c.runDir, "firecracker.sock");
    const vsockPath = join(c.runDir, "vsock.sock");
    // The guest's serial console is Firecracker's stdout: into console.log, where the host process looks when the guest fails.
    const consoleLog = openSync(join(c.runDir, "console.log"), "a");
    let child: ChildProcess;
    try {
      child = spawn(binary, ["--api-sock", apiSock], { stdio: ["ignore", consoleLog, "pipe"] });
      if (child.pid) spawned?.(child.pid);
    } finally {
      closeSync(consoleLog);
    }
    let stderr = "";
    child.stderr!.on("data", (b: Buffer) => {
      if (stderr.length < 16384) stderr += b.toString("utf8");
    });
    const exited = new Promise<number>((resolve) => child.on("exit", (code) => resolve(code ?? 128)));
    const deadline = Date.now() + c.startTimeoutMs;
    try {
      while (!existsSync(apiSock)) {
        if (child.exitCode !== null || Date.now() > deadline) throw new VmError("hypervisor-failed", `firecracker did not create ${apiSock}: ${stderr.trim()}`);
        await Bun.sleep(2);
      }
      for (const r of firecrackerRequests(c, vsockPath)) await api(apiSock, r.path, r.body);
      const channel = await connectVsock(vsockPath, c.vsockPort ?? VSOCK_PORT, deadline);
      return {
        pid: child.pid!,
        channel,
        exited,
        stderr: () => stderr,
        async shutdown(graceMs = 2000) {
          if (child.exitCode !== null) return;
          child.kill("SIGTERM");
          const killer = setTimeout(() => child.kill("SIGKILL"), graceMs);
          await exited;
          clearTimeout(killer);
        },
      };
    } catch (e) {
      child.kill("SIGKILL");
      await exited;
      throw e;
    }
  }
}
