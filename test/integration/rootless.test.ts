/**
 * Rootless containers: an unprivileged user runs `spec --rootless` and then
 * run/create/start/exec/kill/delete, with its state under $XDG_RUNTIME_DIR.
 *
 * Root sets the scene: a throwaway system user (useradd, removed with
 * userdel), a rootfs and bundles that user owns, and a copy of the runtime
 * under test it can execute (hard links where possible, so the checkout's
 * permissions are never touched). Every runtime command then runs as that
 * user through `runuser -u USER -- env -i ...`.
 *
 * Also here: the planner's rootless decisions (pure), the state-root and
 * resource checks, and the executor's RUN_ID_MAP_HELPER on a fake helper.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { buildContainerPlan, type CallerFacts, type PlanInput } from "../../src/plan/build.ts";
import { buildExecPlan } from "../../src/plan/exec-plan.ts";
import { CHILD_PID_PLACEHOLDER, OpCode, OpName, Section, type PlanOp } from "../../src/plan/ops.ts";
import { ownCgroupPaths } from "../../src/cgroups/index.ts";
import { assertPrivateStateRoot, findExecutable, refuseLimitsWithoutCgroup, requestedLimits, withoutDeviceRules } from "../../src/linux/rootless.ts";
import type { Spec } from "../../src/spec/types.ts";
import { TEST_CGROUP_PARENT, uniqueId } from "../helpers/bundle.ts";
import { buildExecutor, lineOf, op, runPlan } from "../helpers/plan-runner.ts";
import { ensureBusyboxRootfs } from "../helpers/rootfs.ts";
import {
  cgroupHierarchies,
  containerCgroupDirs,
  describeResult,
  expectFailure,
  firstReason,
  integrationSkipReason,
  onlyFor,
  runtimeBinary,
  runtimeKind,
  sleepMs,
  testIf,
  type RtResult,
} from "../helpers/runtime.ts";

// ------------------------------------------------------------------ the plan

const ME: CallerFacts = { rootless: true, euid: 1000, egid: 1000, newuidmap: "/usr/bin/newuidmap", newgidmap: "/usr/bin/newgidmap" };
const NO_HELPERS: CallerFacts = { rootless: true, euid: 1000, egid: 1000 };

function rootlessSpec(mutate: (s: Spec) => void = () => {}): Spec {
  const s: Spec = {
    ociVersion: "1.2.0",
    process: { user: { uid: 0, gid: 0 }, args: ["sh"], env: ["PATH=/bin"], cwd: "/" },
    root: { path: "rootfs" },
    hostname: "box",
    mounts: [{ destination: "/proc", type: "proc", source: "proc" }],
    linux: {
      namespaces: [{ type: "pid" }, { type: "mount" }, { type: "uts" }, { type: "user" }],
      uidMappings: [{ containerID: 0, hostID: 1000, size: 1 }],
      gidMappings: [{ containerID: 0, hostID: 1000, size: 1 }],
    },
  };
  mutate(s);
  return s;
}

function input(s: Spec, caller: CallerFacts | undefined): PlanInput {
  return {
    spec: s,
    bundle: "/b",
    rootfs: "/b/rootfs",
    fifoDir: "/run/user/1000/nano-kata/c1",
    noPivot: false,
    noNewKeyring: false,
    preserveFds: 0,
    foreground: false,
    containerId: "c1",
    cgroupMounts: [],
    isDirectory: () => true,
    caller,
  };
}

const bySection = (ops: PlanOp[], section: Section) => ops.filter((o) => o.section === section);
const shape = (ops: PlanOp[]) => ops.map((o) => [OpName[o.code], ...o.args]);
const SUBIDS = [{ containerID: 1, hostID: 100000, size: 65536 }];

describe("plan: a rootless caller mapping its own ids", () => {
  const ops = buildContainerPlan(input(rootlessSpec(), NO_HELPERS)).ops;

  test("stage0 turns dumpable just for the clone (the child's /proc/<pid> must be the caller's)", () => {
    const pre = bySection(ops, Section.Pre);
    expect(shape(pre.slice(-2))).toEqual([["SET_DUMPABLE", "1"], ["CLONE", expect.any(String)]]);
    expect(shape(bySection(ops, Section.Parent)).at(0)).toEqual(["SET_DUMPABLE", "0"]);
  });

  test("single-line maps written by stage0, setgroups denied before the gid map", () => {
    const maps = bySection(ops, Section.Parent).filter((o) => o.code === OpCode.WRITE_CHILD_PROC);
    expect(shape(maps)).toEqual([
      ["WRITE_CHILD_PROC", "uid_map", "0 1000 1"],
      ["WRITE_CHILD_PROC", "setgroups", "deny"],
      ["WRITE_CHILD_PROC", "gid_map", "0 1000 1"],
    ]);
  });

  test("no SETGROUPS in init (setgroups(2) is denied there), the rest of the credentials as usual", () => {
    const init = bySection(ops, Section.Init).map((o) => OpName[o.code]);
    expect(init).not.toContain("SETGROUPS");
    expect(init).toContain("SETRESGID");
    expect(init).toContain("SETRESUID");
  });

  test("additionalGids cannot be set: PlanError naming the field (runc refuses them too)", () => {
    const s = rootlessSpec((x) => (x.process!.user.additionalGids = [10]));
    expect(() => buildContainerPlan(input(s, ME))).toThrow("process.user.additionalGids: cannot set any additional groups in a rootless container");
  });

  test("exec into such a container skips SETGROUPS too", () => {
    const p = rootlessSpec().process!;
    const plan = buildExecPlan({ process: p, initPid: 7, namespaces: [{ type: "user" }, { type: "mount" }], preserveFds: 0, foreground: true, setgroupsDenied: true });
    expect(plan.ops.map((o) => OpName[o.code])).not.toContain("SETGROUPS");
    const allowed = buildExecPlan({ process: p, initPid: 7, namespaces: [{ type: "mount" }], preserveFds: 0, foreground: true });
    expect(allowed.ops.map((o) => OpName[o.code])).toContain("SETGROUPS");
  });
});

describe("plan: a rootless caller mapping subordinate ranges", () => {
  const s = rootlessSpec((x) => {
    x.linux!.uidMappings!.push(...SUBIDS);
    x.linux!.gidMappings!.push(...SUBIDS);
    x.process!.user.additionalGids = [5];
  });

  test("newuidmap/newgidmap with the child's pid as a placeholder; setgroups stays allowed", () => {
    const ops = buildContainerPlan(input(s, ME)).ops;
    const parent = bySection(ops, Section.Parent).filter((o) => o.code === OpCode.RUN_ID_MAP_HELPER || o.code === OpCode.WRITE_CHILD_PROC);
    expect(shape(parent)).toEqual([
      ["RUN_ID_MAP_HELPER", "/usr/bin/newuidmap", "newuidmap", CHILD_PID_PLACEHOLDER, "0", "1000", "1", "1", "100000", "65536"],
      ["RUN_ID_MAP_HELPER", "/usr/bin/newgidmap", "newgidmap", CHILD_PID_PLACEHOLDER, "0", "1000", "1", "1", "100000", "65536"],
    ]);
    expect(shape(bySection(ops, Section.Init).filter((o) => o.code === OpCode.SETGROUPS))).toEqual([["SETGROUPS", "5"]]);
  });

  test("ranges for uids only: newuidmap for uids, stage0 for its own gid (setgroups denied)", () => {
    const t = rootlessSpec((x) => x.linux!.uidMappings!.push(...SUBIDS));
    const parent = bySection(buildContainerPlan(input(t, ME)).ops, Section.Parent);
    expect(parent.map((o) => OpName[o.code])).toEqual(["SET_DUMPABLE", "RUN_ID_MAP_HELPER", "WRITE_CHILD_PROC", "WRITE_CHILD_PROC", "SEND_PID", "WAIT_GO", "RELEASE_CHILD", "EXIT"]);
  });

  test("without the helpers: PlanError naming the field and the package", () => {
    expect(() => buildContainerPlan(input(s, NO_HELPERS))).toThrow(/^linux\.uidMappings: without root, only the caller's own uid 1000 .* newuidmap \(apt-get install uidmap\)/);
    const gidOnly = rootlessSpec((x) => x.linux!.gidMappings!.push(...SUBIDS));
    expect(() => buildContainerPlan(input(gidOnly, NO_HELPERS))).toThrow(/^linux\.gidMappings: .*newgidmap/);
  });

  test("a single mapping of someone else's id is not the caller's own: it needs the helper", () => {
    const other = rootlessSpec((x) => (x.linux!.uidMappings = [{ containerID: 0, hostID: 1001, size: 1 }]));
    expect(() => buildContainerPlan(input(other, NO_HELPERS))).toThrow("linux.uidMappings");
  });
});

describe("plan: what a rootless caller cannot do", () => {
  test("no user namespace", () => {
    const s = rootlessSpec((x) => (x.linux!.namespaces = x.linux!.namespaces!.filter((n) => n.type !== "user")));
    expect(() => buildContainerPlan(input(s, ME))).toThrow("linux.namespaces: nk-runtime runs as uid 1000, not root, so the container needs a user namespace");
  });

  test("a new user namespace without mappings", () => {
    const s = rootlessSpec((x) => delete x.linux!.uidMappings);
    expect(() => buildContainerPlan(input(s, ME))).toThrow("linux.uidMappings: a rootless container needs a mapping of the caller's uid");
  });

  test("joining an existing user namespace needs no maps and no dumpable dance", () => {
    const s = rootlessSpec((x) => (x.linux!.namespaces = [{ type: "mount" }, { type: "user", path: "/proc/7/ns/user" }]));
    const ops = buildContainerPlan(input(s, ME)).ops;
    expect(ops.map((o) => OpName[o.code])).not.toContain("SET_DUMPABLE");
    expect(ops.map((o) => OpName[o.code])).not.toContain("WRITE_CHILD_PROC");
  });

  test("root: maps written as given, nothing rootless", () => {
    const s = rootlessSpec((x) => x.linux!.uidMappings!.push(...SUBIDS));
    const ops = buildContainerPlan(input(s, undefined)).ops;
    expect(shape(bySection(ops, Section.Parent).filter((o) => o.code === OpCode.WRITE_CHILD_PROC))).toEqual([
      ["WRITE_CHILD_PROC", "uid_map", "0 1000 1\n1 100000 65536"],
      ["WRITE_CHILD_PROC", "gid_map", "0 1000 1"],
    ]);
    expect(bySection(ops, Section.Pre).map((o) => OpName[o.code])).not.toContain("SET_DUMPABLE");
    expect(bySection(ops, Section.Init).map((o) => OpName[o.code])).toContain("SETGROUPS");
  });
});

describe("rootless: resources, state root, helpers, own cgroup", () => {
  test("requestedLimits lists the fields that ask for a limit; device rules and empty objects do not", () => {
    expect(requestedLimits(undefined)).toEqual([]);
    expect(requestedLimits({ devices: [{ allow: false, access: "rwm" }], memory: {}, cpu: { shares: undefined } })).toEqual([]);
    expect(requestedLimits({ memory: { limit: 1 << 26 }, pids: { limit: 10 }, hugepageLimits: [] })).toEqual(["linux.resources.memory", "linux.resources.pids"]);
  });

  test("refuseLimitsWithoutCgroup names the first field and the directory", () => {
    expect(() => refuseLimitsWithoutCgroup({ pids: { limit: 10 }, cpu: { shares: 2 } }, "/sys/fs/cgroup/pids", 1000)).toThrow(
      "linux.resources.pids: cannot set limits: the container could not create its cgroup (/sys/fs/cgroup/pids is not writable by uid 1000: not delegated); also linux.resources.cpu",
    );
    expect(() => refuseLimitsWithoutCgroup({ devices: [{ allow: false }] }, "/x", 1000)).not.toThrow();
    expect(withoutDeviceRules({ devices: [{ allow: false }], pids: { limit: 3 } })).toEqual({ pids: { limit: 3 } });
  });

  test("assertPrivateStateRoot: creates 0700; refuses another owner, a symlink, a group/world-writable dir", () => {
    const dir = mkdtempSync(join(tmpdir(), "nkt-stateroot-"));
    try {
      const fresh = join(dir, "fresh");
      assertPrivateStateRoot(fresh, 0);
      expect(statSync(fresh).mode & 0o777).toBe(0o700);
      expect(() => assertPrivateStateRoot(fresh, 0)).not.toThrow();
      expect(() => assertPrivateStateRoot(fresh, 4242)).toThrow(`state directory ${fresh} belongs to uid 0, not to uid 4242`);
      const open = join(dir, "open");
      mkdirSync(open);
      chmodSync(open, 0o777);
      expect(() => assertPrivateStateRoot(open, 0)).toThrow("is writable by other users (mode 777)");
      const link = join(dir, "link");
      symlinkSync(fresh, link);
      expect(() => assertPrivateStateRoot(link, 0)).toThrow("is not a directory (a symlink?)");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("findExecutable: PATH first, then the system directories; absent is undefined", () => {
    expect(findExecutable("sh", "")).toMatch(/^\/(usr\/)?s?bin\/sh$/);
    expect(findExecutable("nk-no-such-helper", "/nonexistent")).toBeUndefined();
  });

  test("ownCgroupPaths: the caller's own directory in every hierarchy, relative to a non-root mount", () => {
    const layout = {
      kind: "hybrid" as const,
      v1: new Map([
        ["memory", "/sys/fs/cgroup/memory"],
        ["cpu", "/sys/fs/cgroup/cpu,cpuacct"],
        ["cpuacct", "/sys/fs/cgroup/cpu,cpuacct"],
      ]),
      v2Mount: "/sys/fs/cgroup/unified",
      v2Controllers: [],
      mountRoots: new Map([["/sys/fs/cgroup/memory", "/outer"]]),
    };
    const paths = ownCgroupPaths({ layout, selfCgroup: "4:memory:/outer/user/a\n2:cpu,cpuacct:/user/b\n0::/user/c\n" });
    expect(paths).toEqual({
      memory: "/sys/fs/cgroup/memory/user/a",
      cpu: "/sys/fs/cgroup/cpu,cpuacct/user/b",
      cpuacct: "/sys/fs/cgroup/cpu,cpuacct/user/b",
      unified: "/sys/fs/cgroup/unified/user/c",
    });
  });
});

// ------------------------------------------------------ the executor's helper op

const nk = onlyFor(["nk"], "nano-kata's executor and messages");
const executorReason = firstReason(integrationSkipReason(), nk, process.getuid?.() === 0 ? buildExecutor() : "needs root");

describe("RUN_ID_MAP_HELPER", () => {
  let dir = "";
  beforeAll(() => {
    if (executorReason) return;
    dir = mkdtempSync(join(tmpdir(), "nkt-idmap-helper-"));
    writeFileSync(join(dir, "ok-helper"), `#!/bin/sh\necho "$0 $*" > ${dir}/args\necho "to stdout"\nexit 0\n`, { mode: 0o755 });
    writeFileSync(join(dir, "bad-helper"), `#!/bin/sh\necho "bad-helper: uid range [1-65537) -> [100000-165536) not allowed" >&2\nexit 3\n`, { mode: 0o755 });
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  const plan = (helper: string) => [
    op(OpCode.CLONE, Section.Pre, 0),
    op(OpCode.RUN_ID_MAP_HELPER, Section.Parent, join(dir, helper), "newuidmap", CHILD_PID_PLACEHOLDER, 0, 1000, 1, 1, 100000, 65536),
    op(OpCode.MONITOR, Section.Parent, "none"),
    op(OpCode.WAIT_RELEASE, Section.Init),
  ];
  const withRelease = (ops: PlanOp[]) => [...ops.slice(0, 2), op(OpCode.RELEASE_CHILD, Section.Parent), ...ops.slice(2)];

  testIf(executorReason, "runs the helper with argv as given, the child's pid in place of the placeholder, stdout kept from the container", async () => {
    const r = await runPlan(withRelease(plan("ok-helper")));
    const childPid = /^ok 0 (\d+)$/.exec(lineOf(r, 0) ?? "")?.[1];
    expect(childPid, JSON.stringify(r.lines)).toBeDefined();
    expect(lineOf(r, 1)).toBe(`ok 1 ${join(dir, "ok-helper")} ${childPid}`);
    // A script sees its own path as $0 (the kernel's #! handling drops argv[0]).
    expect(readFileSync(join(dir, "args"), "utf8")).toBe(`${join(dir, "ok-helper")} ${childPid} 0 1000 1 1 100000 65536\n`);
    expect(r.stdout).toBe("");
  });

  testIf(executorReason, "a failing helper fails the op with its exit status and what it said; the child is killed", async () => {
    const r = await runPlan(plan("bad-helper"));
    expect(lineOf(r, 1)).toMatch(/^err 1 1 .*bad-helper for pid \d+: exit status 3: bad-helper: uid range \[1-65537\) -> \[100000-165536\) not allowed$/);
    expect(r.exitCode).toBe(1);
  });
});

// ------------------------------------------------ an unprivileged user, for real

const USER = `nk-rootless-${process.pid}`;
const hostReason = firstReason(
  integrationSkipReason(),
  ...["useradd", "userdel", "usermod", "runuser"].map((c) => (findExecutable(c) ? null : `${c} is missing (package passwd / util-linux)`)),
);

interface TestUser {
  uid: number;
  gid: number;
  /** Scratch for this file: rootfs, bundles, XDG_RUNTIME_DIR, the runtime copy. */
  top: string;
  /** The runtime binary the user runs. */
  binary: string;
  rootfs: string;
  xdg: string;
  /** config.json from `spec --rootless`, run as the user. */
  spec: Record<string, any>;
}
let user: TestUser | undefined;
let subidsAdded = false;
let tmpRootMade = false;

function run(cmd: string, args: string[], opts: { cwd?: string } = {}): { code: number; out: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8", cwd: opts.cwd });
  return { code: r.status ?? -1, out: `${r.stdout ?? ""}${r.stderr ?? ""}` };
}

function must(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}): ${r.out}`);
  return r.out;
}

/**
 * What the user needs to run the runtime under test, copied (hard-linked
 * where the filesystem allows) into a directory it can traverse: bin/, the
 * compiled dist/nk-runtime or else the sources and Bun, and the executor.
 */
function installForUser(top: string): string {
  const bin = runtimeBinary();
  if (runtimeKind() !== "nk") return bin; // runc, crun: system binaries anyone may run
  const home = resolve(dirname(realpathSync(bin)), "..");
  const dest = join(top, "nk");
  const items = ["bin", "native/build/nk-exec"];
  if (existsSync(join(home, "dist/nk-runtime"))) items.push("dist/nk-runtime");
  else items.push("src", "package.json", "node_modules/bun/bin/bun.exe");
  for (const item of items) {
    mkdirSync(dirname(join(dest, item)), { recursive: true, mode: 0o755 });
    if (run("cp", ["-al", join(home, item), join(dest, item)]).code !== 0) must("cp", ["-a", join(home, item), join(dest, item)]);
  }
  return join(dest, "bin", basename(bin));
}

function setUp(): TestUser {
  must("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER]);
  const uid = Number(must("id", ["-u", USER]).trim());
  const gid = Number(must("id", ["-g", USER]).trim());
  const top = mkdtempSync(join(tmpdir(), "nkt-rootless-"));
  chmodSync(top, 0o755);
  const binary = installForUser(top);
  const rootfs = join(top, "rootfs");
  must("cp", ["-a", ensureBusyboxRootfs(), rootfs]);
  must("chown", ["-R", "-h", `${uid}:${gid}`, rootfs]);
  const xdg = join(top, "xdg");
  mkdirSync(xdg, { mode: 0o700 });
  chownSync(xdg, uid, gid);
  const specDir = join(top, "spec");
  mkdirSync(specDir);
  chownSync(specDir, uid, gid);
  const t: TestUser = { uid, gid, top, binary, rootfs, xdg, spec: {} };
  const r = runAs(t, ["spec", "--rootless"], { cwd: specDir, noRoot: true });
  if (r.code !== 0) throw new Error(`spec --rootless as ${USER} failed: ${describeResult(r)}`);
  t.spec = JSON.parse(readFileSync(join(specDir, "config.json"), "utf8"));
  return t;
}

/** Kill what the test user still runs (every process of this throwaway uid is the test's), by pid. */
function userPids(uid: number): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, "utf8");
      const uidLine = /^Uid:\s+(\d+)/m.exec(status)?.[1];
      const state = /^State:\s+(\S)/m.exec(status)?.[1];
      if (Number(uidLine) === uid && state !== "Z") pids.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

function tearDown(): void {
  if (!user) return;
  for (const pid of userPids(user.uid)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
  }
  for (let i = 0; i < 100 && userPids(user.uid).length; i++) sleepMs(20);
  if (subidsAdded) run("usermod", ["--del-subuids", subRange(), "--del-subgids", subRange(), USER]);
  run("userdel", [USER]);
  rmSync(user.top, { recursive: true, force: true });
  const tmpRoot = `/tmp/nano-kata-${user.uid}`;
  if (tmpRootMade && existsSync(tmpRoot)) rmSync(tmpRoot, { recursive: true, force: true });
  user = undefined;
}

beforeAll(() => {
  if (hostReason === null) user = setUp();
});
afterAll(tearDown);

interface AsOptions {
  /** XDG_RUNTIME_DIR for the command; null: unset. Default: the user's private one. */
  xdg?: string | null;
  cwd?: string;
  /** No --root flag is ever passed: the runtime's default state root for the user is what is tested. */
  noRoot?: boolean;
  timeoutMs?: number;
}

/** The runtime as the test user, with a clean environment; stdout/stderr through files (create hands them to the container). */
function runAs(t: TestUser, args: string[], opts: AsOptions = {}): RtResult {
  const xdg = opts.xdg === undefined ? t.xdg : opts.xdg;
  const env = ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", ...(xdg ? [`XDG_RUNTIME_DIR=${xdg}`] : [])];
  const argv = ["-u", USER, "--", "env", "-i", ...env, t.binary, ...args];
  const outPath = join(t.top, `out-${process.hrtime.bigint()}`);
  const out = openSync(`${outPath}.1`, "w");
  const err = openSync(`${outPath}.2`, "w");
  try {
    const r = spawnSync("runuser", argv, { stdio: ["ignore", out, err], cwd: opts.cwd ?? t.top, timeout: opts.timeoutMs ?? 30_000, killSignal: "SIGKILL" });
    return {
      code: r.status ?? -1,
      signal: r.signal ?? null,
      stdout: readFileSync(`${outPath}.1`, "utf8"),
      stderr: readFileSync(`${outPath}.2`, "utf8"),
      timedOut: (r.error as NodeJS.ErrnoException | undefined)?.code === "ETIMEDOUT",
      argv: ["runuser", ...argv],
    };
  } finally {
    closeSync(out);
    closeSync(err);
    rmSync(`${outPath}.1`, { force: true });
    rmSync(`${outPath}.2`, { force: true });
  }
}

/** A bundle the user owns, from its `spec --rootless` config: no terminal, the test's args, a test cgroupsPath. */
function bundleFor(t: TestUser, args: string[], mutate: (c: Record<string, any>) => void = () => {}): { dir: string; id: string } {
  const id = uniqueId();
  const dir = join(t.top, id);
  mkdirSync(dir);
  const config = structuredClone(t.spec);
  config.root.path = t.rootfs;
  config.process.terminal = false;
  config.process.args = args;
  config.hostname = "nkt-rootless";
  config.linux.cgroupsPath = `/${TEST_CGROUP_PARENT}/${id}`;
  mutate(config);
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
  chownSync(dir, t.uid, t.gid);
  chownSync(join(dir, "config.json"), t.uid, t.gid);
  return { dir, id };
}

/** What a container of the user could leave behind. */
function leftoversOf(t: TestUser, id: string, stateRoot = join(t.xdg, runtimeKind() === "nk" ? "nano-kata" : basename(t.binary))): string[] {
  const problems: string[] = [];
  if (existsSync(join(stateRoot, id))) problems.push(`state dir ${join(stateRoot, id)}`);
  for (const pid of userPids(t.uid)) problems.push(`process ${pid} of ${USER}: ${readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ")}`);
  for (const dir of containerCgroupDirs(id)) problems.push(`cgroup dir ${dir}`);
  for (const line of readFileSync("/proc/self/mounts", "utf8").split("\n")) if (line.includes(t.top)) problems.push(`mount ${line}`);
  return problems;
}

function expectNothingLeft(t: TestUser, id: string, stateRoot?: string): void {
  let problems: string[] = [];
  for (let i = 0; i < 100; i++) {
    problems = leftoversOf(t, id, stateRoot);
    if (problems.length === 0) return;
    sleepMs(30);
  }
  expect(problems).toEqual([]);
}

/**
 * Every bundle here has linux.cgroupsPath /nano-kata-test/<id>, which the
 * user cannot write. nano-kata runs without a cgroup then (with a warning);
 * runc 1.1 ignores cgroup errors of a rootless container only when there is
 * no cgroupsPath, and fails these.
 */
const cgroupPathReason = onlyFor(["nk"], "runc fails a rootless container whose explicit linux.cgroupsPath is not writable");

const lines = (text: string) => text.split("\n").map((l) => l.trim().replace(/\s+/g, " ")).filter((l) => l !== "");

describe(`as an unprivileged user (${USER})`, () => {
  testIf(hostReason, "spec --rootless maps the user's own ids and leaves out the network namespace", () => {
    const t = user!;
    expect(t.spec.linux.uidMappings).toEqual([{ containerID: 0, hostID: t.uid, size: 1 }]);
    expect(t.spec.linux.gidMappings).toEqual([{ containerID: 0, hostID: t.gid, size: 1 }]);
    expect(t.spec.linux.namespaces.map((n: { type: string }) => n.type)).toContain("user");
    expect(t.spec.linux.namespaces.map((n: { type: string }) => n.type)).not.toContain("network");
  });

  testIf(firstReason(hostReason, cgroupPathReason), "run: root inside, the user's uid outside, setgroups denied, hostname set, no cgroup made", () => {
    const t = user!;
    const { dir, id } = bundleFor(t, ["sh", "-c", "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; hostname"]);
    const r = runAs(t, ["run", "--bundle", dir, id]);
    expect(r.code, describeResult(r)).toBe(0);
    expect(lines(r.stdout)).toEqual(["0", "0", `0 ${t.uid} 1`, `0 ${t.gid} 1`, "deny", "nkt-rootless"]);
    expectNothingLeft(t, id);
  });

  testIf(firstReason(hostReason, cgroupPathReason), "create, state, start, exec, kill, delete", () => {
    const t = user!;
    const { dir, id } = bundleFor(t, ["sleep", "300"]);
    const created = runAs(t, ["create", "--bundle", dir, id]);
    expect(created.code, describeResult(created)).toBe(0);
    const stateOf = () => {
      const s = runAs(t, ["state", id]);
      expect(s.code, describeResult(s)).toBe(0);
      return JSON.parse(s.stdout) as { status: string; pid: number };
    };
    const before = stateOf();
    expect(before.status).toBe("created");
    // The container's root is the user on the host.
    expect(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${before.pid}/status`, "utf8"))?.[1]).toBe(String(t.uid));
    expect(runAs(t, ["start", id]).code).toBe(0);
    expect(stateOf().status).toBe("running");
    const exec = runAs(t, ["exec", id, "sh", "-c", "id -u; cat /proc/self/setgroups; cat /proc/1/cmdline"]);
    expect(exec.code, describeResult(exec)).toBe(0);
    expect(lines(exec.stdout.replaceAll("\0", " "))).toEqual(["0", "deny", "sleep 300"]);
    expect(runAs(t, ["kill", id, "KILL"]).code).toBe(0);
    for (let i = 0; i < 200 && stateOf().status !== "stopped"; i++) sleepMs(20);
    expect(stateOf().status).toBe("stopped");
    const deleted = runAs(t, ["delete", id]);
    expect(deleted.code, describeResult(deleted)).toBe(0);
    expect(runAs(t, ["state", id]).code).not.toBe(0);
    expectNothingLeft(t, id);
  });

  testIf(firstReason(hostReason, nk), "without XDG_RUNTIME_DIR: state in /tmp/nano-kata-<uid>, made 0700; a squatted one is refused", () => {
    const t = user!;
    const tmpRoot = `/tmp/nano-kata-${t.uid}`;
    if (existsSync(tmpRoot)) throw new Error(`${tmpRoot} exists before the test: remove it (a leftover of an earlier user with uid ${t.uid})`);
    tmpRootMade = true;
    try {
      const { dir, id } = bundleFor(t, ["true"]);
      const r = runAs(t, ["run", "--bundle", dir, id], { xdg: null });
      expect(r.code, describeResult(r)).toBe(0);
      const st = statSync(tmpRoot);
      expect({ uid: st.uid, mode: (st.mode & 0o777).toString(8) }).toEqual({ uid: t.uid, mode: "700" });
      expectNothingLeft(t, id, tmpRoot);
      expect(readdirSync(tmpRoot)).toEqual([]);
      rmSync(tmpRoot, { recursive: true });
      // Another user (root here) made the directory first, writable by all.
      mkdirSync(tmpRoot);
      chmodSync(tmpRoot, 0o777);
      const squatted = runAs(t, ["run", "--bundle", dir, id], { xdg: null });
      expect(squatted.code).not.toBe(0);
      expect(squatted.stderr).toContain(`state directory ${tmpRoot} belongs to uid 0, not to uid ${t.uid}: refusing to use it`);
      expect(readdirSync(tmpRoot)).toEqual([]);
    } finally {
      rmSync(tmpRoot, { recursive: true, force: true });
    }
  });

  const delegated = () => {
    const t = user;
    if (!t) return null;
    const writable = cgroupHierarchies().filter((h) => spawnSync("runuser", ["-u", USER, "--", "test", "-w", h]).status === 0);
    return writable.length ? `cgroups are delegated to the test user here (${writable.join(", ")})` : null;
  };

  testIf(firstReason(hostReason, cgroupPathReason), "limits without a delegated cgroup are refused naming the field; device rules alone are fine", () => {
    const t = user!;
    const why = delegated();
    if (why) {
      process.stderr.write(`SKIP part of the limits test: ${why}\n`);
      return;
    }
    const limited = bundleFor(t, ["true"], (c) => (c.linux.resources = { memory: { limit: 64 << 20 } }));
    const r = runAs(t, ["run", "--bundle", limited.dir, limited.id]);
    expectFailure(r, { nk: "linux.resources.memory: cannot set limits", runc: "cannot set memory limit: container could not join or create cgroup" });
    expectNothingLeft(t, limited.id);
    const devices = bundleFor(t, ["true"], (c) => (c.linux.resources = { devices: [{ allow: false, access: "rwm" }] }));
    const ok = runAs(t, ["run", "--bundle", devices.dir, devices.id]);
    expect(ok.code, describeResult(ok)).toBe(0);
    expectNothingLeft(t, devices.id);
  });

  testIf(firstReason(hostReason, nk), "no cgroup: a warning for an explicit cgroupsPath, a --debug line for the default one", () => {
    const t = user!;
    const why = delegated();
    if (why) {
      process.stderr.write(`SKIP cgroup messages: ${why}\n`);
      return;
    }
    const reason = (id: string) => `rootless: no cgroup for container ${id}: \\S+ is not writable by uid ${t.uid} \\(not delegated\\); the container stays in the caller's cgroup`;
    const explicit = bundleFor(t, ["true"]);
    const warned = runAs(t, ["run", "--bundle", explicit.dir, explicit.id]);
    expect(warned.code, describeResult(warned)).toBe(0);
    expect(warned.stderr).toMatch(new RegExp(`warning: linux.cgroupsPath "/${TEST_CGROUP_PARENT}/${explicit.id}" ignored: ${reason(explicit.id)}`));
    expectNothingLeft(t, explicit.id);
    const implicit = bundleFor(t, ["true"], (c) => delete c.linux.cgroupsPath);
    const quiet = runAs(t, ["run", "--bundle", implicit.dir, implicit.id]);
    expect(quiet.code, describeResult(quiet)).toBe(0);
    expect(quiet.stderr).toBe("");
    const debug = runAs(t, ["--debug", "run", "--bundle", implicit.dir, implicit.id]);
    expect(debug.stderr).toMatch(new RegExp(`debug: ${reason(implicit.id)}`));
    expectNothingLeft(t, implicit.id);
  });

  const helperReason = firstReason(
    hostReason,
    findExecutable("newuidmap") && findExecutable("newgidmap") ? null : "newuidmap/newgidmap are missing: apt-get install -y uidmap",
  );
  testIf(firstReason(helperReason, cgroupPathReason), "subuid/subgid ranges through newuidmap/newgidmap: two-line maps, setgroups allowed", () => {
    const t = user!;
    must("usermod", ["--add-subuids", subRange(), "--add-subgids", subRange(), USER]);
    subidsAdded = true;
    try {
      const start = subStart();
      const withGroups = runtimeKind() === "nk"; // runc refuses additional groups in any rootless container
      const { dir, id } = bundleFor(t, ["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; id -G"], (c) => {
        c.linux.uidMappings.push({ containerID: 1, hostID: start, size: 65536 });
        c.linux.gidMappings.push({ containerID: 1, hostID: start, size: 65536 });
        if (withGroups) c.process.user.additionalGids = [5];
      });
      const r = runAs(t, ["run", "--bundle", dir, id]);
      expect(r.code, describeResult(r)).toBe(0);
      const out = lines(r.stdout);
      expect(out.slice(0, 5)).toEqual([`0 ${t.uid} 1`, `1 ${start} 65536`, `0 ${t.gid} 1`, `1 ${start} 65536`, "allow"]);
      if (withGroups) expect(out[5]!.split(" ")).toContain("5");
      expectNothingLeft(t, id);
    } finally {
      must("usermod", ["--del-subuids", subRange(), "--del-subgids", subRange(), USER]);
      subidsAdded = false;
    }
    expect(readFileSync("/etc/subuid", "utf8")).not.toContain(`${USER}:`);
  });
});

/** A 65536-id block above every range /etc/subuid and /etc/subgid already hand out. */
let chosenStart: number | undefined;
function subStart(): number {
  if (chosenStart !== undefined) return chosenStart;
  let end = 100_000;
  for (const file of ["/etc/subuid", "/etc/subgid"]) {
    let text = "";
    try {
      text = readFileSync(file, "utf8");
    } catch {}
    for (const line of text.split("\n")) {
      const [, first, count] = line.split(":");
      if (first !== undefined && count !== undefined) end = Math.max(end, Number(first) + Number(count));
    }
  }
  chosenStart = Math.ceil(end / 65536) * 65536 + 65536 * 16;
  return chosenStart;
}
function subRange(): string {
  return `${subStart()}-${subStart() + 65535}`;
}
