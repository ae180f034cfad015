/**
 * The cgroup manager on the real host (root, cgroup v1 or hybrid): a `sleep`
 * we spawn is put in /nano-kata-test/<random id>, limited, frozen, measured,
 * killed, and the cgroup removed again. Touches only directories named after
 * this run's ids and processes it started itself.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { detectCgroupLayout } from "../../src/cgroups/detect.ts";
import { CgroupError } from "../../src/cgroups/errors.ts";
import { openCgroupManager, reopenCgroupManager, type CgroupManager } from "../../src/cgroups/index.ts";

const MiB = 1024 * 1024;
const PARENT = "/nano-kata-test";
const suffix = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const id = `cg-${suffix}`;
const busyId = `cg-busy-${suffix}`;
const nestedParentId = `cg-nest-${suffix}`;
const cgroupsPath = `${PARENT}/${id}`;

function skipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root";
  try {
    const layout = detectCgroupLayout();
    if (layout.kind === "v2") return "host has no cgroup v1 hierarchies (pure v2)";
    for (const c of ["memory", "pids", "freezer", "cpuacct"]) if (!layout.v1.has(c)) return `v1 ${c} controller not mounted`;
  } catch (error) {
    return `cannot read the cgroup layout: ${(error as Error).message}`;
  }
  return undefined;
}
const reason = skipReason();
if (reason) console.log(`skipping cgroups-v1 integration tests: ${reason}`);

const children: ChildProcess[] = [];
const managers: CgroupManager[] = [];

function spawnSleep(): { child: ChildProcess; pid: number; exited: Promise<string | null> } {
  const child = spawn("sleep", ["600"], { stdio: "ignore" });
  children.push(child);
  const exited = new Promise<string | null>((resolve) => child.on("exit", (_code, signal) => resolve(signal)));
  return { child, pid: child.pid!, exited };
}

function v1Mounts(): Map<string, string> {
  return detectCgroupLayout().v1;
}

async function waitForExit(child: ChildProcess, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await Promise.race([new Promise((resolve) => child.once("exit", resolve)), Bun.sleep(ms)]);
}

afterAll(async () => {
  // Our own processes only, by pid; wait for them to be reaped so the cgroups empty.
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid!, "SIGKILL");
      } catch {}
    }
  }
  for (const child of children) await waitForExit(child, 2000);
  for (const manager of managers) {
    try {
      manager.thaw();
    } catch {}
    try {
      manager.destroy();
    } catch {}
  }
  // Whatever is left of this run's ids (and a now-empty shared parent, if any).
  if (!reason) {
    const layout = detectCgroupLayout();
    const mounts = new Set([...layout.v1.values(), ...(layout.v2Mount ? [layout.v2Mount] : [])]);
    for (const mount of mounts) {
      for (const name of [id, busyId, `${nestedParentId}/inner`, nestedParentId]) {
        try {
          rmdirSync(join(mount, PARENT, name));
        } catch {}
      }
    }
  }
});

describe.skipIf(reason !== undefined)("cgroup v1 manager on this host", () => {
  let manager: CgroupManager;
  let sleeper: ReturnType<typeof spawnSleep>;
  let parentPreexisted: Record<string, boolean> = {};

  test("create makes the directory in every hierarchy", () => {
    manager = openCgroupManager({ cgroupsPath, id });
    managers.push(manager);
    parentPreexisted = Object.fromEntries(Object.values(manager.paths).map((dir) => [dir, existsSync(join(dir, ".."))]));
    manager.create();
    for (const [controller, dir] of Object.entries(manager.paths)) {
      expect(`${controller}: ${existsSync(dir)}`).toBe(`${controller}: true`);
      expect(dir.endsWith(cgroupsPath)).toBe(true);
    }
    const cpuset = manager.paths.cpuset;
    if (cpuset) {
      // Copied from the parent, or no task could join.
      expect(readFileSync(join(cpuset, "cpuset.cpus"), "utf8").trim()).not.toBe("");
      expect(readFileSync(join(cpuset, "cpuset.mems"), "utf8").trim()).not.toBe("");
    }
  });

  test("addProcess puts the process in the cgroup of every hierarchy", () => {
    sleeper = spawnSleep();
    manager.addProcess(sleeper.pid);
    const lines = readFileSync(`/proc/${sleeper.pid}/cgroup`, "utf8").trim().split("\n");
    const v1Lines = lines.filter((line) => !line.startsWith("0::"));
    expect(v1Lines.length).toBe(new Set(v1Mounts().values()).size);
    for (const line of lines) expect(line.slice(line.indexOf(":", line.indexOf(":") + 1) + 1)).toBe(cgroupsPath);
    expect(manager.processes()).toEqual([sleeper.pid]);
  });

  test("memory and pids limits are applied and read back", () => {
    manager.applyResources({ memory: { limit: 64 * MiB, swap: 128 * MiB }, pids: { limit: 32 } });
    expect(readFileSync(join(manager.paths.memory!, "memory.limit_in_bytes"), "utf8").trim()).toBe(String(64 * MiB));
    if (existsSync(join(manager.paths.memory!, "memory.memsw.limit_in_bytes"))) {
      expect(readFileSync(join(manager.paths.memory!, "memory.memsw.limit_in_bytes"), "utf8").trim()).toBe(String(128 * MiB));
    }
    expect(readFileSync(join(manager.paths.pids!, "pids.max"), "utf8").trim()).toBe("32");
    // An update that raises both works in either direction thanks to the write order.
    manager.applyResources({ memory: { limit: 256 * MiB, swap: 512 * MiB } }, { update: true });
    expect(readFileSync(join(manager.paths.memory!, "memory.limit_in_bytes"), "utf8").trim()).toBe(String(256 * MiB));
    manager.applyResources({ memory: { limit: 32 * MiB, swap: 48 * MiB } }, { update: true });
    expect(readFileSync(join(manager.paths.memory!, "memory.limit_in_bytes"), "utf8").trim()).toBe(String(32 * MiB));
  });

  test("device rules reach devices.list", () => {
    if (!manager.paths.devices) return;
    manager.applyResources({ devices: [{ allow: false, access: "rwm" }, { allow: true, type: "c", major: 1, minor: 3, access: "rwm" }] });
    expect(readFileSync(join(manager.paths.devices, "devices.list"), "utf8").trim()).toBe("c 1:3 rwm");
  });

  test("freeze and thaw show in freezer.state", () => {
    const stateFile = join(manager.paths.freezer!, "freezer.state");
    manager.freeze();
    expect(readFileSync(stateFile, "utf8").trim()).toBe("FROZEN");
    expect(manager.state()).toBe("frozen");
    // A state file's view agrees.
    expect(reopenCgroupManager(JSON.parse(JSON.stringify(manager.toJSON()))).state()).toBe("frozen");
    manager.thaw();
    expect(readFileSync(stateFile, "utf8").trim()).toBe("THAWED");
    expect(manager.state()).toBe("thawed");
  });

  test("stats match the control files", () => {
    const read = (controller: string, file: string) => readFileSync(join(manager.paths[controller]!, file), "utf8").trim();
    // The sleeper may still be finishing its exec (or waking from the thaw): wait until its CPU time holds still.
    const deadline = Date.now() + 5000;
    for (let last = ""; ; ) {
      const now = read("cpuacct", "cpuacct.usage");
      if (now === last || Date.now() > deadline) break;
      last = now;
      Bun.sleepSync(20);
    }
    const stats = manager.stats();
    expect(stats.pids).toEqual({ current: 1, limit: 32 });
    expect(stats.memory.usage.limit).toBe(32 * MiB);
    // v1 does not move charges with a task, so usage may be 0; a sleeping task keeps it still.
    expect(stats.memory.usage.usage).toBe(Number(read("memory", "memory.usage_in_bytes")));
    if (existsSync(join(manager.paths.memory!, "memory.memsw.limit_in_bytes"))) expect(stats.memory.swap.limit).toBe(48 * MiB);
    expect(stats.memory.usage.failcnt).toBe(Number(read("memory", "memory.failcnt")));
    // A sleeping process uses no CPU between the two reads.
    expect(stats.cpu.usage.total).toBe(Number(read("cpuacct", "cpuacct.usage")));
    expect(stats.cpu.usage.percpu.length).toBeGreaterThan(0);
    expect(manager.oomKillCount()).toBe(0);
  });

  test("create on a cgroup that already has a process is cgroup-not-empty and leaves nothing behind", async () => {
    const other = spawnSleep();
    const pidsMount = v1Mounts().get("pids")!;
    const occupied = join(pidsMount, PARENT, busyId);
    mkdirSync(occupied, { recursive: true });
    writeFileSync(join(occupied, "cgroup.procs"), String(other.pid));
    try {
      const busy = openCgroupManager({ cgroupsPath: `${PARENT}/${busyId}`, id: busyId });
      let error: unknown;
      try {
        busy.create();
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(CgroupError);
      expect((error as CgroupError).code).toBe("cgroup-not-empty");
      expect((error as CgroupError).message).toContain(occupied);
      for (const [controller, dir] of Object.entries(busy.paths)) {
        if (controller !== "pids") expect(`${controller}: ${existsSync(dir)}`).toBe(`${controller}: false`);
      }
    } finally {
      process.kill(other.pid, "SIGKILL");
      await other.exited;
      rmdirSync(occupied);
    }
  });

  test("killAll kills every process", async () => {
    manager.killAll(9);
    expect(await sleeper.exited).toBe("SIGKILL");
    expect(manager.processes()).toEqual([]);
    expect(manager.state()).toBe("thawed");
  });

  test("destroy removes every directory it made", () => {
    const saved = manager.toJSON();
    manager.destroy();
    for (const [controller, dir] of Object.entries(manager.paths)) {
      expect(`${controller}: ${existsSync(dir)}`).toBe(`${controller}: false`);
    }
    // A parent that was there before stays; one we made goes unless another
    // test's container is using it meanwhile.
    for (const dir of Object.values(manager.paths)) {
      const parent = join(dir, "..");
      if (parentPreexisted[dir]) expect(existsSync(parent)).toBe(true);
      else expect(saved.created).toContain(parent);
    }
    expect(manager.toJSON().created).toEqual([]);
  });

  test("parents it made are removed too, deepest first", () => {
    const nested = openCgroupManager({ cgroupsPath: `${PARENT}/${nestedParentId}/inner`, id: "inner" });
    managers.push(nested);
    nested.create();
    const created = nested.toJSON().created;
    for (const dir of Object.values(nested.paths)) {
      expect(created).toContain(dir);
      expect(created).toContain(join(dir, ".."));
    }
    nested.destroy();
    for (const dir of Object.values(nested.paths)) expect(existsSync(join(dir, ".."))).toBe(false);
  });
});
