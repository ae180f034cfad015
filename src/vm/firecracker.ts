/**
 * The Firecracker driver, following its documented HTTP API on a unix socket
 * (firecracker --api-sock): PUT /machine-config, /boot-source (the same ELF
 * vmlinux and initramfs), /vsock, then PUT /actions InstanceStart. The
 * channel is a vsock stream: the host connects to the vsock's unix socket and
 * says "CONNECT <port>\n"; Firecracker answers "OK <n>\n" and joins it to the
 * agent listening on that port (nk.vsock=<port> on the kernel command line).
 *
 * UNTESTED HERE: no firecracker binary can be installed on this machine, so
 * its tests skip with a reason. Firecracker has no virtiofs; a VM-mode
 * container needs its rootfs as a block image there, which is not
 * implemented yet (create refuses the Firecracker driver for that reason).
 */
import { spawn } from "node:child_process";
import { createConnection, type Socket } from "node:net";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { firecrackerPath } from "./config.ts";
import { VmError, type HypervisorDriver, type RunningVm, type VmConfig } from "./driver.ts";

export const VSOCK_PORT = 1024;
const GUEST_CID = 3;

/** The API calls, in order, for a config (pure: unit-tested against the documented shapes). */
export function firecrackerRequests(c: VmConfig, vsockPath: string): Array<{ path: string; body: object }> {
  return [
    { path: "/machine-config", body: { vcpu_count: c.vcpus, mem_size_mib: c.memoryMiB, smt: false } },
    { path: "/boot-source", body: { kernel_image_path: c.kernel, initrd_path: c.initramfs, boot_args: c.cmdline } },
    { path: "/vsock", body: { guest_cid: GUEST_CID, uds_path: vsockPath } },
    { path: "/actions", body: { action_type: "InstanceStart" } },
  ];
}

async function api(socket: string, path: string, body: object): Promise<void> {
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

/** Connect to the guest's vsock port through Firecracker's unix socket (retries until the agent listens). */
async function connectVsock(path: string, port: number, deadline: number): Promise<Socket> {
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = createConnection(path);
        let answer = "";
        const onData = (b: Buffer) => {
          answer += b.toString("latin1");
          const nl = answer.indexOf("\n");
          if (nl < 0) return;
          s.off("data", onData);
          if (!answer.startsWith("OK ")) return reject(new Error(answer.trim()));
          const rest = Buffer.from(answer.slice(nl + 1), "latin1");
          if (rest.length) s.unshift(rest);
          resolve(s);
        };
        s.on("data", onData);
        s.once("error", reject);
        s.once("close", () => reject(new Error("closed")));
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

  async launch(c: VmConfig): Promise<RunningVm> {
    const binary = firecrackerPath();
    if (!binary) throw new VmError("no-hypervisor", this.unavailable()!);
    const apiSock = join(c.runDir, "firecracker.sock");
    const vsockPath = join(c.runDir, "vsock.sock");
    const child = spawn(binary, ["--api-sock", apiSock], { stdio: ["ignore", "ignore", "pipe"] });
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
      const channel = await connectVsock(vsockPath, VSOCK_PORT, deadline);
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
