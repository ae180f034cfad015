/**
 * The C executor on real plans: namespaces, mounts inside a rootfs,
 * credentials, capabilities, the exec fifo, the monitor role. Needs root.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, openSync, readFileSync, readSync, closeSync, symlinkSync, mkdirSync, writeFileSync, statSync, rmSync } from "node:fs";
import { hostname } from "node:os";
import { basename, join } from "node:path";
import { OpCode, Section, type PlanOp } from "../../src/plan/ops.ts";
import {
  NK_EXEC,
  buildExecutor,
  hostMountsUnder,
  lineOf,
  makeRootfs,
  op,
  runPlan,
  tryKill,
  type PlanRun,
  type TestRootfs,
} from "../helpers/plan-runner.ts";

const { Pre, Parent, Init } = Section;

const CLONE_NEWNS = 0x00020000;
const CLONE_NEWUTS = 0x04000000;
const CLONE_NEWIPC = 0x08000000;
const CLONE_NEWUSER = 0x10000000;
const CLONE_NEWPID = 0x20000000;
const CLONE_NEWNET = 0x40000000;

const MS_RDONLY = 1;
const MS_NOSUID = 2;
const MS_NODEV = 4;
const MS_NOEXEC = 8;
const MS_BIND = 4096;
const MS_REC = 16384;
const MS_PRIVATE = 1 << 18;
const MS_STRICTATIME = 1 << 24;
const RLIMIT_NOFILE = 7;

const CAP_CHOWN = 0;
const CAP_KILL = 5;
const CAP_NET_BIND_SERVICE = 10;

function skipReason(): string | null {
  if (process.getuid?.() !== 0) return "needs root";
  if (!existsSync("/bin/busybox")) return "needs /bin/busybox (busybox-static)";
  return buildExecutor();
}
const reason = skipReason();
if (reason) console.warn(`skipping executor integration tests: ${reason}`);

/** Plan tail shared by the simple tests: stage0 waits for the container and exits with its status. */
const monitor = (tty = "none") => op(OpCode.MONITOR, Parent, tty);
const exec = (argv: string[], env: string[] = ["PATH=/bin:/usr/bin"]) =>
  op(OpCode.EXEC, Init, argv.length, ...argv, ...env);

function okLines(run: PlanRun): string[] {
  return run.lines.filter((l) => l.startsWith("ok "));
}

/** After EXIT, stage0 may be gone before init reaches execve: poll its cmdline (up to 2 s). */
async function waitForExec(pid: number, cmdline: string): Promise<string> {
  const read = () => readFileSync(`/proc/${pid}/cmdline`, "utf8");
  for (let i = 0; i < 100 && read() !== cmdline; i++) await Bun.sleep(20);
  return read();
}

function describeRun(run: PlanRun): string {
  return JSON.stringify({ lines: run.lines, stdout: run.stdout, stderr: run.stderr, exit: run.exitCode });
}

describe.skipIf(reason !== null)("nk-exec", () => {
  let rootfs: TestRootfs;
  const pidsToKill: number[] = [];
  const mountsBefore = new Set(readFileSync("/proc/mounts", "utf8").split("\n"));
  /** Host mounts added since the tests began that point into our temp dir or at a path a test mounts on. */
  const leakedMounts = () =>
    readFileSync("/proc/mounts", "utf8")
      .split("\n")
      .filter((l) => !mountsBefore.has(l))
      .filter((l) => l.includes(rootfs.dir) || / \/(nk-x|tmp\/nk-y|proc\/version|proc\/sys) /.test(l));

  beforeAll(() => {
    rootfs = makeRootfs();
  });
  afterEach(() => {
    for (const pid of pidsToKill.splice(0)) tryKill(pid);
    // Every mount lived in a container's own mount namespace and went with it.
    expect(leakedMounts()).toEqual([]);
  });
  afterAll(() => {
    rootfs.cleanup(); // refuses to delete through a host mount
  });

  async function run(plan: PlanOp[], options?: Parameters<typeof runPlan>[1]): Promise<PlanRun> {
    const result = await runPlan(plan, options);
    if (result.childPid) pidsToKill.push(result.childPid);
    return result;
  }

  test("--version", async () => {
    const proc = Bun.spawnSync([NK_EXEC, "--version"]);
    expect(proc.stdout.toString()).toBe("nk-exec 0.1.0\n");
  });

  test("new UTS namespace: SETHOSTNAME is what hostname prints, the host keeps its name", async () => {
    const r = await run([
      op(OpCode.CLONE, Pre, CLONE_NEWUTS),
      monitor(),
      op(OpCode.SETHOSTNAME, Init, "nk-uts-test"),
      exec(["/bin/hostname"]),
    ]);
    expect(r.stdout, describeRun(r)).toBe("nk-uts-test\n");
    expect(r.exitCode).toBe(0);
    expect(hostname()).not.toBe("nk-uts-test");
    // CLONE reports the child pid (stage0 and the child report concurrently: find the line, not its position).
    expect(r.lines.find((l) => l.startsWith("ok 0 "))).toMatch(/^ok 0 \d+$/);
  });

  test("new PID namespace: the container process is pid 1", async () => {
    const r = await run([op(OpCode.CLONE, Pre, CLONE_NEWPID), monitor(), exec(["/bin/sh", "-c", "echo $$"])]);
    expect(r.stdout, describeRun(r)).toBe("1\n");
  });

  test("MONITOR propagates the exit code and 128+signal", async () => {
    const exit3 = await run([op(OpCode.CLONE, Pre, 0), monitor(), exec(["/bin/sh", "-c", "exit 3"])]);
    expect(exit3.exitCode, describeRun(exit3)).toBe(3);
    const killed = await run([op(OpCode.CLONE, Pre, 0), monitor(), exec(["/bin/sh", "-c", "kill -9 $$"])]);
    expect(killed.exitCode, describeRun(killed)).toBe(137);
  });

  test("a full container: namespaces, rootfs mounts, pivot_root, masks, rlimit, caps, fds, exec fifo", async () => {
    const { rootfs: root, dir } = rootfs;
    const fifo = join(dir, "exec.fifo");
    const fifoContent: string[] = [];
    const fifoMode: number[] = [];
    const capMask = (1 << CAP_CHOWN) | (1 << CAP_KILL) | (1 << CAP_NET_BIND_SERVICE); // 0x421
    const plan = [
      op(OpCode.FIFO_PREPARE, Pre, dir, "exec.fifo"),
      op(OpCode.CLONE, Pre, CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET),
      op(OpCode.SEND_PID, Parent),
      op(OpCode.WAIT_GO, Parent),
      op(OpCode.RELEASE_CHILD, Parent),
      monitor(),
      op(OpCode.WAIT_RELEASE, Init),
      op(OpCode.MOUNT, Init, "", "/", "", MS_REC | MS_PRIVATE, ""),
      op(OpCode.MOUNT, Init, root, root, "", MS_BIND | MS_REC, ""),
      op(OpCode.MOUNT_IN_ROOT, Init, root, "/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "", "dir", "1"),
      op(OpCode.MOUNT_IN_ROOT, Init, root, "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755", "dir", "0"),
      op(OpCode.MKNOD_IN_ROOT, Init, root, "/dev/null", "c", 1, 3, "666", 0, 0),
      op(OpCode.SETHOSTNAME, Init, "nk-full"),
      op(OpCode.PIVOT_ROOT, Init, root),
      op(OpCode.MASK_PATH, Init, "/proc/version"), // a file: /dev/null goes over it
      op(OpCode.MASK_PATH, Init, "/proc/scsi-not-here"),
      op(OpCode.MASK_PATH, Init, "/proc/bus"),
      op(OpCode.SETRLIMIT, Init, RLIMIT_NOFILE, 1024, 1024),
      op(OpCode.CAP_BOUNDING, Init, capMask.toString(16)),
      op(OpCode.CAPSET, Init, capMask.toString(16), capMask.toString(16), "1"),
      op(OpCode.CLOSE_FDS, Init, 0),
      op(OpCode.REPORT_READY, Init),
      op(OpCode.WAIT_FIFO, Init),
      op(OpCode.EXEC_LOOKUP, Init, "sh", "/bin"),
      exec([
        "sh",
        "-c",
        "cat /proc/self/status; hostname; stat -c 'version=%t:%T' /proc/version; ls /proc/bus | wc -l; ulimit -n; ls /proc/self/fd",
      ]),
    ];
    const r = await run(plan, {
      extraFds: 1, // fd 4: a runtime fd CLOSE_FDS must keep from the container
      onLine: (line) => {
        if (line !== "ready") return;
        fifoMode.push(statSync(fifo).mode & 0o7777);
        const fd = openSync(fifo, "r"); // releases WAIT_FIFO
        const buf = Buffer.alloc(8);
        fifoContent.push(buf.subarray(0, readSync(fd, buf)).toString());
        closeSync(fd);
      },
    });
    const info = describeRun(r);
    expect(r.exitCode, info).toBe(0);
    expect(r.lines.filter((l) => l.startsWith("err"))).toEqual([]);
    expect(r.lines).toContain(`pid ${r.childPid}`);
    expect(lineOf(r, 9)).toBe(`ok 9 ${root}/proc`); // where the proc mount landed
    expect(lineOf(r, 15)).toBe("ok 15 absent"); // MASK_PATH of a missing path
    expect(r.lines.at(-1)).toBe("ready");
    expect(fifoContent).toEqual(["0"]);
    expect(fifoMode).toEqual([0o622]); // exactly, whatever the umask: a non-root init must open it

    const status = r.stdout;
    expect(status).toMatch(/^PPid:\s+1$/m); // sh is pid 1, cat its child
    expect(status).toMatch(/^CapBnd:\s+0000000000000421$/m);
    expect(status).toMatch(/^CapEff:\s+0000000000000421$/m);
    expect(status).toMatch(/^CapInh:\s+0000000000000001$/m);
    // hostname; masked /proc/version is /dev/null (1:3); the masked directory is empty; the rlimit;
    // and only stdio (plus ls's own directory fd 3) reached the container.
    expect(status.slice(status.indexOf("nk-full\n"))).toBe("nk-full\nversion=1:3\n0\n1024\n0\n1\n2\n3\n");
  });

  test("a symlink in the rootfs cannot move a mount out of it", async () => {
    const { rootfs: root } = rootfs;
    symlinkSync("/", join(root, "evil"));
    symlinkSync("../../../../../..", join(root, "evil-dots"));
    symlinkSync("/nk-exec-escape-target", join(root, "dangling"));
    try {
      const r = await run([
        op(OpCode.CLONE, Pre, CLONE_NEWNS),
        monitor(),
        op(OpCode.MOUNT, Init, "", "/", "", MS_REC | MS_PRIVATE, ""),
        op(OpCode.MOUNT_IN_ROOT, Init, root, "/evil/nk-x", "tmpfs", "tmpfs", 0, "", "dir", "0"),
        op(OpCode.MOUNT_IN_ROOT, Init, root, "/evil-dots/tmp/nk-y", "tmpfs", "tmpfs", 0, "", "dir", "0"),
        op(OpCode.MOUNT_IN_ROOT, Init, root, "/dangling", "tmpfs", "tmpfs", 0, "", "file", "0"),
      ]);
      // The dangling link resolves inside the rootfs to a missing file; it is not created on the host.
      expect(lineOf(r, 3), describeRun(r)).toBe(`ok 3 ${root}/nk-x`);
      expect(lineOf(r, 4)).toBe(`ok 4 ${root}/tmp/nk-y`);
      expect(lineOf(r, 5)).toMatch(/^err 5 2 mount tmpfs on \/dangling \(.*\): resolve \/dangling inside rootfs .*: No such file or directory$/);
      expect(r.exitCode).toBe(1);
      expect(existsSync("/nk-x")).toBe(false);
      expect(existsSync("/tmp/nk-y")).toBe(false);
      expect(existsSync("/nk-exec-escape-target")).toBe(false);
      expect(existsSync(join(root, "nk-x"))).toBe(true);

      // strict (proc/sysfs targets): no symlink anywhere in the path.
      const strict = await run([
        op(OpCode.CLONE, Pre, CLONE_NEWNS),
        monitor(),
        op(OpCode.MOUNT, Init, "", "/", "", MS_REC | MS_PRIVATE, ""),
        op(OpCode.MOUNT_IN_ROOT, Init, root, "/evil/proc", "proc", "proc", 0, "", "dir", "1"),
      ]);
      expect(lineOf(strict, 3), describeRun(strict)).toMatch(
        /^err 3 40 mount proc on \/evil\/proc .*symlinks are not allowed here/,
      );
    } finally {
      for (const link of ["evil", "evil-dots", "dangling"]) Bun.spawnSync(["rm", "-f", join(root, link)]);
    }
  });

  test("a malformed plan is an err line and exit 1, never a crash", async () => {
    const good = new Uint8Array([0x4e, 0x4b, 0x50, 0x31, 0, 0, 0, 0]);
    const cases: [string, Uint8Array | PlanOp[]][] = [
      ["bad magic", new Uint8Array([1, 2, 3, 4, 0, 0, 0, 0])],
      ["truncated", new Uint8Array([0x4e, 0x4b, 0x50, 0x31, 5, 0, 0, 0, 1])],
      ["empty", new Uint8Array(0)],
      ["trailing bytes", new Uint8Array([...good, 9])],
      ["unknown op", [op(999 as OpCode, Pre)]],
      ["wrong argc", [op(OpCode.SETHOSTNAME, Pre)]],
      ["wrong section", [op(OpCode.CLONE, Pre, 0), op(OpCode.SETHOSTNAME, Parent, "x")]],
      ["Init op before CLONE", [op(OpCode.SETHOSTNAME, Init, "x"), op(OpCode.CLONE, Pre, 0)]],
      ["not a number", [op(OpCode.CLONE, Pre, "12abc")]],
      ["NUL in a path", [op(OpCode.CLONE, Pre, 0), op(OpCode.CHDIR, Init, "/tm\0p")]],
      ["EXEC argc too big", [op(OpCode.CLONE, Pre, 0), op(OpCode.EXEC, Init, 5, "/bin/true")]],
      ["huge argc", new Uint8Array([0x4e, 0x4b, 0x50, 0x31, 1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f])],
    ];
    for (const [name, plan] of cases) {
      const r = await runPlan(plan);
      expect({ name, lines: r.lines }).toEqual({ name, lines: [expect.stringMatching(/^err -1 22 malformed plan: /)] });
      expect({ name, exit: r.exitCode, out: r.stdout + r.stderr }).toEqual({ name, exit: 1, out: "" });
    }
    const lengthOnly = await runPlan([op(OpCode.UNSHARE, Pre, 0)]);
    expect(lengthOnly.lines).toEqual(["ok 0 "]); // and a valid Pre-only plan runs
  });

  test("EXEC_LOOKUP reports a missing executable like runc", async () => {
    const r = await run([
      op(OpCode.CLONE, Pre, 0),
      monitor(),
      op(OpCode.EXEC_LOOKUP, Init, "nk-no-such-binary", "/bin:/usr/bin"),
      exec(["nk-no-such-binary"]),
    ]);
    expect(lineOf(r, 2), describeRun(r)).toBe('err 2 2 exec: "nk-no-such-binary": executable file not found in $PATH');
    expect(r.exitCode).toBe(1);
    expect(r.stdout + r.stderr).toBe("");

    const found = await run([op(OpCode.CLONE, Pre, 0), monitor(), op(OpCode.EXEC_LOOKUP, Init, "true", ""), exec(["true"])]);
    expect(lineOf(found, 2)).toMatch(/^ok 2 \/usr\/(local\/)?s?bin\/true$|^ok 2 \/s?bin\/true$/);
    expect(found.exitCode).toBe(0);
  });

  test("SETRLIMIT failure names the limit", async () => {
    const r = await run([
      op(OpCode.CLONE, Pre, 0),
      monitor(),
      op(OpCode.SETRLIMIT, Init, RLIMIT_NOFILE, 1 << 30, 1 << 30),
    ]);
    expect(lineOf(r, 2), describeRun(r)).toBe(
      `err 2 1 setrlimit RLIMIT_NOFILE ${1 << 30}:${1 << 30}: Operation not permitted`,
    );
  });

  test("user namespace: stage0 writes the id maps, init becomes root inside", async () => {
    const r = await run([
      op(OpCode.CLONE, Pre, CLONE_NEWUSER),
      op(OpCode.WRITE_CHILD_PROC, Parent, "uid_map", "0 100000 65536"),
      op(OpCode.WRITE_CHILD_PROC, Parent, "gid_map", "0 100000 65536"),
      op(OpCode.RELEASE_CHILD, Parent),
      monitor(),
      op(OpCode.WAIT_RELEASE, Init),
      op(OpCode.SETRESGID, Init, 0),
      op(OpCode.SETRESUID, Init, 0),
      exec(["/bin/sh", "-c", "cat /proc/self/uid_map; id -u"]),
    ]);
    expect(r.stdout, describeRun(r)).toMatch(/^\s*0\s+100000\s+65536\n0\n$/);
    expect(r.exitCode).toBe(0);
  });

  test("WAIT_GO: any answer but go kills init and fails", async () => {
    const r = await run(
      [
        op(OpCode.CLONE, Pre, 0),
        op(OpCode.SEND_PID, Parent),
        op(OpCode.WAIT_GO, Parent),
        op(OpCode.RELEASE_CHILD, Parent),
        op(OpCode.WAIT_RELEASE, Init),
        exec(["/bin/sh", "-c", "echo should-not-run"]),
      ],
      { answerPid: "abort\n" },
    );
    expect(lineOf(r, 2), describeRun(r)).toBe('err 2 125 runtime answered "abort" instead of "go"');
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe("");
    expect(existsSync(`/proc/${r.childPid}`)).toBe(false); // killed and reaped
  });

  test("EXIT leaves a detached init running", async () => {
    const r = await run([
      op(OpCode.CLONE, Pre, CLONE_NEWPID),
      op(OpCode.SEND_PID, Parent),
      op(OpCode.WAIT_GO, Parent),
      op(OpCode.EXIT, Parent),
      exec(["/bin/sleep", "30"]),
    ], { detached: true });
    expect(r.exitCode, describeRun(r)).toBe(0);
    expect(r.childPid).toBeGreaterThan(0);
    expect(await waitForExec(r.childPid!, "/bin/sleep\x0030\x00")).toBe("/bin/sleep\x0030\x00");
  });

  test("SETUP_TERMINAL monitor + MONITOR copy: a pty relays input and output", async () => {
    const r = await run(
      [
        op(OpCode.CLONE, Pre, 0),
        monitor("copy"),
        op(OpCode.SETUP_TERMINAL, Init, "monitor", 0, 0),
        exec(["/bin/sh", "-c", "test -t 0 && echo is-a-tty; read line; echo got-$line"]),
      ],
      { stdin: "hello\n" },
    );
    expect(lineOf(r, 2), describeRun(r)).toMatch(/^ok 2 \/dev\/pts\/\d+$/);
    expect(r.stdout).toContain("is-a-tty");
    expect(r.stdout).toContain("got-hello");
    expect(r.exitCode).toBe(0);
  });

  test("credentials, ambient caps, no_new_privs, seccomp, read-only mounts, devices, symlinks", async () => {
    const { rootfs: root, dir } = rootfs;
    const data = join(dir, "data");
    mkdirSync(data, { recursive: true });
    writeFileSync(join(data, "hello"), "hello-from-host\n");
    const allowAll = new Uint8Array([0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]); // BPF_RET|BPF_K SECCOMP_RET_ALLOW
    const r = await run([
      op(OpCode.CLONE, Pre, CLONE_NEWNS | CLONE_NEWPID),
      monitor(),
      op(OpCode.MOUNT, Init, "", "/", "", MS_REC | MS_PRIVATE, ""),
      op(OpCode.MOUNT, Init, root, root, "", MS_BIND | MS_REC, ""),
      op(OpCode.MOUNT_IN_ROOT, Init, root, "/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "", "dir", "1"),
      op(OpCode.MOUNT_IN_ROOT, Init, root, "/dev", "tmpfs", "tmpfs", MS_NOSUID, "mode=755", "dir", "0"),
      op(OpCode.BIND_DEVICE_IN_ROOT, Init, root, "/dev/zero", "/dev/zero"),
      op(OpCode.MKNOD_IN_ROOT, Init, root, "/dev/null", "c", 1, 3, "666", 0, 0),
      op(OpCode.SYMLINK_IN_ROOT, Init, root, "/proc/self/fd", "/dev/fd"),
      op(OpCode.SYMLINK_IN_ROOT, Init, root, "/proc/self/fd", "/dev/fd"), // 9: already there
      op(OpCode.MOUNT_IN_ROOT, Init, root, "/mnt/data", data, "", MS_BIND | MS_REC, "", "dir", "0"),
      op(OpCode.REMOUNT_IN_ROOT, Init, root, "/mnt/data", MS_RDONLY),
      op(OpCode.PIVOT_ROOT, Init, root),
      op(OpCode.READONLY_PATH, Init, "/proc/sys"),
      op(OpCode.READONLY_PATH, Init, "/proc/no-such-dir"), // 14
      op(OpCode.REMOUNT_RO, Init, "/"),
      op(OpCode.UMASK, Init, "027"),
      op(OpCode.CHDIR, Init, "/mnt/data"),
      op(OpCode.SETGROUPS, Init, 10, 20),
      op(OpCode.JOIN_KEYRING, Init, "nk-test"), // 19
      op(OpCode.KEEPCAPS, Init, 1),
      op(OpCode.SETRESGID, Init, 1000),
      op(OpCode.SETRESUID, Init, 1000),
      op(OpCode.CAPSET, Init, "421", "421", "421"),
      op(OpCode.CAP_AMBIENT, Init, "400"),
      op(OpCode.NO_NEW_PRIVS, Init),
      op(OpCode.SECCOMP, Init, 0, allowAll),
      exec([
        "/bin/sh",
        "-c",
        "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status;" +
          " pwd; cat hello; umask; readlink /dev/fd; stat -c %t:%T /dev/zero; echo =mounts=; cat /proc/mounts",
      ]),
    ]);
    const info = describeRun(r);
    expect(r.exitCode, info).toBe(0);
    expect(lineOf(r, 9)).toBe("ok 9 exists");
    expect(lineOf(r, 14)).toBe("ok 14 absent");
    expect(lineOf(r, 19)).toMatch(/^ok 19 (unsupported)?$/);
    const [status, mounts] = r.stdout.split("=mounts=\n") as [string, string];
    expect(status.replace(/\t/g, " ")).toBe(
      [
        "Uid: 1000 1000 1000 1000",
        "Gid: 1000 1000 1000 1000",
        "Groups: 10 20 ",
        "CapInh: 0000000000000421",
        "CapPrm: 0000000000000400", // a non-root exec keeps only the ambient set
        "CapEff: 0000000000000400",
        "CapAmb: 0000000000000400",
        "NoNewPrivs: 1",
        "Seccomp: 2",
        "/mnt/data",
        "hello-from-host",
        "0027",
        "/proc/self/fd",
        "1:5",
        "",
      ].join("\n"),
    );
    const options = (target: string) => mounts.split("\n").find((l) => l.split(" ")[1] === target)?.split(" ")[3];
    expect(options("/")).toMatch(/^ro,/);
    expect(options("/mnt/data")).toMatch(/^ro,/);
    expect(options("/proc/sys")).toMatch(/^ro,/);
    expect(options("/proc")).toMatch(/^rw,nosuid,nodev,noexec/);
    expect(options("/dev/zero")).toMatch(/^rw,/);
  });

  test("CHROOT (no pivot): the rootfs becomes /", async () => {
    const root = rootfs.rootfs;
    const r = await run([
      op(OpCode.CLONE, Pre, CLONE_NEWNS),
      monitor(),
      op(OpCode.MOUNT, Init, "", "/", "", MS_REC | MS_PRIVATE, ""),
      op(OpCode.MOUNT, Init, root, root, "", MS_BIND | MS_REC, ""),
      op(OpCode.CHROOT, Init, root),
      exec(["/bin/sh", "-c", "ls /bin/busybox /etc; pwd"]),
    ]);
    expect(r.stdout, describeRun(r)).toBe("/bin/busybox\n\n/etc:\n/\n");
  });

  test("SETNS joins the namespaces of a running container", async () => {
    const first = await run(
      [
        op(OpCode.CLONE, Pre, CLONE_NEWUTS | CLONE_NEWPID),
        op(OpCode.SEND_PID, Parent),
        op(OpCode.WAIT_GO, Parent),
        op(OpCode.EXIT, Parent),
        op(OpCode.SETHOSTNAME, Init, "nk-setns"),
        exec(["/bin/sleep", "30"]),
      ],
      { detached: true },
    );
    const pid = first.childPid!;
    expect(first.exitCode, describeRun(first)).toBe(0);
    expect(await waitForExec(pid, "/bin/sleep\x0030\x00")).toBe("/bin/sleep\x0030\x00"); // hostname is set by then
    const r = await run([
      op(OpCode.SETNS, Pre, `/proc/${pid}/ns/uts`, "uts"),
      op(OpCode.SETNS, Pre, `/proc/${pid}/ns/pid`, "pid"),
      op(OpCode.CLONE, Pre, 0),
      monitor(),
      exec(["/bin/sh", "-c", "hostname; echo $$"]),
    ]);
    expect(r.stdout, describeRun(r)).toBe("nk-setns\n2\n");
    const missing = await run([op(OpCode.SETNS, Pre, "/proc/999999999/ns/net", "net")]);
    expect(missing.lines).toEqual(["err 0 2 open net namespace /proc/999999999/ns/net: No such file or directory"]);
  });

  test("WRITE_FILE writes content and does not follow a symlink", async () => {
    const file = join(rootfs.dir, "written");
    const link = join(rootfs.dir, "written-link");
    writeFileSync(file, "");
    symlinkSync(file, link);
    const r = await runPlan([op(OpCode.WRITE_FILE, Pre, file, "content\n"), op(OpCode.WRITE_FILE, Pre, link, "x")]);
    expect(readFileSync(file, "utf8")).toBe("content\n");
    expect(r.lines).toEqual(["ok 0 ", `err 1 40 open ${link}: Too many levels of symbolic links`]);
    expect(r.exitCode).toBe(1);
  });

  test("CHDIR through a leaked runtime fd cannot leave the container's root (CVE-2024-21626)", async () => {
    const { rootfs: root, dir } = rootfs;
    const plan = (cwd: string) => [
      op(OpCode.FIFO_PREPARE, Pre, dir, "leak.fifo"), // an O_PATH fd of a host directory, open in init
      op(OpCode.CLONE, Pre, CLONE_NEWNS),
      monitor(),
      op(OpCode.MOUNT, Init, "", "/", "", MS_REC | MS_PRIVATE, ""),
      op(OpCode.MOUNT, Init, root, root, "", MS_BIND | MS_REC, ""),
      op(OpCode.MOUNT_IN_ROOT, Init, root, "/proc", "proc", "proc", 0, "", "dir", "1"),
      op(OpCode.PIVOT_ROOT, Init, root),
      op(OpCode.CHDIR, Init, cwd),
      exec(["/bin/sh", "-c", "ls -a ..; pwd"]),
    ];
    try {
      let escapes = 0;
      for (let fd = 3; fd <= 9; fd++) {
        rmSync(join(dir, "leak.fifo"), { force: true });
        const r = await run(plan(`/proc/self/fd/${fd}`));
        const line = lineOf(r, 7) ?? "";
        if (line.startsWith("err 7 1 ")) {
          expect(line).toMatch(/^err 7 1 chdir \/proc\/self\/fd\/\d+: the working directory \(unreachable\)\/.* is outside the container's root$/);
          escapes++;
        } else {
          // Not a directory fd (or not open): chdir fails, or stays inside the rootfs,
          // where ".." cannot show the host directory holding our temp dir.
          expect({ fd, out: r.stdout }).not.toMatchObject({ out: expect.stringContaining(basename(dir)) });
        }
      }
      expect(escapes).toBeGreaterThan(0); // the fifo directory fd was among them, and was caught
      rmSync(join(dir, "leak.fifo"), { force: true });
      const inside = await run(plan("/bin"));
      expect(inside.stdout, describeRun(inside)).toEndWith("\nproc\ntmp\n/bin\n"); // ls of the rootfs, then pwd
    } finally {
      rmSync(join(dir, "leak.fifo"), { force: true });
    }
  });

  test("WRITE_PROC refuses a file that is not on procfs", async () => {
    const target = join(rootfs.dir, "not-proc");
    writeFileSync(target, "");
    const r = await run([op(OpCode.CLONE, Pre, 0), monitor(), op(OpCode.WRITE_PROC, Init, target, "1")]);
    expect(lineOf(r, 2), describeRun(r)).toMatch(new RegExp(`^err 2 18 refusing to write ${target}: not on procfs`));
  });

  test("MASK_PATH refuses a /dev/null that is not the null device", async () => {
    const root = rootfs.rootfs;
    mkdirSync(join(root, "fake"), { recursive: true });
    const r = await run([
      op(OpCode.CLONE, Pre, CLONE_NEWNS),
      monitor(),
      op(OpCode.MOUNT, Init, "", "/", "", MS_REC | MS_PRIVATE, ""),
      op(OpCode.MOUNT, Init, root, root, "", MS_BIND | MS_REC, ""),
      op(OpCode.MOUNT_IN_ROOT, Init, root, "/proc", "proc", "proc", 0, "", "dir", "1"),
      op(OpCode.MOUNT_IN_ROOT, Init, root, "/dev", "tmpfs", "tmpfs", 0, "", "dir", "0"),
      // /dev/null as a plain file, as a hostile image (or a racing container) could make it
      op(OpCode.MKNOD_IN_ROOT, Init, root, "/dev/null", "p", 0, 0, "666", 0, 0),
      op(OpCode.PIVOT_ROOT, Init, root),
      op(OpCode.MASK_PATH, Init, "/proc/version"),
    ]);
    expect(lineOf(r, 8), describeRun(r)).toBe("err 8 1 mask /proc/version: /dev/null is not the null device (char 1:3)");
  });
});
