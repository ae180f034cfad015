import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { allCapabilityNames, CAPABILITY_NUMBERS, capabilityNumber, isKnownCapability } from "../../src/spec/capabilities.ts";
import { defaultSpec } from "../../src/spec/default.ts";
import { runtimeFeatures } from "../../src/spec/features.ts";
import { RLIMIT_NUMBERS, rlimitNumber } from "../../src/spec/rlimits.ts";
import { validateSpec } from "../../src/spec/validate.ts";

let bundle = "";

beforeAll(() => {
  bundle = mkdtempSync(join(tmpdir(), "nk-spec-default-"));
  mkdirSync(join(bundle, "rootfs"));
});

afterAll(() => {
  rmSync(bundle, { recursive: true, force: true });
});

describe("defaultSpec", () => {
  test("the default spec validates for create", () => {
    expect(validateSpec(defaultSpec({ rootless: false }), { bundle, forCreate: true })).toEqual([]);
  });

  test("the default spec survives a JSON round trip unchanged and still validates", () => {
    const text = JSON.stringify(defaultSpec({ rootless: false }));
    const parsed = JSON.parse(text);
    expect(parsed).toEqual(defaultSpec({ rootless: false }));
    expect(validateSpec(parsed, { bundle, forCreate: true })).toEqual([]);
  });

  test("matches what runc spec writes, with nano-kata's version and hostname", () => {
    const spec = defaultSpec({ rootless: false });
    expect(spec.ociVersion).toBe("1.2.0");
    expect(spec.hostname).toBe("nano-kata");
    expect(spec.process?.args).toEqual(["sh"]);
    expect(spec.process?.terminal).toBe(true);
    expect(spec.process?.cwd).toBe("/");
    expect(spec.process?.user).toEqual({ uid: 0, gid: 0 });
    expect(spec.process?.env).toContain("TERM=xterm");
    expect(spec.process?.noNewPrivileges).toBe(true);
    expect(spec.process?.rlimits).toEqual([{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }]);
    const caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    expect(spec.process?.capabilities).toEqual({ bounding: caps, effective: caps, permitted: caps, ambient: caps });
    expect(spec.root).toEqual({ path: "rootfs", readonly: true });
    expect(spec.mounts?.map((m) => m.destination)).toEqual([
      "/proc",
      "/dev",
      "/dev/pts",
      "/dev/shm",
      "/dev/mqueue",
      "/sys",
      "/sys/fs/cgroup",
    ]);
    expect(spec.mounts?.find((m) => m.destination === "/dev/pts")?.options).toContain("gid=5");
    expect(spec.mounts?.find((m) => m.destination === "/sys")?.type).toBe("sysfs");
    expect(spec.linux?.namespaces?.map((n) => n.type)).toEqual(["pid", "network", "ipc", "uts", "mount", "cgroup"]);
    expect(spec.linux?.resources?.devices).toEqual([{ allow: false, access: "rwm" }]);
    expect(spec.linux?.maskedPaths).toContain("/proc/kcore");
    expect(spec.linux?.readonlyPaths).toContain("/proc/sys");
  });

  test("each call returns a fresh object", () => {
    const a = defaultSpec({ rootless: false });
    a.process!.capabilities!.bounding!.push("CAP_SYS_ADMIN");
    a.linux!.maskedPaths!.length = 0;
    const b = defaultSpec({ rootless: false });
    expect(b.process!.capabilities!.bounding).toHaveLength(3);
    expect(b.linux!.maskedPaths!.length).toBeGreaterThan(5);
  });
});

describe("defaultSpec rootless", () => {
  const spec = defaultSpec({ rootless: true, hostUid: 1234, hostGid: 5678 });

  test("validates for create", () => {
    expect(validateSpec(spec, { bundle, forCreate: true })).toEqual([]);
  });

  test("has a user namespace mapping root to the caller's ids", () => {
    expect(spec.linux?.namespaces?.some((n) => n.type === "user" && n.path === undefined)).toBe(true);
    expect(spec.linux?.uidMappings).toEqual([{ containerID: 0, hostID: 1234, size: 1 }]);
    expect(spec.linux?.gidMappings).toEqual([{ containerID: 0, hostID: 5678, size: 1 }]);
  });

  test("has no network namespace and no cgroup resources", () => {
    expect(spec.linux?.namespaces?.some((n) => n.type === "network")).toBe(false);
    expect(spec.linux?.resources).toBeUndefined();
  });

  test("binds the host's /sys and drops gid=5 from devpts", () => {
    const sys = spec.mounts?.find((m) => m.destination === "/sys");
    expect(sys).toEqual({ destination: "/sys", type: "none", source: "/sys", options: ["rbind", "nosuid", "noexec", "nodev", "ro"] });
    const devpts = spec.mounts?.find((m) => m.destination === "/dev/pts");
    expect(devpts?.options?.some((o) => o.startsWith("gid="))).toBe(false);
  });

  test("defaults to the caller's effective ids", () => {
    const own = defaultSpec({ rootless: true });
    expect(own.linux?.uidMappings?.[0]?.hostID).toBe(process.geteuid!());
    expect(own.linux?.gidMappings?.[0]?.hostID).toBe(process.getegid!());
  });
});

describe("capability and rlimit tables", () => {
  test("capability numbers follow <linux/capability.h>", () => {
    expect(capabilityNumber("CAP_CHOWN")).toBe(0);
    expect(capabilityNumber("CAP_NET_BIND_SERVICE")).toBe(10);
    expect(capabilityNumber("CAP_SYS_ADMIN")).toBe(21);
    expect(capabilityNumber("CAP_AUDIT_WRITE")).toBe(29);
    expect(capabilityNumber("CAP_CHECKPOINT_RESTORE")).toBe(40);
    expect(capabilityNumber("CAP_FOO")).toBeUndefined();
    // Inherited Object properties are not capabilities.
    expect(isKnownCapability("toString")).toBe(false);
    const numbers: number[] = Object.values(CAPABILITY_NUMBERS);
    expect(numbers).toEqual([...Array(41).keys()]);
    expect(allCapabilityNames()).toHaveLength(41);
  });

  test("rlimit numbers follow <asm-generic/resource.h>", () => {
    expect(rlimitNumber("RLIMIT_CPU")).toBe(0);
    expect(rlimitNumber("RLIMIT_NOFILE")).toBe(7);
    expect(rlimitNumber("RLIMIT_AS")).toBe(9);
    expect(rlimitNumber("RLIMIT_RTTIME")).toBe(15);
    expect(rlimitNumber("RLIMIT_FOO")).toBeUndefined();
    expect(Object.values(RLIMIT_NUMBERS) as number[]).toEqual([...Array(16).keys()]);
  });
});

describe("runtimeFeatures", () => {
  test("has the runtime-spec features shape", () => {
    const features = runtimeFeatures();
    expect(features.ociVersionMin).toBe("1.0.0");
    expect(features.ociVersionMax).toBe("1.2.0");
    expect(features.hooks).toEqual(["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]);
    expect(features.mountOptions).toContain("rbind");
    expect(features.mountOptions).not.toContain("tmpcopyup");
    expect(features.linux.namespaces).toContain("user");
    expect(features.linux.capabilities).toHaveLength(41);
    expect(features.linux.cgroup).toMatchObject({ v1: true, v2: true, systemd: false, systemdUser: false });
    expect(features.linux.seccomp.enabled).toBe(true);
    expect(features.linux.seccomp.actions).toContain("SCMP_ACT_ERRNO");
    expect(features.linux.seccomp.actions).toContain("SCMP_ACT_NOTIFY");
    expect(features.linux.apparmor.enabled).toBe(true);
    expect(features.linux.selinux.enabled).toBe(true);
    expect(features.annotations["io.nanokata.version"]).toBe("0.1.0");
  });

  test("is plain JSON", () => {
    const features = runtimeFeatures();
    expect(JSON.parse(JSON.stringify(features))).toEqual(features);
  });
});
