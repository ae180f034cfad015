import { describe, expect, test } from "bun:test";
import { buildContainerPlan, type PlanInput } from "../../src/plan/build.ts";
import { OpCode, OpName, Section, encodePlan } from "../../src/plan/ops.ts";
import { CLONE, MS } from "../../src/plan/constants.ts";
import { parseMountOptions } from "../../src/plan/mount-options.ts";
import type { Spec } from "../../src/spec/types.ts";

function spec(mutate: (s: Spec) => void = () => {}): Spec {
  const s: Spec = {
    ociVersion: "1.2.0",
    process: {
      user: { uid: 1000, gid: 1000, additionalGids: [10, 20] },
      args: ["sh", "-c", "true"],
      env: ["PATH=/bin:/usr/bin", "A=1"],
      cwd: "/",
      capabilities: { bounding: ["CAP_KILL", "CAP_AUDIT_WRITE"], effective: ["CAP_KILL"], permitted: ["CAP_KILL"] },
      rlimits: [{ type: "RLIMIT_NOFILE", soft: 1024, hard: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: "rootfs", readonly: true },
    hostname: "box",
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      { destination: "/dev/pts", type: "devpts", source: "devpts", options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
      { destination: "/data", type: "bind", source: "data", options: ["rbind", "ro", "rprivate"] },
    ],
    linux: {
      namespaces: [{ type: "pid" }, { type: "mount" }, { type: "uts" }, { type: "cgroup" }, { type: "network", path: "/var/run/netns/x" }],
      maskedPaths: ["/proc/kcore"],
      readonlyPaths: ["/proc/sys"],
      sysctl: { "net.ipv4.ip_forward": "1" },
    },
  };
  mutate(s);
  return s;
}

function input(s: Spec, extra: Partial<PlanInput> = {}): PlanInput {
  return {
    spec: s,
    bundle: "/bundle",
    rootfs: "/bundle/rootfs",
    fifoDir: "/run/nk/c1",
    noPivot: false,
    noNewKeyring: false,
    preserveFds: 0,
    foreground: false,
    containerId: "c1",
    cgroupMounts: [],
    isDirectory: () => true,
    ...extra,
  };
}

const names = (ops: { code: number }[]) => ops.map((o) => OpName[o.code]);

describe("plan builder", () => {
  const plan = buildContainerPlan(input(spec()));
  const pre = plan.ops.filter((o) => o.section === Section.Pre);
  const parent = plan.ops.filter((o) => o.section === Section.Parent);
  const init = plan.ops.filter((o) => o.section === Section.Init);

  test("sections: joins before clone; clone flags are the new namespaces except cgroup", () => {
    expect(names(pre)).toEqual(["FIFO_PREPARE", "SETNS", "CLONE"]);
    expect(pre[1]!.args).toEqual(["/var/run/netns/x", "network"]);
    expect(Number(pre[2]!.args[0])).toBe(CLONE.NEWPID | CLONE.NEWNS | CLONE.NEWUTS);
    expect(plan.cloneFlags & CLONE.NEWNET).toBe(0);
  });
  test("parent reports the pid, waits for the cgroup, releases, exits (detached)", () => {
    expect(names(parent)).toEqual(["SEND_PID", "WAIT_GO", "RELEASE_CHILD", "EXIT"]);
  });
  test("cgroup namespace is unshared by init after release", () => {
    const i = init.findIndex((o) => o.code === OpCode.UNSHARE);
    expect(init[0]!.code).toBe(OpCode.WAIT_RELEASE);
    expect(i).toBeGreaterThan(0);
    expect(Number(init[i]!.args[0])).toBe(CLONE.NEWCGROUP);
  });
  test("mounts: proc strict, tmpfs data, bind with remount and propagation, relative source under bundle", () => {
    const mounts = init.filter((o) => o.code === OpCode.MOUNT_IN_ROOT);
    expect(mounts[0]!.args.slice(1, 4)).toEqual(["/proc", "proc", "proc"]);
    expect(mounts[0]!.args[7]).toBe("1");
    expect(mounts[1]!.args[5]).toBe("mode=755,size=65536k");
    expect(Number(mounts[1]!.args[4])).toBe(MS.NOSUID | MS.STRICTATIME);
    const bind = mounts.find((o) => o.args[1] === "/data")!;
    expect(bind.args[2]).toBe("/bundle/data");
    expect(Number(bind.args[4])).toBe(MS.BIND | MS.REC);
    const remount = init.find((o) => o.code === OpCode.REMOUNT_IN_ROOT)!;
    expect(Number(remount.args[2]) & MS.RDONLY).toBe(MS.RDONLY);
    expect(remount.source).toBe("mounts[3].options");
    const propagation = mounts.filter((o) => o.args[1] === "/data")[1]!;
    expect(Number(propagation.args[4])).toBe(MS.PRIVATE | MS.REC);
  });
  test("default devices by mknod, /dev symlinks, ptmx with devpts", () => {
    const nodes = init.filter((o) => o.code === OpCode.MKNOD_IN_ROOT).map((o) => o.args[1]);
    expect(nodes).toEqual(["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]);
    const links = init.filter((o) => o.code === OpCode.SYMLINK_IN_ROOT).map((o) => o.args[2]);
    expect(links).toContain("/dev/ptmx");
    expect(links).toContain("/dev/fd");
  });
  test("order after mounts: pivot, hostname, sysctl, masked, readonly, root ro", () => {
    const order = names(init);
    const at = (n: string) => order.indexOf(n);
    expect(at("PIVOT_ROOT")).toBeGreaterThan(order.lastIndexOf("MOUNT_IN_ROOT"));
    expect(at("SETHOSTNAME")).toBeGreaterThan(at("PIVOT_ROOT"));
    expect(at("WRITE_PROC")).toBeLessThan(at("READONLY_PATH"));
    expect(at("MASK_PATH")).toBeLessThan(at("READONLY_PATH"));
    expect(at("REMOUNT_RO")).toBeGreaterThan(at("READONLY_PATH"));
    expect(init.find((o) => o.code === OpCode.WRITE_PROC)!.args).toEqual(["/proc/sys/net/ipv4/ip_forward", "1"]);
  });
  test("credentials and caps in runc's order; inheritable empty unless asked", () => {
    const order = names(init);
    const at = (n: string) => order.indexOf(n);
    expect(at("CAP_BOUNDING")).toBeLessThan(at("SETRESUID"));
    expect(at("SETGROUPS")).toBeLessThan(at("SETRESGID"));
    expect(at("SETRESGID")).toBeLessThan(at("SETRESUID"));
    expect(at("CAPSET")).toBeGreaterThan(at("SETRESUID"));
    expect(init.find((o) => o.code === OpCode.SETGROUPS)!.args).toEqual(["10", "20"]);
    expect(init.find((o) => o.code === OpCode.CAP_BOUNDING)!.args).toEqual([((1n << 5n) | (1n << 29n)).toString(16)]);
    expect(init.find((o) => o.code === OpCode.CAPSET)!.args).toEqual(["20", "20", "0"]);
  });
  test("the end: fds closed, exec looked up with the container PATH, ready, fifo, exec", () => {
    expect(names(init).slice(-5)).toEqual(["CLOSE_FDS", "EXEC_LOOKUP", "REPORT_READY", "WAIT_FIFO", "EXEC"]);
    expect(init.at(-4)!.args).toEqual(["sh", "/bin:/usr/bin"]);
    expect(init.at(-1)!.args).toEqual(["3", "sh", "-c", "true", "PATH=/bin:/usr/bin", "A=1"]);
  });
  test("every op names its source", () => {
    for (const op of plan.ops) expect(op.source.length).toBeGreaterThan(0);
  });
});

describe("plan variants", () => {
  test("user namespace: id maps in the parent, devices bound not mknod'ed, init becomes ns root", () => {
    const p = buildContainerPlan(
      input(
        spec((s) => {
          s.linux!.namespaces!.push({ type: "user" });
          s.linux!.uidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
          s.linux!.gidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
        }),
      ),
    );
    const parent = p.ops.filter((o) => o.section === Section.Parent);
    expect(parent[0]!.args).toEqual(["uid_map", "0 100000 65536"]);
    expect(parent[1]!.args).toEqual(["gid_map", "0 100000 65536"]);
    expect(p.ops.some((o) => o.code === OpCode.MKNOD_IN_ROOT)).toBe(false);
    expect(p.ops.filter((o) => o.code === OpCode.BIND_DEVICE_IN_ROOT).length).toBe(6);
    expect(p.cloneFlags & CLONE.NEWUSER).toBe(CLONE.NEWUSER);
  });
  test("joined user namespace comes first among the joins", () => {
    const p = buildContainerPlan(input(spec((s) => s.linux!.namespaces!.push({ type: "user", path: "/proc/1/ns/user" }))));
    const joins = p.ops.filter((o) => o.code === OpCode.SETNS).map((o) => o.args[1]);
    expect(joins).toEqual(["user", "network"]);
  });
  test("time namespace: unshare and offsets before clone", () => {
    const p = buildContainerPlan(
      input(
        spec((s) => {
          s.linux!.namespaces!.push({ type: "time" });
          s.linux!.timeOffsets = { monotonic: { secs: 86400 }, boottime: { secs: 3, nanosecs: 5 } };
        }),
      ),
    );
    const pre = names(p.ops.filter((o) => o.section === Section.Pre));
    expect(pre).toEqual(["FIFO_PREPARE", "SETNS", "UNSHARE", "WRITE_FILE", "CLONE"]);
    expect(p.ops.find((o) => o.code === OpCode.WRITE_FILE)!.args[1]).toBe("monotonic 86400 0\nboottime 3 5");
  });
  test("terminal: socket when given, monitor in the foreground, error when detached without one", () => {
    const t = spec((s) => (s.process!.terminal = true));
    expect(buildContainerPlan(input(t, { consoleSocket: "/tmp/s" })).terminal).toBe("socket");
    const fg = buildContainerPlan(input(t, { foreground: true }));
    expect(fg.terminal).toBe("monitor");
    expect(fg.ops.find((o) => o.code === OpCode.MONITOR)!.args).toEqual(["copy"]);
    expect(() => buildContainerPlan(input(t))).toThrow("--console-socket");
  });
  test("hooks: the runtime's at a SYNC before pivot_root, then createContainer in init; startContainer after the fifo", () => {
    const hook = (path: string) => ({ path, args: [path, "x"], env: ["A=1"], timeout: 3 });
    const ops = buildContainerPlan(
      input(spec((s) => (s.hooks = { createRuntime: [hook("/h/rt")], createContainer: [hook("/h/cc")], startContainer: [hook("/h/sc")] }))),
    ).ops.filter((o) => o.section === Section.Init);
    const at = (code: number, source?: string) => ops.findIndex((o) => o.code === code && (source === undefined || o.source === source));
    const sync = at(OpCode.SYNC, "hooks (prestart, createRuntime: run by the runtime)");
    const create = at(OpCode.RUN_HOOK, "hooks.createContainer[0]");
    const startSync = at(OpCode.SYNC, "hooks.startContainer (state JSON for the hooks)");
    const start = at(OpCode.RUN_HOOK, "hooks.startContainer[0]");
    expect(sync).toBeGreaterThan(-1);
    expect(create).toBe(sync + 1);
    expect(create).toBeLessThan(at(OpCode.PIVOT_ROOT));
    // The "created" state is fetched while init can still talk to the runtime; the hook runs after `start`.
    expect(startSync).toBeLessThan(at(OpCode.REPORT_READY));
    expect(start).toBeGreaterThan(at(OpCode.WAIT_FIFO));
    expect(start).toBeLessThan(at(OpCode.EXEC));
    expect(ops[create]!.args).toEqual(["/h/cc", "3", "", "2", "/h/cc", "x", "A=1"]);
    // No hooks, no sync points.
    expect(buildContainerPlan(input(spec())).ops.some((o) => o.code === OpCode.SYNC)).toBe(false);
  });

  test("no mount namespace is refused", () => {
    expect(() => buildContainerPlan(input(spec((s) => (s.linux!.namespaces = [{ type: "pid" }]))))).toThrow("mount namespace is required");
  });
  test("--no-pivot chroots; --preserve-fds is passed to CLOSE_FDS", () => {
    const p = buildContainerPlan(input(spec(), { noPivot: true, preserveFds: 2 }));
    expect(p.ops.some((o) => o.code === OpCode.CHROOT)).toBe(true);
    expect(p.ops.some((o) => o.code === OpCode.PIVOT_ROOT)).toBe(false);
    expect(p.ops.find((o) => o.code === OpCode.CLOSE_FDS)!.args).toEqual(["2"]);
  });
  test("cgroup mount on v1 without cgroup ns binds each hierarchy read-only", () => {
    const p = buildContainerPlan(
      input(
        spec((s) => {
          s.linux!.namespaces = s.linux!.namespaces!.filter((n) => n.type !== "cgroup");
          s.mounts!.push({ destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["ro", "nosuid"] });
        }),
        { cgroupMounts: [{ dirName: "memory", fstype: "cgroup", data: "memory", hostPath: "/sys/fs/cgroup/memory/x" }] },
      ),
    );
    const cg = p.ops.filter((o) => o.source.startsWith("mounts[4]"));
    expect(cg.map((o) => OpName[o.code])).toEqual(["MOUNT_IN_ROOT", "MOUNT_IN_ROOT", "REMOUNT_IN_ROOT", "REMOUNT_IN_ROOT"]);
    expect(cg[1]!.args.slice(1, 3)).toEqual(["/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/x"]);
  });
  test("unsupported mount options are an error naming the field", () => {
    expect(() => buildContainerPlan(input(spec((s) => s.mounts!.push({ destination: "/x", type: "bind", source: "/x", options: ["idmap"] }))))).toThrow("mounts[4].options: not supported: idmap");
  });
  test("the plan encodes to the wire format", () => {
    const bytes = encodePlan(buildContainerPlan(input(spec())).ops);
    expect(new TextDecoder().decode(bytes.slice(0, 4))).toBe("NKP1");
  });
});

describe("mount options", () => {
  test("flags, clears, data, bind split", () => {
    const o = parseMountOptions(["ro", "nosuid", "rw", "size=1m", "mode=1777"], "tmpfs");
    expect(o.flags).toBe(MS.NOSUID);
    expect(o.data).toBe("size=1m,mode=1777");
    const b = parseMountOptions(["bind", "ro", "nodev"], undefined);
    expect(b.bind).toBe(true);
    expect(b.flags).toBe(0);
    expect(b.bindRemountFlags).toBe(MS.RDONLY | MS.NODEV);
  });
});

describe("trace formatting", () => {
  test("flags are shown by name", async () => {
    const { describeOp } = await import("../../src/linux/trace.ts");
    expect(describeOp({ code: OpCode.CLONE, section: Section.Pre, args: [String(CLONE.NEWPID | CLONE.NEWNS)], source: "x" })).toBe("CLONE CLONE_NEWNS|CLONE_NEWPID");
    expect(describeOp({ code: OpCode.MOUNT, section: Section.Init, args: ["/a", "/a", "", String(MS.BIND | MS.REC), ""], source: "x" })).toBe('MOUNT /a /a "" MS_BIND|MS_REC ""');
  });
});

describe("seccomp notify in the plan", () => {
  test("CONNECT_LISTENER before clone (host path), SECCOMP carries the payload template", async () => {
    const { listenerPayloadTemplate } = await import("../../src/linux/seccomp.ts");
    const s = spec();
    const template = listenerPayloadTemplate(s, { id: "c1", bundle: "/bundle" }, "meta");
    const p = buildContainerPlan(input(s, { seccomp: { flags: 8, program: new Uint8Array(8), listener: { path: "/run/l.sock", payloadTemplate: template } } }));
    const pre = p.ops.filter((o) => o.section === Section.Pre).map((o) => OpName[o.code]);
    expect(pre.indexOf("CONNECT_LISTENER")).toBeLessThan(pre.indexOf("CLONE"));
    const seccomp = p.ops.find((o) => o.code === OpCode.SECCOMP)!;
    expect(seccomp.args[2]).toBe(template);
    const parsed = JSON.parse(template.replaceAll("{pid}", "42"));
    expect(parsed).toMatchObject({ fds: ["seccompFd"], pid: 42, metadata: "meta", state: { id: "c1", pid: 42, status: "creating" } });
  });
});
