/**
 * Escape-shaped checks: nothing of the runtime (fds, environment, binaries,
 * mounts) may reach the container, and a container may not reach the host
 * through the paths runtimes have been broken through before (CVEs cited per test).
 */
import { afterAll, describe, expect } from "bun:test";
import { createHash } from "node:crypto";
import { closeSync, existsSync, openSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  assertNoLeftovers,
  bindMount,
  cleanupAll,
  createContainer,
  deleteForce,
  describeResult,
  firstReason,
  integrationSkipReason,
  newBundle,
  newHostDir,
  ok,
  onlyFor,
  outputPaths,
  parseStatus,
  rt,
  runContainerIn,
  startContainer,
  testIf,
  waitForStatus,
  waitUntil,
  runtimeBinary,
  containerStdout,
} from "../helpers/runtime.ts";
import { repoRoot } from "../helpers/rootfs.ts";

const skip = integrationSkipReason();
afterAll(cleanupAll);

function fdListing(stdout: string): string[] {
  return stdout.split(/\s+/).filter((s) => /^\d+$/.test(s)).sort((a, b) => Number(a) - Number(b));
}

describe("security: nothing of the runtime leaks in", () => {
  // CVE-2024-21626 was a leaked runtime fd to a host directory. Extra fds the
  // caller hands the runtime (here a host file and a host directory as fds 3
  // and 4) must not reach the container either: only 0,1,2 and the fd `ls`
  // opens for /proc/self/fd itself.
  testIf(skip, "run: the container sees only fds 0, 1, 2 (plus ls's own directory fd)", () => {
    const host = newHostDir();
    writeFileSync(join(host, "secret"), "secret");
    const fileFd = openSync(join(host, "secret"), "r");
    const dirFd = openSync(host, "r");
    try {
      const bundle = newBundle({ args: ["sh", "-c", "ls /proc/self/fd"] });
      const r = rt(["run", "--bundle", bundle.dir, bundle.id], { extraFds: [fileFd, dirFd] });
      expect(r.code).toBe(0);
      expect(fdListing(r.stdout)).toEqual(["0", "1", "2", "3"]);
      assertNoLeftovers(bundle.id, bundle.dir);
    } finally {
      closeSync(fileFd);
      closeSync(dirFd);
    }
  });

  testIf(skip, "create+start: the container sees only fds 0, 1, 2 (plus ls's own directory fd)", () => {
    const host = newHostDir();
    const dirFd = openSync(host, "r");
    try {
      const bundle = newBundle({ args: ["sh", "-c", "ls /proc/self/fd; ls -l /proc/self/fd/ | grep -c nkt-host || true"] });
      const paths = outputPaths(bundle);
      ok(rt(["create", "--bundle", bundle.dir, bundle.id], { extraFds: [dirFd], stdoutPath: paths.stdout, stderrPath: paths.stderr }));
      ok(startContainer(bundle.id));
      waitForStatus(bundle.id, "stopped");
      const out = containerStdout(bundle).trim().split("\n");
      expect(fdListing(out.slice(0, -1).join(" "))).toEqual(["0", "1", "2", "3"]);
      expect(out.at(-1)).toBe("0");
      ok(rt(["delete", bundle.id]));
    } finally {
      closeSync(dirFd);
    }
  });

  testIf(skip, "the runtime's own environment does not reach the container", () => {
    const bundle = newBundle({ args: ["sh", "-c", "env"] });
    const r = rt(["run", "--bundle", bundle.dir, bundle.id], { env: { ...process.env, NKT_RUNTIME_SECRET: "leaked-value" } });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("leaked-value");
    expect(r.stdout).toContain("PATH=/usr/local/sbin");
  });

  testIf(skip, "inheritable and ambient capabilities are empty by default", () => {
    const bundle = newBundle({ args: ["cat", "/proc/self/status"] });
    const r = runContainerIn(bundle);
    expect(r.code).toBe(0);
    const status = parseStatus(r.stdout);
    expect(status.CapInh).toBe("0000000000000000");
    expect(status.CapAmb).toBe("0000000000000000");
  });

  testIf(skip, "container mounts do not propagate to the host mount table", () => {
    const host = newHostDir();
    const bundle = newBundle({
      copyRootfs: true,
      args: ["sh", "-c", "touch /mnt/rw/ready; while :; do sleep 0.1; done"],
      override: (c) => {
        c.mounts.push(bindMount(host, "/mnt/rw"));
        c.mounts.push({ destination: "/mnt/tmpfs", type: "tmpfs", source: "tmpfs" });
      },
    });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    waitUntil("the container to run", () => existsSync(join(host, "ready")));
    const hostMounts = readFileSync("/proc/self/mounts", "utf8");
    expect(hostMounts).not.toContain(bundle.rootfs);
    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

/** The files that make up the runtime under test: the CLI, the Bun binary, the executor. */
function runtimeFiles(): string[] {
  const candidates = [
    runtimeBinary(),
    join(repoRoot(), "node_modules", "bun", "bin", "bun.exe"),
    join(repoRoot(), "native", "build", "nk-exec"),
    join(repoRoot(), "dist", "nk-runtime.js"),
  ];
  return [...new Set(candidates.filter((p) => existsSync(p)).map((p) => realpathSync(p)))];
}

function hashes(files: string[]): Record<string, string> {
  return Object.fromEntries(files.map((f) => [f, createHash("sha256").update(readFileSync(f)).digest("hex")]));
}

describe("security: the runtime binary stays out of reach (CVE-2019-5736 shape)", () => {
  testIf(skip, "no /proc/<pid>/exe visible in the container opens for writing; runtime files unchanged", () => {
    const files = runtimeFiles();
    const before = hashes(files);
    // `true >>` opens O_WRONLY|O_APPEND and writes nothing, so a hole shows up
    // as "WRITABLE" without damaging anything. (A subshell, because a failed
    // redirection may end a non-interactive shell.)
    const bundle = newBundle({
      args: ["sh", "-c", 'for f in /proc/[0-9]*/exe; do if ( true >> "$f" ) 2>/dev/null; then echo "WRITABLE $f"; fi; done; echo scanned'],
    });
    const r = runContainerIn(bundle);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("scanned");
    expect(r.stdout).not.toContain("WRITABLE");
    expect(hashes(files)).toEqual(before);
  });

  // The 2019 exploit's entry point: a container whose program is
  // /proc/self/exe re-executes whatever binary set the container up. That must
  // be a sealed copy (or otherwise harmless), and the files on the host must
  // come out unchanged.
  testIf(skip, "args [/proc/self/exe] cannot touch the runtime's files", () => {
    const files = runtimeFiles();
    const before = hashes(files);
    const bundle = newBundle({ args: ["/proc/self/exe"] });
    const r = runContainerIn(bundle, [], 20_000);
    expect(r.timedOut).toBe(false);
    expect(hashes(files)).toEqual(before);
    deleteForce(bundle.id);
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

describe("security: masked paths", () => {
  // CVE-2025-31133: masking binds /dev/null over the path; if the container's
  // /dev/null has been replaced (here: a config bind of a host file), the
  // runtime must verify it is the real 1:3 character device, or fail, rather
  // than bind the replacement over /proc/keys.
  testIf(
    firstReason(skip, onlyFor(["nk"], "runc 1.1.5 predates the CVE-2025-31133 fix and fails this check")),
    "maskedPaths stay masked when /dev/null inside is replaced",
    () => {
      const host = newHostDir();
      const decoy = join(host, "decoy");
      writeFileSync(decoy, "NKT-DECOY\n");
      const bundle = newBundle({
        args: ["sh", "-c", "cat /proc/keys /proc/timer_list 2>&1 | head -c 200; echo; echo done"],
        override: (c) => c.mounts.push({ destination: "/dev/null", type: "bind", source: decoy, options: ["bind"] }),
      });
      const r = runContainerIn(bundle);
      if (r.code === 0) expect(r.stdout).not.toContain("NKT-DECOY");
      expect(readFileSync(decoy, "utf8")).toBe("NKT-DECOY\n");
      assertNoLeftovers(bundle.id, bundle.dir);
      if (r.code !== 0) process.stderr.write(`note: runtime refused the replaced /dev/null: ${describeResult(r)}\n`);
    },
  );
});
