import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { defaultSpec } from "../../src/spec/default.ts";
import { SpecError, type SpecIssue } from "../../src/spec/errors.ts";
import { assertValidSpec, validateSpec } from "../../src/spec/validate.ts";

// A JSON-shaped value the cases below mutate freely.
type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

let bundle = "";

beforeAll(() => {
  bundle = mkdtempSync(join(tmpdir(), "nk-spec-validate-"));
  mkdirSync(join(bundle, "rootfs"));
  writeFileSync(join(bundle, "not-a-dir"), "");
});

afterAll(() => {
  rmSync(bundle, { recursive: true, force: true });
});

function baseSpec(): Json {
  return structuredClone(defaultSpec({ rootless: false }));
}

function issuesOf(spec: unknown, forCreate = true): SpecIssue[] {
  return validateSpec(spec, { bundle, forCreate });
}

function withUserNamespace(spec: Json): Json {
  spec.linux.namespaces.push({ type: "user" });
  spec.linux.uidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
  spec.linux.gidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
  return spec;
}

/** Each case breaks one thing and names the path and message the user must see. */
const cases: Array<[name: string, mutate: (spec: Json) => void, path: string, message: string | RegExp]> = [
  ["ociVersion missing", (s) => delete s.ociVersion, "ociVersion", "is required"],
  ["ociVersion not SemVer", (s) => (s.ociVersion = "1.0"), "ociVersion", /SemVer/],
  ["ociVersion major 2", (s) => (s.ociVersion = "2.0.0"), "ociVersion", /not supported/],
  ["ociVersion wrong type", (s) => (s.ociVersion = 1), "ociVersion", "must be a string, got number"],
  ["process missing for create", (s) => delete s.process, "process", "is required to create a container"],
  ["process wrong type", (s) => (s.process = []), "process", "must be an object, got array"],
  ["args missing", (s) => delete s.process.args, "process.args", "is required"],
  ["args empty", (s) => (s.process.args = []), "process.args", "must contain at least one entry"],
  ["args element not string", (s) => (s.process.args = ["sh", 3]), "process.args[1]", "must be a string, got number"],
  ["args not an array", (s) => (s.process.args = "sh -c true"), "process.args", "must be an array of strings, got string"],
  ["args[0] empty", (s) => (s.process.args = [""]), "process.args[0]", "must not be empty"],
  ["cwd relative", (s) => (s.process.cwd = "tmp"), "process.cwd", 'must be an absolute path, got "tmp"'],
  ["cwd missing", (s) => delete s.process.cwd, "process.cwd", "is required"],
  ["user missing", (s) => delete s.process.user, "process.user", "is required"],
  ["uid negative", (s) => (s.process.user.uid = -1), "process.user.uid", /non-negative integer/],
  ["gid fractional", (s) => (s.process.user.gid = 1.5), "process.user.gid", /non-negative integer/],
  ["gid as string", (s) => (s.process.user.gid = "0"), "process.user.gid", /got string/],
  ["additionalGids element", (s) => (s.process.user.additionalGids = [5, -2]), "process.user.additionalGids[1]", /non-negative/],
  ["env without =", (s) => s.process.env.push("FOO"), "process.env[2]", 'must be KEY=VALUE, got "FOO"'],
  ["env with empty key", (s) => s.process.env.push("=x"), "process.env[2]", /KEY=VALUE/],
  ["env element number", (s) => s.process.env.push(7), "process.env[2]", "must be a string, got number"],
  ["unknown capability", (s) => s.process.capabilities.bounding.push("CAP_FOO"), "process.capabilities.bounding[3]", 'unknown capability "CAP_FOO"'],
  ["capabilities as flat list", (s) => (s.process.capabilities = ["CAP_KILL"]), "process.capabilities", /object of capability sets/],
  ["capability set not array", (s) => (s.process.capabilities.effective = "CAP_KILL"), "process.capabilities.effective", /array of strings/],
  ["unknown rlimit", (s) => (s.process.rlimits[0].type = "RLIMIT_FOO"), "process.rlimits[0].type", 'unknown rlimit "RLIMIT_FOO"'],
  [
    "duplicate rlimit",
    (s) => s.process.rlimits.push({ type: "RLIMIT_NOFILE", soft: 1, hard: 1 }),
    "process.rlimits[1].type",
    /duplicate rlimit "RLIMIT_NOFILE" \(also at process.rlimits\[0\]\)/,
  ],
  ["rlimit soft > hard", (s) => (s.process.rlimits[0].soft = 2048), "process.rlimits[0].soft", "soft limit 2048 exceeds hard limit 1024"],
  ["rlimit hard missing", (s) => delete s.process.rlimits[0].hard, "process.rlimits[0].hard", "is required"],
  ["oomScoreAdj out of range", (s) => (s.process.oomScoreAdj = 1001), "process.oomScoreAdj", /-1000 to 1000/],
  ["noNewPrivileges wrong type", (s) => (s.process.noNewPrivileges = "yes"), "process.noNewPrivileges", "must be a boolean, got string"],
  ["ioPriority class", (s) => (s.process.ioPriority = { class: "IOPRIO_CLASS_X", priority: 1 }), "process.ioPriority.class", /must be one of/],
  ["scheduler policy missing", (s) => (s.process.scheduler = { nice: 1 }), "process.scheduler.policy", "is required"],
  ["consoleSize width wrong type", (s) => (s.process.consoleSize = { height: 1, width: "80" }), "process.consoleSize.width", /got string/],
  ["root missing", (s) => delete s.root, "root", "is required on Linux"],
  ["root.path missing dir", (s) => (s.root.path = "nope"), "root.path", /nope" does not exist/],
  ["root.path is a file", (s) => (s.root.path = "not-a-dir"), "root.path", /is not a directory/],
  ["root.readonly wrong type", (s) => (s.root.readonly = "true"), "root.readonly", "must be a boolean, got string"],
  ["mounts not array", (s) => (s.mounts = {}), "mounts", "must be an array, got object"],
  ["mount entry not object", (s) => s.mounts.push("tmpfs"), "mounts[7]", "must be an object, got string"],
  ["mount destination relative", (s) => (s.mounts[0].destination = "proc"), "mounts[0].destination", /absolute path/],
  ["mount destination missing", (s) => delete s.mounts[1].destination, "mounts[1].destination", "is required"],
  ["mount options element", (s) => (s.mounts[1].options = ["nosuid", 1]), "mounts[1].options[1]", "must be a string, got number"],
  ["mount type wrong type", (s) => (s.mounts[2].type = 5), "mounts[2].type", "must be a string, got number"],
  [
    "idmapped mount with only uid map",
    (s) => s.mounts.push({ destination: "/data", source: "/srv", options: ["bind"], uidMappings: [{ containerID: 0, hostID: 1, size: 1 }] }),
    "mounts[7].gidMappings",
    /is required/,
  ],
  ["unknown namespace", (s) => s.linux.namespaces.push({ type: "foo" }), "linux.namespaces[6].type", /must be one of/],
  ["duplicate namespace", (s) => s.linux.namespaces.push({ type: "pid" }), "linux.namespaces[6].type", /duplicate namespace "pid" \(also at linux.namespaces\[0\]\)/],
  ["namespace path relative", (s) => (s.linux.namespaces[1].path = "proc/1/ns/net"), "linux.namespaces[1].path", /absolute path/],
  ["no mount namespace", (s) => (s.linux.namespaces = s.linux.namespaces.filter((n: Json) => n.type !== "mount")), "linux.namespaces", /"mount" namespace/],
  ["uidMappings without user ns", (s) => (s.linux.uidMappings = [{ containerID: 0, hostID: 1000, size: 1 }]), "linux.uidMappings", /requires a user namespace/],
  ["new user ns without mappings", (s) => s.linux.namespaces.push({ type: "user" }), "linux.uidMappings", /needs at least one uid mapping/],
  ["mapping size 0", (s) => (withUserNamespace(s).linux.uidMappings[0].size = 0), "linux.uidMappings[0].size", "must be greater than 0"],
  ["mapping hostID negative", (s) => (withUserNamespace(s).linux.gidMappings[0].hostID = -5), "linux.gidMappings[0].hostID", /non-negative/],
  [
    "overlapping mappings",
    (s) => withUserNamespace(s).linux.uidMappings.push({ containerID: 100, hostID: 300000, size: 10 }),
    "linux.uidMappings[1]",
    /container IDs 100-109 overlap linux.uidMappings\[0\]/,
  ],
  [
    "process uid not mapped",
    (s) => {
      withUserNamespace(s).process.user.uid = 70000;
    },
    "process.user.uid",
    "70000 is not mapped by linux.uidMappings",
  ],
  ["hostname without uts ns", (s) => (s.linux.namespaces = s.linux.namespaces.filter((n: Json) => n.type !== "uts")), "hostname", /new UTS namespace/],
  ["hostname with joined uts ns", (s) => (s.linux.namespaces[3].path = "/proc/1/ns/uts"), "hostname", /new UTS namespace/],
  ["domainname too long", (s) => (s.domainname = "d".repeat(65)), "domainname", /at most 64 bytes/],
  ["timeOffsets without time ns", (s) => (s.linux.timeOffsets = { monotonic: { secs: 1 } }), "linux.timeOffsets", /new time namespace/],
  ["timeOffsets unknown clock", (s) => (s.linux.timeOffsets = { realtime: { secs: 1 } }), 'linux.timeOffsets.realtime', /unknown clock/],
  ["sysctl value not a string", (s) => (s.linux.sysctl = { "net.ipv4.ip_forward": 1 }), 'linux.sysctl["net.ipv4.ip_forward"]', "must be a string, got number"],
  ["sysctl not namespaced", (s) => (s.linux.sysctl = { "kernel.panic": "1" }), 'linux.sysctl["kernel.panic"]', /not namespaced/],
  ["sysctl path traversal", (s) => (s.linux.sysctl = { "net/../../../etc/x": "1" }), 'linux.sysctl["net/../../../etc/x"]', /not a valid sysctl name/],
  [
    "net sysctl without network ns",
    (s) => {
      s.linux.namespaces = s.linux.namespaces.filter((n: Json) => n.type !== "network");
      s.linux.sysctl = { "net.ipv4.ip_forward": "1" };
    },
    'linux.sysctl["net.ipv4.ip_forward"]',
    /network namespace/,
  ],
  ["cgroupsPath wrong type", (s) => (s.linux.cgroupsPath = 42), "linux.cgroupsPath", "must be a string, got number"],
  ["cgroupsPath escapes", (s) => (s.linux.cgroupsPath = "/nano-kata-test/../../x"), "linux.cgroupsPath", /".." components/],
  ["device path relative", (s) => (s.linux.devices = [{ path: "dev/fuse", type: "c", major: 10, minor: 229 }]), "linux.devices[0].path", /absolute path/],
  ["device type unknown", (s) => (s.linux.devices = [{ path: "/dev/x", type: "x", major: 1, minor: 1 }]), "linux.devices[0].type", /must be one of c, b, u, p/],
  ["char device without major", (s) => (s.linux.devices = [{ path: "/dev/x", type: "c", minor: 1 }]), "linux.devices[0].major", "is required"],
  ["duplicate device path", (s) => (s.linux.devices = [{ path: "/dev/fifo", type: "p" }, { path: "/dev/fifo", type: "p" }]), "linux.devices[1].path", /duplicate device/],
  ["maskedPaths relative", (s) => s.linux.maskedPaths.push("proc/kcore"), "linux.maskedPaths[11]", /absolute path/],
  ["readonlyPaths wrong element", (s) => s.linux.readonlyPaths.push(null), "linux.readonlyPaths[5]", "must be a string, got null"],
  ["rootfsPropagation unknown", (s) => (s.linux.rootfsPropagation = "rshared-ish"), "linux.rootfsPropagation", /must be one of shared, slave/],
  ["hook path relative", (s) => (s.hooks = { prestart: [{ path: "hook.sh" }] }), "hooks.prestart[0].path", /absolute path/],
  ["hook timeout zero", (s) => (s.hooks = { poststop: [{ path: "/bin/true", timeout: 0 }] }), "hooks.poststop[0].timeout", "must be greater than zero, got 0"],
  ["hook args wrong type", (s) => (s.hooks = { createRuntime: [{ path: "/bin/true", args: "x" }] }), "hooks.createRuntime[0].args", /array of strings/],
  ["hooks list not array", (s) => (s.hooks = { poststart: { path: "/bin/true" } }), "hooks.poststart", "must be an array, got object"],
  ["annotation value not string", (s) => (s.annotations = { "com.example.a": 1 }), 'annotations["com.example.a"]', "must be a string, got number"],
  ["annotation empty key", (s) => (s.annotations = { "": "x" }), "annotations", "keys must not be empty"],
  ["resources memory swap below limit", (s) => (s.linux.resources.memory = { limit: 200, swap: 100 }), "linux.resources.memory.swap", /below the memory limit/],
  ["resources device access", (s) => s.linux.resources.devices.push({ allow: true, access: "rwx" }), "linux.resources.devices[1].access", /r, w and m/],
  ["resources pids limit missing", (s) => (s.linux.resources.pids = {}), "linux.resources.pids.limit", "is required"],
  ["resources cpus list", (s) => (s.linux.resources.cpu = { cpus: "0-a" }), "linux.resources.cpu.cpus", /list like/],
  ["resources unified traversal", (s) => (s.linux.resources.unified = { "../cgroup.procs": "1" }), 'linux.resources.unified["../cgroup.procs"]', /plain cgroup file name/],
  ["hugepage size", (s) => (s.linux.resources.hugepageLimits = [{ pageSize: "2M", limit: 1 }]), "linux.resources.hugepageLimits[0].pageSize", /"2MB"/],
  ["seccomp default action", (s) => (s.linux.seccomp = { defaultAction: "SCMP_ACT_MAYBE" }), "linux.seccomp.defaultAction", /must be one of/],
  [
    "seccomp arg op",
    (s) => (s.linux.seccomp = { defaultAction: "SCMP_ACT_ALLOW", syscalls: [{ names: ["kill"], action: "SCMP_ACT_ERRNO", args: [{ index: 0, value: 1, op: "EQ" }] }] }),
    "linux.seccomp.syscalls[0].args[0].op",
    /must be one of/,
  ],
  [
    "seccomp errnoRet with ALLOW",
    (s) => (s.linux.seccomp = { defaultAction: "SCMP_ACT_ALLOW", syscalls: [{ names: ["kill"], action: "SCMP_ACT_ALLOW", errnoRet: 1 }] }),
    "linux.seccomp.syscalls[0].errnoRet",
    /only valid with action SCMP_ACT_ERRNO/,
  ],
  [
    "seccomp notify without listener",
    (s) => (s.linux.seccomp = { defaultAction: "SCMP_ACT_ALLOW", syscalls: [{ names: ["mount"], action: "SCMP_ACT_NOTIFY" }] }),
    "linux.seccomp.listenerPath",
    /required when a rule uses SCMP_ACT_NOTIFY/,
  ],
  ["seccomp arch", (s) => (s.linux.seccomp = { defaultAction: "SCMP_ACT_ALLOW", architectures: ["x86_64"] }), "linux.seccomp.architectures[0]", /must be one of/],
  ["personality domain", (s) => (s.linux.personality = { domain: "BSD" }), "linux.personality.domain", /LINUX, LINUX32/],
  ["intelRdt closID traversal", (s) => (s.linux.intelRdt = { closID: "../x" }), "linux.intelRdt.closID", /plain directory name/],
  ["linux wrong type", (s) => (s.linux = "linux"), "linux", "must be an object, got string"],
];

describe("validateSpec", () => {
  test("the default spec is valid", () => {
    expect(issuesOf(baseSpec())).toEqual([]);
  });

  test.each(cases)("%s", (_name, mutate, path, message) => {
    const spec = baseSpec();
    mutate(spec);
    const issues = issuesOf(spec);
    const atPath = issues.filter((issue) => issue.path === path);
    if (atPath.length === 0) throw new Error(`no issue at ${path}; got ${JSON.stringify(issues)}`);
    const matches = atPath.some((issue) =>
      typeof message === "string" ? issue.message === message : message.test(issue.message),
    );
    if (!matches) throw new Error(`issues at ${path} do not match ${message}: ${JSON.stringify(atPath)}`);
    expect(matches).toBe(true);
  });

  test("a non-object configuration is one issue", () => {
    expect(issuesOf([1, 2])).toEqual([{ path: "", message: "the configuration must be a JSON object, got array" }]);
  });

  test.each(["1.0.0", "1.0.2", "1.0.2-dev", "1.1.0-rc.1", "1.2.0", "1.2.1+build.5"])("ociVersion %s is accepted", (version) => {
    const spec = baseSpec();
    spec.ociVersion = version;
    expect(issuesOf(spec)).toEqual([]);
  });

  test("several problems are all reported, in document order", () => {
    const spec = baseSpec();
    spec.linux.cgroupsPath = 1;
    spec.process.cwd = "rel";
    spec.ociVersion = 3;
    const paths = issuesOf(spec).map((issue) => issue.path);
    expect(paths).toEqual(["ociVersion", "process.cwd", "linux.cgroupsPath"]);
  });

  test("null counts as absent for optional fields, as for Go runtimes", () => {
    const spec = baseSpec();
    spec.hooks = null;
    spec.annotations = null;
    spec.linux.seccomp = null;
    expect(issuesOf(spec)).toEqual([]);
  });

  test("unknown properties are ignored (runtime-spec Extensibility)", () => {
    const spec = baseSpec();
    spec.vendorThing = { anything: true };
    spec.process.somethingNew = 1;
    expect(issuesOf(spec)).toEqual([]);
  });

  test("consoleSize without terminal is ignored, as runtime-spec requires", () => {
    const spec = baseSpec();
    spec.process.terminal = false;
    spec.process.consoleSize = { height: 25, width: 80 };
    expect(issuesOf(spec)).toEqual([]);
  });

  test("forCreate=false needs neither process nor root nor an existing rootfs", () => {
    const spec = baseSpec();
    delete spec.process;
    spec.root.path = "gone";
    expect(issuesOf(spec, false)).toEqual([]);
    delete spec.root;
    expect(issuesOf(spec, false)).toEqual([]);
  });

  test("a fifo device needs no major/minor", () => {
    const spec = baseSpec();
    spec.linux.devices = [{ path: "/dev/myfifo", type: "p" }];
    expect(issuesOf(spec)).toEqual([]);
  });

  test("a joined user namespace needs no mappings", () => {
    const spec = baseSpec();
    spec.linux.namespaces.push({ type: "user", path: "/proc/1/ns/user" });
    expect(issuesOf(spec)).toEqual([]);
  });

  test("a full user-namespace config with a time namespace is valid", () => {
    const spec = withUserNamespace(baseSpec());
    spec.linux.namespaces.push({ type: "time" });
    spec.linux.timeOffsets = { monotonic: { secs: 3600, nanosecs: 0 }, boottime: { secs: -5 } };
    spec.process.user = { uid: 1000, gid: 1000, additionalGids: [5], umask: 0o22 };
    spec.linux.sysctl = { "net.ipv4.ip_forward": "1", "kernel.shmmax": "1000", "fs.mqueue.msg_max": "10" };
    spec.linux.devices = [{ path: "/dev/fuse", type: "c", major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 }];
    spec.linux.cgroupsPath = "/nano-kata-test/abc";
    spec.linux.resources.memory = { limit: 1 << 30, swap: -1 };
    spec.process.rlimits.push({ type: "RLIMIT_CORE", soft: 0, hard: 18446744073709551615 });
    spec.hooks = { createRuntime: [{ path: "/bin/true", args: ["true"], env: ["A=b"], timeout: 5 }] };
    spec.linux.seccomp = {
      defaultAction: "SCMP_ACT_ERRNO",
      defaultErrnoRet: 1,
      architectures: ["SCMP_ARCH_X86_64"],
      syscalls: [{ names: ["read", "write"], action: "SCMP_ACT_ALLOW", args: [{ index: 0, value: 1, op: "SCMP_CMP_EQ" }] }],
    };
    expect(issuesOf(spec)).toEqual([]);
  });
});

describe("assertValidSpec", () => {
  test("throws an invalid-spec SpecError with one `path: message` line per issue", () => {
    const spec = baseSpec();
    spec.process.cwd = "x";
    spec.process.capabilities.bounding.push("CAP_FOO");
    let caught: unknown;
    try {
      assertValidSpec(spec, { bundle, forCreate: true });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(SpecError);
    const error = caught as SpecError;
    expect(error.code).toBe("invalid-spec");
    expect(error.issues).toHaveLength(2);
    expect(error.message).toBe(
      ['process.cwd: must be an absolute path, got "x"', 'process.capabilities.bounding[3]: unknown capability "CAP_FOO"'].join("\n"),
    );
  });

  test("does not throw for a valid spec", () => {
    expect(() => assertValidSpec(baseSpec(), { bundle, forCreate: true })).not.toThrow();
  });
});
