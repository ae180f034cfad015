/**
 * podman on nano-kata, compared with podman on runc.
 *
 * One private podman (--root/--runroot/tmp_dir under /var/tmp/nk-e2e-podman-*,
 * cgroupfs, file events, a containers.conf naming both runtimes), run inside
 * a private network namespace so that podman's default network (CNI bridge,
 * iptables) touches nothing on the host. Every scenario runs once with
 * `--runtime runc` and once with `--runtime nanokata` and the two
 * observations (output, exit codes, states) must be equal.
 */
import { afterAll, beforeAll, describe, expect } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { testIf } from "../helpers/runtime.ts";
import {
  BOTH,
  RUNC,
  type CmdOptions,
  type CmdResult,
  type NetnsHolder,
  type Which,
  HostPaths,
  PODMAN_HOST_PATHS,
  busyboxTar,
  callShapes,
  cgroupTopLevel,
  cmd,
  e2eSkipReason,
  leftoverCgroups,
  makeWorkDir,
  normalize,
  ok,
  SHELL_INPUT,
  plainTerminal,
  shellOutput,
  ptyRun,
  removeNewCgroupParents,
  removeScratch,
  runtimeUnderTest,
  startNetnsHolder,
  sweepWorkDir,
  waitFor,
  writeArgvWrapper,
} from "./daemons.ts";

const skip = e2eSkipReason(["podman", "conmon", "iptables"]);
const IMAGE = "localhost/nk-e2e-busybox:latest";
const RUNTIME_NAME: Record<Which, string> = { runc: "runc", nk: "nanokata" };
const TEST_TIMEOUT = 120_000;

interface PodmanSetup {
  dir: string;
  env: NodeJS.ProcessEnv;
  netns: NetnsHolder;
  logs: Record<Which, string>;
  cgroupsBefore: Map<string, Set<string>>;
  hostPaths: HostPaths;
  seccompProfile: string;
}

let setup: PodmanSetup | null = null;
let tornDown = false;

function podmanArgv(which: Which | null, args: string[]): string[] {
  const s = setup!;
  const base = [...s.netns.enter, "podman", "--root", join(s.dir, "root"), "--runroot", join(s.dir, "runroot"), "--cgroup-manager", "cgroupfs", "--events-backend", "file"];
  if (which) base.push("--runtime", RUNTIME_NAME[which]);
  return [...base, ...args];
}

function podman(which: Which | null, args: string[], opts: CmdOptions = {}): CmdResult {
  return cmd(podmanArgv(which, args), { timeoutMs: 60_000, env: setup!.env, ...opts });
}

/**
 * `run` without a network: podman's default network (a CNI bridge) costs
 * about a second per container and is not the runtime's business; it has
 * its own scenario below.
 */
const RUN = ["run", "--network", "none"];

function pod(which: Which, args: string[], opts: CmdOptions = {}): CmdResult {
  return ok(podman(which, args, opts));
}

/** The observation every simple scenario compares: exit code, stdout, stderr. */
function observe(r: CmdResult): { code: number; stdout: string; stderr: string } {
  return { code: r.code, stdout: normalize(r.stdout), stderr: normalize(r.stderr) };
}

function name(which: Which, what: string): string {
  return `nk-e2e-${what}-${which}`;
}

function inspect(which: Which, container: string, format: string): string {
  return pod(which, ["inspect", "--format", format, container]).stdout.trim();
}

/** Run the scenario on runc, then on nano-kata; check the reference, then require equality. */
function compare<T>(title: string, scenario: (which: Which) => T, checkReference?: (ref: T) => void): void {
  testIf(
    skip,
    title,
    () => {
      const [ref, got] = BOTH.map((w) => scenario(w)) as [T, T];
      checkReference?.(ref);
      expect({ runtime: "nanokata", observed: got }).toEqual({ runtime: "nanokata", observed: ref });
    },
    TEST_TIMEOUT,
  );
}

async function setUp(): Promise<void> {
  const dir = makeWorkDir("podman");
  const cgroupsBefore = cgroupTopLevel();
  const hostPaths = new HostPaths(PODMAN_HOST_PATHS);
  const netns = await startNetnsHolder();
  const logs = { runc: join(dir, "argv-runc.jsonl"), nk: join(dir, "argv-nanokata.jsonl") };
  const wrappers = {
    runc: writeArgvWrapper(join(dir, "bin-runc"), "runc", RUNC, logs.runc),
    nk: writeArgvWrapper(join(dir, "bin-nk"), "nanokata", runtimeUnderTest(), logs.nk),
  };
  // The README's configuration, plus private paths. This host lacks
  // CAP_SYS_RESOURCE, so podman's default ulimits (1048576) cannot be set by
  // any runtime: lower ones are configured.
  writeFileSync(
    join(dir, "containers.conf"),
    `[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "${join(dir, "tmp")}"
runtime_supports_json = ["crun", "runc", "kata", "runsc", "krun", "nanokata"]

[engine.runtimes]
nanokata = ["${wrappers.nk}"]
runc = ["${wrappers.runc}"]
`,
  );
  writeFileSync(
    join(dir, "storage.conf"),
    `[storage]
driver = "${process.env.NK_E2E_STORAGE_DRIVER ?? "overlay"}"
graphroot = "${join(dir, "root")}"
runroot = "${join(dir, "runroot")}"
`,
  );
  const seccompProfile = join(dir, "deny-mkdir.json");
  writeFileSync(
    seccompProfile,
    JSON.stringify({ defaultAction: "SCMP_ACT_ALLOW", syscalls: [{ names: ["mkdir", "mkdirat"], action: "SCMP_ACT_ERRNO", errnoRet: 1 }] }),
  );
  const env = { ...process.env, CONTAINERS_CONF: join(dir, "containers.conf"), CONTAINERS_STORAGE_CONF: join(dir, "storage.conf") };
  setup = { dir, env, netns, logs, cgroupsBefore, hostPaths, seccompProfile };
  ok(podman(null, ["import", busyboxTar(dir), IMAGE]));
}

/** Remove every container and image, stop the namespace holder, remove cgroups and the work dir; returns leaks. */
async function tearDown(): Promise<string[]> {
  if (!setup || tornDown) return [];
  tornDown = true;
  const s = setup;
  const problems: string[] = [];
  for (const which of BOTH) podman(which, ["rm", "--all", "--force", "--time", "0"]);
  const left = podman(null, ["ps", "--all", "--quiet"]);
  if (left.stdout.trim()) problems.push(`containers left after rm --all: ${left.stdout.trim()}`);
  podman(null, ["rmi", "--all", "--force"]);
  const images = podman(null, ["images", "--quiet"]);
  if (images.stdout.trim()) problems.push(`images left: ${images.stdout.trim()}`);
  for (const dir of leftoverCgroups("libpod_parent", ["conmon"])) problems.push(`container cgroup left: ${dir}`);
  await s.netns.stop();
  problems.push(...removeNewCgroupParents(s.cgroupsBefore, ["libpod_parent"]));
  problems.push(...s.hostPaths.cleanup());
  problems.push(...(await sweepWorkDir(s.dir)));
  removeScratch();
  return problems;
}

beforeAll(async () => {
  if (skip === null) await setUp();
}, 120_000);

afterAll(async () => {
  const problems = await tearDown();
  if (problems.length) console.error(`podman e2e teardown:\n  ${problems.join("\n  ")}`);
}, 120_000);

describe("podman on nano-kata vs runc", () => {
  compare(
    "run --rm: stdout, stderr and the exit code",
    (w) => observe(podman(w, [...RUN, "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3"])),
    (ref) => expect(ref).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" }),
  );

  compare(
    "run --rm: command not found (127), not executable (126), exit 255",
    (w) => {
      const missing = podman(w, [...RUN, "--rm", IMAGE, "no-such-command"]);
      const notExec = podman(w, [...RUN, "--rm", IMAGE, "/etc/passwd"]);
      const highest = podman(w, [...RUN, "--rm", IMAGE, "sh", "-c", "exit 255"]);
      return {
        missing: missing.code,
        missingSaysWhy: missing.stderr.includes("executable file not found"),
        notExec: notExec.code,
        notExecSaysWhy: /permission denied/i.test(notExec.stderr),
        highest: highest.code,
      };
    },
    (ref) => expect(ref).toEqual({ missing: 127, missingSaysWhy: true, notExec: 126, notExecSaysWhy: true, highest: 255 }),
  );

  compare(
    "--ulimit above the hard limit: without CAP_SYS_RESOURCE both fail with 126, and the error names the rlimit",
    (w) => {
      const hard = /^Max open files\s+\d+\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"))?.[1];
      const above = Number(hard ?? "1048576") + 1;
      const r = podman(w, [...RUN, "--rm", "--ulimit", `nofile=${above}:${above}`, IMAGE, "true"]);
      if (w === "nk" && r.code !== 0) expect(r.stderr).toContain("RLIMIT_NOFILE");
      return { code: r.code };
    },
    (ref) => expect([0, 126]).toContain(ref.code),
  );

  compare(
    "run -d, logs, stop (the container handles SIGTERM), kill, rm",
    (w) => {
      const c = name(w, "detached");
      pod(w, [...RUN, "-d", "--name", c, IMAGE, "sh", "-c", 'echo started; trap "echo got-term; exit 9" TERM; while :; do sleep 0.1; done']);
      waitFor("the container's first line in podman logs", () => pod(w, ["logs", c]).stdout.includes("started"));
      const running = inspect(w, c, "{{.State.Status}}");
      pod(w, ["stop", "--time", "10", c]);
      const afterStop = { status: inspect(w, c, "{{.State.Status}}"), exit: inspect(w, c, "{{.State.ExitCode}}"), logs: pod(w, ["logs", c]).stdout };
      pod(w, ["rm", c]);

      const k = name(w, "killed");
      pod(w, [...RUN, "-d", "--name", k, IMAGE, "sleep", "1000"]);
      pod(w, ["kill", k]);
      pod(w, ["wait", k]);
      const afterKill = { status: inspect(w, k, "{{.State.Status}}"), exit: inspect(w, k, "{{.State.ExitCode}}") };
      pod(w, ["rm", k]);
      const gone = podman(w, ["inspect", c]).code !== 0 && podman(w, ["inspect", k]).code !== 0;
      return { running, afterStop, afterKill, gone };
    },
    (ref) =>
      expect(ref).toEqual({
        running: "running",
        afterStop: { status: "exited", exit: "9", logs: "started\ngot-term\n" },
        afterKill: { status: "exited", exit: "137" },
        gone: true,
      }),
  );

  compare(
    "exec: output, exit code, stdin, --user/--env/--workdir, -t and -it (console socket)",
    (w) => {
      const c = name(w, "exec");
      pod(w, [...RUN, "-d", "--name", c, IMAGE, "sleep", "1000"]);
      const plain = observe(podman(w, ["exec", c, "sh", "-c", "echo in-exec; exit 4"]));
      const stdin = observe(podman(w, ["exec", "-i", c, "cat"], { input: "data through stdin\n" }));
      const opts = observe(podman(w, ["exec", "--user", "1000:1000", "--env", "FOO=bar", "--workdir", "/tmp", c, "sh", "-c", 'id; echo "$FOO"; pwd']));
      const tty = ptyRun(podmanArgv(w, ["exec", "-t", c, "sh", "-c", "tty; [ -t 0 ] && echo stdin-is-a-tty; exit 6"]), [], 30_000, setup!.env);
      const interactive = ptyRun(podmanArgv(w, ["exec", "-it", c, "sh"]), [{ expect: "# ", send: "echo BEGIN; echo $((6*7)); exit 5\n" }], 30_000, setup!.env);
      pod(w, ["rm", "--force", "--time", "0", c]);
      return {
        plain,
        stdin,
        opts,
        tty: { code: tty.code, output: plainTerminal(tty.output) },
        interactive: { code: interactive.code, output: shellOutput(interactive.output) },
      };
    },
    (ref) => {
      expect(ref.plain).toEqual({ code: 4, stdout: "in-exec\n", stderr: "" });
      expect(ref.stdin.stdout).toBe("data through stdin\n");
      expect(ref.opts.stdout).toBe("uid=1000(user) gid=1000(user)\nbar\n/tmp\n");
      expect(ref.tty).toEqual({ code: 6, output: "/dev/pts/0\nstdin-is-a-tty\n" });
      expect(ref.interactive.code).toBe(5);
      expect(ref.interactive.output).toBe("42\n");
    },
  );

  compare(
    "run -it: an interactive shell on a terminal (console socket)",
    (w) => {
      const r = ptyRun(podmanArgv(w, [...RUN, "--rm", "-it", IMAGE, "sh"]), [{ expect: "# ", send: SHELL_INPUT }], 30_000, setup!.env);
      return { code: r.code, output: shellOutput(r.output) };
    },
    (ref) => {
      expect(ref.code).toBe(3);
      expect(ref.output).toBe("/dev/pts/0\n24 80\n42\n");
    },
  );

  compare(
    "--memory, --pids-limit, --cpus: the cgroup files, and the limits enforced",
    (w) => {
      const files = observe(
        podman(w, [
          ...RUN, "--rm", "--memory", "64m", "--pids-limit", "50", "--cpus", "0.5", IMAGE, "sh", "-c",
          "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us; ulimit -n -u",
        ]),
      );
      const oom = podman(w, [...RUN, "--rm", "--memory", "32m", "--memory-swap", "32m", IMAGE, "sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived $?"]);
      const pids = podman(w, [...RUN, "--rm", "--pids-limit", "5", IMAGE, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait; echo all-forked"]);
      return {
        files,
        oom: { code: oom.code, stdout: oom.stdout, killed: oom.stderr.includes("Killed") },
        pids: { code: pids.code, stdout: pids.stdout, refused: pids.stderr.includes("can't fork") },
      };
    },
    (ref) => {
      expect(ref.files.stdout.split("\n").slice(0, 4)).toEqual(["67108864", "50", "50000", "100000"]);
      expect(ref.oom).toEqual({ code: 0, stdout: "survived 137\n", killed: true });
      expect(ref.pids).toEqual({ code: 2, stdout: "", refused: true });
    },
  );

  compare(
    "--read-only: the root is read-only, /tmp is a writable tmpfs",
    (w) => observe(podman(w, [...RUN, "--rm", "--read-only", IMAGE, "sh", "-c", "touch /x; echo root $?; touch /tmp/y; echo tmp $?; grep -c ' / overlay ro,' /proc/mounts"])),
    (ref) => expect(ref.stdout).toBe("root 1\ntmp 0\n1\n"),
  );

  compare(
    "--cap-drop / --cap-add: the capability sets, and what they allow",
    (w) => {
      const only = observe(podman(w, [...RUN, "--rm", "--cap-drop", "all", "--cap-add", "chown,net_raw", IMAGE, "sh", "-c", "grep Cap /proc/self/status; chown 5 /tmp; echo chown $?"]));
      const dropped = observe(podman(w, [...RUN, "--rm", "--cap-drop", "chown", IMAGE, "sh", "-c", "grep CapEff /proc/self/status; chown 5 /tmp; echo chown $?"]));
      return { only, dropped };
    },
    (ref) => {
      expect(ref.only.stdout).toContain("CapEff:\t0000000000002001\n");
      expect(ref.only.stdout).toContain("chown 0\n");
      expect(ref.dropped.stdout).toContain("chown 1\n");
    },
  );

  compare(
    "--security-opt seccomp=<profile>, and podman's default profile",
    (w) => {
      const custom = observe(podman(w, [...RUN, "--rm", "--security-opt", `seccomp=${setup!.seccompProfile}`, IMAGE, "sh", "-c", "mkdir /tmp/d; echo mkdir $?; grep Seccomp: /proc/self/status"]));
      const dflt = observe(podman(w, [...RUN, "--rm", IMAGE, "sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true; echo unshare $?"]));
      const unconfined = observe(podman(w, [...RUN, "--rm", "--security-opt", "seccomp=unconfined", IMAGE, "grep", "Seccomp:", "/proc/self/status"]));
      return { custom, dflt, unconfined };
    },
    (ref) => {
      expect(ref.custom.stdout).toBe("mkdir 1\nSeccomp:\t2\n");
      expect(ref.dflt.stdout).toContain("Seccomp:\t2\n");
      expect(ref.unconfined.stdout).toBe("Seccomp:\t0\n");
    },
  );

  compare(
    "--user: numeric and by name",
    (w) => ({
      numeric: observe(podman(w, [...RUN, "--rm", "--user", "1000:1000", IMAGE, "sh", "-c", "id; touch /root/x; echo $?"])),
      named: observe(podman(w, [...RUN, "--rm", "--user", "user", IMAGE, "id"])),
    }),
    (ref) => {
      expect(ref.numeric.stdout).toBe("uid=1000(user) gid=1000(user) groups=1000(user)\n1\n");
      expect(ref.named.stdout).toBe("uid=1000(user) gid=1000(user) groups=1000(user)\n");
    },
  );

  compare(
    "--network none: only lo, and it is up",
    (w) => observe(podman(w, [...RUN, "--rm", IMAGE, "sh", "-c", "ip -o link | cut -d' ' -f2,3; ping -c1 -W1 127.0.0.1 >/dev/null; echo ping $?"])),
    (ref) => expect(ref.stdout).toBe("lo: <LOOPBACK,UP,LOWER_UP>\nping 0\n"),
  );

  compare(
    "the default network (CNI bridge, in the tests' private network namespace)",
    (w) => {
      const r = podman(w, ["run", "--rm", IMAGE, "sh", "-c", "ip -o -4 addr | cut -d' ' -f2,7; ip route | cut -d' ' -f1-3"]);
      return observe({ ...r, stdout: r.stdout.replace(/eth0 10\.88\.0\.\d+\//g, "eth0 10.88.0.N/") });
    },
    (ref) => expect(ref.stdout).toBe("lo 127.0.0.1/8\neth0 10.88.0.N/16\ndefault via 10.88.0.1\n10.88.0.0/16 dev eth0\n"),
  );

  compare(
    "pause / unpause: podman's state, the freezer, and the container stops and goes on",
    (w) => {
      const c = name(w, "pause");
      const id = pod(w, [...RUN, "-d", "--name", c, IMAGE, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"]).stdout.trim();
      const counter = () => podman(w, ["exec", c, "cat", "/tmp/n"]).stdout.trim();
      waitFor("the container's counter", () => counter() !== "");
      const freezer = `/sys/fs/cgroup/freezer/libpod_parent/libpod-${id}/freezer.state`;
      const freezerState = () => (existsSync(freezer) ? readFileSync(freezer, "utf8").trim() : "(no freezer file)");
      pod(w, ["pause", c]);
      const paused = {
        status: inspect(w, c, "{{.State.Status}}"),
        freezer: freezerState(),
        listed: /paused/i.test(pod(w, ["ps", "--all", "--filter", `name=${c}`, "--format", "{{.Status}}"]).stdout),
      };
      pod(w, ["unpause", c]);
      const resumed = { status: inspect(w, c, "{{.State.Status}}"), freezer: freezerState() };
      const before = counter();
      const goesOn = waitFor("the counter to move after unpause", () => counter() !== before, 10_000, 100);
      pod(w, ["rm", "--force", "--time", "0", c]);
      return { paused, resumed, goesOn };
    },
    (ref) =>
      expect(ref).toEqual({ paused: { status: "paused", freezer: "FROZEN", listed: true }, resumed: { status: "running", freezer: "THAWED" }, goesOn: true }),
  );

  compare(
    "top and ps",
    (w) => {
      const c = name(w, "top");
      pod(w, [...RUN, "-d", "--name", c, IMAGE, "sleep", "1000"]);
      const top = pod(w, ["top", c, "pid", "user", "args"]).stdout.replace(/ +/g, " ").replace(/ +$/gm, "");
      const ps = pod(w, ["ps", "--filter", `name=${c}`, "--format", "{{.Names}} {{.Command}}"]).stdout.replace(c, "NAME");
      const status = inspect(w, c, "{{.State.Status}}");
      pod(w, ["rm", "--force", "--time", "0", c]);
      return { top, ps, status };
    },
    (ref) => {
      expect(ref.top).toBe("PID USER COMMAND\n1 root sleep 1000\n");
      expect(ref.ps).toBe("NAME sleep 1000\n");
      expect(ref.status).toBe("running");
    },
  );

  testIf(
    skip,
    "--runtime /abs/path/bin/nk-runtime works without containers.conf runtimes",
    () => {
      const r = podman(null, ["--runtime", runtimeUnderTest(), ...RUN, "--rm", IMAGE, "sh", "-c", "echo direct; exit 7"]);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 7, stdout: "direct\n" });
    },
    TEST_TIMEOUT,
  );

  testIf(
    skip,
    "podman made the same kinds of runtime calls to both runtimes",
    () => {
      const runc = callShapes(setup!.logs.runc).sort();
      const nk = callShapes(setup!.logs.nk).sort();
      console.log(`podman -> runtime calls (nanokata):\n  ${nk.join("\n  ")}`);
      expect(nk).toEqual(runc);
      expect(nk).toContain("--log-format=json --log F create --bundle B --pid-file F ID");
    },
    TEST_TIMEOUT,
  );

  testIf(
    skip,
    "teardown leaves no containers, images, cgroups, mounts or processes",
    async () => {
      const problems = await tearDown();
      expect(problems).toEqual([]);
    },
    TEST_TIMEOUT,
  );
});

