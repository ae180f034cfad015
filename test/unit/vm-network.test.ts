/**
 * VM-mode networking's pure parts: what is read from `ip -j` of the client's
 * namespace, the guest plan ops made of it and where they go in the plan,
 * the tc mirroring commands, QEMU's network arguments, and the refusal of
 * the host's network.
 */
import { describe, expect, test } from "bun:test";
import { guestNetworkOps, mirrorCommands, parseNetns, takenIngress, tapName, type VmNetwork } from "../../src/vm/network.ts";
import { buildGuestPlan, checkVmSupport } from "../../src/vm/plan.ts";
import { qemuArgs } from "../../src/vm/qemu.ts";
import type { VmConfig } from "../../src/vm/driver.ts";
import { OpCode, OpName, Section } from "../../src/plan/ops.ts";
import type { Spec } from "../../src/spec/types.ts";

// Shapes as iproute2 6.1 prints them (`ip -j -d addr show`, `ip -j [-6] route show table main`).
const LINKS = [
  {
    ifindex: 1,
    ifname: "lo",
    mtu: 65536,
    link_type: "loopback",
    address: "00:00:00:00:00:00",
    addr_info: [{ family: "inet", local: "127.0.0.1", prefixlen: 8, scope: "host" }],
  },
  {
    ifindex: 2,
    ifname: "eth0",
    mtu: 1450,
    link_type: "ether",
    address: "7E:93:CD:28:22:13",
    linkinfo: { info_kind: "veth" },
    addr_info: [
      { family: "inet", local: "10.88.0.5", prefixlen: 16, broadcast: "10.88.255.255", scope: "global", label: "eth0" },
      { family: "inet6", local: "fd99::2", prefixlen: 64, scope: "global", nodad: true },
      { family: "inet6", local: "2001:db8::2", prefixlen: 64, scope: "global", noprefixroute: true },
      { family: "inet6", local: "fe80::7c93:cdff:fe28:2213", prefixlen: 64, scope: "link" },
    ],
  },
  { ifindex: 3, ifname: "tap0", mtu: 1500, link_type: "ether", address: "aa:bb:cc:dd:ee:ff", linkinfo: { info_kind: "tun" }, addr_info: [] },
  { ifindex: 4, ifname: "sit0", mtu: 1480, link_type: "sit", address: "0.0.0.0", addr_info: [] },
  { ifindex: 5, ifname: "we ird", mtu: 1500, link_type: "ether", address: "02:00:00:00:00:01", addr_info: [] },
];
const ROUTES4 = [
  { dst: "default", gateway: "10.88.0.1", dev: "eth0", flags: [] },
  { dst: "10.88.0.0/16", dev: "eth0", protocol: "kernel", scope: "link", prefsrc: "10.88.0.5", flags: [] },
  { dst: "192.168.7.9", dev: "eth0", scope: "link", metric: 5, flags: [] },
  { dst: "172.16.0.0/12", gateway: "10.99.0.1", dev: "eth0", flags: ["onlink"] },
  { dst: "10.1.0.0/16", dev: "eth9", gateway: "10.2.0.1", flags: [] },
  { type: "blackhole", dst: "10.66.0.0/16", dev: "eth0", flags: [] },
];
const ROUTES6 = [
  { dst: "fd99::/64", dev: "eth0", protocol: "kernel", metric: 256, flags: [], pref: "medium" },
  { dst: "fe80::/64", dev: "eth0", protocol: "kernel", metric: 256, flags: [], pref: "medium" },
  { dst: "default", gateway: "fd99::1", dev: "eth0", metric: 1024, flags: [], pref: "medium" },
];

describe("reading the client's network namespace", () => {
  const parsed = parseNetns(LINKS, ROUTES4, ROUTES6, { containerId: "ctr-1" });

  test("Ethernet interfaces only: not lo, not a tap, not a tunnel; an unusable name is noted, not given", () => {
    expect(parsed.interfaces.map((i) => i.name)).toEqual(["eth0"]);
    expect(parsed.notes).toEqual([
      'network interface "we ird": a name tc cannot take; not given to the VM',
      "route 10.66.0.0/16 dev eth0: only plain unicast routes are given to the VM",
    ]);
  });

  test("MAC (lower case), MTU, addresses; IPv6 link-local is left to the guest's kernel; IPv6 without DAD", () => {
    const eth0 = parsed.interfaces[0]!;
    expect({ mac: eth0.mac, mtu: eth0.mtu, tap: eth0.tap }).toEqual({ mac: "7e:93:cd:28:22:13", mtu: 1450, tap: tapName("ctr-1", 0) });
    expect(eth0.addresses).toEqual([
      { family: 4, address: "10.88.0.5", prefixLength: 16, broadcast: "10.88.255.255", flags: 0, scope: 0 },
      { family: 6, address: "fd99::2", prefixLength: 64, broadcast: "", flags: 0x02, scope: 0 },
      { family: 6, address: "2001:db8::2", prefixLength: 64, broadcast: "", flags: 0x02 | 0x200, scope: 0 },
    ]);
  });

  test("routes through the given interfaces, not the kernel's own; link routes before gateway routes", () => {
    expect(parsed.routes).toEqual([
      { dev: "eth0", family: 4, dst: "192.168.7.9", dstLength: 32, gateway: "", source: "", metric: 5, scope: 253, onlink: false },
      { dev: "eth0", family: 4, dst: "", dstLength: 0, gateway: "10.88.0.1", source: "", metric: 0, scope: 0, onlink: false },
      { dev: "eth0", family: 4, dst: "172.16.0.0", dstLength: 12, gateway: "10.99.0.1", source: "", metric: 0, scope: 0, onlink: true },
      { dev: "eth0", family: 6, dst: "", dstLength: 0, gateway: "fd99::1", source: "", metric: 1024, scope: 0, onlink: false },
    ]);
  });

  test("tap names: at most 15 bytes, one per container and interface", () => {
    expect(tapName("ctr-1", 0)).toMatch(/^nk[0-9a-f]{8}t0$/);
    expect(tapName("ctr-1", 0).length).toBeLessThanOrEqual(15);
    expect(tapName("ctr-1", 0)).toBe(tapName("ctr-1", 0));
    expect(tapName("ctr-2", 0)).not.toBe(tapName("ctr-1", 0));
    expect(tapName("ctr-1", 1)).not.toBe(tapName("ctr-1", 0));
  });
});

const parsed = parseNetns(LINKS, ROUTES4, ROUTES6, { containerId: "ctr-1" });
const NETWORK: VmNetwork = { netnsPath: "/run/netns/cni-1", netnsId: "4:4026532", specIndex: 2, interfaces: parsed.interfaces, routes: parsed.routes };

describe("the guest's side", () => {
  test("stage0 moves the NIC (found by MAC) into init's namespace; init names it, brings it up, adds addresses, then routes", () => {
    const { parent, init } = guestNetworkOps(NETWORK);
    expect(parent.map((o) => [o.section, OpName[o.code], ...o.args])).toEqual([[Section.Parent, "NET_LINK_NETNS", "7e:93:cd:28:22:13", "5000"]]);
    expect(init.every((o) => o.section === Section.Init)).toBe(true);
    expect(init.map((o) => [OpName[o.code], ...o.args])).toEqual([
      ["NET_LINK_SET", "7e:93:cd:28:22:13", "eth0", "1450"],
      ["NET_LINK_UP", "eth0"],
      ["NET_ADDR_ADD", "eth0", "4", "10.88.0.5", "16", "10.88.255.255", "0", "0"],
      ["NET_ADDR_ADD", "eth0", "6", "fd99::2", "64", "", "2", "0"],
      ["NET_ADDR_ADD", "eth0", "6", "2001:db8::2", "64", "", "514", "0"],
      ["NET_ROUTE_ADD", "eth0", "4", "192.168.7.9", "32", "", "", "5", "253", "0"],
      ["NET_ROUTE_ADD", "eth0", "4", "", "0", "10.88.0.1", "", "0", "0", "0"],
      ["NET_ROUTE_ADD", "eth0", "4", "172.16.0.0", "12", "10.99.0.1", "", "0", "0", "1"],
      ["NET_ROUTE_ADD", "eth0", "6", "", "0", "fd99::1", "", "1024", "0", "0"],
    ]);
    expect(init[0]!.source).toBe("linux.namespaces[2] (network /run/netns/cni-1: eth0: name and MTU)");
  });

  type Namespaces = NonNullable<NonNullable<Spec["linux"]>["namespaces"]>;
  const spec = (namespaces: Namespaces): Spec =>
    ({ ociVersion: "1.2.0", root: { path: "rootfs" }, process: { cwd: "/", args: ["sh"], user: { uid: 0, gid: 0 } }, mounts: [], linux: { namespaces } }) as Spec;
  const plan = (s: Spec, network?: VmNetwork) =>
    buildGuestPlan({ spec: s, bundle: "/b", rootfs: "/b/rootfs", containerId: "ctr-1", noPivot: false, noNewKeyring: false, isDirectory: () => true, network });

  test("in the plan: the move before init is released, the configuration right after lo is up", () => {
    const p = plan(spec([{ type: "mount" }, { type: "pid" }, { type: "network", path: "/run/netns/cni-1" }]), NETWORK);
    const at = (code: OpCode) => p.ops.findIndex((o) => o.code === code);
    expect(at(OpCode.NET_LINK_NETNS)).toBe(at(OpCode.RELEASE_CHILD) - 1);
    expect(at(OpCode.NET_LINK_SET)).toBe(at(OpCode.LOOPBACK_UP) + 1);
    expect(at(OpCode.NET_LINK_NETNS)).toBeGreaterThan(at(OpCode.CLONE));
    // The guest makes a new network namespace (CLONE's flags), with no note: its interfaces came along.
    expect(p.notes.some((n) => n.includes("network namespace"))).toBe(false);
    expect(p.ops.filter((o) => o.code === OpCode.SETNS)).toEqual([]);
  });

  test("a namespace path without interfaces read (or --network none): a new namespace, lo only", () => {
    const p = plan(spec([{ type: "mount" }, { type: "network" }]));
    expect(p.ops.some((o) => OpName[o.code]!.startsWith("NET_"))).toBe(false);
    expect(p.ops.some((o) => o.code === OpCode.LOOPBACK_UP)).toBe(true);
  });

  test("no network namespace at all (the host's network) is refused in VM mode", () => {
    expect(() => checkVmSupport(spec([{ type: "mount" }, { type: "pid" }]), { preserveFds: 0 })).toThrow("linux.namespaces: no network namespace means the host's network");
    expect(() => checkVmSupport(spec([{ type: "network", path: "/run/netns/x" }]), { preserveFds: 0 })).not.toThrow();
  });
});

describe("the host's side", () => {
  test("tc: an ingress qdisc on the interface and on its tap, each redirecting everything to the other", () => {
    const tap = tapName("ctr-1", 0);
    expect(mirrorCommands(NETWORK)).toEqual([
      "qdisc add dev eth0 ingress",
      `filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${tap}`,
      `qdisc add dev ${tap} ingress`,
      `filter add dev ${tap} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev eth0`,
    ]);
  });

  test("an interface whose ingress qdisc exists is someone else's: named, so create can refuse it", () => {
    const qdiscs = [
      { kind: "noqueue", handle: "0:", dev: "eth0", root: true },
      { kind: "ingress", handle: "ffff:", dev: "eth1", parent: "ffff:fff1" },
    ];
    expect(takenIngress(NETWORK.interfaces, qdiscs)).toEqual([]);
    expect(takenIngress(NETWORK.interfaces, [...qdiscs, { kind: "ingress", handle: "ffff:", dev: "eth0", parent: "ffff:fff1" }])).toEqual(["eth0"]);
  });

  test("QEMU: one virtio-net-device per NIC, on the tap fd the host process passes as fd 3, 4, ...", () => {
    const config: VmConfig = {
      runDir: "/run/x",
      kernel: "/c/vmlinux",
      initramfs: "/c/initramfs.cpio",
      cmdline: "console=ttyS0",
      memoryMiB: 256,
      vcpus: 1,
      accel: "tcg",
      channelName: "nk.0",
      startTimeoutMs: 1000,
      nics: [{ mac: "7e:93:cd:28:22:13", tapFd: 41 }, { mac: "02:00:00:00:00:02" }],
    };
    const args = qemuArgs(config, { channel: "/run/x/c.sock", qmp: "/run/x/q.sock", console: "/run/x/console.log" });
    const pairs = args.flatMap((a, i) => (a === "-netdev" || (a === "-device" && args[i + 1]!.startsWith("virtio-net")) ? [`${a} ${args[i + 1]}`] : []));
    expect(pairs).toEqual([
      "-netdev tap,id=nkn0,fd=3",
      "-device virtio-net-device,netdev=nkn0,mac=7e:93:cd:28:22:13",
      "-netdev tap,id=nkn1,fd=4",
      "-device virtio-net-device,netdev=nkn1,mac=02:00:00:00:00:02",
    ]);
    expect(qemuArgs({ ...config, nics: undefined }, { channel: "c", qmp: "q", console: "l" }).some((a) => a.includes("netdev"))).toBe(false);
  });
});
