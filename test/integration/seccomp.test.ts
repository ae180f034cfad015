/**
 * linux.seccomp in real containers: errno rules, an allow list, a kill rule,
 * argument conditions, the Docker default profile, the filter reaching exec'd
 * processes, and --trace. Runtime-agnostic; the allow list carries the few
 * extra syscalls runc's Go init makes after loading the filter.
 */
import { afterAll, describe, expect } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { OciConfig } from "../helpers/bundle.ts";
import { repoRoot } from "../helpers/rootfs.ts";
import {
  assertNoLeftovers,
  cleanupAll,
  createContainer,
  deleteForce,
  describeResult,
  integrationSkipReason,
  newBundle,
  ok,
  onlyFor,
  firstReason,
  parseStatus,
  rt,
  runContainer,
  runContainerIn,
  startContainer,
  testIf,
} from "../helpers/runtime.ts";

const skip = integrationSkipReason();
afterAll(cleanupAll);

const ENOSYS = 38;
const SIGSYS = 31;

const DOCKER_DEFAULT = join(repoRoot(), "test", "fixtures", "seccomp", "docker-default.json");
const dockerSkip = existsSync(DOCKER_DEFAULT) ? null : `${DOCKER_DEFAULT} is missing (written by the seccomp work)`;

/** A writable /tmp, so "mkdir fails" is seccomp's doing and not the read-only root's. */
function withTmp(c: OciConfig): void {
  c.mounts.push({ destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "mode=1777"] });
}

/** Run `sh -c script` with this seccomp profile (and a tmpfs /tmp); returns the run result. */
function runWithSeccomp(script: string, seccomp: unknown, extra?: (c: OciConfig) => void) {
  const { result, bundle } = runContainer({
    args: ["sh", "-c", script],
    override: (c) => {
      withTmp(c);
      c.linux.seccomp = seccomp;
      extra?.(c);
    },
  });
  assertNoLeftovers(bundle.id, bundle.dir);
  return result;
}

const denyMkdir = {
  defaultAction: "SCMP_ACT_ALLOW",
  syscalls: [{ names: ["mkdir", "mkdirat"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS }],
};

/**
 * What busybox `echo` needs (from strace), plus what runc's Go init does
 * between loading the filter and execve (futex, signals, the fifo). nano-kata
 * loads the filter right before execve, so for it the first group suffices.
 */
const ECHO_SYSCALLS = [
  "execve", "arch_prctl", "set_tid_address", "set_robust_list", "rseq", "prlimit64", "mprotect", "brk",
  "readlink", "getuid", "getrandom", "prctl", "write", "exit_group", "exit", "mmap", "munmap", "uname",
];
const GO_INIT_SYSCALLS = [
  "futex", "rt_sigprocmask", "rt_sigaction", "rt_sigreturn", "sigaltstack", "sched_yield", "nanosleep", "getpid",
  "gettid", "tgkill", "close", "openat", "read", "fcntl", "fstat", "newfstatat", "epoll_pwait", "epoll_ctl",
  "madvise", "capget", "capset", "clone", "getppid", "fstatfs", "statfs", "getdents64", "dup3", "pipe2", "readlinkat",
];

describe("seccomp: rules act", () => {
  testIf(skip, "SCMP_ACT_ERRNO errnoRet 38 on mkdir/mkdirat: mkdir fails with ENOSYS, the rest works", () => {
    const r = runWithSeccomp(
      "mkdir /tmp/x; echo mkdir=$?; touch /tmp/y && echo touch-ok; ls -d /tmp/x 2>/dev/null || echo no-x; grep Seccomp: /proc/self/status",
      denyMkdir,
    );
    expect(r.code).toBe(0);
    expect(r.stdout + r.stderr).toContain("Function not implemented");
    expect(r.stdout).toContain("mkdir=1");
    expect(r.stdout).toContain("touch-ok");
    expect(r.stdout).toContain("no-x");
    expect(parseStatus(r.stdout).Seccomp).toBe("2");
  });

  testIf(skip, "control: without the profile the same mkdir works and Seccomp is 0", () => {
    const r = runWithSeccomp("mkdir /tmp/x && echo mkdir-ok; grep Seccomp: /proc/self/status", undefined, (c) => {
      delete c.linux.seccomp;
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("mkdir-ok");
    expect(parseStatus(r.stdout).Seccomp).toBe("0");
  });

  testIf(skip, "default SCMP_ACT_ERRNO with an allow list: busybox echo runs, anything else is refused", () => {
    const profile = {
      defaultAction: "SCMP_ACT_ERRNO",
      defaultErrnoRet: 1,
      syscalls: [{ names: [...ECHO_SYSCALLS, ...GO_INIT_SYSCALLS], action: "SCMP_ACT_ALLOW" }],
    };
    const bundle = newBundle({ args: ["echo", "allowed-echo"], override: (c) => (c.linux.seccomp = profile) });
    const r = runContainerIn(bundle);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("allowed-echo");
    assertNoLeftovers(bundle.id, bundle.dir);

    // mkdir is not on the list: the default action answers EPERM.
    const denied = newBundle({ args: ["mkdir", "/dev/shm/x"], override: (c) => (c.linux.seccomp = profile) });
    const d = runContainerIn(denied);
    expect(d.code).toBe(1);
    expect(d.stdout + d.stderr).toContain("Operation not permitted");
    assertNoLeftovers(denied.id, denied.dir);
  });

  testIf(skip, "SCMP_ACT_KILL_PROCESS on getppid kills sh at start-up: 128+SIGSYS", () => {
    // busybox sh calls getppid() while initialising $PPID.
    const r = runWithSeccomp("echo should-not-print", {
      defaultAction: "SCMP_ACT_ALLOW",
      syscalls: [{ names: ["getppid"], action: "SCMP_ACT_KILL_PROCESS" }],
    });
    expect(r.code).toBe(128 + SIGSYS);
    expect(r.stdout).not.toContain("should-not-print");
  });

  // busybox `linux32` calls personality(PER_LINUX32 = 8), `linux64` personality(PER_LINUX = 0).
  testIf(skip, "an argument condition: personality denied only when arg0 == 8", () => {
    const r = runWithSeccomp("linux32 true; echo l32=$?; linux64 true; echo l64=$?; linux32 true 2>&1 | head -1", {
      defaultAction: "SCMP_ACT_ALLOW",
      syscalls: [
        { names: ["personality"], action: "SCMP_ACT_ERRNO", errnoRet: 13, args: [{ index: 0, value: 8, op: "SCMP_CMP_EQ" }] },
      ],
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("l32=1");
    expect(r.stdout).toContain("l64=0");
    expect(r.stdout).toContain("Permission denied"); // EACCES = 13, the errnoRet
  });

  testIf(skip, "a SCMP_CMP_MASKED_EQ condition: personality denied when (arg0 & 8) == 8", () => {
    const r = runWithSeccomp("linux32 true; echo l32=$?; linux64 true; echo l64=$?", {
      defaultAction: "SCMP_ACT_ALLOW",
      syscalls: [
        { names: ["personality"], action: "SCMP_ACT_ERRNO", errnoRet: 1, args: [{ index: 0, value: 8, valueTwo: 8, op: "SCMP_CMP_MASKED_EQ" }] },
      ],
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("l32=1");
    expect(r.stdout).toContain("l64=0");
  });

  testIf(skip, "a process exec'd into the container gets the container's filter", () => {
    const bundle = newBundle({
      args: ["sh", "-c", "while :; do sleep 0.1; done"],
      override: (c) => {
        withTmp(c);
        c.linux.seccomp = denyMkdir;
      },
    });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    const r = rt(["exec", bundle.id, "sh", "-c", "mkdir /tmp/e; echo rc=$?; grep Seccomp: /proc/self/status"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("rc=1");
    expect(r.stdout + r.stderr).toContain("Function not implemented");
    expect(parseStatus(r.stdout).Seccomp).toBe("2");
    ok(deleteForce(bundle.id));
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});

describe("seccomp: the Docker default profile", () => {
  const profile = () => JSON.parse(readFileSync(DOCKER_DEFAULT, "utf8"));

  testIf(firstReason(skip, dockerSkip), "busybox sh, ls and ps run normally; Seccomp is 2", () => {
    const r = runWithSeccomp("ls / > /dev/null && echo ls-ok; ps -o pid,comm | grep -c sh; grep Seccomp: /proc/self/status; echo sh-ok", profile());
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("ls-ok");
    expect(r.stdout).toContain("sh-ok");
    expect(r.stdout).toMatch(/^[1-9]\d*$/m); // ps found at least one sh
    expect(parseStatus(r.stdout).Seccomp).toBe("2");
  });

  // With CAP_SYS_ADMIN unshare(CLONE_NEWNET) would work (the control shows
  // it); the profile, which lists unshare only for that capability in Docker
  // and not at all in this capability-free form, must refuse it.
  const addSysAdmin = (c: OciConfig) => {
    for (const set of ["bounding", "effective", "permitted"]) c.process.capabilities[set].push("CAP_SYS_ADMIN");
  };
  testIf(firstReason(skip, dockerSkip), "unshare is denied (EPERM) even with CAP_SYS_ADMIN", () => {
    const control = runWithSeccomp("unshare -n true && echo unshare-ok", undefined, addSysAdmin);
    expect(control.stdout).toContain("unshare-ok");
    const r = runWithSeccomp("unshare -n true; echo rc=$?", profile(), addSysAdmin);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("rc=1");
    expect(r.stdout + r.stderr).toContain("Operation not permitted");
  });
});

describe("seccomp: --trace", () => {
  testIf(firstReason(skip, onlyFor(["nk"], "--trace is nano-kata's")), "--trace shows the SECCOMP op and its source field", () => {
    for (const noNewPrivileges of [false, true]) {
      const bundle = newBundle({
        args: ["true"],
        override: (c) => {
          c.linux.seccomp = denyMkdir;
          c.process.noNewPrivileges = noNewPrivileges;
        },
      });
      const r = rt(["--trace", "run", "--bundle", bundle.dir, bundle.id]);
      expect(r.code).toBe(0);
      const lines = r.stderr.split("\n");
      const seccompLines = lines.filter((l) => /\bSECCOMP\b/.test(l));
      if (seccompLines.length !== 1) throw new Error(`expected one SECCOMP line in the trace (noNewPrivileges ${noNewPrivileges}): ${describeResult(r)}`);
      expect(seccompLines[0]).toContain("<- linux.seccomp");
      // With no_new_privs the filter is loaded after init reported ready, as late as possible.
      expect(seccompLines[0]).toContain(noNewPrivileges ? "[after ready: not reported]" : "[ok]");
      expect(lines.some((l) => /seccomp compiled: \d+ BPF instructions/.test(l))).toBe(true);
      assertNoLeftovers(bundle.id, bundle.dir);
    }
  });
});

describe("seccomp user notification (SCMP_ACT_NOTIFY + listenerPath)", () => {
  testIf(skip, "the listener receives the notify fd and the containerProcessState, and its answer is the syscall's result", async () => {
    const { spawn } = await import("node:child_process");
    const { mkdtempSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const dir = mkdtempSync(join(tmpdir(), "nkt-notify-"));
    const socket = join(dir, "listener.sock");
    const received = join(dir, "state.json");
    const ETXTBSY = 26; // an answer no real mkdir in a tmpfs would give
    const listener = spawn("python3", [join(repoRoot(), "test", "fixtures", "seccomp", "notify-listener.py"), socket, received, String(ETXTBSY)], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        listener.stdout!.once("data", () => resolve());
        listener.once("exit", (code) => reject(new Error(`listener exited ${code}`)));
      });
      const bundle = newBundle({
        args: ["sh", "-c", "mkdir /tmp/x 2>&1; echo rc=$?"],
        override: (c) => {
          withTmp(c);
          c.linux.seccomp = {
            defaultAction: "SCMP_ACT_ALLOW",
            listenerPath: socket,
            listenerMetadata: "nk-test-metadata",
            syscalls: [{ names: ["mkdir", "mkdirat"], action: "SCMP_ACT_NOTIFY" }],
          };
        },
      });
      ok(createContainer(bundle));
      const pid = JSON.parse(ok(rt(["state", bundle.id])).stdout).pid as number;
      ok(startContainer(bundle.id));
      const { waitUntil, containerStdout } = await import("../helpers/runtime.ts");
      waitUntil("container output", () => containerStdout(bundle).includes("rc="));
      expect(containerStdout(bundle)).toContain("rc=1");
      expect(containerStdout(bundle)).toContain("Text file busy"); // the listener's answer, not a real error
      const payload = JSON.parse(readFileSync(received, "utf8"));
      expect(payload.fds).toEqual(["seccompFd"]);
      expect(payload.receivedFds).toBe(1);
      expect(payload.metadata).toBe("nk-test-metadata");
      expect(payload.pid).toBe(pid);
      expect(payload.state).toMatchObject({ id: bundle.id, pid, bundle: bundle.dir });
      expect(readFileSync(`${received}.answered`, "utf8")).toMatch(/^\d+ \d+/);
      ok(deleteForce(bundle.id));
      assertNoLeftovers(bundle.id, bundle.dir);
    } finally {
      listener.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
