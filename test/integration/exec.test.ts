/**
 * `exec` into real containers: the new process joins init's namespaces and
 * cgroup, its exit status comes back, the process flags (--env, --cwd,
 * --user, --cap, --no-new-privs, -d/--pid-file, --process) act, exec into a
 * stopped or paused container is a clear error, and terminals reach a
 * --console-socket (exec --tty, and create with process.terminal).
 */
import { afterAll, describe, expect } from "bun:test";
import { existsSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { consoleReceiver, pythonForReceiver } from "../helpers/console-receiver.ts";
import type { Bundle, OciConfig } from "../helpers/bundle.ts";
import {
  assertNoLeftovers,
  cleanupAll,
  containerStdout,
  createContainer,
  deleteForce,
  describeResult,
  expectFailure,
  firstReason,
  integrationSkipReason,
  newBundle,
  newHostDir,
  ok,
  parseStatus,
  pidsInContainerCgroups,
  rt,
  startContainer,
  state,
  testIf,
  waitForStatus,
  waitUntil,
} from "../helpers/runtime.ts";

const skip = integrationSkipReason();
afterAll(cleanupAll);

const NAMESPACES = ["pid", "mnt", "uts", "ipc", "net"] as const;

/** A started container whose init sleeps until killed. */
function running(override?: (c: OciConfig) => void): Bundle {
  const bundle = newBundle({ args: ["sh", "-c", "while :; do sleep 0.1; done"], override });
  ok(createContainer(bundle));
  ok(startContainer(bundle.id));
  return bundle;
}

function execIn(id: string, flags: string[], command: string[]) {
  return rt(["exec", ...flags, id, ...command]);
}

function finish(bundle: Bundle): void {
  ok(deleteForce(bundle.id));
  assertNoLeftovers(bundle.id, bundle.dir);
}

describe("exec: joins the container", () => {
  testIf(skip, "same pid/mnt/uts/ipc/net namespaces and cgroup as init; a new pid in the container", () => {
    const bundle = running();
    const initPid = state(bundle.id).pid;
    const script = `echo self=$$; for n in ${NAMESPACES.join(" ")}; do echo "$n=$(readlink /proc/self/ns/$n)"; done; hostname; cat /proc/self/cgroup`;
    const r = execIn(bundle.id, [], ["sh", "-c", script]);
    expect(r.code).toBe(0);
    const lines = Object.fromEntries(r.stdout.split("\n").filter((l) => /^\w+=/.test(l)).map((l) => l.split("=", 2) as [string, string]));
    for (const ns of NAMESPACES) {
      expect({ ns, link: lines[ns] }).toEqual({ ns, link: readlinkSync(`/proc/${initPid}/ns/${ns}`) });
      expect(lines[ns]).not.toBe(readlinkSync(`/proc/self/ns/${ns}`));
    }
    // A pid of the container's pid namespace (init is 1 there), not a host pid.
    expect(Number(lines.self)).toBeGreaterThan(1);
    expect(Number(lines.self)).toBeLessThan(1000);
    expect(r.stdout).toContain("nkt\n"); // the container's hostname
    // The same cgroup as init (the cgroup file lists the container's path).
    const initCgroup = readFileSync(`/proc/${initPid}/cgroup`, "utf8");
    const own = r.stdout.split("\n").filter((l) => /^\d+:/.test(l) && l.includes("memory"));
    expect(own.length).toBe(1);
    expect(initCgroup).toContain(own[0]!.split(":").slice(1).join(":"));
    finish(bundle);
  });

  testIf(skip, "the exit status propagates (5), and a signal death as 128+n", () => {
    const bundle = running();
    expect(execIn(bundle.id, [], ["sh", "-c", "exit 5"]).code).toBe(5);
    expect(execIn(bundle.id, [], ["true"]).code).toBe(0);
    // Not pid 1 of the namespace, so SIGKILL from itself does kill it.
    expect(execIn(bundle.id, [], ["sh", "-c", "kill -9 $$"]).code).toBe(137);
    expect(state(bundle.id).status).toBe("running");
    finish(bundle);
  });

  testIf(skip, "stdin reaches the exec'd process; stdout and stderr come back", () => {
    const bundle = running();
    const r = rt(["exec", bundle.id, "sh", "-c", "cat; echo to-stderr >&2"], { input: "from-stdin\n" });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("from-stdin\n");
    expect(r.stderr).toContain("to-stderr");
    finish(bundle);
  });

  testIf(skip, "a missing command is an error naming it; the container keeps running", () => {
    const bundle = running();
    const r = execIn(bundle.id, [], ["no-such-command"]);
    expectFailure(r, { nk: "no-such-command", runc: "no-such-command" });
    expect(state(bundle.id).status).toBe("running");
    finish(bundle);
  });
});

describe("exec: process flags", () => {
  testIf(skip, "--env, --cwd, --user 1000:1000", () => {
    const bundle = running();
    const r = execIn(bundle.id, ["--env", "NKT_A=one", "--env", "TERM=dumb", "--cwd", "/etc", "--user", "1000:1000"], [
      "sh",
      "-c",
      'echo "a=$NKT_A term=$TERM cwd=$(pwd) uid=$(id -u) gid=$(id -g) path=$PATH"',
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("a=one term=dumb cwd=/etc uid=1000 gid=1000");
    // The container's own environment is the base (PATH from config.json).
    expect(r.stdout).toContain("path=/usr/local/sbin:");
    finish(bundle);
  });

  // That --cap never reaches the inheritable set (CVE-2022-29162): cve.test.ts.
  testIf(skip, "--cap adds a capability to the bounding, effective and permitted sets", () => {
    const bundle = running();
    const plain = parseStatus(ok(execIn(bundle.id, [], ["cat", "/proc/self/status"])).stdout);
    const withCap = parseStatus(ok(execIn(bundle.id, ["--cap", "CAP_SYS_ADMIN"], ["cat", "/proc/self/status"])).stdout);
    const bit = 1n << 21n;
    expect(BigInt(`0x${plain.CapEff}`) & bit).toBe(0n);
    expect(BigInt(`0x${withCap.CapEff}`) & bit).toBe(bit);
    expect(BigInt(`0x${withCap.CapBnd}`) & bit).toBe(bit);
    expect(BigInt(`0x${withCap.CapPrm}`) & bit).toBe(bit);
    finish(bundle);
  });

  testIf(skip, "--no-new-privs sets NoNewPrivs for the exec'd process only", () => {
    const bundle = running((c) => (c.process.noNewPrivileges = false));
    const initPid = state(bundle.id).pid;
    expect(parseStatus(readFileSync(`/proc/${initPid}/status`, "utf8")).NoNewPrivs).toBe("0");
    expect(parseStatus(ok(execIn(bundle.id, [], ["cat", "/proc/self/status"])).stdout).NoNewPrivs).toBe("0");
    expect(parseStatus(ok(execIn(bundle.id, ["--no-new-privs"], ["cat", "/proc/self/status"])).stdout).NoNewPrivs).toBe("1");
    finish(bundle);
  });

  testIf(skip, "-d --pid-file returns at once; the pid file names the live process, in the container's cgroup", () => {
    const bundle = running();
    const marks = newHostDir();
    const pidFile = join(marks, "exec.pid");
    const t0 = Date.now();
    const r = execIn(bundle.id, ["-d", "--pid-file", pidFile], ["sh", "-c", "sleep 30"]);
    expect(r.code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000);
    const pid = Number(readFileSync(pidFile, "utf8").trim());
    expect(pid).toBeGreaterThan(0);
    expect(existsSync(`/proc/${pid}`)).toBe(true);
    expect(readlinkSync(`/proc/${pid}/ns/pid`)).toBe(readlinkSync(`/proc/${state(bundle.id).pid}/ns/pid`));
    expect(pidsInContainerCgroups(bundle.id)).toContain(pid);
    finish(bundle); // delete --force takes the detached process with it
    expect(existsSync(`/proc/${pid}`) && !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"))).toBe(false);
  });

  testIf(skip, "--process FILE runs that process.json (args, env, cwd, user)", () => {
    const bundle = running();
    const file = join(newHostDir(), "process.json");
    writeFileSync(
      file,
      JSON.stringify({
        terminal: false,
        user: { uid: 1000, gid: 1000 },
        args: ["sh", "-c", 'echo "from-process-json $NKT_P $(pwd) $(id -u)"'],
        env: ["PATH=/bin:/usr/bin", "NKT_P=pval"],
        cwd: "/tmp",
        noNewPrivileges: true,
      }),
    );
    const r = execIn(bundle.id, ["--process", file], []);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("from-process-json pval /tmp 1000");
    finish(bundle);
  });
});

describe("exec: refused states", () => {
  testIf(skip, "exec into a stopped container is a clear error", () => {
    const bundle = newBundle({ args: ["true"] });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    waitForStatus(bundle.id, "stopped");
    const r = execIn(bundle.id, [], ["true"]);
    expectFailure(r, { nk: /stopped/, runc: /stopped/ });
    expect(r.stderr.split("\n").filter((l) => l.trim() !== "").length).toBeLessThanOrEqual(2);
    ok(rt(["delete", bundle.id]));
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  testIf(skip, "exec into a container that does not exist names it", () => {
    expectFailure(execIn("nkt-no-such-container", [], ["true"]), { nk: "nkt-no-such-container", runc: "does not exist" });
  });

  testIf(skip, "exec into a paused container errors; after resume it works", () => {
    const bundle = running();
    const paused = rt(["pause", bundle.id]);
    if (paused.code !== 0) throw new Error(`pause failed: ${describeResult(paused)}`);
    try {
      expect(state(bundle.id).status).toBe("paused");
      const r = execIn(bundle.id, [], ["true"]);
      expectFailure(r, { nk: /paused/, runc: /paused/ });
      expect(r.timedOut).toBe(false);
    } finally {
      ok(rt(["resume", bundle.id]));
    }
    expect(ok(execIn(bundle.id, [], ["echo", "after-resume"])).stdout).toContain("after-resume");
    finish(bundle);
  });
});

// ------------------------------------------------------------ console socket

const python = pythonForReceiver();
const pythonSkip = python ? null : "python3 >= 3.9 (socket.recv_fds) is needed for the console-socket receiver";
const receiverFor = (input: string, until: string) => consoleReceiver(newHostDir("nkt-console-"), input, until, { python: python! });

describe("exec/create: terminals through --console-socket", () => {
  testIf(firstReason(skip, pythonSkip), "exec --tty --console-socket: the receiver gets the pty master and drives a shell", () => {
    const bundle = running();
    // $((...)) so the checks match the shell's output, not the terminal's echo of the input.
    const receiver = receiverFor("echo tty-$((40+2))-ok; tty; echo end-$((1+1))-mark; exit\n", "end-2-mark");
    // -d: runc takes a console socket only for a detached exec.
    const pidFile = join(newHostDir(), "tty.pid");
    ok(execIn(bundle.id, ["-d", "--tty", "--console-socket", receiver.socket, "--pid-file", pidFile], ["sh"]));
    const got = receiver.result();
    const pid = Number(readFileSync(pidFile, "utf8"));
    waitUntil("the terminal shell to exit", () => !existsSync(`/proc/${pid}`) || /\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8")));
    expect(got.fds).toBe(1);
    expect(got.output).toContain("tty-42-ok");
    expect(got.output).toMatch(/\/dev\/pts\/\d+/);
    expect(got.output).not.toContain("not a tty");
    finish(bundle);
  });

  testIf(firstReason(skip, pythonSkip), "create --console-socket with process.terminal: the container's stdio is the pty", () => {
    const bundle = newBundle({
      args: ["sh", "-c", "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-$((3*3))-ttys; echo done-$((5+5))"],
      override: (c) => (c.process.terminal = true),
    });
    const receiver = receiverFor("", "done-10");
    ok(createContainer(bundle, { flags: ["--console-socket", receiver.socket] }));
    ok(startContainer(bundle.id));
    const got = receiver.result();
    expect(got.fds).toBe(1);
    expect(got.output).toMatch(/\/dev\/pts\/\d+/);
    expect(got.output).toContain("all-9-ttys");
    expect(got.output).toContain("done-10");
    expect(containerStdout(bundle)).not.toContain("done-10"); // the output went to the pty, not the log
    waitForStatus(bundle.id, "stopped");
    ok(rt(["delete", bundle.id]));
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  testIf(skip, "create with process.terminal but no --console-socket fails and leaves nothing", () => {
    const bundle = newBundle({ override: (c) => (c.process.terminal = true) });
    expectFailure(createContainer(bundle), { nk: /console.socket/, runc: /console.socket/ });
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});
