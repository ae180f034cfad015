/**
 * What the client suites (podman, docker, containerd's ctr) share: the
 * runc-vs-nano-kata comparison, the observation of one command, the suite's
 * set-up/tear-down hooks, and the scenarios podman and docker run alike.
 *
 * A scenario runs once on runc and once on nano-kata through the same client;
 * runc's observation is checked against what the scenario expects (so a
 * broken client or host fails loudly instead of making both sides agree on
 * nonsense), and nano-kata's must then equal runc's.
 */
import { afterAll, beforeAll, expect } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { testIf } from "../helpers/runtime.ts";
import {
  BOTH,
  type CmdOptions,
  type CmdResult,
  type HostPaths,
  type Which,
  callShapes,
  cmd,
  normalize,
  ok,
  plainTerminal,
  ptyRun,
  removeNewCgroupParents,
  removeScratch,
  shellOutput,
  SHELL_INPUT,
  sweepWorkDir,
  waitFor,
} from "./daemons.ts";

export const CLIENT_TEST_TIMEOUT = 120_000;

export interface Observation {
  code: number;
  stdout: string;
  stderr: string;
}

/** The observation most scenarios compare: exit code, stdout, stderr (normalised). */
export function observe(r: CmdResult): Observation {
  return { code: r.code, stdout: normalize(r.stdout), stderr: normalize(r.stderr) };
}

/** A container name per scenario and runtime, so runc's and nano-kata's never collide. */
export function containerName(w: Which, what: string): string {
  return `nk-e2e-${what}-${w}`;
}

export type Compare = <T>(title: string, scenario: (which: Which) => T, checkReference?: (ref: T) => void) => void;

/** `compare(title, scenario, check)`: one test running the scenario on runc, then on nano-kata. */
export function comparer(skip: string | null): Compare {
  return (title, scenario, checkReference) =>
    testIf(
      skip,
      title,
      () => {
        const [ref, got] = BOTH.map((w) => scenario(w));
        checkReference?.(ref!);
        expect({ runtime: "nanokata", observed: got }).toEqual({ runtime: "nanokata", observed: ref });
      },
      CLIENT_TEST_TIMEOUT,
    );
}

/** The suite's hooks: set up unless skipped; tear down always and print what it found left behind. */
export function suiteHooks(skip: string | null, tool: string, setUp: () => Promise<void>, tearDown: () => Promise<string[]>): void {
  beforeAll(async () => {
    if (skip === null) await setUp();
  }, CLIENT_TEST_TIMEOUT);
  afterAll(async () => {
    const problems = await tearDown();
    if (problems.length) console.error(`${tool} e2e teardown:\n  ${problems.join("\n  ")}`);
  }, CLIENT_TEST_TIMEOUT);
}

/**
 * How a docker-like client (podman, docker) is driven, and where the two
 * really differ. Everything else in dockerLikeScenarios is the same for both.
 */
export interface DockerLikeClient {
  tool: "podman" | "docker";
  skip: string | null;
  image: string;
  /** The client's argv for a command on `w`'s containers (podman names the runtime globally, docker per run). */
  argv(w: Which, args: string[]): string[];
  /** `run ...` choosing `w`'s runtime (and podman: no network; its default network has its own scenario). */
  run(w: Which, args: string[]): string[];
  env(): NodeJS.ProcessEnv;
  /** A profile refusing mkdir/mkdirat with EPERM. */
  seccompProfile(): string;
  /** Remove a running container at once. */
  forceRemove: string[];
  /** `id` of uid:gid 1000:1000 in an exec (docker's exec lists the groups, podman's does not). */
  execIdLine: string;
  /** What --read-only needs for a writable /tmp (podman mounts a tmpfs there by itself). */
  readOnlyArgs: string[];
  /** The freezer.state file of a container's cgroup. */
  freezerState(id: string): string;
  /** Whether the client's default seccomp profile refuses `unshare -U` (docker's does; podman's lets it fail later or pass). */
  defaultProfileRefusesUnshare: boolean;
}

/** The scenarios podman and docker run alike, with their differences taken from the client. */
export function dockerLikeScenarios(client: DockerLikeClient): void {
  const compare = comparer(client.skip);
  const { image } = client;
  const cli = (w: Which, args: string[], opts: CmdOptions = {}): CmdResult => cmdOf(client, w, args, opts);
  const must = (w: Which, args: string[], opts: CmdOptions = {}): CmdResult => ok(cli(w, args, opts));
  const run = (w: Which, args: string[], opts: CmdOptions = {}): CmdResult => cli(w, client.run(w, args), opts);
  const inspect = (w: Which, container: string, format: string): string => must(w, ["inspect", "--format", format, container]).stdout.trim();

  compare(
    "run --rm: stdout, stderr and the exit code",
    (w) => observe(run(w, ["--rm", image, "sh", "-c", "echo out; echo err >&2; exit 3"])),
    (ref) => expect(ref).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" }),
  );

  compare(
    "run --rm: command not found (127), not executable (126), exit 255",
    (w) => {
      const missing = run(w, ["--rm", image, "no-such-command"]);
      const notExec = run(w, ["--rm", image, "/etc/passwd"]);
      const highest = run(w, ["--rm", image, "sh", "-c", "exit 255"]);
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
    "exec: output, exit code, stdin, --user/--env/--workdir, -t and -it (console socket)",
    (w) => {
      const c = containerName(w, "exec");
      ok(run(w, ["-d", "--name", c, image, "sleep", "1000"]));
      const plain = observe(cli(w, ["exec", c, "sh", "-c", "echo in-exec; exit 4"]));
      const stdin = observe(cli(w, ["exec", "-i", c, "cat"], { input: "data through stdin\n" }));
      const opts = observe(cli(w, ["exec", "--user", "1000:1000", "--env", "FOO=bar", "--workdir", "/tmp", c, "sh", "-c", 'id; echo "$FOO"; pwd']));
      const tty = ptyRun(client.argv(w, ["exec", "-t", c, "sh", "-c", "tty; [ -t 0 ] && echo stdin-is-a-tty; exit 6"]), [], 30_000, client.env());
      const interactive = ptyRun(client.argv(w, ["exec", "-it", c, "sh"]), [{ expect: "# ", send: "echo BEGIN; echo $((6*7)); exit 5\n" }], 30_000, client.env());
      must(w, [...client.forceRemove, c]);
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
      expect(ref.opts.stdout).toBe(`${client.execIdLine}\nbar\n/tmp\n`);
      expect(ref.tty).toEqual({ code: 6, output: "/dev/pts/0\nstdin-is-a-tty\n" });
      expect(ref.interactive.code).toBe(5);
      expect(ref.interactive.output).toBe("42\n");
    },
  );

  compare(
    "run -it: an interactive shell on a terminal (console socket)",
    (w) => {
      const r = ptyRun(client.argv(w, client.run(w, ["--rm", "-it", image, "sh"])), [{ expect: "# ", send: SHELL_INPUT }], 30_000, client.env());
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
        run(w, [
          "--rm", "--memory", "64m", "--pids-limit", "50", "--cpus", "0.5", image, "sh", "-c",
          "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us; ulimit -n -u",
        ]),
      );
      const oom = run(w, ["--rm", "--memory", "32m", "--memory-swap", "32m", image, "sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived $?"]);
      const pids = run(w, ["--rm", "--pids-limit", "5", image, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait; echo all-forked"]);
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
    `${client.readOnlyArgs.join(" ")}: the root is read-only, /tmp is a writable tmpfs`,
    (w) => observe(run(w, ["--rm", ...client.readOnlyArgs, image, "sh", "-c", "touch /x; echo root $?; touch /tmp/y; echo tmp $?; grep -c ' / overlay ro,' /proc/mounts"])),
    (ref) => expect(ref.stdout).toBe("root 1\ntmp 0\n1\n"),
  );

  compare(
    "--cap-drop / --cap-add: the capability sets, and what they allow",
    (w) => ({
      only: observe(run(w, ["--rm", "--cap-drop", "all", "--cap-add", "chown", "--cap-add", "net_raw", image, "sh", "-c", "grep Cap /proc/self/status; chown 5 /tmp; echo chown $?"])),
      dropped: observe(run(w, ["--rm", "--cap-drop", "chown", image, "sh", "-c", "grep CapEff /proc/self/status; chown 5 /tmp; echo chown $?"])),
    }),
    (ref) => {
      expect(ref.only.stdout).toContain("CapEff:\t0000000000002001\n");
      expect(ref.only.stdout).toContain("chown 0\n");
      expect(ref.dropped.stdout).toContain("chown 1\n");
    },
  );

  compare(
    `--security-opt seccomp=<profile>, ${client.tool}'s default profile, unconfined`,
    (w) => ({
      custom: observe(run(w, ["--rm", "--security-opt", `seccomp=${client.seccompProfile()}`, image, "sh", "-c", "mkdir /tmp/d; echo mkdir $?; grep Seccomp: /proc/self/status"])),
      dflt: observe(run(w, ["--rm", image, "sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true; echo unshare $?"])),
      unconfined: observe(run(w, ["--rm", "--security-opt", "seccomp=unconfined", image, "grep", "Seccomp:", "/proc/self/status"])),
    }),
    (ref) => {
      expect(ref.custom.stdout).toBe("mkdir 1\nSeccomp:\t2\n");
      if (client.defaultProfileRefusesUnshare) expect(ref.dflt.stdout).toBe("Seccomp:\t2\nunshare 1\n");
      else expect(ref.dflt.stdout).toStartWith("Seccomp:\t2\n");
      expect(ref.unconfined.stdout).toBe("Seccomp:\t0\n");
    },
  );

  compare(
    "--user: numeric and by name",
    (w) => ({
      numeric: observe(run(w, ["--rm", "--user", "1000:1000", image, "sh", "-c", "id; touch /root/x; echo $?"])),
      named: observe(run(w, ["--rm", "--user", "user", image, "id"])),
    }),
    (ref) => {
      expect(ref.numeric.stdout).toBe("uid=1000(user) gid=1000(user) groups=1000(user)\n1\n");
      expect(ref.named.stdout).toBe("uid=1000(user) gid=1000(user) groups=1000(user)\n");
    },
  );

  compare(
    `pause / unpause: ${client.tool}'s state, the freezer, and the container stops and goes on`,
    (w) => {
      const c = containerName(w, "pause");
      const id = ok(run(w, ["-d", "--name", c, image, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"])).stdout.trim();
      const counter = () => cli(w, ["exec", c, "cat", "/tmp/n"]).stdout.trim();
      waitFor("the container's counter", () => counter() !== "");
      const freezer = client.freezerState(id);
      const freezerState = () => (existsSync(freezer) ? readFileSync(freezer, "utf8").trim() : "(no freezer file)");
      must(w, ["pause", c]);
      const paused = {
        status: inspect(w, c, "{{.State.Status}}"),
        freezer: freezerState(),
        listed: /paused/i.test(must(w, ["ps", "--all", "--filter", `name=${c}`, "--format", "{{.Status}}"]).stdout),
      };
      must(w, ["unpause", c]);
      const resumed = { status: inspect(w, c, "{{.State.Status}}"), freezer: freezerState() };
      const before = counter();
      const goesOn = waitFor("the counter to move after unpause", () => counter() !== before, 10_000, 100);
      must(w, [...client.forceRemove, c]);
      return { paused, resumed, goesOn };
    },
    (ref) =>
      expect(ref).toEqual({ paused: { status: "paused", freezer: "FROZEN", listed: true }, resumed: { status: "running", freezer: "THAWED" }, goesOn: true }),
  );
}

function cmdOf(client: DockerLikeClient, w: Which, args: string[], opts: CmdOptions): CmdResult {
  return cmd(client.argv(w, args), { timeoutMs: 60_000, env: client.env(), ...opts });
}

/**
 * The test that the client made the same kinds of runtime calls to runc and
 * to nano-kata (argv shapes from the wrappers' logs), and at least `expected`.
 */
export function sameRuntimeCallsTest(skip: string | null, who: string, caller: string, logs: () => Record<Which, string>, expected: string): void {
  testIf(
    skip,
    `${who} made the same kinds of runtime calls to both runtimes`,
    () => {
      const runc = callShapes(logs().runc).sort();
      const nk = callShapes(logs().nk).sort();
      console.log(`${caller} -> runtime calls (nanokata):\n  ${nk.join("\n  ")}`);
      expect(nk).toEqual(runc);
      expect(nk).toContain(expected);
    },
    CLIENT_TEST_TIMEOUT,
  );
}

/** The last test of a client suite: its tear-down found nothing left behind. */
export function teardownTest(skip: string | null, title: string, tearDown: () => Promise<string[]>): void {
  testIf(
    skip,
    title,
    async () => {
      const problems = await tearDown();
      expect(problems).toEqual([]);
    },
    CLIENT_TEST_TIMEOUT,
  );
}

/** The end of every client suite's tear-down: new cgroup parents, host paths, the work dir, scratch. */
export async function finishTeardown(
  s: { cgroupsBefore: Map<string, Set<string>>; hostPaths: HostPaths; dir: string },
  cgroupParents: string[],
): Promise<string[]> {
  const problems = [...removeNewCgroupParents(s.cgroupsBefore, cgroupParents), ...s.hostPaths.cleanup(), ...(await sweepWorkDir(s.dir))];
  removeScratch();
  return problems;
}
