/**
 * VM mode end to end: real microVMs under QEMU (TCG on this machine and in
 * CI, KVM where the probe says it boots the guest). The guest image is built
 * by the tests themselves with `nk-runtime vm build-image` into
 * <repo>/.cache/vm (cached: a rebuild happens only when an input changed).
 *
 * Every test checks that nothing is left behind: no state directory, no
 * socket, no qemu or virtiofsd process that names its container.
 */
import { describe, expect } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { release, tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot } from "../helpers/rootfs.ts";
import { hasPvhNote } from "../../src/vm/image/bzimage.ts";
import {
  containerStdout,
  ok,
  rt,
  runtimeBinary,
  startContainer,
  state,
  stateRoot,
  testIf,
  waitForStatus,
  waitUntil,
} from "../helpers/runtime.ts";
import type { Bundle } from "../helpers/bundle.ts";
import { ptyRun } from "./daemons.ts";
import { consoleReceiver as receiveConsole } from "../helpers/console-receiver.ts";
import { bundlesCheckedAfterEach, ensureVmImage, expectNothingLeft, podmanOnNanoKata, processesNaming, vcreate, VM_CACHE, VM_ENV, VM_TIMEOUT, vmSkipReason, vrt, which } from "./vm-helpers.ts";

const CACHE = VM_CACHE;

const SKIP = vmSkipReason();
let imageError = "";

/** The guest's pty must follow the size the receiver sets (33x101). */
const consoleReceiver = (dir: string, input: string, until: string) =>
  receiveConsole(dir, input, until, { size: { rows: 33, cols: 101 }, acceptSeconds: 90, readSeconds: 60, stripCarriageReturns: true });

const alive = (pid: number) => existsSync(`/proc/${pid}`) && !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));

const checkedBundle = bundlesCheckedAfterEach();
const vmBundle = (args: string[], override?: (c: Record<string, any>) => void): Bundle => checkedBundle({ args, override });

// At load time rather than in beforeAll: a hook is bound by the per-test timeout, a first build may take longer.
if (!SKIP) imageError = ensureVmImage();

describe("VM mode (QEMU microvm)", () => {
  testIf(SKIP, "vm build-image builds the minimal guest kernel (the default) and the initramfs, then reuses them", () => {
    expect(imageError).toBe("");
    const stamp = JSON.parse(readFileSync(join(CACHE, "stamp.json"), "utf8"));
    const fragment = readFileSync(join(repoRoot(), "src", "vm", "image", "guest-kernel.config"));
    expect({ kernel: stamp.kernel, acpi: stamp.acpi, modules: stamp.modules }).toEqual({ kernel: "minimal", acpi: false, modules: [] });
    expect(stamp.release).toMatch(/^6\.1\.\d+-nano-kata$/);
    // Its inputs: the source package's version, the config fragment's hash, the compiler.
    expect(stamp.inputs.kernel).toEqual({
      kind: "minimal",
      source: { name: "linux-source-6.1", version: expect.stringMatching(/^6\.1\./), sha256: expect.stringMatching(/^[0-9a-f]{64}$/) },
      configSha256: new Bun.CryptoHasher("sha256").update(fragment).digest("hex"),
      compiler: expect.stringContaining("gcc"),
    });
    const vmlinux = readFileSync(join(CACHE, "vmlinux"));
    expect([vmlinux.subarray(0, 4), hasPvhNote(vmlinux)]).toEqual([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), true]);
    // Everything built in, nothing to load: no modules in the initramfs.
    const config = readFileSync(join(CACHE, "kernel.config"), "utf8");
    expect(config).toContain("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y");
    expect(config).toContain("# CONFIG_MODULES is not set");
    // (a newc header ends with its 8-digit check field, then the entry's name)
    expect(readFileSync(join(CACHE, "initramfs.cpio")).toString("latin1")).not.toMatch(/0{8}modules[/\0]/);
    const again = ok(rt(["vm", "build-image"], { noRoot: true, env: VM_ENV, timeoutMs: 120_000 }));
    expect(again.stdout).toContain("up to date");
  }, 300_000);

  testIf(SKIP, "vm check names qemu, virtiofsd, the image and the accelerator with its reason", () => {
    const r = rt(["vm", "check", "--format", "json"], { noRoot: true, env: VM_ENV, timeoutMs: 60_000 });
    const report = JSON.parse(r.stdout);
    expect(report.qemu.path).toContain("qemu-system-x86_64");
    expect(report.qemu.version).toMatch(/QEMU emulator version/);
    expect(report.virtiofsd.path).toBeTruthy();
    expect(report.image).toEqual(expect.objectContaining({ state: "current", kernel: "minimal", acpi: false }));
    expect(["kvm", "tcg"]).toContain(report.accelerator.accel);
    expect(report.accelerator.reason.length).toBeGreaterThan(5);
    if (!existsSync("/dev/kvm")) expect(report.accelerator).toEqual({ accel: "tcg", reason: expect.stringContaining("/dev/kvm does not exist") });
    expect(report.firecracker.note).toBeTruthy();
    expect(r.code).toBe(0);
    const text = ok(rt(["vm", "check"], { noRoot: true, env: VM_ENV, timeoutMs: 60_000 })).stdout;
    expect(text).toContain("accelerator:");
    expect(text).toMatch(/guest image: +current \(minimal kernel 6\.1\.\d+-nano-kata, ACPI off\)/);
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

  testIf(SKIP, "exec into a VM-mode container: output and exit code, stdin, flags, --process, -d and its stand-in, a terminal; ps, pause/resume, update, events --stats", async () => {
    const shared = mkdtempSync(join(tmpdir(), "nkt-vm-exec-"));
    try {
      const b = vmBundle(["sh", "-c", "echo started; exec sleep 600"], (c) => {
        c.mounts.push({ destination: "/mnt/rw", type: "bind", source: shared, options: ["rbind", "rw"] });
        c.linux.resources = { memory: { limit: 64 << 20 } };
        c.linux.namespaces.push({ type: "cgroup" });
        c.mounts.push({ destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["nosuid", "noexec", "nodev", "ro"] });
      });
      ok(vcreate(b));
      ok(startContainer(b.id));
      waitForStatus(b.id, "running");

      // Output, stderr and the exit code; the process joined init's pid namespace in the guest.
      const r = rt(["exec", b.id, "sh", "-c", "echo out; echo err >&2; tr '\\0' ' ' < /proc/1/cmdline; echo; exit 5"], { timeoutMs: VM_TIMEOUT });
      expect({ code: r.code, out: r.stdout, err: r.stderr }).toEqual({ code: 5, out: "out\nsleep 600 \n", err: "err\n" });
      // stdin, all of it.
      expect(rt(["exec", b.id, "sh", "-c", "read x; echo got:$x; wc -c"], { input: "hello\n" + "x".repeat(300_000) }).stdout).toBe("got:hello\n300000\n");
      // --env, --cwd, --user as in container mode.
      const flags = rt(["exec", "--env", "FOO=bar", "--cwd", "/tmp", "--user", "1000:1000", b.id, "sh", "-c", 'echo "$FOO $(pwd) $(id -u):$(id -g)"']);
      expect({ code: flags.code, out: flags.stdout }).toEqual({ code: 0, out: "bar /tmp 1000:1000\n" });
      // --process: a config.json `process` object.
      const processJson = join(shared, "process.json");
      writeFileSync(processJson, JSON.stringify({ args: ["sh", "-c", "echo from-process-json; exit 4"], cwd: "/", user: { uid: 0, gid: 0 }, env: ["PATH=/bin:/usr/bin"] }));
      const fromFile = rt(["exec", "--process", processJson, b.id]);
      expect({ code: fromFile.code, out: fromFile.stdout }).toEqual({ code: 4, out: "from-process-json\n" });
      // A failing exec names the field, and the container keeps running.
      const missing = rt(["exec", b.id, "/no/such/binary"]);
      expect({ code: missing.code, field: missing.stderr.includes("process.args") }).toEqual({ code: 1, field: true });

      // -d: --pid-file names the stand-in on the host; a signal sent to it reaches the process.
      const pidFile = join(shared, "exec.pid");
      const script = "trap 'echo got-usr1 > /mnt/rw/trapped; exit 9' USR1; echo ready > /mnt/rw/ready; while true; do sleep 0.1; done";
      ok(rt(["exec", "-d", "--pid-file", pidFile, b.id, "sh", "-c", script], { timeoutMs: VM_TIMEOUT }));
      const standIn = Number(readFileSync(pidFile, "utf8"));
      expect(alive(standIn)).toBe(true);
      waitUntil("the detached process to run", () => existsSync(join(shared, "ready")), 30_000);
      process.kill(standIn, "SIGUSR1");
      waitUntil("the trap to run and the stand-in to exit", () => existsSync(join(shared, "trapped")) && !alive(standIn), 30_000);
      expect(readFileSync(join(shared, "trapped"), "utf8")).toBe("got-usr1\n");
      // A stand-in killed outright: the host process kills its process in the guest.
      ok(rt(["exec", "-d", "--pid-file", pidFile, b.id, "sleep", "4321"]));
      const victim = Number(readFileSync(pidFile, "utf8"));
      process.kill(victim, "SIGKILL");
      waitUntil("the orphaned guest process to be killed", () => !rt(["exec", b.id, "ps", "-o", "args"]).stdout.includes("sleep 4321"), 30_000);

      // exec -t through --console-socket: the receiver drives a shell; the guest pty has the master's size.
      const tty = consoleReceiver(shared, "echo tty-$((40+2))-ok; tty; stty size; echo end-$((1+1))-mark; exit 7\n", "end-2-mark");
      const t = rt(["exec", "-t", "--console-socket", tty.socket, b.id, "sh"], { timeoutMs: VM_TIMEOUT });
      const got = tty.result();
      expect(t.code).toBe(7);
      expect(got.fds).toBe(1);
      expect(got.name).toMatch(/^\/dev\/pts\/\d+$/);
      expect(got.output).toContain("tty-42-ok\n");
      expect(got.output).toMatch(/\n\/dev\/pts\/\d+\n/);
      expect(got.output).toContain("\n33 101\n");

      // exec -t on the caller's own terminal (no console socket): raw, relayed, its size followed.
      const onTty = ptyRun([runtimeBinary(), "--root", stateRoot(), "exec", "-t", b.id, "sh"], [{ expect: "# ", send: "stty size; echo z-$((2*21)); exit 6\n" }], VM_TIMEOUT, VM_ENV);
      expect({ code: onTty.code, timedOut: onTty.timedOut }).toEqual({ code: 6, timedOut: false });
      expect(onTty.output.replaceAll("\r", "")).toContain("\n24 80\nz-42\n");

      // ps: the host processes that make up the container (host process, QEMU, virtiofsd).
      const pids = JSON.parse(readFileSync(join(stateRoot(), b.id, "vm-pids.json"), "utf8"));
      const listed = JSON.parse(ok(rt(["ps", "--format", "json", b.id])).stdout) as number[];
      expect(listed).toEqual([pids.host.pid, pids.vmm.pid, pids.virtiofsd.pid].sort((x, y) => x - y));
      expect(ok(rt(["ps", b.id])).stdout).toContain("qemu-system-x86_64");

      // pause stops the VM (state "paused", exec refused), resume continues it.
      ok(rt(["pause", b.id]));
      expect(state(b.id).status).toBe("paused");
      const refused = rt(["exec", b.id, "true"]);
      expect({ code: refused.code, paused: refused.stderr.includes("paused") }).toEqual({ code: 1, paused: true });
      ok(rt(["resume", b.id]));
      expect(state(b.id).status).toBe("running");
      expect(ok(rt(["exec", b.id, "echo", "after-resume"])).stdout).toBe("after-resume\n");
      expect(rt(["resume", b.id]).code).not.toBe(0);

      // update: the guest's cgroup v2 (the exec'd process joined it too), and the recorded spec.
      ok(rt(["update", "--memory", "100M", "--pids-limit", "50", b.id]));
      expect(ok(rt(["exec", b.id, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max"])).stdout).toBe(`${100 << 20}\n50\n`);
      expect(JSON.parse(readFileSync(join(stateRoot(), b.id, "state.json"), "utf8")).spec.linux.resources).toEqual({ memory: { limit: 100 << 20 }, pids: { limit: 50 } });
      // events --stats: the guest cgroup's figures, in runc's shape.
      const stats = JSON.parse(ok(rt(["events", "--stats", b.id])).stdout);
      expect(stats).toMatchObject({ type: "stats", id: b.id, data: { memory: { usage: { limit: 100 << 20 } }, pids: { limit: 50 } } });
      expect(stats.data.memory.usage.usage).toBeGreaterThan(0);
      expect(stats.data.pids.current).toBeGreaterThanOrEqual(1);
      expect(stats.data.cpu.usage.total).toBeGreaterThan(0);

      ok(rt(["kill", b.id, "KILL"]));
      waitForStatus(b.id, "stopped", 30_000);
      ok(rt(["delete", b.id]));
      await expectNothingLeft(b.id);
      expect(processesNaming("exec-relay")).toEqual([]);
    } finally {
      rmSync(shared, { recursive: true, force: true });
    }
  }, 4 * VM_TIMEOUT);

  testIf(SKIP, "create with process.terminal and --console-socket; hooks run on the host in order with the state", async () => {
    const dir = mkdtempSync(join(tmpdir(), "nkt-vm-tty-"));
    try {
      const log = join(dir, "hooks.log");
      const hook = (kind: string) => [{ path: "/bin/sh", args: ["sh", "-c", `read s; echo "${kind} $s" >> ${log}`] }];
      const b = vmBundle(["sh", "-c", "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-$((3*3))-ttys; stty size; echo done-$((5+5))"], (c) => {
        c.process.terminal = true;
        c.hooks = { prestart: hook("prestart"), createRuntime: hook("createRuntime"), poststart: hook("poststart"), poststop: hook("poststop") };
      });
      const receiver = consoleReceiver(dir, "", "done-10");
      ok(vcreate(b, ["--console-socket", receiver.socket]));
      const hostPid = state(b.id).pid;
      const lines = () => readFileSync(log, "utf8").trim().split("\n").map((l) => [l.slice(0, l.indexOf(" ")), JSON.parse(l.slice(l.indexOf(" ") + 1))]);
      expect(lines().map(([kind, s]) => [kind, s.status, s.pid, s.id])).toEqual([
        ["prestart", "creating", hostPid, b.id],
        ["createRuntime", "creating", hostPid, b.id],
      ]);
      ok(startContainer(b.id));
      const got = receiver.result();
      expect(got.fds).toBe(1);
      expect(got.output).toMatch(/^\/dev\/pts\/\d+\n/);
      expect(got.output).toContain("all-9-ttys\n33 101\ndone-10");
      expect(containerStdout(b)).not.toContain("done-10"); // the output went to the pty, not the log
      waitForStatus(b.id, "stopped", 30_000);
      ok(rt(["delete", b.id]));
      expect(lines().map(([kind, s]) => [kind, s.status])).toEqual([
        ["prestart", "creating"],
        ["createRuntime", "creating"],
        ["poststart", "running"],
        ["poststop", "stopped"],
      ]);
      await expectNothingLeft(b.id);

      // Hooks that must run in the container's namespaces (in the guest) are refused by name, before any VM boots.
      const inGuest = vmBundle(["true"], (c) => (c.hooks = { createContainer: [{ path: "/bin/true" }] }));
      const refused = vcreate(inGuest);
      expect({ code: refused.code, field: refused.stderr.includes("hooks.createContainer") }).toEqual({ code: 1, field: true });
      // A failing prestart hook fails create with its message; nothing remains.
      const failing = vmBundle(["true"], (c) => (c.hooks = { prestart: [{ path: "/bin/sh", args: ["sh", "-c", "echo no-way >&2; exit 3"] }] }));
      const failed = vcreate(failing);
      expect(failed.code).toBe(1);
      expect(failed.stderr).toContain("hooks.prestart[0]");
      expect(failed.stderr).toContain("no-way");
      await expectNothingLeft(failing.id);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 2 * VM_TIMEOUT);

  testIf(SKIP, "run with process.terminal on a terminal: the caller's tty, raw, relayed; its size reaches the guest", () => {
    const b = vmBundle(["sh"], (c) => (c.process.terminal = true));
    const r = ptyRun([runtimeBinary(), "--root", stateRoot(), "--mode", "vm", "run", "--bundle", b.dir, b.id], [{ expect: "# ", send: "echo x-$((6*7))-y; stty size; exit 3\n" }], VM_TIMEOUT, VM_ENV);
    expect({ code: r.code, timedOut: r.timedOut }).toEqual({ code: 3, timedOut: false });
    const out = r.output.replaceAll("\r", "");
    expect(out).toContain("x-42-y\n");
    expect(out).toContain("\n24 80\n"); // pty-run.py's terminal is 80x24
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
    expect([alive(pids.vmm.pid), alive(pids.virtiofsd.pid)]).toEqual([true, true]);
    process.kill(pids.host.pid, "SIGKILL");
    waitForStatus(b.id, "stopped", 10_000);
    // The channel hangs up -> the agent powers the guest off -> QEMU exits -> virtiofsd loses its client.
    waitUntil("qemu and virtiofsd to exit by themselves", () => !alive(pids.vmm.pid) && !alive(pids.virtiofsd.pid), 30_000);
    ok(rt(["delete", b.id]));
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "virtiofsd dies, then the host process: the guest still powers off (its last sync cannot wait on the dead share)", async () => {
    const b = vmBundle(["sleep", "600"]);
    ok(vcreate(b));
    ok(startContainer(b.id));
    waitForStatus(b.id, "running");
    const pids = JSON.parse(readFileSync(join(stateRoot(), b.id, "vm-pids.json"), "utf8"));
    process.kill(pids.virtiofsd.pid, "SIGKILL");
    process.kill(pids.host.pid, "SIGKILL");
    waitForStatus(b.id, "stopped", 10_000);
    // A FUSE request to a dead virtiofsd never completes: a plain sync(2) in the agent would keep the VM alive for good.
    waitUntil("qemu to exit by itself", () => !alive(pids.vmm.pid), 30_000);
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

describe("VM mode with Debian's stock kernel (vm build-image --kernel debian)", () => {
  const DEBIAN_CACHE = join(repoRoot(), ".cache", "vm-debian");
  const env = { ...VM_ENV, NK_VM_CACHE: DEBIAN_CACHE };
  testIf(SKIP, "nothing to compile; the VM gets ACPI and the agent loads the image's modules; vm check names the kind", () => {
    const built = rt(["vm", "build-image", "--kernel", "debian"], { noRoot: true, env, timeoutMs: 600_000 });
    expect({ code: built.code, err: built.stderr }).toEqual({ code: 0, err: "" });
    const stamp = JSON.parse(readFileSync(join(DEBIAN_CACHE, "stamp.json"), "utf8"));
    expect({ kernel: stamp.kernel, acpi: stamp.acpi, kind: stamp.inputs.kernel.kind }).toEqual({ kernel: "debian", acpi: true, kind: "debian" });
    expect(stamp.release).toMatch(/cloud-amd64$/);
    expect(stamp.modules).toEqual(expect.arrayContaining(["virtio_mmio", "virtio_console", "virtiofs", "fuse", "overlay"]));
    // virtio-mmio, the channel and virtiofs are modules here: the container running at all proves they loaded.
    // (/sys/firmware is masked in a container; /sys/bus/acpi is not.) Its devices come from ACPI, not the command line.
    const b = vmBundle(["sh", "-c", "uname -r; test -d /sys/bus/acpi && echo acpi; grep -c virtio_mmio.device= /proc/cmdline; exit 5"]);
    const r = vrt(["run", "--bundle", b.dir, b.id], { env });
    expect({ code: r.code, out: r.stdout }).toEqual({ code: 5, out: `${stamp.release}\nacpi\n0\n` });
    const report = JSON.parse(rt(["vm", "check", "--format", "json"], { noRoot: true, env, timeoutMs: 60_000 }).stdout);
    expect(report.image).toEqual(expect.objectContaining({ state: "current", kernel: "debian", acpi: true, release: stamp.release }));
    // NK_VM_KERNEL names the kind build-image makes without --kernel.
    const again = ok(rt(["vm", "build-image"], { noRoot: true, env: { ...env, NK_VM_KERNEL: "debian" }, timeoutMs: 120_000 }));
    expect(again.stdout).toContain("up to date");
    const bad = rt(["vm", "build-image", "--kernel", "tiny"], { noRoot: true, env, timeoutMs: 60_000 });
    expect({ code: bad.code, err: bad.stderr.includes('--kernel: "tiny" is not a guest kernel kind (minimal, debian)') }).toEqual({ code: 1, err: true });
  }, 900_000);

  testIf(SKIP, "the minimal kernel's VM has no ACPI: QEMU names its virtio-mmio devices on the command line", () => {
    const b = vmBundle(["sh", "-c", "test -d /sys/bus/acpi && echo acpi; uname -r; grep -o 'virtio_mmio.device=[^ ]*' /proc/cmdline | wc -l"]);
    const r = vrt(["run", "--bundle", b.dir, b.id]);
    const [release, devices] = r.stdout.trim().split("\n");
    expect({ code: r.code, release }).toEqual({ code: 0, release: JSON.parse(readFileSync(join(CACHE, "stamp.json"), "utf8")).release });
    // The virtio-serial channel and the virtiofs share at least.
    expect(Number(devices)).toBeGreaterThanOrEqual(2);
  }, VM_TIMEOUT);
});

describe("VM mode through podman", () => {
  const reason = SKIP ?? (which("podman") && which("conmon") ? null : "podman or conmon is not installed");
  testIf(reason, "podman run --annotation io.nanokata.mode=vm: the guest's kernel, stdin, exit code; podman exec (-i, -t); rm leaves nothing", async () => {
    const { podman, image, importBusybox, teardown } = podmanOnNanoKata("nkt-vm-podman-");
    try {
      importBusybox();
      const r = podman(
        ["run", "--rm", "-i", "--network", "none", "--annotation", "io.nanokata.mode=vm", image, "sh", "-c", "read x; uname -r; echo got:$x; exit 4"],
        "hello\n",
      );
      const [kernel, got] = r.stdout.trim().split("\n");
      expect({ code: r.status, got, stderr: r.stderr.includes("Error") }).toEqual({ code: 4, got: "got:hello", stderr: false });
      expect(kernel).not.toBe(release());
      expect(kernel).toBe(JSON.parse(readFileSync(join(CACHE, "stamp.json"), "utf8")).release);
      expect(podman(["ps", "--all", "--quiet"]).stdout.trim()).toBe("");

      // podman exec (conmon runs `exec -d --pid-file --process` and waits for the stand-in it names).
      expect(podman(["run", "-d", "--name", "vmexec", "--network", "none", "--annotation", "io.nanokata.mode=vm", image, "sleep", "600"]).status).toBe(0);
      const e = podman(["exec", "vmexec", "sh", "-c", "echo in-$(uname -r); exit 3"]);
      expect({ code: e.status, out: e.stdout.trim() }).toEqual({ code: 3, out: `in-${kernel}` });
      const i = podman(["exec", "-i", "vmexec", "sh", "-c", "read x; echo got:$x"], "piped\n");
      expect({ code: i.status, out: i.stdout }).toEqual({ code: 0, out: "got:piped\n" });
      const t = podman(["exec", "-t", "vmexec", "sh", "-c", "tty; exit 2"]);
      expect({ code: t.status, tty: /^\/dev\/pts\/\d+\r?$/.test(t.stdout.trim()) }).toEqual({ code: 2, tty: true });
      expect(podman(["rm", "--force", "--time", "0", "vmexec"]).status).toBe(0);
    } finally {
      teardown();
    }
  }, 2 * VM_TIMEOUT);
});

// Firecracker's end-to-end test is in vm-block.test.ts (its rootfs is always a block image).
