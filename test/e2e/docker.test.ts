/**
 * docker on nano-kata, compared with docker on runc.
 *
 * The test starts its own dockerd (Debian's docker.io) with private
 * --data-root/--exec-root/socket/pidfile, the cgroupfs driver and a
 * daemon.json naming both runtimes (through argv-logging wrappers), inside a
 * private network namespace so docker0, veths and iptables rules never touch
 * the host. Every scenario runs with `--runtime runc-ref` and with
 * `--runtime nanokata`; the observations must be equal.
 *
 * The scenarios podman and docker share are dockerLikeScenarios (client-scenarios.ts),
 * given what docker does differently; the ones below are docker's own.
 */
import { describe, expect } from "bun:test";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { comparer, containerName, dockerLikeScenarios, finishTeardown, observe, sameRuntimeCallsTest, suiteHooks, teardownTest } from "./client-scenarios.ts";
import {
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
  cgroupTopLevel,
  cmd,
  e2eSkipReason,
  leftoverCgroups,
  makeWorkDir,
  ok,
  pidsMentioning,
  runtimeUnderTest,
  startContainerd,
  startDaemon,
  startNetnsHolder,
  stopPids,
  waitFor,
  which,
  writeArgvWrapper,
} from "./daemons.ts";

/** Debian's client (20.10) first: it matches the daemon; another docker on PATH may be a newer client only. */
const DOCKER = which("/usr/bin/docker") ?? which("docker") ?? "docker";
const skip = e2eSkipReason(["dockerd", "containerd", "containerd-shim-runc-v2", "iptables", DOCKER]);
const IMAGE = "nk-e2e-busybox:latest";
const RUNTIME_NAME: Record<Which, string> = { runc: "runc-ref", nk: "nanokata" };

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

function inspect(container: string, format: string): string {
  return dk(["inspect", "--format", format, container]).stdout.trim();
}

const compare = comparer(skip);

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
  problems.push(...(await finishTeardown(s, ["docker"])));
  return problems;
}

suiteHooks(skip, "docker", setUp, tearDown);

describe("docker on nano-kata vs runc", () => {
  dockerLikeScenarios({
    tool: "docker",
    skip,
    image: IMAGE,
    argv: (_w, args) => dockerArgv(args),
    run,
    env: () => setup!.env,
    seccompProfile: () => setup!.seccompProfile,
    forceRemove: ["rm", "--force"],
    execIdLine: "uid=1000(user) gid=1000(user) groups=1000(user)",
    readOnlyArgs: ["--read-only", "--tmpfs", "/tmp"],
    freezerState: (id) => `/sys/fs/cgroup/freezer/docker/${id}/freezer.state`,
    defaultProfileRefusesUnshare: true,
  });

  compare(
    "run -d, logs, stop (the container handles SIGTERM), start again, kill, rm",
    (w) => {
      const c = containerName(w, "detached");
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
    "update: new limits on a running container (runtime `update --resources -`)",
    (w) => {
      const c = containerName(w, "update");
      dk(run(w, ["-d", "--name", c, "--memory", "64m", IMAGE, "sleep", "1000"]));
      dk(["update", "--memory", "128m", "--memory-swap", "256m", "--pids-limit", "20", "--cpus", "0.25", c]);
      const after = dk(["exec", c, "sh", "-c", "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us"]).stdout;
      dk(["rm", "--force", c]);
      return after;
    },
    (ref) => expect(ref).toBe("134217728\n268435456\n20\n25000\n"),
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
    "top (runtime `ps --format json`) and ps",
    (w) => {
      const c = containerName(w, "top");
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

  sameRuntimeCallsTest(skip, "dockerd", "dockerd (containerd-shim-runc-v2)", () => setup!.logs, "--root R --log F --log-format json create --bundle B --pid-file F ID");

  teardownTest(skip, "teardown stops dockerd and leaves no containers, images, cgroups, mounts or processes", tearDown);
});
