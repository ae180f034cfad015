/**
 * The operational verbs on live containers: pause/resume (freezer), update,
 * events --stats, ps. What the runtime reports is compared with the host's
 * own view of the container's cgroup (v1 control files under
 * /sys/fs/cgroup/<controller>/nano-kata-test/<id>).
 *
 * Runtime-agnostic: NK_TEST_RUNTIME=/usr/sbin/runc runs the same checks.
 */
import { afterAll, describe, expect } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cgNumber, cgProcs, cgRead, stopAllBackground, v1Dir, v1SkipReason } from "../helpers/host-cgroups.ts";
import {
  assertNoLeftovers,
  bindMount,
  cleanupAll,
  createContainer,
  deleteForce,
  describeResult,
  expectFailure,
  firstReason,
  integrationSkipReason,
  newBundle,
  newHostDir,
  ok,
  rt,
  sleepMs,
  startContainer,
  state,
  testIf,
  waitForStatus,
  waitUntil,
} from "../helpers/runtime.ts";

const MiB = 1024 * 1024;
const skip = integrationSkipReason();
const v1 = (...controllers: string[]) => firstReason(skip, v1SkipReason(controllers));

afterAll(async () => {
  await stopAllBackground();
  cleanupAll();
});

/** A running container whose init (and a child) bump a counter file on the host every 50 ms. */
function counterContainer(override?: (c: Record<string, any>) => void) {
  const marks = newHostDir("nkt-counter-");
  const bundle = newBundle({
    args: ["sh", "-c", "i=0; (while :; do sleep 1; done) & while :; do i=$((i+1)); echo $i > /mnt/rw/counter; sleep 0.05; done"],
    override: (c) => {
      c.mounts.push(bindMount(marks, "/mnt/rw"));
      override?.(c);
    },
  });
  ok(createContainer(bundle));
  ok(startContainer(bundle.id));
  const counter = (): number => {
    try {
      return Number(readFileSync(join(marks, "counter"), "utf8").trim()) || 0;
    } catch {
      return 0;
    }
  };
  waitUntil("the counter to start", () => counter() > 1);
  return { bundle, counter };
}

function procState(pid: number): string {
  const m = /^State:\s*(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? m[1]!.trim() : "?";
}

describe("pause/resume", () => {
  testIf(v1("freezer"), "pause freezes every process (state paused), resume lets them run again", () => {
    const { bundle, counter } = counterContainer();
    ok(rt(["pause", bundle.id]));
    expect(state(bundle.id).status).toBe("paused");
    expect(cgRead("freezer", bundle.id, "freezer.state")).toBe("FROZEN");
    const pids = cgProcs("freezer", bundle.id);
    expect(pids.length).toBeGreaterThanOrEqual(2);
    // A frozen task sleeps uninterruptibly ("D (disk sleep)"); none may be runnable.
    for (const pid of pids) expect(`${pid}: ${procState(pid)}`).toMatch(/: D /);

    sleepMs(100); // a write racing the freeze lands before this
    const frozenAt = counter();
    sleepMs(300);
    expect(counter()).toBe(frozenAt);

    ok(rt(["resume", bundle.id]));
    expect(state(bundle.id).status).toBe("running");
    expect(cgRead("freezer", bundle.id, "freezer.state")).toBe("THAWED");
    waitUntil("the counter to advance after resume", () => counter() > frozenAt + 1, 5_000);
    // A v1 freezer shows a frozen task in state D, and D stays; a task waiting on the disk (under load) passes
    // through D briefly: none may stay in it.
    const stillD = () => cgProcs("freezer", bundle.id).map((pid) => `${pid}: ${procState(pid)}`).filter((s) => /: D /.test(s));
    waitUntil(`no process of the container in state D (${stillD().join(", ")})`, () => stillD().length === 0, 5_000);

    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  testIf(v1("freezer"), "delete --force of a paused container kills it and leaves nothing", () => {
    const { bundle } = counterContainer();
    const pids = cgProcs("freezer", bundle.id);
    ok(rt(["pause", bundle.id]));
    expect(state(bundle.id).status).toBe("paused");
    ok(deleteForce(bundle.id));
    waitUntil("the container's processes to go", () => pids.every((pid) => !existsSync(`/proc/${pid}`) || /\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"))), 5_000);
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  testIf(v1("freezer"), "resume of a running container and pause of a stopped one fail", () => {
    const { bundle } = counterContainer();
    expectFailure(rt(["resume", bundle.id]), { nk: bundle.id, runc: "not paused" });
    expect(state(bundle.id).status).toBe("running");
    ok(rt(["kill", bundle.id, "KILL"]));
    waitForStatus(bundle.id, "stopped");
    expectFailure(rt(["pause", bundle.id]), { nk: bundle.id, runc: "not running" });
    ok(rt(["delete", bundle.id]));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

describe("update", () => {
  testIf(v1("memory", "pids", "cpu"), "update --memory/--pids-limit and update -r change a running container's cgroup", () => {
    const { bundle, counter } = counterContainer((c) => {
      c.linux.resources.memory = { limit: 128 * MiB };
      c.linux.resources.pids = { limit: 100 };
    });
    expect(cgNumber("memory", bundle.id, "memory.limit_in_bytes")).toBe(128 * MiB);
    expect(cgRead("pids", bundle.id, "pids.max")).toBe("100");

    ok(rt(["update", "--memory", "64m", "--pids-limit", "50", bundle.id]));
    expect(cgNumber("memory", bundle.id, "memory.limit_in_bytes")).toBe(64 * MiB);
    expect(cgRead("pids", bundle.id, "pids.max")).toBe("50");

    const file = join(bundle.dir, "resources.json");
    writeFileSync(file, JSON.stringify({ cpu: { quota: 30_000, period: 100_000 } }));
    ok(rt(["update", "-r", file, bundle.id]));
    expect(cgNumber("cpu", bundle.id, "cpu.cfs_quota_us")).toBe(30_000);
    expect(cgNumber("cpu", bundle.id, "cpu.cfs_period_us")).toBe(100_000);
    // The earlier update is not undone by one that does not mention memory.
    expect(cgNumber("memory", bundle.id, "memory.limit_in_bytes")).toBe(64 * MiB);

    // The container kept running throughout.
    const before = counter();
    waitUntil("the counter to advance", () => counter() > before, 5_000);
    expect(state(bundle.id).status).toBe("running");
    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  testIf(v1("memory", "pids"), "update of a stopped container fails and changes nothing", () => {
    const bundle = newBundle({ args: ["sh", "-c", "true"], override: (c) => (c.linux.resources.pids = { limit: 100 }) });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    waitForStatus(bundle.id, "stopped");
    const r = rt(["update", "--pids-limit", "50", bundle.id]);
    expectFailure(r, { nk: bundle.id, runc: /stopped|not running/ });
    if (existsSync(v1Dir("pids", bundle.id))) expect(cgRead("pids", bundle.id, "pids.max")).toBe("100");
    ok(rt(["delete", bundle.id]));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

describe("events --stats", () => {
  testIf(v1("memory", "pids", "cpuacct"), "one stats object whose memory, pids and cpu figures match the cgroup files", () => {
    // Three processes that sleep: the figures hold still between our reads.
    const bundle = newBundle({
      args: ["sh", "-c", "sleep 60 & sleep 60 & echo ready; exec sleep 60"],
      override: (c) => (c.linux.resources.memory = { limit: 256 * MiB }),
    });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    waitUntil("three processes", () => cgProcs("pids", bundle.id).length === 3);

    const cpuBefore = cgNumber("cpuacct", bundle.id, "cpuacct.usage");
    const memBefore = cgNumber("memory", bundle.id, "memory.usage_in_bytes");
    const r = ok(rt(["events", "--stats", bundle.id]));
    const cpuAfter = cgNumber("cpuacct", bundle.id, "cpuacct.usage");
    const memAfter = cgNumber("memory", bundle.id, "memory.usage_in_bytes");

    const lines = r.stdout.trim().split("\n");
    expect(lines.length, describeResult(r)).toBe(1);
    const event = JSON.parse(lines[0]!);
    expect(event.type).toBe("stats");
    expect(event.id).toBe(bundle.id);
    const data = event.data;
    expect(data.pids.current).toBe(cgNumber("pids", bundle.id, "pids.current"));
    expect(data.pids.current).toBe(3);
    expect(data.memory.usage.limit).toBe(256 * MiB);
    expect(data.memory.usage.usage).toBeGreaterThanOrEqual(Math.min(memBefore, memAfter) - MiB);
    expect(data.memory.usage.usage).toBeLessThanOrEqual(Math.max(memBefore, memAfter) + MiB);
    expect(data.cpu.usage.total).toBeGreaterThanOrEqual(cpuBefore);
    expect(data.cpu.usage.total).toBeLessThanOrEqual(cpuAfter);
    expect(data.cpu.usage.total).toBeGreaterThan(0);
    // runc-shaped details tools read.
    expect(Array.isArray(data.cpu.usage.percpu)).toBe(true);
    expect(typeof data.memory.raw?.cache).toBe("number");
    expect(data.memory.usage.max).toBe(cgNumber("memory", bundle.id, "memory.max_usage_in_bytes"));

    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

describe("ps", () => {
  testIf(v1("pids"), "ps --format json lists exactly the cgroup's pids; the table has a PID header and one row each", () => {
    const bundle = newBundle({ args: ["sh", "-c", "sleep 60 & sleep 60 & exec sleep 60"] });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    waitUntil("three processes", () => cgProcs("pids", bundle.id).length === 3);
    const procs = cgProcs("pids", bundle.id);

    const json = JSON.parse(ok(rt(["ps", "--format", "json", bundle.id])).stdout) as number[];
    expect([...json].sort((a, b) => a - b)).toEqual(procs);
    expect(json).toContain(state(bundle.id).pid);

    const table = ok(rt(["ps", bundle.id])).stdout.trimEnd().split("\n");
    const header = table[0]!.trim().split(/\s+/);
    const pidColumn = header.indexOf("PID");
    expect(pidColumn).toBeGreaterThanOrEqual(0);
    const rows = table.slice(1).map((line) => Number(line.trim().split(/\s+/)[pidColumn]));
    expect(rows.sort((a, b) => a - b)).toEqual(procs);
    expect(table.slice(1).every((line) => /sleep/.test(line))).toBe(true);

    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  testIf(v1("pids"), "ps of a created container lists its init; ps passes ps(1) options through", () => {
    const bundle = newBundle({ args: ["sh", "-c", "exec sleep 60"] });
    ok(createContainer(bundle));
    const pid = state(bundle.id).pid;
    expect(JSON.parse(ok(rt(["ps", "--format", "json", bundle.id])).stdout)).toEqual([pid]);
    const table = ok(rt(["ps", bundle.id, "-o", "pid,comm"])).stdout.trimEnd().split("\n");
    expect(table[0]!.trim().split(/\s+/)).toEqual(["PID", "COMMAND"]);
    expect(table.slice(1).map((l) => Number(l.trim().split(/\s+/)[0]))).toEqual([pid]);
    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

