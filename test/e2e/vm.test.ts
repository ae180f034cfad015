/**
 * VM mode end to end: real microVMs under QEMU (TCG on this machine and in
 * CI, KVM where the probe says it boots the guest). The guest image is built
 * by the tests themselves with `nk-runtime vm build-image` into
 * <repo>/.cache/vm (cached: a rebuild happens only when an input changed).
 *
 * Every test checks that nothing is left behind: no state directory, no
 * socket, no qemu or virtiofsd process that names its container.
 */
import { afterEach, describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { release, tmpdir } from "node:os";
import { join } from "node:path";
import { ensureBusyboxRootfs, repoRoot } from "../helpers/rootfs.ts";
import {
  containerStdout,
  deleteForce,
  describeResult,
  integrationSkipReason,
  newBundle,
  ok,
  outputPaths,
  rt,
  runtimeBinary,
  runtimeKind,
  startContainer,
  state,
  stateRoot,
  testIf,
  waitForStatus,
  waitUntil,
} from "../helpers/runtime.ts";
import type { Bundle } from "../helpers/bundle.ts";
import { cgroupTopLevel, removeNewCgroupParents } from "./daemons.ts";

const CACHE = join(repoRoot(), ".cache", "vm");
const VM_ENV = { ...process.env, NK_VM_CACHE: CACHE };
const VM_TIMEOUT = 120_000;

function which(name: string): string | undefined {
  const r = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Why VM tests cannot run here (printed), or null. The image build itself is a test below. */
function vmSkipReason(): string | null {
  const base = integrationSkipReason();
  if (base) return base;
  if (runtimeKind() !== "nk") return `VM mode is nano-kata's (runtime under test: ${runtimeKind()})`;
  if (!which("qemu-system-x86_64")) return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)";
  if (!existsSync("/usr/lib/qemu/virtiofsd") && !which("virtiofsd")) return "virtiofsd is not installed (Debian: qemu-system-common)";
  if (!existsSync(join(repoRoot(), "native", "build", "nk-agent"))) return "native/build/nk-agent is missing (npm run build)";
  return null;
}

const SKIP = vmSkipReason();
let imageBuilt = false;
let imageError = "";

/** Build (or confirm) the guest image once for this file; progress goes to the test log. */
function ensureImage(): void {
  if (imageBuilt || imageError) return;
  const r = rt(["vm", "build-image"], { noRoot: true, env: VM_ENV, timeoutMs: 600_000 });
  if (r.code === 0) imageBuilt = true;
  else imageError = describeResult(r);
  process.stderr.write(`vm build-image:\n${r.stdout}${r.stderr}`);
}

/** Run the runtime with the test image (and --mode vm unless the bundle asks by annotation). */
function vrt(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; mode?: boolean; timeoutMs?: number } = {}) {
  return rt([...(opts.mode === false ? [] : ["--mode", "vm"]), ...args], { env: opts.env ?? VM_ENV, input: opts.input, timeoutMs: opts.timeoutMs ?? VM_TIMEOUT });
}

/** Processes whose command line names `needle` (a container's state directory, for instance). */
function processesNaming(needle: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "latin1").replaceAll("\0", " ");
      if (cmd.includes(needle) && Number(pid) !== process.pid) found.push(`${pid}: ${cmd.slice(0, 160)}`);
    } catch {}
  }
  return found;
}

/** Nothing of container `id` may remain: state dir, sockets, qemu, virtiofsd, the host process. */
async function expectNothingLeft(id: string): Promise<void> {
  const dir = join(stateRoot(), id);
  // The host process stops its VM on its way out; give it a moment.
  for (let i = 0; i < 250 && (existsSync(dir) || processesNaming(dir).length); i++) await Bun.sleep(20);
  expect({ id, stateDir: existsSync(dir) }).toEqual({ id, stateDir: false });
  expect(processesNaming(dir)).toEqual([]);
}

/** `create` in VM mode, the container's stdio going to the bundle's log files. */
function vcreate(b: Bundle, flags: string[] = [], env = VM_ENV) {
  const paths = outputPaths(b);
  return rt(["--mode", "vm", "create", "--bundle", b.dir, ...flags, b.id], { env, stdoutPath: paths.stdout, stderrPath: paths.stderr, timeoutMs: VM_TIMEOUT });
}

const used: string[] = [];
function vmBundle(args: string[], override?: (c: Record<string, any>) => void): Bundle {
  const b = newBundle({ args, override });
  used.push(b.id);
  return b;
}

afterEach(async () => {
  for (const id of used.splice(0)) {
    deleteForce(id);
    await expectNothingLeft(id);
  }
});

// At load time rather than in beforeAll: a hook is bound by the per-test timeout, a first build may take longer.
if (!SKIP) ensureImage();

describe("VM mode (QEMU microvm)", () => {
  testIf(SKIP, "vm build-image builds the guest kernel and initramfs, then reuses them", () => {
    expect(imageError).toBe("");
    const stamp = JSON.parse(readFileSync(join(CACHE, "stamp.json"), "utf8"));
    expect(stamp.release).toMatch(/cloud-amd64$/);
    expect(stamp.modules).toEqual(expect.arrayContaining(["virtio_mmio", "virtio_console", "virtiofs", "fuse", "overlay"]));
    expect(readFileSync(join(CACHE, "vmlinux")).subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    const again = ok(rt(["vm", "build-image"], { noRoot: true, env: VM_ENV, timeoutMs: 120_000 }));
    expect(again.stdout).toContain("up to date");
  }, 300_000);

  testIf(SKIP, "vm check names qemu, virtiofsd, the image and the accelerator with its reason", () => {
    const r = rt(["vm", "check", "--format", "json"], { noRoot: true, env: VM_ENV, timeoutMs: 60_000 });
    const report = JSON.parse(r.stdout);
    expect(report.qemu.path).toContain("qemu-system-x86_64");
    expect(report.qemu.version).toMatch(/QEMU emulator version/);
    expect(report.virtiofsd.path).toBeTruthy();
    expect(report.image.state).toBe("current");
    expect(["kvm", "tcg"]).toContain(report.accelerator.accel);
    expect(report.accelerator.reason.length).toBeGreaterThan(5);
    if (!existsSync("/dev/kvm")) expect(report.accelerator).toEqual({ accel: "tcg", reason: expect.stringContaining("/dev/kvm does not exist") });
    expect(report.firecracker.note).toBeTruthy();
    expect(r.code).toBe(0);
    const text = ok(rt(["vm", "check"], { noRoot: true, env: VM_ENV, timeoutMs: 60_000 })).stdout;
    expect(text).toContain("accelerator:");
    expect(text).toContain("VM mode: can run here");
  }, 120_000);

  testIf(SKIP, "the container runs on the guest's kernel: uname -r differs from the host's", async () => {
    const b = vmBundle(["uname", "-r"]);
    const r = vrt(["--debug", "run", "--bundle", b.dir, b.id]);
    expect(r.code).toBe(0);
    const guest = r.stdout.trim();
    expect(guest).not.toBe(release());
    expect(guest).toBe(JSON.parse(readFileSync(join(CACHE, "stamp.json"), "utf8")).release);
    // --debug says which accelerator and why.
    expect(r.stderr).toMatch(/accelerator (kvm|tcg) \(/);
  }, VM_TIMEOUT);

  testIf(SKIP, "exit codes: 0, 3, and 128+9 for a process killed by SIGKILL", () => {
    const zero = vmBundle(["sh", "-c", "echo out; echo err >&2; exit 0"]);
    const r0 = vrt(["run", "--bundle", zero.dir, zero.id]);
    expect({ code: r0.code, out: r0.stdout, err: r0.stderr.includes("err\n") }).toEqual({ code: 0, out: "out\n", err: true });
    const three = vmBundle(["sh", "-c", "exit 3"]);
    expect(vrt(["run", "--bundle", three.dir, three.id]).code).toBe(3);
    // Without a pid namespace the shell is not a namespace's init, so SIGKILL from itself is fatal.
    const killed = vmBundle(["sh", "-c", "kill -KILL $$"], (c) => {
      c.linux.namespaces = c.linux.namespaces.filter((n: { type: string }) => n.type !== "pid");
    });
    expect(vrt(["run", "--bundle", killed.dir, killed.id]).code).toBe(137);
  }, 3 * VM_TIMEOUT);

  testIf(SKIP, "create, state, start, kill, delete; --pid-file names the host process that stands for the container", async () => {
    const b = vmBundle(["sh", "-c", "echo started; exec sleep 600"]);
    const pidFile = join(b.dir, "pid");
    ok(vcreate(b, ["--pid-file", pidFile]));
    let s = state(b.id);
    expect(s.status).toBe("created");
    const pid = Number(readFileSync(pidFile, "utf8"));
    expect(pid).toBe(s.pid);
    expect(existsSync(`/proc/${pid}`)).toBe(true);
    expect(containerStdout(b)).toBe("");
    ok(startContainer(b.id));
    s = waitForStatus(b.id, "running");
    waitUntil("the container's output", () => containerStdout(b).includes("started"), 30_000);
    // The recorded pid is the host process: exec must not join its (the host's) namespaces.
    const exec = rt(["exec", b.id, "true"]);
    expect({ code: exec.code, refused: exec.stderr.includes("VM-mode container is not implemented") }).toEqual({ code: 1, refused: true });
    ok(rt(["kill", b.id, "KILL"]));
    waitForStatus(b.id, "stopped", 30_000);
    ok(rt(["delete", b.id]));
    expect(rt(["state", b.id]).code).not.toBe(0);
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "a signal sent to the host process reaches the container's process", () => {
    const b = vmBundle(["sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done"]);
    ok(vcreate(b));
    ok(startContainer(b.id));
    waitUntil("the trap to be set", () => containerStdout(b).includes("ready"), 30_000);
    ok(rt(["kill", b.id, "TERM"]));
    waitForStatus(b.id, "stopped", 30_000);
    expect(containerStdout(b)).toContain("got-term");
  }, VM_TIMEOUT);

  testIf(SKIP, "stdin is piped into the container, all of it (flow control over the channel)", () => {
    const small = vmBundle(["sh", "-c", "read line; echo got:$line"]);
    expect(vrt(["run", "--bundle", small.dir, small.id], { input: "hello stdin\n" }).stdout).toBe("got:hello stdin\n");
    const big = vmBundle(["wc", "-c"]);
    const input = "0123456789abcdef".repeat(65536); // 1 MiB: four times the host's window
    const r = vrt(["run", "--bundle", big.dir, big.id], { input });
    expect({ code: r.code, out: r.stdout.trim() }).toEqual({ code: 0, out: String(input.length) });
  }, 2 * VM_TIMEOUT);

  testIf(SKIP, "a file written to a bind mount in the guest is on the host; a host file is read in the guest", () => {
    const shared = mkdtempSync(join(tmpdir(), "nkt-vm-bind-"));
    try {
      writeFileSync(join(shared, "from-host"), "host says hi\n");
      const b = vmBundle(["sh", "-c", "cat /mnt/rw/from-host; echo guest wrote this > /mnt/rw/from-guest"], (c) => {
        c.mounts.push({ destination: "/mnt/rw", type: "bind", source: shared, options: ["rbind", "rw"] });
      });
      const r = vrt(["run", "--bundle", b.dir, b.id]);
      expect({ code: r.code, out: r.stdout }).toEqual({ code: 0, out: "host says hi\n" });
      expect(readFileSync(join(shared, "from-guest"), "utf8")).toBe("guest wrote this\n");
      // The bind lived in virtiofsd's private mount namespace only.
      expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(shared);
    } finally {
      rmSync(shared, { recursive: true, force: true });
    }
  }, VM_TIMEOUT);

  testIf(SKIP, "a memory limit sizes the VM and is enforced in the guest's cgroup v2: over it, the OOM killer", () => {
    const limit = 64 << 20;
    const script = "cat /sys/fs/cgroup/memory.max; grep MemTotal /proc/meminfo; exec dd if=/dev/zero of=/dev/null bs=100M count=1";
    const b = vmBundle(["sh", "-c", script], (c) => {
      c.linux.resources = { memory: { limit } };
      c.linux.namespaces.push({ type: "cgroup" });
      c.mounts.push({ destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["nosuid", "noexec", "nodev", "ro"] });
    });
    const r = vrt(["run", "--bundle", b.dir, b.id]);
    const [max, meminfo] = r.stdout.trim().split("\n");
    expect({ code: r.code, max }).toEqual({ code: 137, max: String(limit) });
    // The VM: the limit plus a fixed overhead (96 MiB), less what the guest kernel keeps for itself.
    const totalKiB = Number(/MemTotal:\s+(\d+)/.exec(meminfo ?? "")?.[1]);
    expect(totalKiB).toBeGreaterThan(96 * 1024);
    expect(totalKiB).toBeLessThanOrEqual(160 * 1024);
  }, VM_TIMEOUT);

  testIf(SKIP, "the io.nanokata.mode=vm annotation selects VM mode without --mode", () => {
    const b = vmBundle(["uname", "-r"], (c) => {
      c.annotations = { "io.nanokata.mode": "vm" };
    });
    const r = vrt(["run", "--bundle", b.dir, b.id], { mode: false });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).not.toBe(release());
  }, VM_TIMEOUT);

  testIf(SKIP, "no guest image: a clear error, nothing left", async () => {
    const b = vmBundle(["true"]);
    const r = vrt(["run", "--bundle", b.dir, b.id], { env: { ...VM_ENV, NK_VM_CACHE: join(tmpdir(), "nk-no-such-vm-cache") } });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no guest kernel and initramfs in");
    expect(r.stderr).toContain("vm build-image");
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "a guest that never answers: create times out, and no qemu, virtiofsd, state or socket remains", async () => {
    const b = vmBundle(["true"]);
    // rdinit=/bin/sh boots busybox instead of the agent: the VM runs, the agent never says HELLO.
    const env = { ...VM_ENV, NK_VM_CMDLINE_EXTRA: "rdinit=/bin/sh", NK_VM_BOOT_TIMEOUT_MS: "3000" };
    const started = Date.now();
    const r = vcreate(b, [], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the guest agent did not answer within 3000 ms");
    expect(Date.now() - started).toBeLessThan(30_000);
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "a plan that fails in the guest reports the op and its config.json field", async () => {
    const b = vmBundle(["/no/such/binary"]);
    const r = vrt(["run", "--bundle", b.dir, b.id]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no/such/binary");
    expect(r.stderr).toContain("process.args");
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "SIGKILL of the host process: the guest powers itself off and QEMU and virtiofsd exit, no delete needed", async () => {
    const b = vmBundle(["sleep", "600"]);
    ok(vcreate(b));
    ok(startContainer(b.id));
    waitForStatus(b.id, "running");
    const pids = JSON.parse(readFileSync(join(stateRoot(), b.id, "vm-pids.json"), "utf8"));
    const alive = (pid: number) => existsSync(`/proc/${pid}`) && !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
    expect([alive(pids.vmm.pid), alive(pids.virtiofsd.pid)]).toEqual([true, true]);
    process.kill(pids.host.pid, "SIGKILL");
    waitForStatus(b.id, "stopped", 10_000);
    // The channel hangs up -> the agent powers the guest off -> QEMU exits -> virtiofsd loses its client.
    waitUntil("qemu and virtiofsd to exit by themselves", () => !alive(pids.vmm.pid) && !alive(pids.virtiofsd.pid), 30_000);
    ok(rt(["delete", b.id]));
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "delete --force of a running VM container stops the VM", async () => {
    const b = vmBundle(["sleep", "600"]);
    ok(vcreate(b));
    ok(startContainer(b.id));
    waitForStatus(b.id, "running");
    const dir = join(stateRoot(), b.id);
    expect(processesNaming(dir).some((p) => p.includes("qemu-system-x86_64"))).toBe(true);
    ok(rt(["delete", "--force", b.id]));
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);
});

describe("VM mode through podman", () => {
  const reason = SKIP ?? (which("podman") && which("conmon") ? null : "podman or conmon is not installed");
  testIf(reason, "podman run --annotation io.nanokata.mode=vm: the guest's kernel, stdin, exit code; rm leaves nothing", async () => {
    const dir = mkdtempSync(join(tmpdir(), "nkt-vm-podman-"));
    // podman's cgroupfs parent (/libpod_parent, with conmon's cgroup in it): ours to remove if this test made it.
    const cgroupsBefore = cgroupTopLevel();
    // conmon does not pass podman's environment on to the runtime: a wrapper names the image cache.
    const wrapper = join(dir, "nk-runtime");
    writeFileSync(wrapper, `#!/bin/sh\nNK_VM_CACHE='${CACHE}' exec '${runtimeBinary()}' "$@"\n`, { mode: 0o755 });
    const podman = (args: string[], input?: string) =>
      spawnSync(
        "podman",
        ["--root", join(dir, "root"), "--runroot", join(dir, "runroot"), "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", wrapper, ...args],
        { encoding: "utf8", input, timeout: VM_TIMEOUT, killSignal: "SIGKILL" },
      );
    try {
      const tar = join(dir, "rootfs.tar");
      expect(spawnSync("tar", ["--numeric-owner", "-C", ensureBusyboxRootfs(), "-cf", tar, "."]).status).toBe(0);
      expect(podman(["import", tar, "localhost/nkt-vm-busybox:latest"]).status).toBe(0);
      const r = podman(
        ["run", "--rm", "-i", "--network", "none", "--annotation", "io.nanokata.mode=vm", "localhost/nkt-vm-busybox:latest", "sh", "-c", "read x; uname -r; echo got:$x; exit 4"],
        "hello\n",
      );
      const [kernel, got] = r.stdout.trim().split("\n");
      expect({ code: r.status, got, stderr: r.stderr.includes("Error") }).toEqual({ code: 4, got: "got:hello", stderr: false });
      expect(kernel).not.toBe(release());
      expect(kernel).toMatch(/cloud-amd64$/);
      expect(podman(["ps", "--all", "--quiet"]).stdout.trim()).toBe("");
    } finally {
      podman(["rm", "--all", "--force", "--time", "0"]);
      podman(["rmi", "--all", "--force"]);
      expect(processesNaming(dir)).toEqual([]);
      expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(dir);
      rmSync(dir, { recursive: true, force: true });
      expect(removeNewCgroupParents(cgroupsBefore, ["libpod_parent"])).toEqual([]);
    }
  }, VM_TIMEOUT);
});

describe("VM mode (Firecracker)", () => {
  const reason = which("firecracker") ? "the Firecracker driver boots no container yet (its rootfs block image is not implemented)" : "no firecracker binary on PATH (it cannot be installed here: the driver follows the documented API but is untested)";
  testIf(reason, "a container runs under Firecracker", () => {});
});
