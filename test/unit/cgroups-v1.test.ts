/**
 * The v1 driver (and the manager on this host's hybrid layout) against a
 * temporary directory laid out like /sys/fs/cgroup, control files being
 * plain files. A tracer records every write in order; the files hold the
 * last value written.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { detectCgroupLayout } from "../../src/cgroups/detect.ts";
import { deviceRulesToV1Writes } from "../../src/cgroups/devices.ts";
import { CgroupError } from "../../src/cgroups/errors.ts";
import { openCgroupManager, reopenCgroupManager, type CgroupManager, type ControlWrite } from "../../src/cgroups/index.ts";
import type { LinuxResources } from "../../src/spec/types.ts";

/** The cgroup lines of this host's /proc/self/mountinfo (hybrid: v1 controllers, cgroup2 with hugetlb only). */
const HOST_MOUNTINFO = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:32 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
36 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
37 30 0:34 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
const HOST_LAYOUT = () => detectCgroupLayout({ mountinfo: HOST_MOUNTINFO, v2Controllers: "hugetlb" });

const UNLIMITED_V1 = "9223372036854771712";
const MiB = 1024 * 1024;

/** Control files of a fresh v1 cgroup, per hierarchy (what the kernel would show). */
const V1_FILES: Record<string, Record<string, string>> = {
  cpu: {
    "cpu.shares": "1024",
    "cpu.cfs_quota_us": "-1",
    "cpu.cfs_period_us": "100000",
    "cpu.cfs_burst_us": "0",
    "cpu.rt_period_us": "1000000",
    "cpu.rt_runtime_us": "0",
    "cpu.idle": "0",
    "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
  },
  cpuacct: { "cpuacct.usage": "0", "cpuacct.usage_percpu": "0 0", "cpuacct.usage_percpu_sys": "0 0", "cpuacct.usage_percpu_user": "0 0", "cpuacct.stat": "user 0\nsystem 0\n" },
  cpuset: { "cpuset.cpus": "", "cpuset.mems": "" },
  memory: {
    "memory.limit_in_bytes": UNLIMITED_V1,
    "memory.memsw.limit_in_bytes": UNLIMITED_V1,
    "memory.soft_limit_in_bytes": UNLIMITED_V1,
    "memory.swappiness": "60",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    "memory.usage_in_bytes": "0",
    "memory.max_usage_in_bytes": "0",
    "memory.failcnt": "0",
    "memory.stat": "cache 0\nrss 0\n",
  },
  devices: { "devices.allow": "", "devices.deny": "" },
  freezer: { "freezer.state": "THAWED" },
  blkio: {
    "blkio.weight": "100",
    "blkio.leaf_weight": "100",
    "blkio.weight_device": "",
    "blkio.leaf_weight_device": "",
    "blkio.throttle.read_bps_device": "",
    "blkio.throttle.write_bps_device": "",
    "blkio.throttle.read_iops_device": "",
    "blkio.throttle.write_iops_device": "",
  },
  pids: { "pids.max": "max", "pids.current": "0" },
  systemd: {},
  unified: { "cgroup.freeze": "0", "cgroup.events": "populated 0\nfrozen 0\n", "hugetlb.2MB.max": "max", "hugetlb.2MB.rsvd.max": "max", "hugetlb.2MB.current": "0", "hugetlb.2MB.events": "max 0\n" },
};

const roots: string[] = [];
afterAll(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

/** A fake /sys/fs/cgroup with the host's hierarchies; `cgroups` lists cgroup dirs (relative to each hierarchy) to pre-create with V1_FILES. */
function fakeRoot(cgroups: string[] = []): string {
  const root = mkdtempSync(join(tmpdir(), "nk-cgroups-v1-"));
  roots.push(root);
  for (const hierarchy of Object.keys(V1_FILES)) {
    const base = join(root, hierarchy);
    mkdirSync(base, { recursive: true });
    writeFileSync(join(base, "cgroup.procs"), "");
    for (const cgroup of cgroups) {
      const dir = join(base, cgroup);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, "cgroup.procs"), "");
      for (const [file, value] of Object.entries(V1_FILES[hierarchy]!)) writeFileSync(join(dir, file), value);
    }
  }
  writeFileSync(join(root, "cpuset", "cpuset.cpus"), "0-1\n");
  writeFileSync(join(root, "cpuset", "cpuset.mems"), "0\n");
  writeFileSync(join(root, "unified", "cgroup.controllers"), "hugetlb\n");
  writeFileSync(join(root, "unified", "cgroup.subtree_control"), "\n");
  return root;
}

function open(root: string, id = "c1", extra: { destroyTimeoutMs?: number } = {}): { manager: CgroupManager; writes: ControlWrite[] } {
  const writes: ControlWrite[] = [];
  const manager = openCgroupManager({
    cgroupsPath: `/nano-kata-test/${id}`,
    id,
    layout: HOST_LAYOUT(),
    root,
    trace: (w) => writes.push(w),
    ...extra,
  });
  return { manager, writes };
}

function rel(root: string, writes: ControlWrite[]): [string, string][] {
  return writes.map((w) => [relative(root, w.path), w.value]);
}

function read(root: string, path: string): string {
  return readFileSync(join(root, path), "utf8");
}

function errorOf(fn: () => unknown): CgroupError {
  try {
    fn();
  } catch (error) {
    if (error instanceof CgroupError) return error;
    throw error;
  }
  throw new Error("expected a CgroupError");
}

const BROAD: LinuxResources = {
  devices: [
    { allow: false, access: "rwm" },
    { allow: true, type: "c", major: 1, minor: 3, access: "rwm" },
    { allow: true, type: "c", major: 136, access: "rw" },
    { allow: false, type: "b", major: 8, minor: 0, access: "m" },
  ],
  memory: { limit: 256 * MiB, reservation: 128 * MiB, swap: 512 * MiB, swappiness: 10, disableOOMKiller: true, kernel: 64 * MiB, kernelTCP: MiB },
  cpu: { shares: 512, quota: 50000, period: 200000, burst: 1000, realtimeRuntime: 950, realtimePeriod: 1000, cpus: "0", mems: "0", idle: 1 },
  pids: { limit: 42 },
  blockIO: {
    weight: 500,
    leafWeight: 300,
    weightDevice: [{ major: 8, minor: 0, weight: 600, leafWeight: 700 }],
    throttleReadBpsDevice: [{ major: 8, minor: 0, rate: 1048576 }],
    throttleWriteBpsDevice: [{ major: 8, minor: 16, rate: 2097152 }],
    throttleReadIOPSDevice: [{ major: 8, minor: 0, rate: 100 }],
    throttleWriteIOPSDevice: [{ major: 8, minor: 0, rate: 200 }],
  },
  hugepageLimits: [{ pageSize: "2MB", limit: 4 * MiB }],
};

describe("v1 applyResources on this host's layout", () => {
  test("writes exactly these files, in this order, with these values", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager, writes } = open(root);
    manager.applyResources(BROAD);
    const c = "nano-kata-test/c1";
    expect(rel(root, writes)).toEqual([
      [`cpuset/${c}/cpuset.cpus`, "0"],
      [`cpuset/${c}/cpuset.mems`, "0"],
      [`devices/${c}/devices.deny`, "a"],
      [`devices/${c}/devices.deny`, "a"],
      [`devices/${c}/devices.allow`, "c 1:3 rwm"],
      [`devices/${c}/devices.allow`, "c 136:* rw"],
      [`devices/${c}/devices.deny`, "b 8:0 m"],
      [`memory/${c}/memory.soft_limit_in_bytes`, String(128 * MiB)],
      // the new memsw (512M) is below the current limit (unlimited): lower the limit first
      [`memory/${c}/memory.limit_in_bytes`, String(256 * MiB)],
      [`memory/${c}/memory.memsw.limit_in_bytes`, String(512 * MiB)],
      [`memory/${c}/memory.swappiness`, "10"],
      [`memory/${c}/memory.oom_control`, "1"],
      [`cpu/${c}/cpu.shares`, "512"],
      [`cpu/${c}/cpu.cfs_period_us`, "200000"],
      [`cpu/${c}/cpu.cfs_quota_us`, "50000"],
      [`cpu/${c}/cpu.cfs_burst_us`, "1000"],
      [`cpu/${c}/cpu.rt_period_us`, "1000"],
      [`cpu/${c}/cpu.rt_runtime_us`, "950"],
      [`cpu/${c}/cpu.idle`, "1"],
      [`pids/${c}/pids.max`, "42"],
      [`blkio/${c}/blkio.weight`, "500"],
      [`blkio/${c}/blkio.leaf_weight`, "300"],
      [`blkio/${c}/blkio.weight_device`, "8:0 600"],
      [`blkio/${c}/blkio.leaf_weight_device`, "8:0 700"],
      [`blkio/${c}/blkio.throttle.read_bps_device`, "8:0 1048576"],
      [`blkio/${c}/blkio.throttle.write_bps_device`, "8:16 2097152"],
      [`blkio/${c}/blkio.throttle.read_iops_device`, "8:0 100"],
      [`blkio/${c}/blkio.throttle.write_iops_device`, "8:0 200"],
      // hugetlb is not mounted as v1 here: cgroup2 drives it
      [`unified/${c}/hugetlb.2MB.max`, String(4 * MiB)],
      [`unified/${c}/hugetlb.2MB.rsvd.max`, String(4 * MiB)],
    ]);
    // Every write names the spec field it carries out.
    expect(writes.find((w) => w.path.endsWith("memory.memsw.limit_in_bytes"))!.field).toBe("linux.resources.memory.swap");
    expect(writes.find((w) => w.value === "c 136:* rw")!.field).toBe("linux.resources.devices[2]");
    expect(writes.find((w) => w.path.endsWith("hugetlb.2MB.max"))!.field).toBe("linux.resources.hugepageLimits[0].limit");
    // And the files hold the values.
    expect(read(root, `memory/${c}/memory.limit_in_bytes`)).toBe(String(256 * MiB));
    expect(read(root, `pids/${c}/pids.max`)).toBe("42");
    // kernel / kernelTCP are ignored (deprecated), as runc does: no kmem writes.
    expect(writes.some((w) => w.path.includes("kmem"))).toBe(false);
  });

  test("update raising limit and swap above the current limit writes memsw first", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    writeFileSync(join(root, "memory/nano-kata-test/c1/memory.limit_in_bytes"), String(100 * MiB));
    writeFileSync(join(root, "memory/nano-kata-test/c1/memory.memsw.limit_in_bytes"), String(200 * MiB));
    const { manager, writes } = open(root);
    manager.applyResources({ memory: { limit: 300 * MiB, swap: 400 * MiB } }, { update: true });
    expect(writes.map((w) => w.path.split("/").pop())).toEqual(["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]);
  });

  test("update lowering both below the current limit writes the limit first", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    writeFileSync(join(root, "memory/nano-kata-test/c1/memory.limit_in_bytes"), String(100 * MiB));
    writeFileSync(join(root, "memory/nano-kata-test/c1/memory.memsw.limit_in_bytes"), String(200 * MiB));
    const { manager, writes } = open(root);
    manager.applyResources({ memory: { limit: 50 * MiB, swap: 80 * MiB } }, { update: true });
    expect(writes.map((w) => [w.path.split("/").pop(), w.value])).toEqual([
      ["memory.limit_in_bytes", String(50 * MiB)],
      ["memory.memsw.limit_in_bytes", String(80 * MiB)],
    ]);
  });

  test("an unlimited memory limit without swap also lifts memsw (first, so limit <= memsw holds)", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager, writes } = open(root);
    manager.applyResources({ memory: { limit: -1 } });
    expect(writes.map((w) => [w.path.split("/").pop(), w.value])).toEqual([
      ["memory.memsw.limit_in_bytes", "-1"],
      ["memory.limit_in_bytes", "-1"],
    ]);
  });

  test("swap without memsw accounting is an error naming the spec field and the missing file", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    rmSync(join(root, "memory/nano-kata-test/c1/memory.memsw.limit_in_bytes"));
    const { manager, writes } = open(root);
    const error = errorOf(() => manager.applyResources({ memory: { limit: 64 * MiB, swap: 128 * MiB } }));
    expect(error.code).toBe("cgroup-resource-unsupported");
    expect(error.message).toBe(
      "linux.resources.memory.swap: not supported by this host (memory.memsw.limit_in_bytes missing)",
    );
    expect(writes).toEqual([]);
  });

  test("swap below the limit is refused before any write", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager, writes } = open(root);
    expect(errorOf(() => manager.applyResources({ memory: { limit: 128 * MiB, swap: 64 * MiB } })).code).toBe("cgroup-resource-invalid");
    expect(writes).toEqual([]);
  });

  test("a missing control file names the field (blkio weight without CFQ/BFQ)", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    rmSync(join(root, "blkio/nano-kata-test/c1/blkio.weight"));
    const { manager } = open(root);
    const error = errorOf(() => manager.applyResources({ blockIO: { weight: 300 } }));
    expect(error.code).toBe("cgroup-resource-unsupported");
    expect(error.message).toBe("linux.resources.blockIO.weight: not supported by this host (blkio.weight missing)");
  });

  test("blkio weights fall back to BFQ's files", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const dir = join(root, "blkio/nano-kata-test/c1");
    rmSync(join(dir, "blkio.weight"));
    writeFileSync(join(dir, "blkio.bfq.weight"), "100");
    writeFileSync(join(dir, "blkio.bfq.weight_device"), "");
    const { manager, writes } = open(root);
    manager.applyResources({ blockIO: { weight: 300, weightDevice: [{ major: 8, minor: 0, weight: 400 }] } });
    expect(writes.map((w) => [w.path.split("/").pop(), w.value])).toEqual([
      ["blkio.bfq.weight", "300"],
      ["blkio.bfq.weight_device", "8:0 400"],
    ]);
  });

  test("controllers this host does not mount are errors naming the field", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager } = open(root);
    const error = errorOf(() => manager.applyResources({ network: { classID: 0x100001 } }));
    expect(error.code).toBe("cgroup-resource-unsupported");
    expect(error.message).toStartWith("linux.resources.network.classID: not supported by this host");
    expect(errorOf(() => manager.applyResources({ rdma: { mlx5_0: { hcaHandles: 3 } } })).message).toStartWith("linux.resources.rdma");
  });

  test("pids limit 0 or negative means max", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager } = open(root);
    manager.applyResources({ pids: { limit: 0 } });
    expect(read(root, "pids/nano-kata-test/c1/pids.max")).toBe("max");
    manager.applyResources({ pids: { limit: -1 } });
    expect(read(root, "pids/nano-kata-test/c1/pids.max")).toBe("max");
  });

  test("unified keys on hybrid go to the cgroup2 directory; traversal is refused", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager, writes } = open(root);
    manager.applyResources({ unified: { "hugetlb.2MB.max": "8388608" } });
    expect(rel(root, writes)).toEqual([["unified/nano-kata-test/c1/hugetlb.2MB.max", "8388608"]]);
    expect(errorOf(() => manager.applyResources({ unified: { "../../cpu/cpu.shares": "2" } })).code).toBe("cgroup-resource-invalid");
  });

  test("invalid values are refused (page size, swappiness, device number)", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager } = open(root);
    expect(errorOf(() => manager.applyResources({ hugepageLimits: [{ pageSize: "../2MB", limit: 1 }] })).code).toBe("cgroup-resource-invalid");
    expect(errorOf(() => manager.applyResources({ memory: { swappiness: 101 } })).code).toBe("cgroup-resource-invalid");
    expect(errorOf(() => manager.applyResources({ devices: [{ allow: true, type: "c", major: -5 }] })).code).toBe("cgroup-resource-invalid");
  });
});

describe("deviceRulesToV1Writes", () => {
  test("starts from deny-all and keeps spec order", () => {
    const writes = deviceRulesToV1Writes([
      { allow: true, type: "c", major: 1, minor: 5, access: "rwm" },
      { allow: false, type: "c", major: 1, minor: 5, access: "w" },
    ]);
    expect(writes).toEqual([
      { file: "devices.deny", value: "a", field: "linux.resources.devices" },
      { file: "devices.allow", value: "c 1:5 rwm", field: "linux.resources.devices[0]" },
      { file: "devices.deny", value: "c 1:5 w", field: "linux.resources.devices[1]" },
    ]);
  });

  test('"all" with full access switches the default; a narrower "all" rule is spelled as c and b', () => {
    expect(deviceRulesToV1Writes([{ allow: true }]).map((w) => `${w.file} ${w.value}`)).toEqual(["devices.deny a", "devices.allow a"]);
    // The kernel would read "a *:* r" as allow EVERYTHING; write it per type instead.
    expect(deviceRulesToV1Writes([{ allow: true, type: "a", access: "r" }]).map((w) => `${w.file} ${w.value}`)).toEqual([
      "devices.deny a",
      "devices.allow c *:* r",
      "devices.allow b *:* r",
    ]);
  });

  test("-1 and absent numbers are wildcards; absent access is rwm; bad access is refused", () => {
    expect(deviceRulesToV1Writes([{ allow: true, type: "b", major: -1, minor: 3 }])[1]!.value).toBe("b *:3 rwm");
    expect(errorOf(() => deviceRulesToV1Writes([{ allow: true, type: "c", access: "rx" }])).code).toBe("cgroup-resource-invalid");
    expect(errorOf(() => deviceRulesToV1Writes([{ allow: true, type: "c", access: "rr" }])).code).toBe("cgroup-resource-invalid");
    expect(errorOf(() => deviceRulesToV1Writes([{ allow: true, type: "x" as never }])).code).toBe("cgroup-resource-invalid");
  });
});

describe("v1 create / destroy / reopen on a fake root", () => {
  const hierarchies = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", "unified"];

  test("paths map each controller (and name=systemd, unified) to its directory", () => {
    const root = fakeRoot();
    const { manager } = open(root);
    expect(manager.paths).toEqual({
      cpu: join(root, "cpu/nano-kata-test/c1"),
      cpuacct: join(root, "cpuacct/nano-kata-test/c1"),
      cpuset: join(root, "cpuset/nano-kata-test/c1"),
      memory: join(root, "memory/nano-kata-test/c1"),
      devices: join(root, "devices/nano-kata-test/c1"),
      freezer: join(root, "freezer/nano-kata-test/c1"),
      blkio: join(root, "blkio/nano-kata-test/c1"),
      pids: join(root, "pids/nano-kata-test/c1"),
      "name=systemd": join(root, "systemd/nano-kata-test/c1"),
      unified: join(root, "unified/nano-kata-test/c1"),
    });
  });

  test("create makes the directories, destroy removes exactly those (not a parent that was there)", () => {
    const root = fakeRoot();
    mkdirSync(join(root, "memory/nano-kata-test"));
    const { manager } = open(root);
    const planned = manager.toJSON().created;
    manager.create();
    for (const h of hierarchies) expect(existsSync(join(root, h, "nano-kata-test/c1"))).toBe(true);
    const saved = manager.toJSON();
    expect(saved.created).toEqual(planned);
    expect(saved.created).toContain(join(root, "cpu/nano-kata-test"));
    expect(saved.created).not.toContain(join(root, "memory/nano-kata-test"));
    expect(saved.created).toHaveLength(hierarchies.length * 2 - 1);

    // Reopen from what a state file would hold, then destroy.
    const reopened = reopenCgroupManager(JSON.parse(JSON.stringify(saved)), { root });
    reopened.destroy();
    for (const h of hierarchies) expect(existsSync(join(root, h, "nano-kata-test/c1"))).toBe(false);
    expect(existsSync(join(root, "cpu/nano-kata-test"))).toBe(false);
    expect(existsSync(join(root, "memory/nano-kata-test"))).toBe(true);
    expect(reopened.toJSON().created).toEqual([]);
    reopened.destroy(); // a second destroy is a no-op
  });

  test("cpuset: empty cpus/mems are filled from the parent, from the root down", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    writeFileSync(join(root, "cpuset/nano-kata-test/cpuset.cpus"), "");
    writeFileSync(join(root, "cpuset/nano-kata-test/cpuset.mems"), "");
    const { manager, writes } = open(root);
    manager.create();
    expect(rel(root, writes.filter((w) => w.path.includes("/cpuset/")))).toEqual([
      ["cpuset/nano-kata-test/cpuset.cpus", "0-1"],
      ["cpuset/nano-kata-test/cpuset.mems", "0"],
      ["cpuset/nano-kata-test/c1/cpuset.cpus", "0-1"],
      ["cpuset/nano-kata-test/c1/cpuset.mems", "0"],
    ]);
  });

  test("create enables hugetlb for the unified hierarchy in every ancestor", () => {
    const root = fakeRoot();
    const { manager, writes } = open(root);
    manager.create();
    expect(rel(root, writes.filter((w) => w.path.endsWith("subtree_control")))).toEqual([["unified/cgroup.subtree_control", "+hugetlb"]]);
  });

  test("create on a cgroup that has processes is cgroup-not-empty and leaves nothing behind", () => {
    const root = fakeRoot();
    mkdirSync(join(root, "pids/nano-kata-test/c1"), { recursive: true });
    writeFileSync(join(root, "pids/nano-kata-test/c1/cgroup.procs"), "4242\n");
    const { manager } = open(root);
    const error = errorOf(() => manager.create());
    expect(error.code).toBe("cgroup-not-empty");
    expect(error.message).toContain(join(root, "pids/nano-kata-test/c1"));
    expect(error.message).toContain("4242");
    expect(existsSync(join(root, "cpu/nano-kata-test"))).toBe(false);
    expect(existsSync(join(root, "memory/nano-kata-test"))).toBe(false);
  });

  test("destroy waits, then reports cgroup-busy while processes remain, and removes nothing", () => {
    const root = fakeRoot();
    const { manager } = open(root, "c1", { destroyTimeoutMs: 50 });
    manager.create();
    writeFileSync(join(root, "freezer/nano-kata-test/c1/cgroup.procs"), "777\n");
    const started = Date.now();
    const error = errorOf(() => manager.destroy());
    expect(Date.now() - started).toBeGreaterThanOrEqual(45);
    expect(error.code).toBe("cgroup-busy");
    expect(error.message).toContain("777");
    expect(existsSync(join(root, "cpu/nano-kata-test/c1"))).toBe(true);
    // Once empty (our fake file gone), destroy succeeds.
    rmSync(join(root, "freezer/nano-kata-test/c1/cgroup.procs"));
    manager.destroy();
    expect(existsSync(join(root, "freezer/nano-kata-test"))).toBe(false);
  });

  test("reopen refuses records pointing outside the cgroup root or at a hierarchy root", () => {
    const root = fakeRoot();
    const { manager } = open(root);
    const good = manager.toJSON();
    const tamper = (change: (s: typeof good) => void) => {
      const copy = JSON.parse(JSON.stringify(good));
      change(copy);
      return errorOf(() => reopenCgroupManager(copy, { root })).code;
    };
    expect(tamper((s) => (s.hierarchies[0]!.dir = "/etc/x"))).toBe("cgroup-state-invalid");
    expect(tamper((s) => (s.hierarchies[0]!.dir = `${s.hierarchies[0]!.mountpoint}/a/../../etc`))).toBe("cgroup-state-invalid");
    expect(tamper((s) => s.created.push(s.hierarchies[0]!.mountpoint))).toBe("cgroup-state-invalid");
    expect(tamper((s) => s.created.push(join(root, "cpu/other")))).toBe("cgroup-state-invalid");
    expect(tamper((s) => ((s as { version: number }).version = 2))).toBe("cgroup-state-invalid");
    expect(errorOf(() => reopenCgroupManager(good)).code).toBe("cgroup-state-invalid"); // default root is /sys/fs/cgroup
  });

  test("before create, destroy and killAll of an unmade cgroup are harmless no-ops", () => {
    const root = fakeRoot();
    const { manager } = open(root);
    expect(manager.processes()).toEqual([]);
    manager.killAll(9);
    manager.destroy();
    expect(existsSync(join(root, "cpu/nano-kata-test"))).toBe(false);
  });
});

describe("v1 freezer, processes, killAll, stats", () => {
  test("freeze / thaw write freezer.state and state() reads it", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager, writes } = open(root);
    expect(manager.state()).toBe("thawed");
    manager.freeze();
    expect(read(root, "freezer/nano-kata-test/c1/freezer.state")).toBe("FROZEN");
    expect(manager.state()).toBe("frozen");
    manager.thaw();
    expect(manager.state()).toBe("thawed");
    expect(rel(root, writes)).toEqual([
      ["freezer/nano-kata-test/c1/freezer.state", "FROZEN"],
      ["freezer/nano-kata-test/c1/freezer.state", "THAWED"],
    ]);
  });

  test("addProcess writes the pid into every hierarchy once; processes() reads pids (with sub-cgroups)", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager, writes } = open(root);
    manager.addProcess(1234);
    expect(writes.map((w) => relative(root, w.path)).sort()).toEqual(
      ["blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd", "unified"].map((h) => `${h}/nano-kata-test/c1/cgroup.procs`),
    );
    mkdirSync(join(root, "pids/nano-kata-test/c1/inner"));
    writeFileSync(join(root, "pids/nano-kata-test/c1/cgroup.procs"), "30\n10\n");
    writeFileSync(join(root, "pids/nano-kata-test/c1/inner/cgroup.procs"), "20\n10\n");
    expect(manager.processes()).toEqual([10, 20, 30]);
  });

  test("killAll freezes, signals each pid, thaws", async () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const { manager, writes } = open(root);
    const child = spawn("sleep", ["30"], { stdio: "ignore" });
    const exited = new Promise<string | null>((resolve) => child.on("exit", (_code, signal) => resolve(signal)));
    writeFileSync(join(root, "pids/nano-kata-test/c1/cgroup.procs"), `${child.pid}\n`);
    manager.killAll(15);
    expect(await exited).toBe("SIGTERM");
    expect(writes.map((w) => w.value)).toEqual(["FROZEN", "THAWED"]);
  });

  test("stats reads cpuacct, cpu, memory, pids, blkio and unified hugetlb", () => {
    const root = fakeRoot(["nano-kata-test/c1"]);
    const c = (h: string, f: string, v: string) => writeFileSync(join(root, h, "nano-kata-test/c1", f), v);
    c("cpuacct", "cpuacct.usage", "123456789\n");
    c("cpuacct", "cpuacct.usage_percpu", "100000000 23456789 \n");
    c("cpuacct", "cpuacct.stat", "user 7\nsystem 3\n");
    c("cpu", "cpu.stat", "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n");
    c("memory", "memory.usage_in_bytes", "4096\n");
    c("memory", "memory.max_usage_in_bytes", "8192\n");
    c("memory", "memory.limit_in_bytes", "268435456\n");
    c("memory", "memory.failcnt", "3\n");
    c("memory", "memory.memsw.usage_in_bytes", "5000\n");
    c("memory", "memory.stat", "cache 1024\nrss 2048\n");
    c("memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
    c("pids", "pids.current", "5\n");
    c("pids", "pids.max", "42\n");
    c("blkio", "blkio.throttle.io_service_bytes_recursive", "8:0 Read 4096\n8:0 Write 512\nTotal 4608\n");
    c("blkio", "blkio.throttle.io_serviced_recursive", "8:0 Read 1\n8:0 Write 1\nTotal 2\n");
    c("unified", "hugetlb.2MB.current", "2097152\n");
    c("unified", "hugetlb.2MB.events", "max 4\n");

    const { manager } = open(root);
    const stats = manager.stats();
    expect(stats.cpu.usage.total).toBe(123456789);
    expect(stats.cpu.usage.percpu).toEqual([100000000, 23456789]);
    expect(stats.cpu.usage.user).toBe(70_000_000);
    expect(stats.cpu.usage.kernel).toBe(30_000_000);
    expect(stats.cpu.throttling).toEqual({ periods: 10, throttledPeriods: 2, throttledTime: 5000 });
    expect(stats.memory.usage).toEqual({ usage: 4096, max: 8192, limit: 268435456, failcnt: 3 });
    expect(stats.memory.swap.usage).toBe(5000);
    expect(stats.memory.cache).toBe(1024);
    expect(stats.memory.raw.rss).toBe(2048);
    expect(stats.pids).toEqual({ current: 5, limit: 42 });
    expect(stats.blkio.ioServiceBytesRecursive).toEqual([
      { major: 8, minor: 0, op: "Read", value: 4096 },
      { major: 8, minor: 0, op: "Write", value: 512 },
    ]);
    expect(stats.blkio.ioServicedRecursive).toHaveLength(2);
    expect(stats.hugetlb).toEqual({ "2MB": { usage: 2097152, max: 0, failcnt: 4 } });
    expect(manager.oomKillCount()).toBe(2);
  });
});
