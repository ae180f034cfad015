/**
 * containerd-shim-nanokata-v2 end to end: Debian's containerd, started here
 * with private directories and bin/ on its PATH, runs a hand-made busybox
 * image with `--runtime io.containerd.nanokata.v2`, driven by `ctr`.
 *
 * Covers: run --rm (output, exit code, stdin), detached run + kill + delete,
 * exec (output, exit code, stdin), ps, pause/resume, metrics, Update over
 * the shim's own ttrpc socket, run -t (a pty, and ResizePty), the events
 * seen by `ctr events` and their order, the shim gone after delete, and
 * nothing left behind (processes, sockets, state, mounts, cgroups).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { containerdAvailable, have, IMAGE, isDirEmpty, shimProcesses, startContainerd, taskStatusOf, until, type Containerd } from "./shim-containerd.ts";
import { TtrpcClient } from "../../src/shim/ttrpc.ts";
import { encodeUpdateTaskRequest, encodeIdOnly, decodeConnectResponse, TASK_SERVICE } from "../../src/shim/messages.ts";
import { RUNTIME_SPEC_RESOURCES } from "../../src/shim/service.ts";
import { cgroupTopLevel, removeNewCgroupParents } from "./daemons.ts";

const RUNTIME = "io.containerd.nanokata.v2";
const skip = containerdAvailable();
const d = skip ? describe.skip : describe;
if (skip) console.log(`shim e2e skipped: ${skip}`);

let c: Containerd;
const ids: string[] = [];
let events: { lines: string[]; stop: () => void };

function id(name: string): string {
  const v = `nk-${name}-${process.pid}`;
  ids.push(v);
  return v;
}

function run(args: string[], opts: { input?: string } = {}) {
  return c.ctr(["run", "--runtime", RUNTIME, ...args], opts);
}

const taskStatus = (taskId: string) => taskStatusOf(c, taskId);

function bundleOf(taskId: string): string {
  return join(c.dir, "state", "io.containerd.runtime.v2.task", "default", taskId);
}

/** The shim processes serving this test's containerd. */
function ourShims(): number[] {
  return shimProcesses()
    .filter((p) => p.cmdline.includes(c.address))
    .map((p) => p.pid);
}

d("containerd shim v2 (io.containerd.nanokata.v2)", () => {
  // ctr gives each container the cgroupsPath /default/<id>. Each container's
  // delete removes the parents it created; with two containers alive at once
  // the second finds /default made by the first, so the test removes it.
  let cgroupsBefore: Map<string, Set<string>>;
  beforeAll(async () => {
    cgroupsBefore = cgroupTopLevel();
    c = await startContainerd();
    const proc = c.ctrSpawn(["events"]);
    const lines: string[] = [];
    let buf = "";
    proc.stdout!.on("data", (b: Buffer) => {
      buf += b.toString();
      const parts = buf.split("\n");
      buf = parts.pop()!;
      lines.push(...parts);
    });
    events = { lines, stop: () => proc.kill("SIGKILL") };
    await Bun.sleep(200);
  }, 120_000);

  afterAll(async () => {
    if (!c) return;
    events?.stop();
    for (const t of ids) {
      c.ctr(["task", "kill", "-s", "SIGKILL", t]);
      c.ctr(["task", "delete", "--force", t]);
      c.ctr(["container", "rm", t]);
    }
    await c.stop();
    const problems = removeNewCgroupParents(cgroupsBefore, ["default"]);
    if (problems.length) throw new Error(problems.join("\n"));
  }, 60_000);

  test("ctr run --rm: output and exit code", () => {
    const r = run(["--rm", IMAGE, id("echo"), "echo", "hi"]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("hi\n");
    expect(r.code).toBe(0);
    const fail = run(["--rm", IMAGE, id("exit3"), "sh", "-c", "echo to-stderr >&2; exit 3"]);
    expect(fail.code).toBe(3);
    expect(fail.stderr).toBe("to-stderr\n");
  });

  test("ctr run --rm: stdin reaches the container and EOF ends it", () => {
    const r = run(["--rm", IMAGE, id("cat"), "sh", "-c", "cat; echo done"], { input: "line one\nline two\n" });
    expect(r.stdout).toBe("line one\nline two\ndone\n");
    expect(r.code).toBe(0);
  });

  test("detached run, ps, exec, pause/resume, metrics, update, kill, delete; the shim goes away", async () => {
    const t = id("detached");
    const started = run(["-d", IMAGE, t, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]);
    expect(started.code).toBe(0);
    expect(taskStatus(t)).toBe("RUNNING");
    const shimsBefore = ourShims();
    expect(shimsBefore.length).toBe(1);

    const ps = c.ctr(["task", "ps", t]);
    expect(ps.code).toBe(0);
    const pids = ps.stdout.split("\n").slice(1).filter(Boolean).map((l) => Number(l.trim().split(/\s+/)[0]));
    expect(pids.length).toBeGreaterThanOrEqual(1);
    for (const pid of pids) expect(existsSync(`/proc/${pid}`)).toBe(true);

    const ex = c.ctr(["task", "exec", "--exec-id", "e1", t, "sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"]);
    expect(ex.stdout).toBe("exec-out\n");
    expect(ex.stderr).toBe("exec-err\n");
    expect(ex.code).toBe(5);
    const exIn = c.ctr(["task", "exec", "--exec-id", "e2", t, "cat"], { input: "to-exec\n" });
    expect(exIn.stdout).toBe("to-exec\n");
    expect(exIn.code).toBe(0);
    // Killed by a signal: 128+n (the container's init would ignore its own SIGKILL; an exec does not).
    expect(c.ctr(["task", "exec", "--exec-id", "e3", t, "sh", "-c", "kill -9 $$"]).code).toBe(137);

    expect(c.ctr(["task", "pause", t]).code).toBe(0);
    expect(taskStatus(t)).toBe("PAUSED");
    expect(c.ctr(["task", "resume", t]).code).toBe(0);
    expect(taskStatus(t)).toBe("RUNNING");

    const metrics = c.ctr(["task", "metrics", t]);
    expect(metrics.code).toBe(0);
    expect(metrics.stdout).toMatch(/memory\.usage_in_bytes|memory\.usage/);
    expect(metrics.stdout).toMatch(/pids\.current\s+[1-9]/);

    // Update has no ctr verb in containerd 1.6: speak ttrpc to the shim, as containerd would.
    const address = readFileSync(join(bundleOf(t), "address"), "utf8").trim();
    const client = await TtrpcClient.connect(address);
    const ns: [string, string][] = [["containerd-namespace-ttrpc", "default"]];
    try {
      const resources = { typeUrl: RUNTIME_SPEC_RESOURCES, value: new TextEncoder().encode(JSON.stringify({ memory: { limit: 64 * 1024 * 1024 } })) };
      await client.call(TASK_SERVICE, "Update", encodeUpdateTaskRequest({ id: t, resources }), ns);
      const connect = decodeConnectResponse(await client.call(TASK_SERVICE, "Connect", encodeIdOnly(t), ns));
      expect(connect.shimPid).toBe(shimsBefore[0]!);
      expect(connect.taskPid).toBe(pids[0]!);
      await expect(client.call(TASK_SERVICE, "Checkpoint", encodeIdOnly(t), ns)).rejects.toMatchObject({ code: 12 });
    } finally {
      client.close();
    }
    const state = JSON.parse(readFileSync(join(c.shimRoot, "default", t, "state.json"), "utf8")) as {
      cgroup: { hierarchies: { driver: string; dir: string; controllers: string[] }[] };
    };
    const mem = state.cgroup.hierarchies.find((h) => h.controllers.includes("memory"))!;
    const limitFile = mem.driver === "v1" ? "memory.limit_in_bytes" : "memory.max";
    expect(readFileSync(join(mem.dir, limitFile), "utf8").trim()).toBe(String(64 * 1024 * 1024));

    expect(c.ctr(["task", "kill", t]).code).toBe(0); // SIGTERM: the trap exits 0
    await until(() => taskStatus(t) === "STOPPED");
    const del = c.ctr(["task", "delete", t]);
    expect(del.code).toBe(0);
    expect(taskStatus(t)).toBeUndefined();
    expect(c.ctr(["container", "rm", t]).code).toBe(0);
    await until(() => shimsBefore.every((pid) => !existsSync(`/proc/${pid}`)));
    expect(existsSync(socketPathOf(address))).toBe(false);
  });

  test("kill --all with SIGKILL reaches every process of the container", async () => {
    const t = id("killall");
    expect(run(["-d", IMAGE, t, "sh", "-c", "sleep 1000 & sleep 1000"]).code).toBe(0);
    await until(() => c.ctr(["task", "ps", t]).stdout.trim().split("\n").length >= 3);
    expect(c.ctr(["task", "kill", "-a", "-s", "SIGKILL", t]).code).toBe(0);
    await until(() => taskStatus(t) === "STOPPED");
    expect(c.ctr(["task", "delete", t]).code).toBe(0);
    expect(c.ctr(["container", "rm", t]).code).toBe(0);
  });

  test.if(have("script"))("ctr run -t: a terminal, resized to the client's size", () => {
    const t = id("tty");
    const cmd = `stty cols 97 rows 31; ctr --address ${c.address} run -t --rm --runtime ${RUNTIME} ${IMAGE} ${t} sh -c 'tty; sleep 0.5; stty size'`;
    const r = spawnSync("script", ["-qec", cmd, "/dev/null"], { encoding: "utf8", timeout: 60_000, input: "" });
    const out = (r.stdout ?? "").replace(/\r/g, "");
    expect(out).toContain("/dev/pts/");
    expect(out).toContain("31 97");
    expect(r.status).toBe(0);
  });

  test("SIGKILL to a paused task kills it", async () => {
    const t = id("paused-kill");
    expect(run(["-d", IMAGE, t, "sleep", "1000"]).code).toBe(0);
    expect(c.ctr(["task", "pause", t]).code).toBe(0);
    expect(c.ctr(["task", "kill", "-s", "SIGKILL", t]).code).toBe(0);
    await until(() => taskStatus(t) === "STOPPED");
    expect(c.ctr(["task", "delete", t]).code).toBe(0);
    expect(c.ctr(["container", "rm", t]).code).toBe(0);
  });

  test("a memory limit's OOM kill is a TaskOOM event", async () => {
    const t = id("oom");
    const r = run(["--rm", "--memory-limit", String(32 * 1024 * 1024), IMAGE, t, "sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo status $?"]);
    expect(r.stdout).toBe("status 137\n");
    await until(() => events.lines.some((l) => l.includes("/tasks/oom") && l.includes(`"container_id":"${t}"`)), 5000);
  });

  test.if(have("script"))("ctr task exec -t: a terminal for an exec", async () => {
    const t = id("exec-tty");
    expect(run(["-d", IMAGE, t, "sleep", "1000"]).code).toBe(0);
    const cmd = `stty cols 81 rows 21; ctr --address ${c.address} task exec -t --exec-id tty1 ${t} sh -c 'tty; sleep 0.5; stty size'`;
    const r = spawnSync("script", ["-qec", cmd, "/dev/null"], { encoding: "utf8", timeout: 60_000, input: "" });
    const out = (r.stdout ?? "").replace(/\r/g, "");
    expect(out).toContain("/dev/pts/");
    expect(out).toContain("21 81");
    expect(r.status).toBe(0);
    expect(c.ctr(["task", "kill", "-s", "SIGKILL", t]).code).toBe(0);
    await until(() => taskStatus(t) === "STOPPED");
    expect(c.ctr(["task", "delete", t]).code).toBe(0);
    expect(c.ctr(["container", "rm", t]).code).toBe(0);
  });

  test("containers of one group (CRI sandbox annotation) share one shim", async () => {
    const a = id("grp-a");
    const b = id("grp-b");
    const group = `--annotation=io.kubernetes.cri.sandbox-id=${a}`;
    expect(run(["-d", group, IMAGE, a, "sleep", "1000"]).code).toBe(0);
    expect(run(["-d", group, IMAGE, b, "sleep", "1000"]).code).toBe(0);
    const addrA = readFileSync(join(bundleOf(a), "address"), "utf8");
    expect(readFileSync(join(bundleOf(b), "address"), "utf8")).toBe(addrA);
    const shims = ourShims();
    expect(shims.length).toBe(1);
    expect(c.ctr(["task", "exec", "--exec-id", "x", b, "echo", "in-b"]).stdout).toBe("in-b\n");
    // Deleting the first leaves the shim serving the second.
    expect(c.ctr(["task", "kill", "-s", "SIGKILL", a]).code).toBe(0);
    await until(() => taskStatus(a) === "STOPPED");
    expect(c.ctr(["task", "delete", a]).code).toBe(0);
    expect(c.ctr(["container", "rm", a]).code).toBe(0);
    await Bun.sleep(300);
    expect(ourShims()).toEqual(shims);
    expect(taskStatus(b)).toBe("RUNNING");
    expect(c.ctr(["task", "kill", "-s", "SIGKILL", b]).code).toBe(0);
    await until(() => taskStatus(b) === "STOPPED");
    expect(c.ctr(["task", "delete", b]).code).toBe(0);
    expect(c.ctr(["container", "rm", b]).code).toBe(0);
    await until(() => ourShims().length === 0);
    expect(existsSync(socketPathOf(addrA))).toBe(false);
  });

  test("a shim killed with SIGKILL: containerd's `delete` call cleans up the container", async () => {
    const t = id("orphan");
    expect(run(["-d", IMAGE, t, "sleep", "1000"]).code).toBe(0);
    const init = Number(c.ctr(["task", "ps", t]).stdout.split("\n")[1]!.trim().split(/\s+/)[0]);
    const [shim] = ourShims();
    const address = readFileSync(join(bundleOf(t), "address"), "utf8");
    process.kill(shim!, "SIGKILL");
    await until(() => !existsSync(`/proc/${init}`), 15_000);
    await until(() => !existsSync(join(c.shimRoot, "default", t)), 15_000);
    await until(() => taskStatus(t) === undefined || taskStatus(t) === "STOPPED", 15_000);
    expect(existsSync(socketPathOf(address))).toBe(false);
    c.ctr(["task", "delete", t]);
    expect(c.ctr(["container", "rm", t]).code).toBe(0);
  });

  test("-v names the shim", () => {
    const r = spawnSync(join(import.meta.dir, "..", "..", "bin", "containerd-shim-nanokata-v2"), ["-v"], { encoding: "utf8" });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("containerd-shim-nanokata-v2");
  });

  test("events arrive in containerd's order", async () => {
    await Bun.sleep(300);
    const topicsFor = (container: string) =>
      events.lines
        .filter((l) => l.includes(`"container_id":"${container}"`))
        .map((l) => {
          const topic = l.split(" ").find((w) => w.startsWith("/tasks/"))!;
          const m = /"(?:exec_id|id)":"([^"]+)"/.exec(l.slice(l.indexOf("{")));
          return topic === "/tasks/exit" ? `${topic}:${m?.[1] === container ? "init" : m?.[1]}` : topic;
        });
    const detached = topicsFor(ids.find((i) => i.includes("detached"))!);
    expect(detached).toEqual([
      "/tasks/create",
      "/tasks/start",
      "/tasks/exec-added",
      "/tasks/exec-started",
      "/tasks/exit:e1",
      "/tasks/exec-added",
      "/tasks/exec-started",
      "/tasks/exit:e2",
      "/tasks/exec-added",
      "/tasks/exec-started",
      "/tasks/exit:e3",
      "/tasks/paused",
      "/tasks/resumed",
      "/tasks/exit:init",
      "/tasks/delete",
    ]);
    expect(topicsFor(ids.find((i) => i.includes("echo"))!)).toEqual(["/tasks/create", "/tasks/start", "/tasks/exit:init", "/tasks/delete"]);
  });

  test("nothing is left behind", async () => {
    await until(() => ourShims().length === 0, 10_000);
    expect(isDirEmpty(join(c.shimRoot, "default"))).toBe(true);
    expect(isDirEmpty(c.socketDir)).toBe(true);
    expect(isDirEmpty(join(c.dir, "state", "io.containerd.runtime.v2.task", "default"))).toBe(true);
    const mounts = readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .filter((l) => ids.some((i) => l.includes(`/${i}/`) || l.includes(`/${i} `)));
    expect(mounts).toEqual([]);
    const leftCgroups: string[] = [];
    for (const controller of readdirSync("/sys/fs/cgroup")) {
      for (const t of ids) if (existsSync(join("/sys/fs/cgroup", controller, "default", t))) leftCgroups.push(`${controller}/default/${t}`);
    }
    expect(leftCgroups).toEqual([]);
  });
});

function socketPathOf(address: string): string {
  return address.replace(/^unix:\/\//, "");
}

d("containerd shim v2 started by Bun itself, events through the publish binary", () => {
  let c2: Containerd;
  beforeAll(async () => {
    // Not the sh launcher's in-place start: `start` spawns the shim and waits for it (from the unbundled source).
    const root = join(import.meta.dir, "..", "..");
    const script = `#!/bin/sh\nexec ${root}/node_modules/bun/bin/bun.exe ${root}/src/shim/main.ts "$@"\n`;
    c2 = await startContainerd({ env: { NK_SHIM_PUBLISH: "binary" }, shimScript: script });
  }, 120_000);
  afterAll(async () => {
    await c2?.stop();
  }, 60_000);

  test("`containerd publish` delivers the task events in order", async () => {
    const proc = c2.ctrSpawn(["events"]);
    let out = "";
    proc.stdout!.on("data", (b: Buffer) => (out += b.toString()));
    await Bun.sleep(200);
    const t = `nk-pub-${process.pid}`;
    const r = c2.ctr(["run", "--rm", "--runtime", RUNTIME, IMAGE, t, "echo", "published"]);
    expect(r.stdout).toBe("published\n");
    expect(r.code).toBe(0);
    await Bun.sleep(300);
    proc.kill("SIGKILL");
    const topics = out
      .split("\n")
      .filter((l) => l.includes(`"container_id":"${t}"`))
      .map((l) => l.split(" ").find((w) => w.startsWith("/tasks/")));
    expect(topics).toEqual(["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]);
  });
});
