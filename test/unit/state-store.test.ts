import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { StateStore, validateContainerId, type ContainerRecord } from "../../src/state/store.ts";
import { readProcStat } from "../../src/state/proc.ts";

const root = mkdtempSync(`${tmpdir()}/nk-state-`);
afterAll(() => rmSync(root, { recursive: true, force: true }));

function record(id: string, pid: number, startTime: string, phase: "creating" | "created" = "created"): ContainerRecord {
  return { ociVersion: "1.2.0", id, pid, pidStartTime: startTime, bundle: "/b", rootfs: "/b/rootfs", created: new Date().toISOString(), owner: "", annotations: {}, phase, mode: "container", spec: { ociVersion: "1.2.0" } };
}

describe("container ids", () => {
  test.each(["abc", "a.b-c_d+e", "A1"])("accepts %s", (id) => expect(validateContainerId(id)).toBe(id));
  test.each(["", ".", "..", "a/b", "a b", "ü", "a\nb", "../x"])("rejects %j", (id) => expect(() => validateContainerId(id)).toThrow());
});

describe("state store", () => {
  const store = new StateStore(root);
  test("claim refuses an existing id and the lock serialises", () => {
    const lock = store.claim("c1");
    expect(() => store.claim("c1")).toThrow("container with id exists: c1");
    lock.release();
  });
  test("atomic write + read round trip", () => {
    store.write(record("c1", process.pid, readProcStat(process.pid)!.startTime));
    expect(store.read("c1").pid).toBe(process.pid);
    expect(existsSync(`${root}/c1/state.json.${process.pid}.tmp`)).toBe(false);
  });
  test("live status: running, created (fifo), stopped on pid reuse", () => {
    const me = readProcStat(process.pid)!;
    expect(store.status(record("c1", process.pid, me.startTime))).toBe("running");
    writeFileSync(store.fifoPath("c1"), "");
    expect(store.status(record("c1", process.pid, me.startTime))).toBe("created");
    rmSync(store.fifoPath("c1"));
    expect(store.status(record("c1", process.pid, "1"))).toBe("stopped");
    expect(store.status(record("c1", 0, ""))).toBe("stopped");
    expect(store.status(record("c1", process.pid, me.startTime), () => true)).toBe("paused");
    expect(store.status(record("c1", 0, "", "creating"))).toBe("stopped");
  });
  test("ids lists containers; remove deletes", () => {
    expect(store.ids()).toEqual(["c1"]);
    store.remove("c1");
    expect(store.ids()).toEqual([]);
    expect(() => store.read("c1")).toThrow("container does not exist: c1");
    expect(() => store.lock("c1")).toThrow("container does not exist: c1");
  });
});
