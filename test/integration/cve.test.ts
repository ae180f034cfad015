/**
 * Regression tests, one per class of container-runtime CVE, each written so a
 * runtime with that hole fails it. Checks security.test.ts already makes are
 * not repeated here:
 *   - CVE-2024-21626 leaked runtime fds (only 0,1,2 reach the container)
 *   - CVE-2019-5736 scan of /proc/<pid>/exe from a running container, and
 *     args [/proc/self/exe]
 *   - CVE-2022-29162 CapInh/CapAmb of init by default
 *   - CVE-2025-31133 /dev/null replaced by a bind mount before masking
 * Validated on runc 1.1.5 (NK_TEST_RUNTIME=/usr/sbin/runc); the one case it
 * fails is a real hole of that version and is marked as such, not hidden.
 */
import { afterAll, describe, expect } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type OciConfig, TEST_CGROUP_PARENT } from "../helpers/bundle.ts";
import { repoRoot, ROOTFS_HOSTNAME } from "../helpers/rootfs.ts";
import {
  assertNoLeftovers,
  bindMount,
  cleanupAll,
  createContainer,
  deleteForce,
  expectFailure,
  firstReason,
  integrationSkipReason,
  newBundle,
  newHostDir,
  ok,
  onlyFor,
  parseStatus,
  rt,
  runContainerIn,
  runtimeBinary,
  runtimeKind,
  startContainer,
  state,
  testIf,
  waitForStatus,
  waitUntil,
} from "../helpers/runtime.ts";

const skip = integrationSkipReason();
afterAll(cleanupAll);

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

/** The runtime's own files on the host (what a CVE-2019-5736 exploit would overwrite). */
function runtimeFiles(): string[] {
  const files = [runtimeBinary(), join(repoRoot(), "native", "build", "nk-exec"), join(repoRoot(), "node_modules", "bun", "bin", "bun.exe")];
  return [...new Set(files.filter((f) => existsSync(f)).map((f) => realpathSync(f)))];
}

function hashAll(files: string[]): Record<string, string> {
  return Object.fromEntries(files.map((f) => [f, sha256(f)]));
}

/** Run a bundle in the foreground and require that nothing is left behind. */
function runAndClean(bundle: ReturnType<typeof newBundle>, timeoutMs = 20_000) {
  const r = runContainerIn(bundle, [], timeoutMs);
  expect(r.timedOut).toBe(false);
  assertNoLeftovers(bundle.id, bundle.dir);
  return r;
}

// ---------------------------------------------------------------- 2019-5736

describe("CVE-2019-5736: the runtime's binary through /proc/<pid>/exe", () => {
  // While a container is `created`, its pid 1 is still the runtime's own code
  // (nano-kata: nk-exec waiting on the exec fifo). A process exec'd into it
  // tries to open /proc/1/exe, keeps the fd across `start` (when pid 1
  // execs the container's program and the runtime binary is no longer busy),
  // then reopens it for writing through /proc/self/fd: the 2019 exploit.
  // `true >>` opens for appending and writes nothing, so a hole shows as
  // WRITABLE without damage.
  testIf(skip, "an exec'd process cannot open pid 1's exe while the container is created, nor write it after start", () => {
    const files = runtimeFiles();
    const before = hashAll(files);
    const marks = newHostDir();
    const bundle = newBundle({
      // pid 1 lingers after start: the attacker lives in its pid namespace.
      args: ["sh", "-c", "echo container-started > /mnt/rw/started; while [ ! -e /mnt/rw/finish ]; do sleep 0.05; done"],
      override: (c) => c.mounts.push(bindMount(marks, "/mnt/rw")),
    });
    ok(createContainer(bundle));
    expect(state(bundle.id).status).toBe("created");
    // A failed redirection on a compound command does not end the shell (on `exec` it would).
    const attacker = [
      "( true >> /proc/1/exe ) 2>/dev/null && echo WRITABLE-DIRECT",
      "hold() { touch /mnt/rw/attacker-ready; while [ ! -e /mnt/rw/started ]; do sleep 0.02; done; sleep 0.1;",
      "  ( true >> /proc/self/fd/3 ) 2>/dev/null && echo WRITABLE-VIA-FD; }",
      "{ echo opened; hold; } 3< /proc/1/exe 2>/dev/null || { echo open-denied; touch /mnt/rw/attacker-ready; }",
      "echo attacker-done",
    ].join("\n");
    const out = join(marks, "attacker.out");
    ok(rt(["exec", "-d", bundle.id, "sh", "-c", `( ${attacker} ) > /mnt/rw/attacker.out 2>&1`]));
    waitUntil("the attacker to hold its fd", () => existsSync(join(marks, "attacker-ready")));
    ok(startContainer(bundle.id));
    waitUntil("the attacker to finish", () => existsSync(out) && readFileSync(out, "utf8").includes("attacker-done"));
    writeFileSync(join(marks, "finish"), "");
    const report = readFileSync(out, "utf8");
    expect(report).not.toContain("WRITABLE");
    // nano-kata's pre-exec init is not dumpable: the open itself is refused.
    if (runtimeKind() === "nk") expect(report).toContain("open-denied");
    expect(hashAll(files)).toEqual(before);
    waitForStatus(bundle.id, "stopped");
    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

// ------------------------------------------------ 2019-16884 / 2023-27561

describe("CVE-2019-16884 / CVE-2023-27561: /proc in the image is a symlink", () => {
  for (const [what, target] of [
    ["an absolute symlink to a host-looking directory", "/tmp/fakeproc"],
    ["a relative symlink to a directory in the rootfs", "tmp/fakeproc"],
  ] as const) {
    testIf(skip, `rootfs /proc as ${what}: proc is refused or mounted on a real /proc, never on the target`, () => {
      const bundle = newBundle({
        prepareRootfs: (rootfs) => {
          rmSync(join(rootfs, "proc"), { recursive: true, force: true });
          mkdirSync(join(rootfs, "tmp", "fakeproc"), { recursive: true });
          symlinkSync(target, join(rootfs, "proc"));
        },
        args: ["sh", "-c", "stat -f -c %T /proc/; ls /tmp/fakeproc | wc -l"],
      });
      const r = runAndClean(bundle);
      if (r.code === 0) {
        // Followed the link: proc must not have landed in the fake directory.
        expect(r.stdout.split("\n")[0]).toBe("proc");
        expect(r.stdout.split("\n")[1]?.trim()).toBe("0");
      } else {
        expectFailure(r, { nk: /symlink|\/proc/ });
      }
      if (runtimeKind() === "nk") expect(r.code).not.toBe(0);
      expect(readFileSync("/proc/self/mounts", "utf8")).not.toContain(bundle.rootfs);
    });
  }

  testIf(skip, "rootfs /proc as a regular file: proc is refused (never mounted over a file)", () => {
    const bundle = newBundle({
      prepareRootfs: (rootfs) => {
        rmSync(join(rootfs, "proc"), { recursive: true, force: true });
        writeFileSync(join(rootfs, "proc"), "not a directory\n");
      },
      args: ["true"],
    });
    const r = runAndClean(bundle);
    expect(r.code).not.toBe(0);
  });
});

// ---------------------------------------------------------------- 2021-30465

/**
 * Swap <race>/dir (a directory) and <race>/link (a symlink to `target`) with
 * renameat2(RENAME_EXCHANGE) as fast as possible until killed.
 */
const SWAPPER = `
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
open(sys.argv[3], "w").close()
while True:
    libc.renameat2(-100, a, -100, b, 2)
`;

describe("CVE-2021-30465: a mount destination raced with a symlink swap", () => {
  testIf(skip, "20 creates while the host swaps a path component with a symlink: every mount stays inside the rootfs", () => {
    const python = spawnSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).stdout.trim();
    if (!python) throw new Error("python3 is needed for the swapper");
    // The escape target: a host directory that is also bind-mounted into the
    // container, after the raced mount. A tmpfs landing on <outside>/mnt (the
    // symlink followed on the host) would show up inside the container at
    // /mnt/rw/mnt through that rbind.
    const outside = newHostDir("nkt-outside-");
    mkdirSync(join(outside, "mnt"));
    const tag = `size=${1000 + (process.pid % 9000)}k`;
    const bundle = newBundle({
      prepareRootfs: (rootfs) => {
        mkdirSync(join(rootfs, "race", "dir", "mnt"), { recursive: true });
        symlinkSync(outside, join(rootfs, "race", "link"));
      },
      args: ["true"],
      override: (c: OciConfig) => {
        c.mounts.push({ destination: "/race/dir/mnt", type: "tmpfs", source: "tmpfs", options: [tag] });
        c.mounts.push(bindMount(outside, "/mnt/rw"));
      },
    });
    const scratch = newHostDir();
    writeFileSync(join(scratch, "swap.py"), SWAPPER);
    const ready = join(scratch, "ready");
    const swapper = spawn(python, [join(scratch, "swap.py"), join(bundle.rootfs, "race", "dir"), join(bundle.rootfs, "race", "link"), ready], {
      stdio: "ignore",
    });
    const escapes: string[] = [];
    let created = 0;
    try {
      waitUntil("the swapper to start", () => existsSync(ready));
      for (let i = 0; i < 20; i++) {
        const id = `${bundle.id}-${i}`;
        bundle.config.linux.cgroupsPath = `/${TEST_CGROUP_PARENT}/${id}`;
        bundle.writeConfig();
        const r = createContainer(bundle, {}, id);
        if (r.code === 0) {
          created++;
          const pid = state(id).pid;
          const mountinfo = readFileSync(`/proc/${pid}/mountinfo`, "utf8");
          for (const line of mountinfo.split("\n").filter((l) => l.includes(tag))) {
            const mountpoint = line.split(" ")[4]!;
            // Inside the root: the raced path itself, or where an in-root resolution of the link leads;
            // an escape shows up as /mnt/rw/mnt.
            // (The swapper keeps renaming: the mounted directory may by now be called /race/link.)
            if (!["/race/dir/mnt", "/race/link/mnt", `${outside}/mnt`].includes(mountpoint)) escapes.push(`${id}: ${mountpoint}`);
          }
          ok(deleteForce(id));
        }
        assertNoLeftovers(id, bundle.dir);
        const hostMounts = readFileSync("/proc/self/mounts", "utf8");
        if (hostMounts.includes(tag)) escapes.push(`${id}: host mount table has the tmpfs: ${hostMounts.split("\n").find((l) => l.includes(tag))}`);
      }
    } finally {
      swapper.kill("SIGKILL");
    }
    expect(escapes).toEqual([]);
    // The outside directory is untouched on the host.
    expect(spawnSync("ls", ["-A", join(outside, "mnt")], { encoding: "utf8" }).stdout).toBe("");
    // Refusing every create would also "pass": some must have got through.
    expect(created).toBeGreaterThan(0);
  }, 60_000);
});

// ---------------------------------------------------------------- 2022-29162

describe("CVE-2022-29162: no inheritable capabilities by default", () => {
  // security.test.ts checks init; the hole was in `exec --cap`, which put the
  // capability into the inheritable set, where a non-root user's program with
  // inheritable file capabilities could pick it up.
  testIf(skip, "exec'd processes (plain, --cap, --user 1000 --cap) have CapInh 0", () => {
    const bundle = newBundle({ args: ["sh", "-c", "while :; do sleep 0.1; done"] });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    const initStatus = parseStatus(readFileSync(`/proc/${state(bundle.id).pid}/status`, "utf8"));
    expect(initStatus.CapInh).toBe("0000000000000000");
    for (const flags of [[], ["--cap", "CAP_NET_RAW"], ["--user", "1000:1000", "--cap", "CAP_NET_RAW"]]) {
      const r = ok(rt(["exec", ...flags, bundle.id, "cat", "/proc/self/status"]));
      const status = parseStatus(r.stdout);
      expect({ flags, CapInh: status.CapInh, CapAmb: status.CapAmb }).toEqual({ flags, CapInh: "0000000000000000", CapAmb: "0000000000000000" });
    }
    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

// ---------------------------------------------------------------- 2024-21626

describe("CVE-2024-21626: a leaked fd as the working directory", () => {
  // Whatever the runtime still has open while it chdirs (its state directory,
  // the rootfs, a cgroup) must not become the process's cwd: with
  // cwd = /proc/self/fd/N, `..` would walk the host.
  testIf(skip, "process.cwd /proc/self/fd/N (N = 3..10): create fails, or the cwd is inside the container", () => {
    const landed: string[] = [];
    for (let n = 3; n <= 10; n++) {
      const bundle = newBundle({
        args: ["sh", "-c", "pwd; ls -a .. | head -5"],
        override: (c) => (c.process.cwd = `/proc/self/fd/${n}`),
      });
      const r = runAndClean(bundle);
      // `pwd` prints nothing or "(unreachable)/..." for a directory outside the root.
      const cwd = r.stdout.split("\n")[0] ?? "";
      if (r.code === 0 && (!cwd.startsWith("/") || cwd.includes("(unreachable)"))) landed.push(`fd ${n}: ${JSON.stringify(r.stdout)}`);
    }
    expect(landed).toEqual([]);
  });

  testIf(skip, "exec --cwd /proc/self/fd/N (N = 3..10) fails, or the cwd is inside the container", () => {
    const bundle = newBundle({ args: ["sh", "-c", "while :; do sleep 0.1; done"] });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    const landed: string[] = [];
    for (let n = 3; n <= 10; n++) {
      const r = rt(["exec", "--cwd", `/proc/self/fd/${n}`, bundle.id, "sh", "-c", "pwd"]);
      if (r.code === 0 && (!r.stdout.startsWith("/") || r.stdout.includes("(unreachable)"))) landed.push(`fd ${n}: ${r.stdout.trim()}`);
    }
    expect(landed).toEqual([]);
    expect(state(bundle.id).status).toBe("running");
    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

// ---------------------------------------------------------------- 2025-31133

// runc 1.1.5 (before the CVE-2025-31133 fix) follows the link: the container's
// stdout ends up written into the rootfs's /etc/hostname.
const RUNC_PRE_31133 = onlyFor(["nk"], "runc 1.1.5 predates the CVE-2025-31133 fix and fails this check");

describe("CVE-2025-31133: /dev/null is a symlink when masking", () => {
  const MASK_CHECK = "cat /proc/keys /proc/timer_list 2>&1 | head -c 300; echo; echo mask-checked";

  /** A masked path must read as empty (or fail), never as the symlink's target. */
  function expectMasked(r: ReturnType<typeof runAndClean>): void {
    if (r.code === 0) {
      expect(r.stdout).toContain("mask-checked");
      expect(r.stdout).not.toContain(ROOTFS_HOSTNAME);
      expect(r.stdout).not.toContain("NKT-DECOY");
    } else {
      process.stderr.write(`note: runtime refused the /dev/null symlink: ${r.stderr.trim().split("\n").at(-1)}\n`);
    }
  }

  testIf(firstReason(skip, RUNC_PRE_31133), "image /dev/null -> /etc/hostname with no /dev tmpfs: refused, or masks with the real null", () => {
    const bundle = newBundle({
      prepareRootfs: (rootfs) => {
        rmSync(join(rootfs, "dev", "null"), { force: true });
        symlinkSync("/etc/hostname", join(rootfs, "dev", "null"));
      },
      args: ["sh", "-c", MASK_CHECK],
      override: (c) => {
        c.mounts = c.mounts.filter((m: { destination: string }) => !m.destination.startsWith("/dev"));
        c.root.readonly = false;
      },
    });
    const r = runAndClean(bundle);
    expectMasked(r);
    expect(readFileSync(join(bundle.rootfs, "etc", "hostname"), "utf8").trim()).toBe(ROOTFS_HOSTNAME);
  });

  testIf(skip, "/dev bind-mounted from a host dir whose null is a symlink: masking refuses", () => {
    const devDir = newHostDir("nkt-dev-");
    const decoy = join(newHostDir(), "decoy");
    writeFileSync(decoy, "NKT-DECOY\n");
    symlinkSync(decoy, join(devDir, "null"));
    const bundle = newBundle({
      args: ["sh", "-c", MASK_CHECK],
      override: (c) => {
        c.mounts = c.mounts.filter((m: { destination: string }) => !m.destination.startsWith("/dev"));
        c.mounts.push({ destination: "/dev", type: "bind", source: devDir, options: ["rbind", "rw"] });
      },
    });
    const r = runAndClean(bundle);
    expectMasked(r);
    if (runtimeKind() === "nk") expectFailure(r, { nk: "not the null device" });
    expect(readFileSync(decoy, "utf8")).toBe("NKT-DECOY\n");
  });
});

// ---------------------------------------------------------------- 2025-52881

describe("CVE-2025-52881: a sysctl write redirected by a mount over /proc/sys", () => {
  testIf(skip, "a host file bind-mounted over /proc/sys/net/ipv4/ip_forward: the sysctl write fails, the file is untouched", () => {
    const file = join(newHostDir(), "ip_forward");
    writeFileSync(file, "HOST-FILE\n");
    const bundle = newBundle({
      args: ["cat", "/proc/sys/net/ipv4/ip_forward"],
      override: (c) => {
        c.mounts.push({ destination: "/proc/sys/net/ipv4/ip_forward", type: "bind", source: file, options: ["bind", "rw"] });
        c.linux.sysctl = { "net.ipv4.ip_forward": "1" };
      },
    });
    const r = runAndClean(bundle);
    expectFailure(r, { nk: /not on procfs|net\.ipv4\.ip_forward/ });
    expect(readFileSync(file, "utf8")).toBe("HOST-FILE\n");
  });
});
