/**
 * What the container's process sees from inside: namespaces, ids, mounts and
 * their flags, capabilities, rlimits, credentials, masked and read-only paths,
 * sysctls, time offsets, and where it sits in the cgroup hierarchies.
 * Each test runs one short container (foreground `run`) and parses its output.
 */
import { afterAll, describe, expect } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { OciConfig } from "../helpers/bundle.ts";
import {
  assertNoLeftovers,
  bindMount,
  cgroupHierarchies,
  cleanupAll,
  containerCgroupDirs,
  createContainer,
  deleteForce,
  describeResult,
  firstReason,
  hostNamespace,
  integrationSkipReason,
  newBundle,
  newHostDir,
  ok,
  parseStatus,
  runContainer,
  runtimeSupportsNamespace,
  startContainer,
  state,
  testIf,
  waitUntil,
} from "../helpers/runtime.ts";
import type { BundleOptions } from "../helpers/bundle.ts";

const skip = integrationSkipReason();
afterAll(cleanupAll);

/** Run a shell script in a container and return its stdout (the run must exit 0). */
function inside(script: string, opts: Omit<BundleOptions, "args"> = {}): string {
  const { result, bundle } = runContainer({ ...opts, args: ["sh", "-c", script] });
  if (result.code !== 0) throw new Error(`container script failed: ${describeResult(result)}`);
  assertNoLeftovers(bundle.id, bundle.dir);
  return result.stdout;
}

/** Run a script and return exit code and both streams (for expected failures inside). */
function insideResult(script: string, opts: Omit<BundleOptions, "args"> = {}) {
  const { result, bundle } = runContainer({ ...opts, args: ["sh", "-c", script] });
  assertNoLeftovers(bundle.id, bundle.dir);
  return result;
}

function mutate(fn: (c: OciConfig) => void): { override: (c: OciConfig) => void } {
  return { override: fn };
}

const CAP_BIT = { CAP_KILL: 5, CAP_NET_BIND_SERVICE: 10, CAP_AUDIT_WRITE: 29, CAP_CHOWN: 0, CAP_SYS_ADMIN: 21 } as const;
function capMask(names: (keyof typeof CAP_BIT)[]): string {
  const mask = names.reduce((m, n) => m | (1n << BigInt(CAP_BIT[n])), 0n);
  return mask.toString(16).padStart(16, "0");
}

/** mounts line for a mount point: [source, target, fstype, options[]] */
function mountLine(mounts: string, target: string): { fstype: string; options: string[] } | null {
  for (const line of mounts.split("\n")) {
    const f = line.split(" ");
    if (f[1] === target) return { fstype: f[2]!, options: f[3]!.split(",") };
  }
  return null;
}

describe("isolation: namespaces", () => {
  const kinds = ["pid", "net", "ipc", "uts", "mnt", "cgroup"] as const;
  const readAll = kinds.map((k) => `echo ${k}=$(readlink /proc/self/ns/${k})`).join("; ");

  function parseNs(out: string): Record<string, string> {
    return Object.fromEntries(out.trim().split("\n").map((l) => l.split("=") as [string, string]));
  }

  testIf(skip, "pid, net, ipc, uts and mnt namespaces differ from the host; cgroup is inherited when not requested", () => {
    const ns = parseNs(inside(readAll));
    for (const k of ["pid", "net", "ipc", "uts", "mnt"]) expect(ns[k]).not.toBe(hostNamespace(k));
    // config.md: a namespace type not in the list MUST be inherited from the runtime.
    expect(ns.cgroup).toBe(hostNamespace("cgroup"));
  });

  testIf(skip, "a cgroup namespace is created when requested", () => {
    const ns = parseNs(inside(readAll, mutate((c) => c.linux.namespaces.push({ type: "cgroup" }))));
    expect(ns.cgroup).not.toBe(hostNamespace("cgroup"));
    // Inside its own cgroup namespace the container is at the root.
    expect(inside("cat /proc/self/cgroup", mutate((c) => c.linux.namespaces.push({ type: "cgroup" })))).not.toContain("nano-kata-test");
  });

  testIf(skip, "the container's init is pid 1 in its pid namespace", () => {
    expect(inside("echo $$").trim()).toBe("1");
  });

  testIf(skip, "hostname is set from config.json", () => {
    expect(inside("hostname", mutate((c) => (c.hostname = "nkt-host-name"))).trim()).toBe("nkt-host-name");
  });

  testIf(skip, "a user namespace maps container root to host uid 100000 (rootfs owned by the mapped root)", () => {
    const out = inside("cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; touch /tmp/owned && stat -c %u /tmp/owned", {
      chownRootfs: { uid: 100000, gid: 100000 },
      override: (c) => {
        c.root.readonly = false;
        c.linux.namespaces.push({ type: "user" });
        c.linux.uidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
        c.linux.gidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
      },
    });
    const lines = out.trim().split("\n").map((l) => l.trim().split(/\s+/).join(" "));
    expect(lines[0]).toBe("0 100000 65536");
    expect(lines[1]).toBe("0 100000 65536");
    expect(lines[2]).toBe("0");
    expect(lines[3]).toBe("0");
    expect(lines[4]).toBe("0");
  });
});

describe("isolation: mounts", () => {
  testIf(skip, "proc is mounted with the configured nosuid,nodev,noexec", () => {
    const mounts = inside(
      "cat /proc/mounts",
      mutate((c) => {
        c.mounts[0].options = ["nosuid", "noexec", "nodev"];
      }),
    );
    const proc = mountLine(mounts, "/proc");
    expect(proc?.fstype).toBe("proc");
    for (const flag of ["nosuid", "nodev", "noexec"]) expect(proc?.options).toContain(flag);
  });

  // The mount point does not exist beforehand: runc chmods a tmpfs to the mode
  // of the directory it covers, which would hide whether mode= was applied.
  testIf(skip, "a tmpfs mount at a new mount point gets size=1m and mode=1777 as configured", () => {
    const out = inside("grep ' /mnt/fresh ' /proc/mounts; stat -c %a /mnt/fresh", {
      copyRootfs: true,
      override: (c) => c.mounts.push({ destination: "/mnt/fresh", type: "tmpfs", source: "tmpfs", options: ["nosuid", "size=1m", "mode=1777"] }),
    });
    const [line, mode] = out.trim().split("\n");
    const tmpfs = mountLine(line!, "/mnt/fresh");
    expect(tmpfs?.fstype).toBe("tmpfs");
    expect(tmpfs?.options).toContain("size=1024k");
    expect(tmpfs?.options).toContain("nosuid");
    expect(mode).toBe("1777");
  });

  testIf(skip, "a read-only bind mount shows ro and refuses writes", () => {
    const host = newHostDir();
    writeFileSync(join(host, "visible"), "from-host\n");
    const r = insideResult("grep ' /mnt/ro ' /proc/mounts; cat /mnt/ro/visible; touch /mnt/ro/new && echo WROTE", {
      override: (c) => c.mounts.push({ destination: "/mnt/ro", type: "bind", source: host, options: ["bind", "ro"] }),
    });
    const ro = mountLine(r.stdout.split("\n")[0]!, "/mnt/ro");
    expect(ro?.options).toContain("ro");
    expect(r.stdout).toContain("from-host");
    expect(r.stdout).not.toContain("WROTE");
    expect(r.stderr).toMatch(/read-only/i);
    expect(existsSync(join(host, "new"))).toBe(false);
  });

  testIf(skip, "a read-write bind mount: a file written inside appears on the host", () => {
    const host = newHostDir();
    inside("echo written-inside > /mnt/rw/out", mutate((c) => c.mounts.push(bindMount(host, "/mnt/rw"))));
    expect(readFileSync(join(host, "out"), "utf8")).toBe("written-inside\n");
  });

  testIf(skip, "maskedPaths: masked files read empty, masked directories are empty", () => {
    // /proc/kcore is often absent; /proc/keys and /proc/timer_list exist on most kernels.
    const files = ["/proc/kcore", "/proc/keys", "/proc/timer_list"].filter((p) => existsSync(p));
    expect(files.length).toBeGreaterThan(0);
    const script = `${files.map((f) => `echo ${f}=$(wc -c < ${f})`).join("; ")}; echo firmware=$(ls -A /sys/firmware | wc -l)`;
    const out = inside(script);
    for (const f of files) expect(out).toContain(`${f}=0`);
    expect(out).toContain("firmware=0");
  });

  testIf(skip, "readonlyPaths: writing under /proc/sys fails", () => {
    const r = insideResult("echo nkt-changed > /proc/sys/kernel/hostname && echo WROTE; hostname");
    expect(r.stdout).not.toContain("WROTE");
    expect(r.stdout).not.toContain("nkt-changed");
    expect(r.stderr).toMatch(/read-only/i);
  });

  testIf(skip, "root.readonly: writing to / fails; with readonly=false it works", () => {
    const r = insideResult("touch /nkt-root-file && echo WROTE");
    expect(r.stdout).not.toContain("WROTE");
    expect(r.stderr).toMatch(/read-only/i);
    const out = inside("touch /nkt-root-file && echo WROTE", {
      copyRootfs: true,
      override: (c) => (c.root.readonly = false),
    });
    expect(out).toContain("WROTE");
  });
});

describe("isolation: process attributes", () => {
  testIf(skip, "capabilities: CapBnd/CapEff/CapPrm match the config exactly, CapInh and CapAmb are 0", () => {
    const status = parseStatus(inside("cat /proc/self/status"));
    const want = capMask(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    expect(status.CapBnd).toBe(want);
    expect(status.CapEff).toBe(want);
    expect(status.CapPrm).toBe(want);
    expect(status.CapInh).toBe("0000000000000000");
    expect(status.CapAmb).toBe("0000000000000000");
  });

  testIf(skip, "capabilities: a different set (CHOWN only in effective, CHOWN+KILL bounding)", () => {
    const status = parseStatus(
      inside(
        "cat /proc/self/status",
        mutate((c) => {
          c.process.capabilities = { bounding: ["CAP_CHOWN", "CAP_KILL"], effective: ["CAP_CHOWN"], permitted: ["CAP_CHOWN"] };
        }),
      ),
    );
    expect(status.CapBnd).toBe(capMask(["CAP_CHOWN", "CAP_KILL"]));
    expect(status.CapEff).toBe(capMask(["CAP_CHOWN"]));
    expect(status.CapPrm).toBe(capMask(["CAP_CHOWN"]));
  });

  testIf(skip, "rlimits: NOFILE 1024 and a CORE limit are applied", () => {
    const out = inside(
      "ulimit -n; grep 'Max core file size' /proc/self/limits",
      mutate((c) => c.process.rlimits.push({ type: "RLIMIT_CORE", soft: 4096, hard: 8192 })),
    );
    const [nofile, core] = out.trim().split("\n");
    expect(nofile).toBe("1024");
    expect(core!.split(/\s+/).slice(4, 6)).toEqual(["4096", "8192"]);
  });

  testIf(skip, "cwd, env and args are as configured", () => {
    const out = inside('pwd; echo "FOO=$FOO"; echo "SPACED=$SPACED"; echo "args:$0:$1"', {
      override: (c) => {
        c.process.cwd = "/home/user";
        c.process.env.push("FOO=bar", "SPACED=a b  c");
        c.process.args.push("first-arg", "second-arg");
      },
    });
    expect(out.trim().split("\n")).toEqual(["/home/user", "FOO=bar", "SPACED=a b  c", "args:first-arg:second-arg"]);
  });

  testIf(skip, "user: uid, gid and additionalGids", () => {
    const out = inside("id; grep -E '^(Uid|Gid|Groups):' /proc/self/status", {
      override: (c) => (c.process.user = { uid: 1000, gid: 1000, additionalGids: [10, 20] }),
    });
    const status = parseStatus(out);
    expect(status.Uid!.split(/\s+/)).toEqual(["1000", "1000", "1000", "1000"]);
    expect(status.Gid!.split(/\s+/)).toEqual(["1000", "1000", "1000", "1000"]);
    expect(status.Groups!.split(/\s+/).sort()).toEqual(["10", "20"]);
    expect(out).toContain("uid=1000(user) gid=1000(user)");
  });

  testIf(skip, "user.umask is applied", () => {
    expect(inside("umask", mutate((c) => (c.process.user.umask = 0o027))).trim()).toBe("0027");
  });

  testIf(skip, "noNewPrivileges true sets NoNewPrivs: 1, false leaves 0", () => {
    expect(parseStatus(inside("cat /proc/self/status")).NoNewPrivs).toBe("1");
    expect(parseStatus(inside("cat /proc/self/status", mutate((c) => (c.process.noNewPrivileges = false)))).NoNewPrivs).toBe("0");
  });

  testIf(skip, "oomScoreAdj is applied", () => {
    expect(inside("cat /proc/self/oom_score_adj", mutate((c) => (c.process.oomScoreAdj = 123))).trim()).toBe("123");
  });

  testIf(skip, "sysctl net.ipv4.ip_forward=1 applies in the container's net namespace only", () => {
    const hostBefore = readFileSync("/proc/sys/net/ipv4/ip_forward", "utf8");
    const out = inside("cat /proc/sys/net/ipv4/ip_forward", mutate((c) => (c.linux.sysctl = { "net.ipv4.ip_forward": "1" })));
    expect(out.trim()).toBe("1");
    expect(readFileSync("/proc/sys/net/ipv4/ip_forward", "utf8")).toBe(hostBefore);
  });

  const noTimeNs = !existsSync("/proc/self/ns/time")
    ? "the kernel has no time namespaces"
    : skip === null && !runtimeSupportsNamespace("time")
      ? "the runtime's features do not list the time namespace (runc 1.1 has none)"
      : null;
  testIf(firstReason(skip, noTimeNs), "time namespace: boottime/monotonic offsets shift /proc/uptime", () => {
    const offset = 1_000_000;
    const hostUptime = Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]);
    const out = inside(
      "cat /proc/uptime",
      mutate((c) => {
        c.linux.namespaces.push({ type: "time" });
        c.linux.timeOffsets = { boottime: { secs: offset, nanosecs: 0 }, monotonic: { secs: offset, nanosecs: 0 } };
      }),
    );
    const uptime = Number(out.split(" ")[0]);
    expect(Math.abs(uptime - (hostUptime + offset))).toBeLessThan(30);
  });
});

describe("isolation: cgroups", () => {
  testIf(skip, "init sits in /nano-kata-test/<id> in every v1 hierarchy; the dirs are gone after delete", () => {
    const bundle = newBundle({ args: ["sh", "-c", "while :; do sleep 0.1; done"] });
    ok(createContainer(bundle));
    ok(startContainer(bundle.id));
    const pid = state(bundle.id).pid;
    const lines = readFileSync(`/proc/${pid}/cgroup`, "utf8").trim().split("\n");
    const v1 = lines.filter((l) => !l.startsWith("0::"));
    expect(v1.length).toBeGreaterThan(0);
    for (const line of v1) expect(line.split(":").slice(2).join(":")).toBe(`/nano-kata-test/${bundle.id}`);
    expect(containerCgroupDirs(bundle.id).length).toBeGreaterThanOrEqual(Math.min(v1.length, cgroupHierarchies().length - 1));

    ok(deleteForce(bundle.id));
    waitUntil("cgroup dirs to go", () => containerCgroupDirs(bundle.id).length === 0, 5_000);
    assertNoLeftovers(bundle.id, bundle.dir);
  });
});
