/**
 * docker on nano-kata, compared with docker on runc.
 *
 * The test starts its own dockerd (Debian's docker.io) with private
 * --data-root/--exec-root/socket/pidfile, the cgroupfs driver and a
 * daemon.json naming both runtimes (through argv-logging wrappers), inside a
 * private network namespace so docker0, veths and iptables rules never touch
 * the host. Every scenario runs with `--runtime runc-ref` and with
 * `--runtime nanokata`; the observations must be equal.
 */
import { afterAll, beforeAll, describe, expect } from "bun:test";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { testIf } from "../helpers/runtime.ts";
import {
  BOTH,
  RUNC,
  type CmdOptions,
  type CmdResult,
  type Containerd,
  type Daemon,
  type NetnsHolder,
  type Which,
  HostPaths,
  DOCKER_HOST_PATHS,
  containerdHostPaths,
  busyboxTar,
  callShapes,
  cgroupTopLevel,
  cmd,
  e2eSkipReason,
  leftoverCgroups,
  makeWorkDir,
  normalize,
  ok,
  pidsMentioning,
  SHELL_INPUT,
  plainTerminal,
  shellOutput,
  ptyRun,
  removeNewCgroupParents,
  removeScratch,
  runtimeUnderTest,
  startContainerd,
  startDaemon,
  startNetnsHolder,
  stopPids,
  sweepWorkDir,
  waitFor,
  which,
  writeArgvWrapper,
} from "./daemons.ts";

/** Debian's client (20.10) first: it matches the daemon; another docker on PATH may be a newer client only. */
const DOCKER = which("/usr/bin/docker") ?? which("docker") ?? "docker";
const skip = e2eSkipReason(["dockerd", "containerd", "containerd-shim-runc-v2", "iptables", DOCKER]);
const IMAGE = "nk-e2e-busybox:latest";
const RUNTIME_NAME: Record<Which, string> = { runc: "runc-ref", nk: "nanokata" };
const TEST_TIMEOUT = 120_000;

interface DockerSetup {
  dir: string;
  sock: string;
  env: NodeJS.ProcessEnv;
  netns: NetnsHolder;
  daemon: Daemon;
  containerd: Containerd;
  logs: Record<Which, string>;
  cgroupsBefore: Map<string, Set<string>>;
  hostPaths: HostPaths;
  seccompProfile: string;
}

/** What dockerd creates outside its data and exec roots (its plugin socket directory). */

let setup: DockerSetup | null = null;
let tornDown = false;

function dockerArgv(args: string[]): string[] {
  return [DOCKER, "-H", `unix://${setup!.sock}`, ...args];
}

function docker(args: string[], opts: CmdOptions = {}): CmdResult {
  return cmd(dockerArgv(args), { timeoutMs: 60_000, env: setup!.env, ...opts });
}

function dk(args: string[], opts: CmdOptions = {}): CmdResult {
  return ok(docker(args, opts));
}

/** `docker run --runtime <which's name>` plus args. */
function run(w: Which, args: string[]): string[] {
  return ["run", "--runtime", RUNTIME_NAME[w], ...args];
}

function observe(r: CmdResult): { code: number; stdout: string; stderr: string } {
  return { code: r.code, stdout: normalize(r.stdout), stderr: normalize(r.stderr) };
}

function name(w: Which, what: string): string {
  return `nk-e2e-${what}-${w}`;
}

function inspect(container: string, format: string): string {
  return dk(["inspect", "--format", format, container]).stdout.trim();
}

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
  const dir = makeWorkDir("docker");
  const cgroupsBefore = cgroupTopLevel();
  const hostPaths = new HostPaths([...DOCKER_HOST_PATHS, ...containerdHostPaths("moby")]);
  const netns = await startNetnsHolder();
  const logs = { runc: join(dir, "argv-runc.jsonl"), nk: join(dir, "argv-nanokata.jsonl") };
  const wrappers = {
    runc: writeArgvWrapper(join(dir, "bin"), "runc-ref", RUNC, logs.runc),
    nk: writeArgvWrapper(join(dir, "bin"), "nanokata", runtimeUnderTest(), logs.nk),
  };
  // The README's daemon.json, plus what this host needs: cgroupfs (no
  // systemd here) and ulimits below the hard limits (no CAP_SYS_RESOURCE).
  const config = {
    runtimes: { nanokata: { path: wrappers.nk }, "runc-ref": { path: wrappers.runc } },
    "exec-opts": ["native.cgroupdriver=cgroupfs"],
    "default-ulimits": { nofile: { Name: "nofile", Soft: 20000, Hard: 20000 }, nproc: { Name: "nproc", Soft: 32768, Hard: 32768 } },
    "storage-driver": process.env.NK_E2E_DOCKER_STORAGE_DRIVER ?? "overlay2",
    // Not /etc/docker/key.json (the daemon's ID key).
    "deprecated-key-path": join(dir, "key.json"),
  };
  writeFileSync(join(dir, "daemon.json"), JSON.stringify(config, null, 2));
  const seccompProfile = join(dir, "deny-mkdir.json");
  writeFileSync(
    seccompProfile,
    JSON.stringify({ defaultAction: "SCMP_ACT_ALLOW", syscalls: [{ names: ["mkdir", "mkdirat"], action: "SCMP_ACT_ERRNO", errnoRet: 1 }] }),
  );
  mkdirSync(join(dir, "client"));
  const sock = join(dir, "docker.sock");
  const env = { ...process.env, DOCKER_CONFIG: join(dir, "client") };
  const partial: Partial<DockerSetup> = { dir, sock, env, netns, logs, cgroupsBefore, hostPaths, seccompProfile };
  setup = partial as DockerSetup;
  // Our own containerd (private root, state and /opt), not the one dockerd would start.
  partial.containerd = await startContainerd(dir, netns.enter);
  partial.daemon = await startDaemon(
    "dockerd",
    [
      ...netns.enter,
      "dockerd",
      "--config-file", join(dir, "daemon.json"),
      "--data-root", join(dir, "data"),
      "--exec-root", join(dir, "exec"),
      "--pidfile", join(dir, "dockerd.pid"),
      "--containerd", partial.containerd.address,
      "-H", `unix://${sock}`,
    ],
    join(dir, "dockerd.log"),
    () => existsSync(sock) && docker(["version", "--format", "{{.Server.Version}}"], { timeoutMs: 10_000 }).code === 0,
    60_000,
  );
  dk(["import", busyboxTar(dir), IMAGE]);
}

async function tearDown(): Promise<string[]> {
  if (!setup || tornDown) return [];
  tornDown = true;
  const s = setup;
  const problems: string[] = [];
  if (s.daemon) {
    const ids = docker(["ps", "--all", "--quiet"]).stdout.trim().split("\n").filter(Boolean);
    if (ids.length) docker(["rm", "--force", ...ids]);
    const left = docker(["ps", "--all", "--quiet"]).stdout.trim();
    if (left) problems.push(`containers left after rm --force: ${left}`);
    docker(["rmi", "--force", IMAGE]);
    const images = docker(["images", "--quiet"]).stdout.trim();
    if (images) problems.push(`images left: ${images}`);
    for (const dir of leftoverCgroups("docker")) problems.push(`container cgroup left: ${dir}`);
    problems.push(...(await s.daemon.stop()));
  }
  if (s.containerd) problems.push(...(await s.containerd.stop()));
  const shims = pidsMentioning(s.dir);
  if (shims.length) {
    problems.push(`processes left from ${s.dir}: ${shims.join(", ")}`);
    await stopPids(shims, 5_000);
  }
  await s.netns.stop();
  problems.push(...removeNewCgroupParents(s.cgroupsBefore, ["docker"]));
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
  if (problems.length) console.error(`docker e2e teardown:\n  ${problems.join("\n  ")}`);
}, 120_000);

describe("docker on nano-kata vs runc", () => {
  compare(
    "run --rm: stdout, stderr and the exit code",
    (w) => observe(docker(run(w, ["--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3"]))),
    (ref) => expect(ref).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" }),
  );

  compare(
    "run --rm: command not found (127), not executable (126), exit 255",
    (w) => {
      const missing = docker(run(w, ["--rm", IMAGE, "no-such-command"]));
      const notExec = docker(run(w, ["--rm", IMAGE, "/etc/passwd"]));
      const highest = docker(run(w, ["--rm", IMAGE, "sh", "-c", "exit 255"]));
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
    "run -d, logs, stop (the container handles SIGTERM), start again, kill, rm",
    (w) => {
      const c = name(w, "detached");
      dk(run(w, ["-d", "--name", c, IMAGE, "sh", "-c", 'echo started; trap "echo got-term; exit 9" TERM; while :; do sleep 0.1; done']));
      waitFor("the container's first line in docker logs", () => dk(["logs", c]).stdout.includes("started"));
      const running = inspect(c, "{{.State.Status}}");
      dk(["stop", "--time", "10", c]);
      const afterStop = { status: inspect(c, "{{.State.Status}}"), exit: inspect(c, "{{.State.ExitCode}}"), logs: dk(["logs", c]).stdout };
      // The same container id, created again by the runtime.
      dk(["start", c]);
      waitFor("the restarted container's line", () => dk(["logs", c]).stdout.split("started").length === 3);
      const restarted = inspect(c, "{{.State.Status}}");
      dk(["kill", c]);
      dk(["wait", c]);
      const afterKill = { status: inspect(c, "{{.State.Status}}"), exit: inspect(c, "{{.State.ExitCode}}") };
      dk(["rm", c]);
      return { running, afterStop, restarted, afterKill, gone: docker(["inspect", c]).code !== 0 };
    },
    (ref) =>
      expect(ref).toEqual({
        running: "running",
        afterStop: { status: "exited", exit: "9", logs: "started\ngot-term\n" },
        restarted: "running",
        afterKill: { status: "exited", exit: "137" },
        gone: true,
      }),
  );

  compare(
    "exec: output, exit code, stdin, --user/--env/--workdir, -t and -it (console socket)",
    (w) => {
      const c = name(w, "exec");
      dk(run(w, ["-d", "--name", c, IMAGE, "sleep", "1000"]));
      const plain = observe(docker(["exec", c, "sh", "-c", "echo in-exec; exit 4"]));
      const stdin = observe(docker(["exec", "-i", c, "cat"], { input: "data through stdin\n" }));
      const opts = observe(docker(["exec", "--user", "1000:1000", "--env", "FOO=bar", "--workdir", "/tmp", c, "sh", "-c", 'id; echo "$FOO"; pwd']));
      const tty = ptyRun(dockerArgv(["exec", "-t", c, "sh", "-c", "tty; [ -t 0 ] && echo stdin-is-a-tty; exit 6"]), [], 30_000, setup!.env);
      const interactive = ptyRun(dockerArgv(["exec", "-it", c, "sh"]), [{ expect: "# ", send: "echo BEGIN; echo $((6*7)); exit 5\n" }], 30_000, setup!.env);
      dk(["rm", "--force", c]);
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
      expect(ref.opts.stdout).toBe("uid=1000(user) gid=1000(user) groups=1000(user)\nbar\n/tmp\n");
      expect(ref.tty).toEqual({ code: 6, output: "/dev/pts/0\nstdin-is-a-tty\n" });
      expect(ref.interactive.code).toBe(5);
      expect(ref.interactive.output).toBe("42\n");
    },
  );

  compare(
    "run -it: an interactive shell on a terminal (console socket)",
    (w) => {
      const r = ptyRun(dockerArgv(run(w, ["--rm", "-it", IMAGE, "sh"])), [{ expect: "# ", send: SHELL_INPUT }], 30_000, setup!.env);
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
        docker(
          run(w, [
            "--rm", "--memory", "64m", "--pids-limit", "50", "--cpus", "0.5", IMAGE, "sh", "-c",
            "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us; ulimit -n -u",
          ]),
        ),
      );
      const oom = docker(run(w, ["--rm", "--memory", "32m", "--memory-swap", "32m", IMAGE, "sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived $?"]));
      const pids = docker(run(w, ["--rm", "--pids-limit", "5", IMAGE, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait; echo all-forked"]));
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
    "update: new limits on a running container (runtime `update --resources -`)",
    (w) => {
      const c = name(w, "update");
      dk(run(w, ["-d", "--name", c, "--memory", "64m", IMAGE, "sleep", "1000"]));
      dk(["update", "--memory", "128m", "--memory-swap", "256m", "--pids-limit", "20", "--cpus", "0.25", c]);
      const after = dk(["exec", c, "sh", "-c", "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us"]).stdout;
      dk(["rm", "--force", c]);
      return after;
    },
    (ref) => expect(ref).toBe("134217728\n268435456\n20\n25000\n"),
  );

  compare(
    "--read-only (with a --tmpfs /tmp)",
    (w) => observe(docker(run(w, ["--rm", "--read-only", "--tmpfs", "/tmp", IMAGE, "sh", "-c", "touch /x; echo root $?; touch /tmp/y; echo tmp $?; grep -c ' / overlay ro,' /proc/mounts"]))),
    (ref) => expect(ref.stdout).toBe("root 1\ntmp 0\n1\n"),
  );

  compare(
    "--cap-drop / --cap-add: the capability sets, and what they allow",
    (w) => ({
      only: observe(docker(run(w, ["--rm", "--cap-drop", "all", "--cap-add", "chown", "--cap-add", "net_raw", IMAGE, "sh", "-c", "grep Cap /proc/self/status; chown 5 /tmp; echo chown $?"]))),
      dropped: observe(docker(run(w, ["--rm", "--cap-drop", "chown", IMAGE, "sh", "-c", "grep CapEff /proc/self/status; chown 5 /tmp; echo chown $?"]))),
    }),
    (ref) => {
      expect(ref.only.stdout).toContain("CapEff:\t0000000000002001\n");
      expect(ref.only.stdout).toContain("chown 0\n");
      expect(ref.dropped.stdout).toContain("chown 1\n");
    },
  );

  compare(
    "--security-opt seccomp=<profile>, docker's default profile, unconfined",
    (w) => ({
      custom: observe(docker(run(w, ["--rm", "--security-opt", `seccomp=${setup!.seccompProfile}`, IMAGE, "sh", "-c", "mkdir /tmp/d; echo mkdir $?; grep Seccomp: /proc/self/status"]))),
      dflt: observe(docker(run(w, ["--rm", IMAGE, "sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true; echo unshare $?"]))),
      unconfined: observe(docker(run(w, ["--rm", "--security-opt", "seccomp=unconfined", IMAGE, "grep", "Seccomp:", "/proc/self/status"]))),
    }),
    (ref) => {
      expect(ref.custom.stdout).toBe("mkdir 1\nSeccomp:\t2\n");
      expect(ref.dflt.stdout).toBe("Seccomp:\t2\nunshare 1\n");
      expect(ref.unconfined.stdout).toBe("Seccomp:\t0\n");
    },
  );

  compare(
    "--user: numeric and by name",
    (w) => ({
      numeric: observe(docker(run(w, ["--rm", "--user", "1000:1000", IMAGE, "sh", "-c", "id; touch /root/x; echo $?"]))),
      named: observe(docker(run(w, ["--rm", "--user", "user", IMAGE, "id"]))),
    }),
    (ref) => {
      expect(ref.numeric.stdout).toBe("uid=1000(user) gid=1000(user) groups=1000(user)\n1\n");
      expect(ref.named.stdout).toBe("uid=1000(user) gid=1000(user) groups=1000(user)\n");
    },
  );

  compare(
    "--network none, and the default bridge (in the tests' private network namespace)",
    (w) => {
      const none = observe(docker(run(w, ["--rm", "--network", "none", IMAGE, "sh", "-c", "ip -o link | cut -d' ' -f2,3; ping -c1 -W1 127.0.0.1 >/dev/null; echo ping $?"])));
      const bridge = docker(run(w, ["--rm", IMAGE, "sh", "-c", "ip -o -4 addr | cut -d' ' -f2,7; ip route | cut -d' ' -f1-3"]));
      return { none, bridge: observe({ ...bridge, stdout: bridge.stdout.replace(/eth0 172\.17\.0\.\d+\//g, "eth0 172.17.0.N/") }) };
    },
    (ref) => {
      expect(ref.none.stdout).toBe("lo: <LOOPBACK,UP,LOWER_UP>\nping 0\n");
      expect(ref.bridge.stdout).toBe("lo 127.0.0.1/8\neth0 172.17.0.N/16\ndefault via 172.17.0.1\n172.17.0.0/16 dev eth0\n");
    },
  );

  compare(
    "pause / unpause: docker's state, the freezer, and the container stops and goes on",
    (w) => {
      const c = name(w, "pause");
      const id = dk(run(w, ["-d", "--name", c, IMAGE, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"])).stdout.trim();
      const counter = () => docker(["exec", c, "cat", "/tmp/n"]).stdout.trim();
      waitFor("the container's counter", () => counter() !== "");
      const freezer = `/sys/fs/cgroup/freezer/docker/${id}/freezer.state`;
      const freezerState = () => (existsSync(freezer) ? readFileSync(freezer, "utf8").trim() : "(no freezer file)");
      dk(["pause", c]);
      const paused = { status: inspect(c, "{{.State.Status}}"), freezer: freezerState() };
      dk(["unpause", c]);
      const resumed = { status: inspect(c, "{{.State.Status}}"), freezer: freezerState() };
      const before = counter();
      const goesOn = waitFor("the counter to move after unpause", () => counter() !== before, 10_000, 100);
      dk(["rm", "--force", c]);
      return { paused, resumed, goesOn };
    },
    (ref) => expect(ref).toEqual({ paused: { status: "paused", freezer: "FROZEN" }, resumed: { status: "running", freezer: "THAWED" }, goesOn: true }),
  );

  compare(
    "top (runtime `ps --format json`) and ps",
    (w) => {
      const c = name(w, "top");
      dk(run(w, ["-d", "--name", c, IMAGE, "sh", "-c", "sleep 1000 & sleep 2000"]));
      waitFor("both sleeps", () => (dk(["top", c]).stdout.match(/sleep/g) ?? []).length === 2);
      // Rows come in pid order, which pid wrap-around (pid_max 32768, many tests) can flip: compare them sorted.
      const top = dk(["top", c, "-o", "pid,user,args"]).stdout.replace(/^ *\d+ +/gm, "N ").replace(/ +/g, " ").replace(/ +$/gm, "").split("\n").sort().join("\n");
      const ps = dk(["ps", "--no-trunc", "--filter", `name=${c}`, "--format", "{{.Names}} {{.Command}}"]).stdout.replace(c, "NAME");
      const status = inspect(c, "{{.State.Status}}");
      dk(["rm", "--force", c]);
      return { top, ps, status };
    },
    (ref) => {
      expect(ref.top).toBe("\nN root sleep 1000\nN root sleep 2000\nPID USER COMMAND");
      expect(ref.ps).toBe('NAME "sh -c \'sleep 1000 & sleep 2000\'"\n');
      expect(ref.status).toBe("running");
    },
  );

  testIf(
    skip,
    "dockerd made the same kinds of runtime calls to both runtimes",
    () => {
      const runc = callShapes(setup!.logs.runc).sort();
      const nk = callShapes(setup!.logs.nk).sort();
      console.log(`dockerd (containerd-shim-runc-v2) -> runtime calls (nanokata):\n  ${nk.join("\n  ")}`);
      expect(nk).toEqual(runc);
      expect(nk).toContain("--root R --log F --log-format json create --bundle B --pid-file F ID");
    },
    TEST_TIMEOUT,
  );

  testIf(
    skip,
    "teardown stops dockerd and leaves no containers, images, cgroups, mounts or processes",
    async () => {
      const problems = await tearDown();
      expect(problems).toEqual([]);
    },
    TEST_TIMEOUT,
  );
});
