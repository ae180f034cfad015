import { describe, expect, test } from "bun:test";
import { readFileSync, statSync } from "node:fs";
import { detectCgroupLayout, parseMountInfo, v2DrivenControllers } from "../../src/cgroups/detect.ts";
import { CgroupError } from "../../src/cgroups/errors.ts";

/** /proc/self/mountinfo of the development host (Debian 12, kernel 6.18): hybrid, hugetlb only on cgroup2. */
const HYBRID_HOST_MOUNTINFO = `21 26 0:20 / /proc rw,relatime - proc proc rw
22 26 0:21 / /sys rw,relatime - sysfs sysfs rw
23 26 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334416k,nr_inodes=3083604,mode=755
26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:32 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
36 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
37 30 0:34 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;

/** A classic systemd v1 host: co-mounted cpu,cpuacct and net_cls,net_prio, optional fields, flags. */
const PURE_V1_MOUNTINFO = `25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
30 26 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
31 26 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,net_cls,net_prio
32 26 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
33 26 0:31 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset,clone_children
34 26 0:32 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
`;

const PURE_V2_MOUNTINFO = `24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`;

describe("parseMountInfo", () => {
  test("splits fields around the optional-field separator and unescapes octal", () => {
    const [entry] = parseMountInfo("40 30 0:37 /a\\040b /mnt/my\\040dir rw,relatime shared:1 master:2 - cgroup cgroup rw,pids\n");
    expect(entry).toEqual({ root: "/a b", mountPoint: "/mnt/my dir", fsType: "cgroup", superOptions: ["rw", "pids"] });
  });
});

describe("detectCgroupLayout", () => {
  test("this host: hybrid, each v1 controller on its own mount, hugetlb left to cgroup2", () => {
    const layout = detectCgroupLayout({ mountinfo: HYBRID_HOST_MOUNTINFO, v2Controllers: "hugetlb\n" });
    expect(layout.kind).toBe("hybrid");
    expect(Object.fromEntries(layout.v1)).toEqual({
      cpu: "/sys/fs/cgroup/cpu",
      cpuacct: "/sys/fs/cgroup/cpuacct",
      cpuset: "/sys/fs/cgroup/cpuset",
      memory: "/sys/fs/cgroup/memory",
      devices: "/sys/fs/cgroup/devices",
      freezer: "/sys/fs/cgroup/freezer",
      blkio: "/sys/fs/cgroup/blkio",
      pids: "/sys/fs/cgroup/pids",
      "name=systemd": "/sys/fs/cgroup/systemd",
    });
    expect(layout.v2Mount).toBe("/sys/fs/cgroup/unified");
    expect(layout.v2Controllers).toEqual(["hugetlb"]);
    expect(v2DrivenControllers(layout)).toEqual(["hugetlb"]);
    expect(layout.mountRoots.get("/sys/fs/cgroup/memory")).toBe("/");
  });

  test("hybrid: a controller listed on cgroup2 but mounted as v1 stays with v1", () => {
    const layout = detectCgroupLayout({ mountinfo: HYBRID_HOST_MOUNTINFO, v2Controllers: "io memory hugetlb misc" });
    // blkio (v1) is the io subsystem, memory is on v1; only hugetlb and misc go to cgroup2.
    expect(v2DrivenControllers(layout)).toEqual(["hugetlb", "misc"]);
  });

  test("pure v1: co-mounted controllers share one mount point; flags are not controllers", () => {
    const layout = detectCgroupLayout({ mountinfo: PURE_V1_MOUNTINFO });
    expect(layout.kind).toBe("v1");
    expect(layout.v2Mount).toBeUndefined();
    expect(layout.v2Controllers).toEqual([]);
    expect(layout.v1.get("cpu")).toBe("/sys/fs/cgroup/cpu,cpuacct");
    expect(layout.v1.get("cpuacct")).toBe("/sys/fs/cgroup/cpu,cpuacct");
    expect(layout.v1.get("net_prio")).toBe("/sys/fs/cgroup/net_cls,net_prio");
    expect(layout.v1.get("name=systemd")).toBe("/sys/fs/cgroup/systemd");
    expect(layout.v1.get("cpuset")).toBe("/sys/fs/cgroup/cpuset");
    for (const flag of ["xattr", "clone_children", "rw", "release_agent=/lib/systemd/systemd-cgroups-agent"]) {
      expect(layout.v1.has(flag)).toBe(false);
    }
    expect(layout.v1.size).toBe(8);
  });

  test("pure v2: the unified mount and its controllers", () => {
    const layout = detectCgroupLayout({ mountinfo: PURE_V2_MOUNTINFO, v2Controllers: "cpuset cpu io memory hugetlb pids rdma misc\n" });
    expect(layout.kind).toBe("v2");
    expect(layout.v1.size).toBe(0);
    expect(layout.v2Mount).toBe("/sys/fs/cgroup");
    expect(v2DrivenControllers(layout)).toEqual(["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"]);
  });

  test("a second mount of the same hierarchy (a bind mount) does not replace the first", () => {
    const text = PURE_V1_MOUNTINFO + "90 80 0:32 /docker/x /var/lib/c/sys/fs/cgroup/pids ro - cgroup cgroup rw,pids\n";
    expect(detectCgroupLayout({ mountinfo: text }).v1.get("pids")).toBe("/sys/fs/cgroup/pids");
  });

  test("no cgroup mounts at all is cgroup-unavailable", () => {
    try {
      detectCgroupLayout({ mountinfo: "22 26 0:21 / /sys rw,relatime - sysfs sysfs rw\n" });
      throw new Error("expected an error");
    } catch (error) {
      expect(error).toBeInstanceOf(CgroupError);
      expect((error as CgroupError).code).toBe("cgroup-unavailable");
    }
  });

  test("the real host: every detected mount point exists and cgroup2's controllers are read from it", () => {
    const layout = detectCgroupLayout();
    expect(layout.v1.size > 0 || layout.v2Mount !== undefined).toBe(true);
    for (const mountpoint of new Set(layout.v1.values())) expect(statSync(mountpoint).isDirectory()).toBe(true);
    if (layout.v2Mount !== undefined) {
      const listed = readFileSync(`${layout.v2Mount}/cgroup.controllers`, "utf8").split(/\s+/).filter(Boolean);
      expect(layout.v2Controllers).toEqual(listed);
    }
  });
});
