/**
 * CLI behaviours beyond the lifecycle: `run` forwards signals and stdin, the
 * --log/--log-format error lines clients read, concurrent commands on one id
 * are serialised, --preserve-fds, and --trace names the config fields.
 */
import { afterAll, describe, expect } from "bun:test";
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  assertNoLeftovers,
  bindMount,
  cleanupAll,
  integrationSkipReason,
  newBundle,
  newHostDir,
  ok,
  onlyFor,
  firstReason,
  rt,
  runContainerIn,
  runtimeBinary,
  stateRoot,
  testIf,
  waitUntil,
} from "../helpers/runtime.ts";

const skip = integrationSkipReason();
afterAll(cleanupAll);

/** Start `run` in the background; resolves with its exit code. */
function runInBackground(bundleDir: string, id: string, stdin = "ignore" as "ignore" | "pipe") {
  const child = spawn(runtimeBinary(), ["--root", stateRoot(), "run", "--bundle", bundleDir, id], { stdio: [stdin, "pipe", "pipe"] });
  let stdout = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise<number>((resolve) => child.on("exit", (code, signal) => resolve(code ?? 128 + (signal === "SIGKILL" ? 9 : 15))));
  return { child, exited, stdout: () => stdout };
}

describe("run in the foreground", () => {
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    testIf(skip, `forwards ${signal} to the container and exits with its status`, async () => {
      const marks = newHostDir("nkt-sig-");
      const bundle = newBundle({
        args: ["sh", "-c", `trap "echo got-${signal}; exit 7" ${signal.slice(3)}; touch /mnt/rw/ready; while :; do sleep 0.05; done`],
        override: (c) => c.mounts.push(bindMount(marks, "/mnt/rw")),
      });
      const run = runInBackground(bundle.dir, bundle.id);
      waitUntil("container ready", () => existsSync(join(marks, "ready")));
      run.child.kill(signal);
      expect(await run.exited).toBe(7);
      expect(run.stdout()).toContain(`got-${signal}`);
      assertNoLeftovers(bundle.id, bundle.dir);
    });
  }

  testIf(skip, "stdin is passed through to the container", () => {
    const bundle = newBundle({ args: ["sh", "-c", "read line; echo got:$line"] });
    const r = ok(rt(["run", "--bundle", bundle.dir, bundle.id], { input: "hello-stdin\n" }));
    expect(r.stdout).toContain("got:hello-stdin");
  });
});

describe("logging as clients read it", () => {
  testIf(firstReason(skip, onlyFor(["nk"], "runc's error line wording differs")), "--log FILE --log-format json records the error as a JSON line naming the id", () => {
    const log = join(newHostDir("nkt-log-"), "log.json");
    const r = rt(["--log", log, "--log-format", "json", "state", "no-such-container"]);
    expect(r.code).not.toBe(0);
    const lines = readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { level: string; msg: string; time: string });
    const error = lines.find((l) => l.level === "error");
    expect(error?.msg).toContain("no-such-container");
    expect(Number.isNaN(Date.parse(error!.time))).toBe(false);
    expect(r.stderr).toContain("no-such-container");
  });

  testIf(skip, "an invalid --log-format is a usage error", () => {
    const r = rt(["--log-format", "yaml", "list"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr.toLowerCase()).toContain("log");
  });
});

describe("concurrency", () => {
  testIf(skip, "concurrent creates of one id: exactly one wins, the others fail cleanly", async () => {
    const bundle = newBundle({ args: ["sh", "-c", "sleep 30"] });
    const runs = Array.from({ length: 4 }, () =>
      new Promise<number>((resolve) => {
        const c = spawn(runtimeBinary(), ["--root", stateRoot(), "create", "--bundle", bundle.dir, bundle.id], { stdio: "ignore" });
        c.on("exit", (code) => resolve(code ?? -1));
      }),
    );
    const codes = await Promise.all(runs);
    expect(codes.filter((c) => c === 0).length).toBe(1);
    const st = JSON.parse(ok(rt(["state", bundle.id])).stdout) as { status: string };
    expect(st.status).toBe("created");
    ok(rt(["delete", "--force", bundle.id]));
    assertNoLeftovers(bundle.id, bundle.dir);
  });

  testIf(skip, "start and delete --force racing on one container leave it fully gone", async () => {
    const bundle = newBundle({ args: ["sh", "-c", "sleep 30"] });
    ok(rt(["create", "--bundle", bundle.dir, bundle.id]));
    const run = (args: string[]) =>
      new Promise<number>((resolve) => {
        const c = spawn(runtimeBinary(), ["--root", stateRoot(), ...args], { stdio: "ignore" });
        c.on("exit", (code) => resolve(code ?? -1));
      });
    await Promise.all([run(["start", bundle.id]), run(["delete", "--force", bundle.id])]);
    // Whatever the order, nothing may survive the forced delete (a start that lost the race fails).
    ok(rt(["delete", "--force", bundle.id]));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

describe("file descriptors", () => {
  testIf(skip, "--preserve-fds 1 hands fd 3 to the container, and nothing else leaks", () => {
    const dir = newHostDir("nkt-fd-");
    const file = join(dir, "passed");
    writeFileSync(file, "through-fd-3\n");
    const fd = openSync(file, "r");
    try {
      const bundle = newBundle({ args: ["sh", "-c", "cat <&3; ls /proc/self/fd"] });
      const r = ok(rt(["run", "--preserve-fds", "1", "--bundle", bundle.dir, bundle.id], { extraFds: [fd] }));
      expect(r.stdout).toContain("through-fd-3");
      const fds = r.stdout.trim().split("\n").slice(1).map(Number);
      // 0-2, the preserved 3, and ls's own directory fd.
      expect(fds.filter((n) => n > 3).length).toBeLessThanOrEqual(1);
    } finally {
      closeSync(fd);
    }
  });
});

describe("--trace", () => {
  testIf(firstReason(skip, onlyFor(["nk"], "--trace is nano-kata's")), "names the config.json field behind each operation", () => {
    const bundle = newBundle({ args: ["true"] });
    const r = ok(runContainerIn(bundle, ["--trace"]));
    for (const expected of ["CLONE", "<- linux.namespaces", "MOUNT_IN_ROOT", "<- mounts[0]", "PIVOT_ROOT", "<- root.path", "CAPSET", "<- process.capabilities", "<- linux.cgroupsPath"]) {
      expect(r.stderr).toContain(expected);
    }
  });
});
