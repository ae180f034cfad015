/**
 * Malformed and hostile input: each case must fail with a non-zero exit, an
 * error naming the offending field (or id), and nothing left behind (state
 * dir, cgroups, mounts, processes).
 *
 * Expected wording is per runtime: nano-kata prints "<field path>: <problem>"
 * (e.g. "process.cwd: must be an absolute path"); runc's own wording is
 * recorded so the table itself is validated on runc. `runc: null` marks a
 * case runc accepts (it only warns, or ignores the field) where nano-kata
 * deliberately refuses.
 */
import { afterAll, describe, expect } from "bun:test";
import { existsSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { BundleOptions, OciConfig } from "../helpers/bundle.ts";
import {
  assertNoLeftovers,
  createContainer,
  cleanupAll,
  deleteForce,
  expectFailure,
  firstReason,
  integrationSkipReason,
  newBundle,
  newHostDir,
  ok,
  rt,
  runContainerIn,
  runtimeKind,
  state,
  stateRootEntries,
  testIf,
} from "../helpers/runtime.ts";

const skip = integrationSkipReason();
afterAll(cleanupAll);

interface BadCase {
  name: string;
  bundle: BundleOptions;
  /** Substring nano-kata's error must contain (case-insensitive). */
  nk: string;
  /** Substring runc's error contains, or null when runc accepts the input. */
  runc: string | null;
}

const change = (fn: (c: OciConfig) => void): BundleOptions => ({ override: fn });
const withoutNs = (type: string) => (c: OciConfig) => {
  c.linux.namespaces = c.linux.namespaces.filter((n: { type: string }) => n.type !== type);
};
// baseConfig() has 6 mounts and 5 namespaces: appended entries get these indexes.
const NEW_MOUNT = 6;
const NEW_NS = 5;

const CASES: BadCase[] = [
  { name: "missing config.json", bundle: { noConfig: true }, nk: "config.json", runc: "config.json not found" },
  { name: "config.json is not JSON", bundle: { rawConfig: "{ not json" }, nk: "config.json", runc: "invalid character" },
  { name: "config.json is a JSON array", bundle: { rawConfig: "[]" }, nk: "JSON object", runc: "cannot unmarshal array" },
  { name: "ociVersion 2.0.0", bundle: change((c) => (c.ociVersion = "2.0.0")), nk: "ociVersion", runc: null },
  { name: "missing process", bundle: change((c) => delete c.process), nk: "process", runc: "process" },
  { name: "empty process.args", bundle: change((c) => (c.process.args = [])), nk: "process.args", runc: "args must not be empty" },
  { name: "relative process.cwd", bundle: change((c) => (c.process.cwd = "tmp")), nk: "process.cwd", runc: "cwd must be an absolute path" },
  { name: "negative process.user.uid", bundle: change((c) => (c.process.user.uid = -1)), nk: "process.user.uid", runc: "process.user.uid" },
  { name: "string process.user.uid", bundle: change((c) => (c.process.user.uid = "0")), nk: "process.user.uid", runc: "process.user.uid" },
  { name: "missing root", bundle: change((c) => delete c.root), nk: "root", runc: "root must be specified" },
  { name: "root.path does not exist", bundle: change((c) => (c.root.path = "/nonexistent/nkt-root")), nk: "root.path", runc: "/nonexistent/nkt-root" },
  { name: "root.path is a file", bundle: change((c) => (c.root.path = "/etc/hostname")), nk: "root.path", runc: "not a directory" },
  {
    name: "relative mount destination",
    bundle: change((c) => c.mounts.push({ destination: "mnt/tmpfs", type: "tmpfs", source: "tmpfs" })),
    nk: `mounts[${NEW_MOUNT}].destination`,
    runc: null, // runc 1.1 warns "is not absolute" and mounts it anyway
  },
  {
    name: "bind mount of a missing source",
    bundle: change((c) => c.mounts.push({ destination: "/mnt/ro", type: "bind", source: "/nonexistent/nkt-src", options: ["bind"] })),
    nk: "/nonexistent/nkt-src",
    runc: "/nonexistent/nkt-src",
  },
  {
    name: "mount of an unknown filesystem type",
    bundle: change((c) => c.mounts.push({ destination: "/mnt/tmpfs", type: "nkt-bogusfs", source: "x" })),
    nk: `mounts[${NEW_MOUNT}]`,
    runc: "no such device",
  },
  {
    name: "unknown namespace type",
    bundle: change((c) => c.linux.namespaces.push({ type: "bogus" })),
    nk: `linux.namespaces[${NEW_NS}].type`,
    runc: "bogus",
  },
  {
    name: "duplicate namespace",
    bundle: change((c) => c.linux.namespaces.push({ type: "pid" })),
    nk: `linux.namespaces[${NEW_NS}]`,
    runc: "duplicated ns",
  },
  {
    name: "namespace path that is not a namespace",
    bundle: change((c) => {
      c.linux.namespaces = c.linux.namespaces.map((n: { type: string }) => (n.type === "network" ? { type: "network", path: "/tmp" } : n));
    }),
    nk: "linux.namespaces[1]",
    runc: "setns",
  },
  {
    name: "uidMappings without a user namespace",
    bundle: change((c) => {
      c.linux.uidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
      c.linux.gidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
    }),
    nk: "linux.uidMappings",
    runc: null, // runc ignores the mappings
  },
  {
    name: "user namespace with an empty uid mapping",
    bundle: change((c) => {
      c.linux.namespaces.push({ type: "user" });
      c.linux.uidMappings = [{ containerID: 0, hostID: 100000, size: 0 }];
      c.linux.gidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
    }),
    nk: "linux.uidMappings[0].size",
    runc: "no user mapping",
  },
  { name: "hostname without a UTS namespace", bundle: change(withoutNs("uts")), nk: "hostname", runc: "hostname" },
  {
    name: "sysctl outside any namespace of the container",
    bundle: change((c) => (c.linux.sysctl = { "kernel.nkt_bogus": "1" })),
    nk: "kernel.nkt_bogus",
    runc: "kernel.nkt_bogus",
  },
  { name: "nonexistent executable (absolute)", bundle: { args: ["/bin/nkt-no-such-binary"] }, nk: "/bin/nkt-no-such-binary", runc: "/bin/nkt-no-such-binary" },
  { name: "nonexistent executable (PATH lookup)", bundle: { args: ["nkt-no-such-binary"] }, nk: "executable file not found", runc: "executable file not found" },
  {
    name: "RLIMIT_NOFILE above the host's hard limit",
    bundle: change((c) => (c.process.rlimits = [{ type: "RLIMIT_NOFILE", soft: 1048576, hard: 1048576 }])),
    nk: "RLIMIT_NOFILE",
    runc: "rlimit", // runc says "error setting rlimit type 7"
  },
  {
    name: "unknown rlimit type",
    bundle: change((c) => c.process.rlimits.push({ type: "RLIMIT_NKTBOGUS", soft: 1, hard: 1 })),
    nk: "RLIMIT_NKTBOGUS",
    runc: "RLIMIT_NKTBOGUS",
  },
  {
    name: "unknown capability",
    bundle: change((c) => c.process.capabilities.bounding.push("CAP_NKTBOGUS")),
    nk: "CAP_NKTBOGUS",
    runc: null, // runc warns "ignoring unknown or unavailable capabilities" and goes on
  },
];

describe("bad input: config.json", () => {
  for (const tc of CASES) {
    const runcAccepts = tc.runc === null ? "runc accepts this input (nano-kata refuses it deliberately)" : null;
    const reason = firstReason(skip, runtimeKind() === "runc" ? runcAccepts : null);
    testIf(reason, `create fails: ${tc.name}`, () => {
      const bundle = newBundle(tc.bundle);
      const r = createContainer(bundle);
      if (r.code === 0) deleteForce(bundle.id);
      expectFailure(r, { nk: tc.nk, runc: tc.runc ?? undefined });
      assertNoLeftovers(bundle.id, bundle.dir);
    });
  }
});

describe("bad input: container ids", () => {
  const ids: [string, string][] = [
    ["..", "dot-dot"],
    ["a/b", "a slash"],
    ["", "empty"],
    ["with space", "a space"],
    ["ünicode", "non-ASCII"],
    ["nkt\nline", "a newline"],
  ];
  for (const [id, what] of ids) {
    testIf(skip, `create refuses an id with ${what} (${JSON.stringify(id)})`, () => {
      const before = stateRootEntries();
      const bundle = newBundle();
      const r = createContainer(bundle, {}, id);
      expectFailure(r, { nk: "container id", runc: "container id" });
      assertNoLeftovers(id, bundle.dir, before);
    });
  }

  testIf(skip, "create refuses a duplicate id and leaves the first container alone", () => {
    const first = newBundle({ args: ["sh", "-c", "while :; do sleep 0.1; done"] });
    ok(createContainer(first));
    const pid = state(first.id).pid;
    const second = newBundle({ id: first.id });
    expectFailure(createContainer(second), { nk: first.id, runc: "already exists" });
    expect(state(first.id)).toMatchObject({ status: "created", pid, bundle: first.dir });
    ok(deleteForce(first.id));
    assertNoLeftovers(first.id, first.dir);
  });

  for (const verb of ["state", "start", "kill", "delete"]) {
    testIf(skip, `${verb} of an unknown id fails naming it`, () => {
      const id = "nkt-no-such-container";
      expectFailure(rt([verb, id]), { nk: id, runc: "does not exist" });
    });
  }
});

describe("bad input: hostile paths", () => {
  // CVE-2021-30465 family: a mount destination that walks through a symlink
  // pointing at "/" must be resolved inside the container's root, never on the host.
  testIf(skip, "a mount through a rootfs symlink to / lands inside the rootfs, not on the host", () => {
    const marker = `nkt-marker-${process.pid}-${Date.now()}`;
    const bundle = newBundle({
      prepareRootfs: (rootfs) => symlinkSync("/", join(rootfs, "evil")),
      args: ["sh", "-c", `grep ' /tmp/${marker} ' /proc/mounts`],
      override: (c) => c.mounts.push({ destination: `/evil/tmp/${marker}`, type: "tmpfs", source: "tmpfs" }),
    });
    const r = runContainerIn(bundle);
    expect(existsSync(`/tmp/${marker}`)).toBe(false);
    expect(readFileSync("/proc/self/mounts", "utf8")).not.toContain(marker);
    // Refusing the symlink is acceptable too; if the runtime went ahead, the
    // mount must be visible inside the container at the resolved path.
    if (r.code === 0) {
      expect(r.stdout).toContain(`/tmp/${marker} tmpfs`);
      expect(existsSync(join(bundle.rootfs, "tmp", marker))).toBe(true);
    }
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  // CVE-2024-21626: a leaked runtime fd to a host directory plus
  // cwd=/proc/self/fd/N put the container's cwd on the host filesystem.
  testIf(skip, "process.cwd=/proc/self/fd/N fails or stays inside the container (N = 3..9)", () => {
    for (let fd = 3; fd <= 9; fd++) {
      const bundle = newBundle({
        args: ["sh", "-c", "pwd -P; ls -a .. ../.."],
        override: (c) => (c.process.cwd = `/proc/self/fd/${fd}`),
      });
      const r = runContainerIn(bundle);
      if (r.code === 0) {
        expect(r.stdout).not.toContain("(unreachable)");
        expect(r.stdout).not.toContain("nkt-root-");
      }
      assertNoLeftovers(bundle.id, bundle.dir);
    }
  });

  testIf(skip, "root.path through a symlink chain to a file is refused", () => {
    const host = newHostDir();
    writeFileSync(join(host, "file"), "x");
    symlinkSync(join(host, "file"), join(host, "link"));
    const bundle = newBundle({ override: (c) => (c.root.path = join(host, "link")) });
    expectFailure(createContainer(bundle), { nk: "root.path", runc: "invalid rootfs" });
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});
