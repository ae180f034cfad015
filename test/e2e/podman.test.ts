/**
 * podman on nano-kata, compared with podman on runc.
 *
 * One private podman (--root/--runroot/tmp_dir under /var/tmp/nk-e2e-podman-*,
 * cgroupfs, file events, a containers.conf naming both runtimes), run inside
 * a private network namespace so that podman's default network (CNI bridge,
 * iptables) touches nothing on the host. Every scenario runs once with
 * `--runtime runc` and once with `--runtime nanokata` and the two
 * observations (output, exit codes, states) must be equal.
 *
 * The scenarios podman and docker share are dockerLikeScenarios (client-scenarios.ts),
 * given what podman does differently; the ones below are podman's own.
 */
import { describe, expect } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { testIf } from "../helpers/runtime.ts";
import { CLIENT_TEST_TIMEOUT, comparer, containerName, dockerLikeScenarios, finishTeardown, observe, sameRuntimeCallsTest, suiteHooks, teardownTest } from "./client-scenarios.ts";
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
  cgroupTopLevel,
  cmd,
  e2eSkipReason,
  leftoverCgroups,
  makeWorkDir,
  ok,
  runtimeUnderTest,
  startNetnsHolder,
  waitFor,
  writeArgvWrapper,
} from "./daemons.ts";

const skip = e2eSkipReason(["podman", "conmon", "iptables"]);
const IMAGE = "localhost/nk-e2e-busybox:latest";
const RUNTIME_NAME: Record<Which, string> = { runc: "runc", nk: "nanokata" };

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

function inspect(which: Which, container: string, format: string): string {
  return pod(which, ["inspect", "--format", format, container]).stdout.trim();
}

const compare = comparer(skip);

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
  problems.push(...(await finishTeardown(s, ["libpod_parent"])));
  return problems;
}

suiteHooks(skip, "podman", setUp, tearDown);

describe("podman on nano-kata vs runc", () => {
  dockerLikeScenarios({
    tool: "podman",
    skip,
    image: IMAGE,
    argv: (w, args) => podmanArgv(w, args),
    run: (_w, args) => [...RUN, ...args],
    env: () => setup!.env,
    seccompProfile: () => setup!.seccompProfile,
    forceRemove: ["rm", "--force", "--time", "0"],
    execIdLine: "uid=1000(user) gid=1000(user)",
    readOnlyArgs: ["--read-only"],
    freezerState: (id) => `/sys/fs/cgroup/freezer/libpod_parent/libpod-${id}/freezer.state`,
    defaultProfileRefusesUnshare: false,
  });

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
      const c = containerName(w, "detached");
      pod(w, [...RUN, "-d", "--name", c, IMAGE, "sh", "-c", 'echo started; trap "echo got-term; exit 9" TERM; while :; do sleep 0.1; done']);
      waitFor("the container's first line in podman logs", () => pod(w, ["logs", c]).stdout.includes("started"));
      const running = inspect(w, c, "{{.State.Status}}");
      pod(w, ["stop", "--time", "10", c]);
      const afterStop = { status: inspect(w, c, "{{.State.Status}}"), exit: inspect(w, c, "{{.State.ExitCode}}"), logs: pod(w, ["logs", c]).stdout };
      pod(w, ["rm", c]);

      const k = containerName(w, "killed");
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
    "top and ps",
    (w) => {
      const c = containerName(w, "top");
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
    CLIENT_TEST_TIMEOUT,
  );

  sameRuntimeCallsTest(skip, "podman", "podman", () => setup!.logs, "--log-format=json --log F create --bundle B --pid-file F ID");

  teardownTest(skip, "teardown leaves no containers, images, cgroups, mounts or processes", tearDown);
});

