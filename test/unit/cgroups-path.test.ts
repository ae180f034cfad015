import { describe, expect, test } from "bun:test";
import { CgroupError } from "../../src/cgroups/errors.ts";
import { parseSelfCgroup, resolveCgroupPath } from "../../src/cgroups/path.ts";

/** /proc/self/cgroup of a process on the development host (memory sits deeper than the rest). */
const HOST_SELF_CGROUP = `9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/3caec61396d11166fa4114e64e206e94
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
`;

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    if (error instanceof CgroupError) return error.code;
    throw error;
  }
  return undefined;
}

describe("parseSelfCgroup", () => {
  test("maps every controller of a line, named hierarchies, and the v2 line", () => {
    const self = parseSelfCgroup("3:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/init.scope (deleted)\n");
    expect(self.v1.get("cpu")).toBe("/user.slice");
    expect(self.v1.get("cpuacct")).toBe("/user.slice");
    expect(self.v1.get("name=systemd")).toBe("/user.slice/session-1.scope");
    expect(self.unified).toBe("/init.scope");
  });
});

describe("resolveCgroupPath", () => {
  const self = parseSelfCgroup(HOST_SELF_CGROUP);

  test("absolute paths are used as is in every hierarchy", () => {
    const resolve = resolveCgroupPath("/nano-kata-test/abc", "abc", self);
    expect(resolve("memory")).toBe("/nano-kata-test/abc");
    expect(resolve("pids")).toBe("/nano-kata-test/abc");
    expect(resolve("unified")).toBe("/nano-kata-test/abc");
  });

  test("absolute paths are normalized (empty and '.' components dropped)", () => {
    expect(resolveCgroupPath("//a/./b/", "x", self)("cpu")).toBe("/a/b");
  });

  test("relative paths go under our own cgroup of each hierarchy", () => {
    const resolve = resolveCgroupPath("sub/abc", "abc", self);
    expect(resolve("memory")).toBe("/process_api/3caec61396d11166fa4114e64e206e94/sub/abc");
    expect(resolve("cpu")).toBe("/sub/abc");
    expect(resolve("name=systemd")).toBe("/sub/abc");
    expect(resolve("unified")).toBe("/sub/abc");
  });

  test("relative paths are taken relative to the mount's root (inside a container without cgroupns)", () => {
    const inner = parseSelfCgroup("4:memory:/docker/c1\n0::/docker/c1\n");
    const resolve = resolveCgroupPath("nested", "x", inner);
    expect(resolve("memory", "/docker/c1")).toBe("/nested");
    expect(resolve("memory", "/")).toBe("/docker/c1/nested");
  });

  test("the self cgroup is read lazily, and only for relative paths", () => {
    let reads = 0;
    const thunk = () => {
      reads++;
      return self;
    };
    resolveCgroupPath("/abs", "x", thunk)("memory");
    expect(reads).toBe(0);
    const resolve = resolveCgroupPath("rel", "x", thunk);
    resolve("memory");
    resolve("cpu");
    expect(reads).toBe(1);
  });

  test("no path (or an empty one) means /nano-kata/<id>", () => {
    expect(resolveCgroupPath(undefined, "c1", self)("memory")).toBe("/nano-kata/c1");
    expect(resolveCgroupPath("", "c1", self)("unified")).toBe("/nano-kata/c1");
  });

  test("systemd slice:prefix:name paths are refused with cgroup-systemd-unsupported", () => {
    expect(codeOf(() => resolveCgroupPath("system.slice:nano-kata:c1", "c1", self))).toBe("cgroup-systemd-unsupported");
    expect(codeOf(() => resolveCgroupPath(":nano-kata:c1", "c1", self))).toBe("cgroup-systemd-unsupported");
    try {
      resolveCgroupPath("system.slice:nano-kata:c1", "c1", self);
    } catch (error) {
      expect((error as Error).message).toContain("--systemd-cgroup");
    }
  });

  test('".." components are refused, absolute or relative, anywhere in the path', () => {
    for (const path of ["/a/../b", "../escape", "a/..", "/..", "a/../../etc"]) {
      expect(codeOf(() => resolveCgroupPath(path, "c1", self))).toBe("cgroup-path-invalid");
    }
  });

  test("the hierarchy root itself and unusable ids are refused", () => {
    expect(codeOf(() => resolveCgroupPath("/", "c1", self))).toBe("cgroup-path-invalid");
    expect(codeOf(() => resolveCgroupPath("/./", "c1", self))).toBe("cgroup-path-invalid");
    expect(codeOf(() => resolveCgroupPath(undefined, "../x", self))).toBe("cgroup-path-invalid");
    expect(codeOf(() => resolveCgroupPath(undefined, "a/b", self))).toBe("cgroup-path-invalid");
    expect(codeOf(() => resolveCgroupPath("/a\0b", "c1", self))).toBe("cgroup-path-invalid");
    // The caller's own cgroup: delete would kill the caller and its neighbours.
    expect(codeOf(() => resolveCgroupPath(".", "c1", self))).toBe("cgroup-path-invalid");
    expect(codeOf(() => resolveCgroupPath("./", "c1", self))).toBe("cgroup-path-invalid");
  });

  test("a colon inside a path with slashes is a plain path, not systemd", () => {
    expect(resolveCgroupPath("/a:b:c/d", "c1", self)("memory")).toBe("/a:b:c/d");
  });
});
