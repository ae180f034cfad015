/**
 * LSM labels: process.apparmorProfile, process.selinuxLabel, linux.mountLabel.
 *
 * - The plan, for hosts with and without each LSM (pure: always runs).
 * - The host probe, against fake /sys and /proc files.
 * - The executor's WRITE_PROC_ATTR on this kernel, including a bind mount
 *   that tries to redirect the write (CVE-2025-52881).
 * - The runtime on this host: without the LSM a label is refused before
 *   anything runs, as runc 1.1 refuses it (checked against runc 1.1.5:
 *   "selinux label is specified in config, but selinux is disabled or not
 *   supported"; an AppArmor profile fails its /proc/self/attr/exec write
 *   with EINVAL); with the LSM, the container runs under the label.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildContainerPlan, NO_LSM, type LsmFacts, type PlanInput } from "../../src/plan/build.ts";
import { buildExecPlan } from "../../src/plan/exec-plan.ts";
import { OpCode, OpName, Section, type PlanOp } from "../../src/plan/ops.ts";
import { detectLsm } from "../../src/linux/lsm.ts";
import type { Spec } from "../../src/spec/types.ts";
import { buildExecutor, lineOf, op, runPlan } from "../helpers/plan-runner.ts";
import {
  assertNoLeftovers,
  cleanupAll,
  describeResult,
  expectFailure,
  firstReason,
  integrationSkipReason,
  newBundle,
  onlyFor,
  rt,
  runContainerIn,
  runtimeKind,
  testIf,
} from "../helpers/runtime.ts";

afterAll(cleanupAll);

const APPARMOR_ON: LsmFacts = { apparmor: true, apparmorExecAttr: "apparmor/exec", selinux: false };
const SELINUX_ON: LsmFacts = { apparmor: false, apparmorExecAttr: "exec", selinux: true };
const LABEL = "system_u:system_r:container_t:s0:c1,c2";
const MOUNT_LABEL = "system_u:object_r:container_file_t:s0:c1,c2";

function spec(mutate: (s: Spec) => void = () => {}): Spec {
  const s: Spec = {
    ociVersion: "1.2.0",
    process: {
      user: { uid: 0, gid: 0 },
      args: ["sh"],
      env: ["PATH=/bin"],
      cwd: "/",
      capabilities: { bounding: ["CAP_KILL"], effective: ["CAP_KILL"], permitted: ["CAP_KILL"] },
      noNewPrivileges: true,
    },
    root: { path: "rootfs" },
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "mode=755"] },
      { destination: "/dev/pts", type: "devpts", source: "devpts", options: ["newinstance", "ptmxmode=0666"] },
      { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "nodev"] },
      { destination: "/dev/mqueue", type: "mqueue", source: "mqueue" },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["ro"] },
      { destination: "/data", type: "bind", source: "/srv", options: ["rbind"] },
      { destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["ro"] },
    ],
    linux: { namespaces: [{ type: "pid" }, { type: "mount" }, { type: "cgroup" }] },
  };
  mutate(s);
  return s;
}

function input(s: Spec, lsm?: LsmFacts, extra: Partial<PlanInput> = {}): PlanInput {
  return {
    spec: s,
    bundle: "/bundle",
    rootfs: "/bundle/rootfs",
    fifoDir: "/run/nk/c1",
    noPivot: false,
    noNewKeyring: false,
    preserveFds: 0,
    foreground: false,
    containerId: "c1",
    cgroupMounts: [{ dirName: "memory", fstype: "cgroup", data: "memory", hostPath: "/sys/fs/cgroup/memory/x" }],
    isDirectory: () => true,
    lsm,
    ...extra,
  };
}

const initOps = (ops: PlanOp[]) => ops.filter((o) => o.section === Section.Init);
const attrWrites = (ops: PlanOp[]) => ops.filter((o) => o.code === OpCode.WRITE_PROC_ATTR).map((o) => o.args);
const indexOf = (ops: PlanOp[], code: number) => ops.findIndex((o) => o.code === code);

describe("plan: a host with AppArmor", () => {
  const ops = initOps(buildContainerPlan(input(spec((s) => (s.process!.apparmorProfile = "nk-test")), APPARMOR_ON)).ops);

  test("one write of `exec <profile>` to /proc/self/attr/apparmor/exec", () => {
    expect(attrWrites(ops)).toEqual([["apparmor/exec", "exec nk-test"]]);
    expect(ops.find((o) => o.code === OpCode.WRITE_PROC_ATTR)!.source).toBe("process.apparmorProfile");
  });

  test("after the rootfs and the terminal, before the capability drop, no_new_privs and exec (runc's order)", () => {
    const at = indexOf(ops, OpCode.WRITE_PROC_ATTR);
    expect(at).toBeGreaterThan(indexOf(ops, OpCode.PIVOT_ROOT));
    for (const later of [OpCode.CAP_BOUNDING, OpCode.SETRESUID, OpCode.CAPSET, OpCode.NO_NEW_PRIVS, OpCode.WAIT_FIFO, OpCode.EXEC]) {
      expect({ op: OpName[later], after: indexOf(ops, later) > at }).toEqual({ op: OpName[later], after: true });
    }
  });

  test("before a seccomp filter loaded without no_new_privs (it could refuse the write)", () => {
    const seccomp = { flags: 0, program: new Uint8Array(8) };
    const s = spec((x) => {
      x.process!.apparmorProfile = "nk-test";
      x.process!.noNewPrivileges = false;
    });
    const o = initOps(buildContainerPlan(input(s, APPARMOR_ON, { seccomp })).ops);
    expect(indexOf(o, OpCode.WRITE_PROC_ATTR)).toBeLessThan(indexOf(o, OpCode.SECCOMP));
  });

  test("kernels without /proc/self/attr/apparmor: the shared attr/exec", () => {
    const o = buildContainerPlan(input(spec((s) => (s.process!.apparmorProfile = "p")), { ...APPARMOR_ON, apparmorExecAttr: "exec" })).ops;
    expect(attrWrites(o)).toEqual([["exec", "exec p"]]);
  });

  test("no profile, no write; an SELinux label alone is refused (SELinux is off)", () => {
    expect(attrWrites(buildContainerPlan(input(spec(), APPARMOR_ON)).ops)).toEqual([]);
    expect(() => buildContainerPlan(input(spec((s) => (s.process!.selinuxLabel = LABEL)), APPARMOR_ON))).toThrow("process.selinuxLabel");
  });

  test("exec: the exec'd process gets the profile too", () => {
    const p = { ...spec().process!, apparmorProfile: "nk-test" };
    const plan = buildExecPlan({ process: p, initPid: 42, namespaces: [{ type: "pid" }, { type: "mount" }], preserveFds: 0, foreground: false, lsm: APPARMOR_ON });
    const o = initOps(plan.ops);
    expect(attrWrites(o)).toEqual([["apparmor/exec", "exec nk-test"]]);
    expect(indexOf(o, OpCode.WRITE_PROC_ATTR)).toBeLessThan(indexOf(o, OpCode.CAP_BOUNDING));
    expect(indexOf(o, OpCode.WRITE_PROC_ATTR)).toBeGreaterThan(indexOf(o, OpCode.WAIT_RELEASE));
  });
});

describe("plan: a host with SELinux", () => {
  const s = spec((x) => {
    x.process!.selinuxLabel = LABEL;
    x.linux!.mountLabel = MOUNT_LABEL;
  });
  const ops = initOps(buildContainerPlan(input(s, SELINUX_ON)).ops);
  const mounts = ops.filter((o) => o.code === OpCode.MOUNT_IN_ROOT);
  const dataOf = (dest: string) => mounts.filter((o) => o.args[1] === dest).map((o) => o.args[5]);
  const context = `context="${MOUNT_LABEL}"`;

  test("the session keyring's label, then the exec label", () => {
    expect(attrWrites(ops)).toEqual([
      ["keycreate", LABEL],
      ["exec", LABEL],
    ]);
    const keycreate = ops.findIndex((o) => o.code === OpCode.WRITE_PROC_ATTR && o.args[0] === "keycreate");
    expect(keycreate).toBe(indexOf(ops, OpCode.JOIN_KEYRING) - 1);
    const execLabel = ops.findIndex((o) => o.code === OpCode.WRITE_PROC_ATTR && o.args[0] === "exec");
    expect(execLabel).toBeLessThan(indexOf(ops, OpCode.CAP_BOUNDING));
    expect(execLabel).toBeGreaterThan(indexOf(ops, OpCode.PIVOT_ROOT));
  });

  test("--no-new-keyring: no keyring, no keycreate label", () => {
    expect(attrWrites(buildContainerPlan(input(s, SELINUX_ON, { noNewKeyring: true })).ops)).toEqual([["exec", LABEL]]);
  });

  test("mountLabel: context=\"...\" after the data of tmpfs, devpts and mqueue mounts (runc's label.FormatMountLabel)", () => {
    expect(dataOf("/dev")).toEqual([`mode=755,${context}`]);
    expect(dataOf("/dev/pts")).toEqual([`newinstance,ptmxmode=0666,${context}`]);
    expect(dataOf("/dev/shm")).toEqual([context]);
    expect(dataOf("/dev/mqueue")).toEqual([context]);
    expect(dataOf("/sys/fs/cgroup")).toEqual([`mode=755,${context}`]); // the tmpfs holding the v1 hierarchies
  });

  test("mountLabel: not on proc, sysfs, binds or cgroup hierarchies", () => {
    for (const dest of ["/proc", "/sys", "/data", "/sys/fs/cgroup/memory"]) {
      expect({ dest, data: dataOf(dest).filter((d) => typeof d === "string" && d.includes("context=")) }).toEqual({ dest, data: [] });
    }
  });

  test("exec: the exec label only (the container's mounts and keyring exist already)", () => {
    const p = { ...spec().process!, selinuxLabel: LABEL };
    const plan = buildExecPlan({ process: p, initPid: 42, namespaces: [{ type: "mount" }], preserveFds: 0, foreground: true, lsm: SELINUX_ON });
    expect(attrWrites(plan.ops)).toEqual([["exec", LABEL]]);
  });
});

describe("plan: a host without the LSM refuses the label, as runc does", () => {
  const cases: Array<[string, (s: Spec) => void, string, string]> = [
    ["process.apparmorProfile", (s) => (s.process!.apparmorProfile = "docker-default"), "apparmor-unavailable", "apparmor is disabled or not supported"],
    ["process.selinuxLabel", (s) => (s.process!.selinuxLabel = LABEL), "selinux-unavailable", "selinux is disabled or not supported"],
    ["linux.mountLabel", (s) => (s.linux!.mountLabel = MOUNT_LABEL), "selinux-unavailable", "selinux is disabled or not supported"],
  ];
  for (const [field, mutate, code, words] of cases) {
    test(`${field}: PlanError ${code} naming the field`, () => {
      let error: unknown;
      try {
        buildContainerPlan(input(spec(mutate), NO_LSM));
      } catch (e) {
        error = e;
      }
      expect(error).toMatchObject({ code });
      expect(String((error as Error).message)).toStartWith(`${field}: `);
      expect(String((error as Error).message)).toContain(words);
    });
  }

  test("no facts given means no LSM; no label means no write", () => {
    expect(() => buildContainerPlan(input(spec((s) => (s.process!.apparmorProfile = "x"))))).toThrow("process.apparmorProfile");
    expect(attrWrites(buildContainerPlan(input(spec(), NO_LSM)).ops)).toEqual([]);
  });

  test("exec: refused the same way", () => {
    const p = { ...spec().process!, apparmorProfile: "x" };
    expect(() => buildExecPlan({ process: p, initPid: 42, namespaces: [], preserveFds: 0, foreground: true })).toThrow("process.apparmorProfile");
  });
});

describe("detectLsm", () => {
  const dir = mkdtempSync(join(tmpdir(), "nkt-lsm-probe-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const paths = {
    apparmorEnabled: join(dir, "enabled"),
    apparmorSecurityfs: join(dir, "securityfs-apparmor"),
    apparmorAttrDir: join(dir, "attr-apparmor"),
    selinuxEnforce: join(dir, "enforce"),
  };
  const reset = () => {
    for (const p of Object.values(paths)) rmSync(p, { recursive: true, force: true });
  };

  test("nothing there: neither", () => {
    reset();
    expect(detectLsm(paths)).toEqual({ apparmor: false, apparmorExecAttr: "exec", selinux: false });
  });
  test("AppArmor module Y with the per-LSM attr directory", () => {
    reset();
    writeFileSync(paths.apparmorEnabled, "Y\n");
    mkdirSync(paths.apparmorAttrDir);
    expect(detectLsm(paths)).toEqual({ apparmor: true, apparmorExecAttr: "apparmor/exec", selinux: false });
  });
  test("AppArmor module Y on an older kernel (securityfs only): the shared attr/exec", () => {
    reset();
    writeFileSync(paths.apparmorEnabled, "Y\n");
    mkdirSync(paths.apparmorSecurityfs);
    expect(detectLsm(paths)).toEqual({ apparmor: true, apparmorExecAttr: "exec", selinux: false });
  });
  test("AppArmor built in but disabled (N)", () => {
    reset();
    writeFileSync(paths.apparmorEnabled, "N\n");
    mkdirSync(paths.apparmorAttrDir);
    expect(detectLsm(paths).apparmor).toBe(false);
  });
  test("selinuxfs mounted", () => {
    reset();
    writeFileSync(paths.selinuxEnforce, "1");
    expect(detectLsm(paths).selinux).toBe(true);
  });
});

// ------------------------------------------------------------ this host

const host = detectLsm();
process.stderr.write(`lsm.test: this host has AppArmor ${host.apparmor ? "enabled" : "not enabled"}, SELinux ${host.selinux ? "enabled" : "not enabled"}\n`);
const skip = integrationSkipReason();
const nkOnly = onlyFor(["nk"], "--trace and nano-kata's messages");
const needsNoApparmor = host.apparmor ? "AppArmor is enabled on this host" : null;
const needsNoSelinux = host.selinux ? "SELinux is enabled on this host" : null;

/** `--debug [--trace] create` (--trace is nano-kata's); the runtime's stderr (where both go) is returned with the result. */
function createTraced(mutate: (c: Record<string, any>) => void) {
  const bundle = newBundle({ args: ["sh", "-c", "true"], override: mutate });
  const global = runtimeKind() === "nk" ? ["--debug", "--trace"] : ["--debug"];
  const r = rt([...global, "create", "--bundle", bundle.dir, bundle.id]);
  return { bundle, r };
}

describe("this host without the LSM: the label is refused before anything runs", () => {
  const cases: Array<[string, string | null, (c: Record<string, any>) => void, { nk: string; runc: string }]> = [
    ["process.apparmorProfile", needsNoApparmor, (c) => (c.process.apparmorProfile = "nk-test-profile"), { nk: "process.apparmorProfile: apparmor profile", runc: "apparmor" }],
    ["process.selinuxLabel", needsNoSelinux, (c) => (c.process.selinuxLabel = LABEL), { nk: "process.selinuxLabel: selinux label is specified in config", runc: "selinux label is specified in config" }],
    ["linux.mountLabel", needsNoSelinux, (c) => (c.linux.mountLabel = MOUNT_LABEL), { nk: "linux.mountLabel: selinux mount label", runc: "invalid argument" }],
  ];
  for (const [field, hostReason, mutate, expected] of cases) {
    testIf(firstReason(skip, hostReason), `${field}: create fails naming the field, leaves nothing behind`, () => {
      const { bundle, r } = createTraced(mutate);
      expectFailure(r, expected);
      assertNoLeftovers(bundle.id, bundle.dir);
    });
    testIf(firstReason(skip, hostReason, nkOnly), `${field}: --debug says why; the trace shows no executor op, no attr write`, () => {
      const { bundle, r } = createTraced(mutate);
      expect(r.code, describeResult(r)).not.toBe(0);
      expect(r.stderr).toContain("debug: lsm: AppArmor not enabled; SELinux not enabled");
      expect(r.stderr).not.toContain("WRITE_PROC_ATTR");
      expect(r.stderr).not.toMatch(/stage0\s+CLONE/); // refused by the planner: the executor never started
      assertNoLeftovers(bundle.id, bundle.dir);
    });
  }

  testIf(firstReason(skip, nkOnly), "a container without labels: no attr write in the trace", () => {
    const bundle = newBundle({ args: ["true"] });
    const traced = rt(["--trace", "run", "--bundle", bundle.dir, bundle.id]);
    expect(traced.code, describeResult(traced)).toBe(0);
    expect(traced.stderr).toContain("EXEC_LOOKUP"); // the trace is there...
    expect(traced.stderr).not.toContain("WRITE_PROC_ATTR"); // ...without an LSM write
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

// --------------------------------------------------- the executor's write

const executorReason = firstReason(skip, nkOnly, process.getuid?.() === 0 ? buildExecutor() : "needs root");
const CLONE_NEWNS = 0x00020000;
const MS_BIND = 4096;
const MS_REC = 16384;
const MS_PRIVATE = 1 << 18;

describe("WRITE_PROC_ATTR on this kernel", () => {
  const noLsmHere = host.apparmor || host.selinux ? "an LSM is enabled here (a bogus label could be accepted)" : null;
  testIf(firstReason(executorReason, noLsmHere), "reaches the real /proc/self/attr/exec: without an LSM the kernel answers EINVAL, like runc's write", async () => {
    const r = await runPlan([
      op(OpCode.CLONE, Section.Pre, 0),
      op(OpCode.MONITOR, Section.Parent, "none"),
      op(OpCode.WRITE_PROC_ATTR, Section.Init, "exec", "exec nk-test-profile"),
    ]);
    expect(lineOf(r, 2)).toMatch(/^err 2 22 write self\/attr\/exec: Invalid argument/);
  });

  testIf(executorReason, "refuses a procfs file bound over attr/exec (CVE-2025-52881), which WRITE_PROC would write into", async () => {
    const redirect = (write: PlanOp) => [
      op(OpCode.CLONE, Section.Pre, CLONE_NEWNS),
      op(OpCode.MONITOR, Section.Parent, "none"),
      op(OpCode.MOUNT, Section.Init, "", "/", "", MS_REC | MS_PRIVATE, ""),
      // Another file of the same procfs over the attribute: it passes a filesystem-magic check.
      op(OpCode.MOUNT, Section.Init, "/proc/self/comm", "/proc/self/attr/exec", "", MS_BIND, ""),
      write,
    ];
    const plain = await runPlan(redirect(op(OpCode.WRITE_PROC, Section.Init, "/proc/self/attr/exec", "nk-redirected")));
    expect(lineOf(plain, 4), "the attack is real: WRITE_PROC lands in comm").toBe("ok 4 ");
    const guarded = await runPlan(redirect(op(OpCode.WRITE_PROC_ATTR, Section.Init, "exec", "nk-redirected")));
    expect(lineOf(guarded, 4)).toMatch(/^err 4 18 open \/proc\/self\/attr\/exec: Invalid cross-device link/);
  });

  testIf(executorReason, "refuses an attribute path that leaves /proc/self/attr", async () => {
    const r = await runPlan([op(OpCode.CLONE, Section.Pre, 0), op(OpCode.MONITOR, Section.Parent, "none"), op(OpCode.WRITE_PROC_ATTR, Section.Init, "../comm", "x")]);
    expect(lineOf(r, 2)).toMatch(/^err 2 22 WRITE_PROC_ATTR attribute "\.\.\/comm" must be a path below \/proc\/self\/attr/);
  });
});

// ------------------------------------------------------- enforcement

describe("this host with the LSM: the container runs under the label", () => {
  testIf(firstReason(skip, host.apparmor ? null : "AppArmor is not enabled on this host"), "apparmorProfile unconfined: /proc/self/attr/current reads it", () => {
    const bundle = newBundle({ args: ["cat", "/proc/self/attr/current"], override: (c) => (c.process.apparmorProfile = "unconfined") });
    const r = runContainerIn(bundle, []);
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.stdout.trim()).toStartWith("unconfined");
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  testIf(firstReason(skip, host.selinux ? null : "SELinux is not enabled on this host"), "selinuxLabel: the container's process has the runtime's own label when asked for it", () => {
    const own = readFileSync("/proc/self/attr/current", "utf8").replace(/\0/g, "").trim();
    const bundle = newBundle({ args: ["cat", "/proc/self/attr/current"], override: (c) => (c.process.selinuxLabel = own) });
    const r = runContainerIn(bundle, []);
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.stdout.replace(/\0/g, "").trim()).toBe(own);
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});
