/**
 * The v2 driver against a temporary directory laid out like a pure cgroup v2
 * /sys/fs/cgroup (control files as plain files).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { blkioWeightToIoWeight, cpuSharesToWeight, memorySwapToV2 } from "../../src/cgroups/convert.ts";
import { detectCgroupLayout } from "../../src/cgroups/detect.ts";
import { CgroupError } from "../../src/cgroups/errors.ts";
import { openCgroupManager, type CgroupManager, type ControlWrite } from "../../src/cgroups/index.ts";
import type { LinuxResources } from "../../src/spec/types.ts";
import { fakeBpf } from "../helpers/fake-bpf.ts";

const V2_MOUNTINFO = `24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`;
const CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc";
const LAYOUT = () => detectCgroupLayout({ mountinfo: V2_MOUNTINFO, v2Controllers: CONTROLLERS });
const MiB = 1024 * 1024;

const LEAF_FILES: Record<string, string> = {
  "cgroup.procs": "",
  "cgroup.controllers": "",
  "cgroup.subtree_control": "",
  "cgroup.freeze": "0",
  "cgroup.events": "populated 0\nfrozen 0\n",
  "cgroup.kill": "",
  "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
  "cpu.weight": "100",
  "cpu.max": "max 100000",
  "cpu.max.burst": "0",
  "cpu.idle": "0",
  "cpuset.cpus": "",
  "cpuset.mems": "",
  "memory.max": "max",
  "memory.low": "0",
  "memory.swap.max": "max",
  "memory.current": "0",
  "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
  "memory.stat": "anon 0\nfile 0\n",
  "memory.high": "max",
  "pids.max": "max",
  "pids.current": "0",
  "io.weight": "default 100",
  "io.max": "",
  "io.stat": "",
  "hugetlb.2MB.max": "max",
  "hugetlb.2MB.current": "0",
  "hugetlb.2MB.events": "max 0\n",
};

const roots: string[] = [];
afterAll(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

function fakeV2Root(): string {
  const root = mkdtempSync(join(tmpdir(), "nk-cgroups-v2-"));
  roots.push(root);
  writeFileSync(join(root, "cgroup.controllers"), CONTROLLERS + "\n");
  writeFileSync(join(root, "cgroup.subtree_control"), "\n");
  writeFileSync(join(root, "cgroup.procs"), "");
  const parent = join(root, "nano-kata-test");
  mkdirSync(join(parent, "c1"), { recursive: true });
  writeFileSync(join(parent, "cgroup.controllers"), CONTROLLERS + "\n");
  writeFileSync(join(parent, "cgroup.subtree_control"), "cpu memory\n");
  writeFileSync(join(parent, "cgroup.procs"), "");
  for (const [file, value] of Object.entries(LEAF_FILES)) writeFileSync(join(parent, "c1", file), value);
  return root;
}

function open(root: string, extra: { freezeTimeoutMs?: number } = {}) {
  const writes: ControlWrite[] = [];
  const warnings: string[] = [];
  const bpf = fakeBpf();
  const manager: CgroupManager = openCgroupManager({
    cgroupsPath: "/nano-kata-test/c1",
    id: "c1",
    layout: LAYOUT(),
    root,
    trace: (w) => writes.push(w),
    warn: (m) => warnings.push(m),
    bpf,
    ...extra,
  });
  const rel = () => writes.map((w) => [relative(root, w.path), w.value]);
  return { manager, writes, warnings, rel, bpf };
}

function leaf(root: string, file: string): string {
  return readFileSync(join(root, "nano-kata-test/c1", file), "utf8");
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
  devices: [{ allow: false, access: "rwm" }, { allow: true, type: "c", major: 1, minor: 3, access: "rwm" }],
  memory: { limit: 256 * MiB, reservation: 128 * MiB, swap: 512 * MiB, kernel: 64 * MiB },
  cpu: { shares: 512, quota: 50000, period: 200000, burst: 1000, cpus: "0-1", mems: "0", idle: 0 },
  pids: { limit: 42 },
  blockIO: {
    weight: 500,
    weightDevice: [{ major: 8, minor: 0, weight: 600 }],
    throttleReadBpsDevice: [{ major: 8, minor: 0, rate: 1048576 }],
    throttleWriteBpsDevice: [{ major: 8, minor: 16, rate: 2097152 }],
    throttleReadIOPSDevice: [{ major: 8, minor: 0, rate: 100 }],
    throttleWriteIOPSDevice: [{ major: 8, minor: 0, rate: 0 }],
  },
  hugepageLimits: [{ pageSize: "2MB", limit: 4 * MiB }],
  unified: { "memory.high": "300000000" },
};

describe("v1 -> v2 conversions", () => {
  test("cpu shares -> cpu.weight: 1 + ((shares - 2) * 9999) / 262142", () => {
    expect(cpuSharesToWeight(2)).toBe(1);
    expect(cpuSharesToWeight(1024)).toBe(39);
    expect(cpuSharesToWeight(512)).toBe(20);
    expect(cpuSharesToWeight(262144)).toBe(10000);
    expect(cpuSharesToWeight(0)).toBe(0); // unset
  });

  test("blkio weight -> io.weight: 1 + ((weight - 10) * 9999) / 990", () => {
    expect(blkioWeightToIoWeight(10)).toBe(1);
    expect(blkioWeightToIoWeight(500)).toBe(4950); // 1 + 490 * 9999 / 990 = 1 + 4949
    expect(blkioWeightToIoWeight(1000)).toBe(10000);
  });

  test("memory+swap -> swap alone", () => {
    expect(memorySwapToV2(512, 256)).toBe(256);
    expect(memorySwapToV2(256, 256)).toBe(0);
    expect(memorySwapToV2(-1, 256)).toBe(-1);
    expect(memorySwapToV2(undefined, -1)).toBe(-1);
    expect(memorySwapToV2(undefined, 256)).toBeUndefined();
    expect(errorOf(() => memorySwapToV2(100, 256)).code).toBe("cgroup-resource-invalid");
    expect(errorOf(() => memorySwapToV2(512, undefined)).code).toBe("cgroup-resource-invalid");
  });
});

describe("v2 applyResources", () => {
  test("writes exactly these files with these values", () => {
    const root = fakeV2Root();
    const { manager, rel, warnings, writes, bpf } = open(root);
    manager.applyResources(BROAD);
    const c = "nano-kata-test/c1";
    expect(rel()).toEqual([
      [`${c}/cpuset.cpus`, "0-1"],
      [`${c}/cpuset.mems`, "0"],
      [`${c}/memory.low`, String(128 * MiB)],
      [`${c}/memory.swap.max`, String(256 * MiB)],
      [`${c}/memory.max`, String(256 * MiB)],
      [`${c}/cpu.weight`, "20"],
      [`${c}/cpu.max`, "50000 200000"],
      [`${c}/cpu.max.burst`, "1000"],
      [`${c}/cpu.idle`, "0"],
      [`${c}/pids.max`, "42"],
      [`${c}/io.weight`, "default 4950"],
      [`${c}/io.weight`, "8:0 5960"],
      [`${c}/io.max`, "8:0 rbps=1048576 riops=100 wiops=max"],
      [`${c}/io.max`, "8:16 wbps=2097152"],
      [`${c}/hugetlb.2MB.max`, String(4 * MiB)],
      [`${c}/memory.high`, "300000000"],
    ]);
    expect(writes.find((w) => w.path.endsWith("memory.high"))!.field).toBe('linux.resources.unified["memory.high"]');
    expect(writes.find((w) => w.value === "8:16 wbps=2097152")!.field).toBe("linux.resources.blockIO.throttleWriteBpsDevice[0]");
    // Device rules: no file written; one eBPF program attached to the container's cgroup.
    expect(warnings).toEqual([]);
    const deviceCgroup = join(root, c);
    expect(bpf.attached(deviceCgroup).length).toBe(1);
    expect(bpf.verdict(deviceCgroup, { type: 2, major: 1, minor: 3, access: 6 })).toBe(true);
    expect(bpf.verdict(deviceCgroup, { type: 2, major: 1, minor: 5, access: 2 })).toBe(false);
    expect(leaf(root, "cpu.max")).toBe("50000 200000");
  });

  test("io.bfq.weight, when present, takes the blkio scale unconverted", () => {
    const root = fakeV2Root();
    writeFileSync(join(root, "nano-kata-test/c1/io.bfq.weight"), "default 100");
    const { manager, rel } = open(root);
    manager.applyResources({ blockIO: { weight: 500 } });
    expect(rel()).toEqual([["nano-kata-test/c1/io.bfq.weight", "default 500"]]);
  });

  test("cpu.max: an update of the period alone keeps the current quota; quota <= 0 is max", () => {
    const root = fakeV2Root();
    writeFileSync(join(root, "nano-kata-test/c1/cpu.max"), "30000 100000\n");
    const { manager } = open(root);
    manager.applyResources({ cpu: { period: 250000 } }, { update: true });
    expect(leaf(root, "cpu.max")).toBe("30000 250000");
    manager.applyResources({ cpu: { quota: -1 } }, { update: true });
    expect(leaf(root, "cpu.max")).toBe("max 250000");
  });

  test("unlimited memory also lifts swap; -1 is written as max", () => {
    const root = fakeV2Root();
    const { manager, rel } = open(root);
    manager.applyResources({ memory: { limit: -1 } });
    expect(rel()).toEqual([
      ["nano-kata-test/c1/memory.swap.max", "max"],
      ["nano-kata-test/c1/memory.max", "max"],
    ]);
  });

  test("settings with no v2 equivalent are errors naming the field", () => {
    const root = fakeV2Root();
    const { manager, writes } = open(root);
    const cases: [LinuxResources, string][] = [
      [{ memory: { swappiness: 10 } }, "linux.resources.memory.swappiness"],
      [{ memory: { disableOOMKiller: true } }, "linux.resources.memory.disableOOMKiller"],
      [{ cpu: { realtimeRuntime: 100 } }, "linux.resources.cpu.realtimeRuntime"],
      [{ blockIO: { leafWeight: 100 } }, "linux.resources.blockIO.leafWeight"],
      [{ network: { classID: 1 } }, "linux.resources.network.classID"],
    ];
    for (const [resources, field] of cases) {
      const error = errorOf(() => manager.applyResources(resources));
      expect(error.code).toBe("cgroup-resource-unsupported");
      expect(error.message).toStartWith(`${field}: not supported`);
    }
    expect(writes).toEqual([]);
  });

  test("unified keys must be plain control-file names; a missing file names the key", () => {
    const root = fakeV2Root();
    const { manager, writes } = open(root);
    for (const key of ["../c2/memory.max", "memory.max/x", "..", "memory", ".hidden", "a/b.c"]) {
      expect(errorOf(() => manager.applyResources({ unified: { [key]: "1" } })).code).toBe("cgroup-resource-invalid");
    }
    const missing = errorOf(() => manager.applyResources({ unified: { "rdma.max": "x" } }));
    expect(missing.code).toBe("cgroup-resource-unsupported");
    expect(missing.message).toStartWith('linux.resources.unified["rdma.max"]: not supported by this host');
    expect(writes).toEqual([]);
  });

  test("a v2 controller that could not be enabled shows up as a missing file naming the field", () => {
    const root = fakeV2Root();
    rmSync(join(root, "nano-kata-test/c1/pids.max"));
    const { manager } = open(root);
    expect(errorOf(() => manager.applyResources({ pids: { limit: 10 } })).message).toBe(
      "linux.resources.pids.limit: not supported by this host (pids.max missing)",
    );
  });
});

describe("v2 create, freezer, kill, stats", () => {
  test("paths is the unified directory alone", () => {
    const root = fakeV2Root();
    expect(open(root).manager.paths).toEqual({ unified: join(root, "nano-kata-test/c1") });
  });

  test("create enables the missing controllers in every ancestor, never in the leaf", () => {
    const root = fakeV2Root();
    const { manager, rel } = open(root);
    manager.create();
    expect(rel()).toEqual([
      ["cgroup.subtree_control", "+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc"],
      ["nano-kata-test/cgroup.subtree_control", "+cpuset +io +hugetlb +pids +rdma +misc"],
    ]);
  });

  test("freeze writes cgroup.freeze and waits for cgroup.events frozen 1", () => {
    const root = fakeV2Root();
    writeFileSync(join(root, "nano-kata-test/c1/cgroup.events"), "populated 1\nfrozen 1\n");
    const { manager } = open(root);
    manager.freeze();
    expect(leaf(root, "cgroup.freeze")).toBe("1");
    expect(manager.state()).toBe("frozen");
    manager.thaw();
    expect(leaf(root, "cgroup.freeze")).toBe("0");
    expect(manager.state()).toBe("thawed");
  });

  test("a freeze that never completes times out and thaws again", () => {
    const root = fakeV2Root();
    const { manager } = open(root, { freezeTimeoutMs: 30 });
    expect(errorOf(() => manager.freeze()).code).toBe("cgroup-freeze-failed");
    expect(leaf(root, "cgroup.freeze")).toBe("0");
  });

  test("killAll(SIGKILL) uses cgroup.kill; other signals go pid by pid inside a freeze", async () => {
    const root = fakeV2Root();
    writeFileSync(join(root, "nano-kata-test/c1/cgroup.events"), "populated 1\nfrozen 1\n");
    const { manager, rel } = open(root);
    manager.killAll(9);
    expect(rel()).toEqual([["nano-kata-test/c1/cgroup.kill", "1"]]);

    const child = spawn("sleep", ["30"], { stdio: "ignore" });
    const exited = new Promise<string | null>((resolve) => child.on("exit", (_code, signal) => resolve(signal)));
    writeFileSync(join(root, "nano-kata-test/c1/cgroup.procs"), `${child.pid}\n`);
    manager.killAll(15);
    expect(await exited).toBe("SIGTERM");
    expect(rel().slice(1)).toEqual([
      ["nano-kata-test/c1/cgroup.freeze", "1"],
      ["nano-kata-test/c1/cgroup.freeze", "0"],
    ]);
  });

  test("stats reads cpu.stat, memory, pids, io.stat, hugetlb; oomKillCount reads memory.events", () => {
    const root = fakeV2Root();
    const put = (f: string, v: string) => writeFileSync(join(root, "nano-kata-test/c1", f), v);
    put("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 1\nthrottled_usec 20\n");
    put("memory.current", "4096\n");
    put("memory.max", "max\n");
    put("memory.peak", "8192\n");
    put("memory.events", "low 0\nhigh 0\nmax 6\noom 1\noom_kill 3\n");
    put("memory.stat", "anon 2048\nfile 1024\n");
    put("memory.swap.current", "100\n");
    put("pids.current", "3\n");
    put("pids.max", "max\n");
    put("io.stat", "8:0 rbytes=4096 wbytes=512 rios=2 wios=1 dbytes=0 dios=0\n");
    put("hugetlb.2MB.current", "2097152\n");
    put("hugetlb.2MB.events", "max 2\n");
    const { manager } = open(root);
    const stats = manager.stats();
    expect(stats.cpu.usage).toMatchObject({ total: 1_500_000, user: 1_000_000, kernel: 500_000 });
    expect(stats.cpu.throttling).toEqual({ periods: 7, throttledPeriods: 1, throttledTime: 20_000 });
    expect(stats.memory.usage).toEqual({ usage: 4096, limit: 2 ** 64 - 1, max: 8192, failcnt: 6 });
    expect(stats.memory.swap.usage).toBe(4196); // swap + memory, like v1's memsw
    expect(stats.memory.cache).toBe(1024);
    expect(stats.pids).toEqual({ current: 3, limit: 0 });
    expect(stats.blkio.ioServiceBytesRecursive).toEqual([
      { major: 8, minor: 0, op: "Read", value: 4096 },
      { major: 8, minor: 0, op: "Write", value: 512 },
      { major: 8, minor: 0, op: "Discard", value: 0 },
    ]);
    expect(stats.blkio.ioServicedRecursive[0]).toEqual({ major: 8, minor: 0, op: "Read", value: 2 });
    expect(stats.hugetlb["2MB"]).toEqual({ usage: 2097152, max: 0, failcnt: 2 });
    expect(manager.oomKillCount()).toBe(3);
  });
});
