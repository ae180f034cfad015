/**
 * containerd (through its runc shim, containerd-shim-runc-v2) on nano-kata,
 * compared with runc: `ctr run --runc-binary <wrapper> --runc-root <private>`.
 *
 * The test starts its own containerd (private root, state, sockets and /opt,
 * no CRI plugin) and imports a busybox image it builds by hand as a
 * docker-archive. Containers live in the ctr namespace "nk-e2e" (so their
 * cgroups are /nk-e2e/<id>). Each scenario runs with runc and with nano-kata;
 * the observations must be equal.
 */
import { describe, expect } from "bun:test";
import { join } from "node:path";
import { readFileSync, writeFileSync } from "node:fs";
import { comparer, containerName, finishTeardown, observe, sameRuntimeCallsTest, suiteHooks, teardownTest } from "./client-scenarios.ts";
import {
  RUNC,
  type CmdOptions,
  type CmdResult,
  type Containerd,
  type Which,
  HostPaths,
  containerdHostPaths,
  busyboxDockerArchive,
  cgroupTopLevel,
  cmd,
  e2eSkipReason,
  leftoverCgroups,
  makeWorkDir,
  ok,
  pidsMentioning,
  SHELL_INPUT,
  plainTerminal,
  shellOutput,
  ptyRun,
  runtimeUnderTest,
  startContainerd,
  stopPids,
  waitFor,
  writeArgvWrapper,
} from "./daemons.ts";

const skip = e2eSkipReason(["containerd", "ctr", "containerd-shim-runc-v2"]);
const NAMESPACE = "nk-e2e";
const IMAGE = "docker.io/library/nk-e2e-busybox:latest";

interface CtrSetup {
  dir: string;
  containerd: Containerd | null;
  wrappers: Record<Which, string>;
  logs: Record<Which, string>;
  cgroupsBefore: Map<string, Set<string>>;
  hostPaths: HostPaths;
  seccompProfile: string;
}

let setup: CtrSetup | null = null;
let tornDown = false;

function ctrArgv(args: string[]): string[] {
  return ["ctr", "--address", setup!.containerd!.address, "--namespace", NAMESPACE, ...args];
}

function ctr(args: string[], opts: CmdOptions = {}): CmdResult {
  return cmd(ctrArgv(args), { timeoutMs: 60_000, ...opts });
}

function c(args: string[], opts: CmdOptions = {}): CmdResult {
  return ok(ctr(args, opts));
}

/** `ctr run` on this runtime: the shim calls the wrapper (BinaryName) with a private --root. */
function run(w: Which, args: string[]): string[] {
  return ["run", "--runc-binary", setup!.wrappers[w], "--runc-root", join(setup!.dir, `runc-root-${w}`), "--fifo-dir", fifoDir(), ...args];
}

/** ctr's stdio fifos go here, not to /run/containerd/fifo (ctr leaves a directory there when a run fails). */
function fifoDir(): string {
  return join(setup!.dir, "fifo");
}

/** STATUS column of `ctr task ls` for one task ("" if there is none). */
function taskStatus(id: string): string {
  const line = c(["task", "ls"]).stdout.split("\n").find((l) => l.split(/\s+/)[0] === id);
  return line ? line.trim().split(/\s+/)[2] ?? "" : "";
}

/** Kill (if needed) and delete a task and its container; returns what `task delete` said about the exit. */
function remove(id: string): string {
  const status = taskStatus(id);
  if (status === "RUNNING" || status === "PAUSED" || status === "CREATED") {
    if (status === "PAUSED") ctr(["task", "resume", id]);
    ctr(["task", "kill", "--signal", "SIGKILL", id]);
    waitFor(`task ${id} to stop`, () => taskStatus(id) === "STOPPED");
  }
  const del = ctr(["task", "delete", id]);
  c(["container", "delete", id]);
  return del.stderr;
}

const compare = comparer(skip);

async function setUp(): Promise<void> {
  const dir = makeWorkDir("containerd");
  const cgroupsBefore = cgroupTopLevel();
  const hostPaths = new HostPaths(containerdHostPaths(NAMESPACE));
  const logs = { runc: join(dir, "argv-runc.jsonl"), nk: join(dir, "argv-nanokata.jsonl") };
  const wrappers = {
    runc: writeArgvWrapper(join(dir, "bin"), "runc", RUNC, logs.runc),
    nk: writeArgvWrapper(join(dir, "bin"), "nanokata", runtimeUnderTest(), logs.nk),
  };
  const seccompProfile = join(dir, "deny-mkdir.json");
  writeFileSync(
    seccompProfile,
    JSON.stringify({ defaultAction: "SCMP_ACT_ALLOW", syscalls: [{ names: ["mkdir", "mkdirat"], action: "SCMP_ACT_ERRNO", errnoRet: 1 }] }),
  );
  setup = { dir, containerd: null, wrappers, logs, cgroupsBefore, hostPaths, seccompProfile };
  setup.containerd = await startContainerd(dir);
  c(["images", "import", busyboxDockerArchive(dir, "nk-e2e-busybox:latest")]);
}

async function tearDown(): Promise<string[]> {
  if (!setup || tornDown) return [];
  tornDown = true;
  const s = setup;
  const problems: string[] = [];
  if (s.containerd) {
    for (const line of ctr(["task", "ls", "--quiet"]).stdout.split("\n").filter(Boolean)) {
      problems.push(`task left: ${line}`);
      ctr(["task", "kill", "--signal", "SIGKILL", line]);
      await Bun.sleep(200);
      ctr(["task", "delete", "--force", line]);
    }
    for (const id of ctr(["container", "ls", "--quiet"]).stdout.split("\n").filter(Boolean)) {
      problems.push(`container left: ${id}`);
      ctr(["container", "delete", id]);
    }
    ctr(["images", "rm", IMAGE]);
    const images = ctr(["images", "ls", "--quiet"]).stdout.trim();
    if (images) problems.push(`images left: ${images}`);
    for (const dir of leftoverCgroups(NAMESPACE)) problems.push(`container cgroup left: ${dir}`);
    problems.push(...(await s.containerd.stop()));
  }
  const stray = pidsMentioning(s.dir);
  if (stray.length) {
    problems.push(`processes left from ${s.dir}: ${stray.join(", ")}`);
    await stopPids(stray, 5_000);
  }
  problems.push(...(await finishTeardown(s, [NAMESPACE])));
  return problems;
}

suiteHooks(skip, "containerd", setUp, tearDown);

describe("containerd (ctr, runc shim) on nano-kata vs runc", () => {
  compare(
    "ctr run --rm: stdout, stderr and the exit code",
    (w) => observe(ctr(run(w, ["--rm", IMAGE, containerName(w, "rm"), "sh", "-c", "echo out; echo err >&2; exit 3"]))),
    (ref) => expect(ref).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" }),
  );

  compare(
    "ctr run: a command that does not exist fails at create, and nothing is left",
    (w) => {
      const id = containerName(w, "missing");
      const r = ctr(run(w, ["--rm", IMAGE, id, "no-such-command"]));
      const saysWhy = r.stderr.includes("executable file not found");
      // ctr leaves the container record when the task could not be created.
      ctr(["container", "delete", id]);
      return { code: r.code, saysWhy, task: taskStatus(id) };
    },
    (ref) => expect(ref).toEqual({ code: 1, saysWhy: true, task: "" }),
  );

  compare(
    "ctr run -d, task exec (plain, --user/--cwd, -t), ps, pause/resume, kill (handled SIGTERM), delete",
    (w) => {
      const id = containerName(w, "detached");
      c(run(w, ["-d", IMAGE, id, "sh", "-c", 'trap "exit 9" TERM; while :; do sleep 0.1; done']));
      waitFor("the task to run", () => taskStatus(id) === "RUNNING");
      const plain = observe(ctr(["task", "exec", "--fifo-dir", fifoDir(), "--exec-id", "plain", id, "sh", "-c", "echo in-exec; exit 4"]));
      const user = observe(ctr(["task", "exec", "--fifo-dir", fifoDir(), "--exec-id", "user", "--cwd", "/tmp", "--user", "1000", id, "sh", "-c", "id -u; pwd"]));
      const tty = ptyRun(ctrArgv(["task", "exec", "--fifo-dir", fifoDir(), "-t", "--exec-id", "tty", id, "sh", "-c", "tty; [ -t 0 ] && echo stdin-is-a-tty; exit 6"]), []);
      const ps = c(["task", "ps", id]).stdout.trim().split("\n").length - 1;
      c(["task", "pause", id]);
      const paused = taskStatus(id);
      c(["task", "resume", id]);
      const resumed = taskStatus(id);
      c(["task", "kill", id]);
      waitFor("the task to stop after SIGTERM", () => taskStatus(id) === "STOPPED");
      const deleted = remove(id);
      return {
        plain,
        user,
        tty: { code: tty.code, output: plainTerminal(tty.output) },
        ps,
        paused,
        resumed,
        exitCode: /exit code (\d+)/.exec(deleted)?.[1] ?? "(none)",
      };
    },
    (ref) => {
      expect(ref.plain).toEqual({ code: 4, stdout: "in-exec\n", stderr: "" });
      expect(ref.user.stdout).toBe("1000\n/tmp\n");
      expect(ref.tty.code).toBe(6);
      expect(ref.tty.output).toContain("/dev/pts/0\nstdin-is-a-tty\n");
      expect(ref.ps).toBe(2);
      expect({ paused: ref.paused, resumed: ref.resumed, exitCode: ref.exitCode }).toEqual({ paused: "PAUSED", resumed: "RUNNING", exitCode: "9" });
    },
  );

  compare(
    "ctr task kill -s SIGKILL, and kill --all",
    (w) => {
      const id = containerName(w, "killed");
      c(run(w, ["-d", IMAGE, id, "sh", "-c", "sleep 1000 & sleep 2000"]));
      waitFor("two processes", () => c(["task", "ps", id]).stdout.trim().split("\n").length === 3);
      c(["task", "kill", "--all", "--signal", "SIGKILL", id]);
      waitFor("the task to stop", () => taskStatus(id) === "STOPPED");
      const deleted = remove(id);
      return { exitCode: /exit code (\d+)/.exec(deleted)?.[1] ?? "(none)" };
    },
    (ref) => expect(ref).toEqual({ exitCode: "137" }),
  );

  compare(
    "ctr run -t: an interactive shell on a terminal (console socket)",
    (w) => {
      const r = ptyRun(ctrArgv(run(w, ["--rm", "-t", IMAGE, containerName(w, "tty"), "sh"])), [{ expect: "# ", send: SHELL_INPUT }]);
      return { code: r.code, output: shellOutput(r.output) };
    },
    (ref) => {
      expect(ref.code).toBe(3);
      expect(ref.output).toBe("/dev/pts/0\n24 80\n42\n");
    },
  );

  compare(
    "--memory-limit, --cpus: the cgroup files, and the memory limit enforced",
    (w) => {
      // ctr's default spec mounts no cgroup filesystem: read the container's cgroup from the host.
      const id = containerName(w, "res");
      c(run(w, ["-d", "--memory-limit", "67108864", "--cpus", "0.5", IMAGE, id, "sleep", "1000"]));
      const host = (file: string) => readFileSync(join("/sys/fs/cgroup", file.split(".")[0]!, NAMESPACE, id, file), "utf8").trim();
      const files = [host("memory.limit_in_bytes"), host("cpu.cfs_quota_us"), host("cpu.cfs_period_us")];
      remove(id);
      const oom = observe(ctr(run(w, ["--rm", "--memory-limit", "33554432", IMAGE, containerName(w, "oom"), "sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo survived $?"])));
      return { files, oom };
    },
    (ref) => {
      expect(ref.files).toEqual(["67108864", "50000", "100000"]);
      expect(ref.oom.stdout).toBe("survived 137\n");
    },
  );

  compare(
    "--read-only, --cap-drop/--cap-add, --no-pivot, --mount, lo is up",
    (w) => ({
      readOnly: observe(ctr(run(w, ["--rm", "--read-only", IMAGE, containerName(w, "ro"), "sh", "-c", "touch /x; echo root $?"]))),
      caps: observe(ctr(run(w, ["--rm", "--cap-drop", "CAP_CHOWN", "--cap-add", "CAP_SYS_ADMIN", IMAGE, containerName(w, "caps"), "sh", "-c", "grep CapEff /proc/self/status; chown 5 /tmp; echo chown $?"]))),
      noPivot: observe(ctr(run(w, ["--rm", "--no-pivot", IMAGE, containerName(w, "nopivot"), "sh", "-c", "echo no-pivot; ls /"]))),
      mount: observe(ctr(run(w, ["--rm", "--mount", `type=bind,src=${setup!.dir}/bin,dst=/mnt/extra,options=rbind:ro`, IMAGE, containerName(w, "mount"), "sh", "-c", "ls /mnt/extra; touch /mnt/extra/x; echo touch $?"]))),
      lo: observe(ctr(run(w, ["--rm", IMAGE, containerName(w, "lo"), "sh", "-c", "ip -o link | cut -d' ' -f2,3"]))),
    }),
    (ref) => {
      expect(ref.readOnly.stdout).toBe("root 1\n");
      expect(ref.caps.stdout).toContain("chown 1\n");
      expect(ref.noPivot.stdout).toStartWith("no-pivot\n");
      expect(ref.mount.stdout).toBe("nanokata\nrunc\ntouch 1\n");
      expect(ref.lo.stdout).toBe("lo: <LOOPBACK,UP,LOWER_UP>\n");
    },
  );

  compare(
    "--seccomp (containerd's default profile) and --seccomp-profile <file>",
    (w) => ({
      dflt: observe(ctr(run(w, ["--rm", "--seccomp", IMAGE, containerName(w, "sd"), "sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true 2>/dev/null; echo unshare $?"]))),
      custom: observe(ctr(run(w, ["--rm", "--seccomp", "--seccomp-profile", setup!.seccompProfile, IMAGE, containerName(w, "sc"), "sh", "-c", "mkdir /tmp/d 2>/dev/null; echo mkdir $?"]))),
    }),
    (ref) => {
      expect(ref.dflt.stdout).toBe("Seccomp:\t2\nunshare 1\n");
      expect(ref.custom.stdout).toBe("mkdir 1\n");
    },
  );

  sameRuntimeCallsTest(skip, "the runc shim", "containerd-shim-runc-v2", () => setup!.logs, "--root R --log F --log-format json delete --force ID");

  teardownTest(skip, "teardown stops containerd and leaves no tasks, containers, images, cgroups, mounts or processes", tearDown);
});
