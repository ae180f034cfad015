/**
 * VM-mode networking, as Kata does it with tc mirroring. The client (podman
 * with CNI, a test, ...) prepares a network namespace and names it in
 * linux.namespaces; the container's interface (a veth end, usually eth0)
 * lives there. For each such interface:
 *
 *  - `create` reads its MAC, MTU, addresses and the routes through it
 *    (`ip -j` run in the namespace through nsenter) and plans the guest side:
 *    the VM's NIC gets the same MAC, and the executor in the guest moves it
 *    into the container's new network namespace and gives it the name, MTU,
 *    addresses and routes (NET_* ops, native/ops-net.c). An interface whose
 *    ingress qdisc exists already is refused (not ours to replace).
 *  - the host process creates a tap in the client's namespace (tap.ts), hands
 *    its fd to QEMU (virtio-net-device on it), and joins tap and interface
 *    with tc: an ingress qdisc on each and a u32 match-all filter whose action
 *    is `mirred egress redirect` to the other. Frames arriving on the veth go
 *    out of the tap into the guest, and the guest's frames go out of the veth.
 *    The namespace's own IP stack never sees them: the guest answers ARP and
 *    owns the addresses.
 *  - on the way out (the host process's finish, `delete`) the ingress qdiscs
 *    on the interfaces are deleted; the taps need nothing, they vanish with
 *    QEMU's fd.
 *
 * `tc` and `ip` are iproute2's, run through util-linux's nsenter: the u32
 * classifier and mirred action are what this kernel has (no matchall), and
 * their netlink encoding is not worth re-implementing here.
 */
import { spawnSync } from "node:child_process";
import { closeSync, statSync } from "node:fs";
import { OpCode, Section, type PlanOp } from "../plan/ops.ts";
import { VmError } from "./driver.ts";
import { openTaps } from "./tap.ts";

export interface GuestAddress {
  family: 4 | 6;
  address: string;
  prefixLength: number;
  /** IPv4 broadcast, or "". */
  broadcast: string;
  /** IFA_F_* flags (NODAD for IPv6, NOPREFIXROUTE when the host had it). */
  flags: number;
  /** RT_SCOPE_* of the address. */
  scope: number;
}

export interface GuestInterface {
  /** The container's interface in the client's namespace, and the guest NIC's name. */
  name: string;
  mac: string;
  mtu: number;
  /** The tap made beside it in the client's namespace. */
  tap: string;
  addresses: GuestAddress[];
}

export interface GuestRoute {
  dev: string;
  family: 4 | 6;
  /** "" for the default route. */
  dst: string;
  dstLength: number;
  gateway: string;
  source: string;
  metric: number;
  scope: number;
  onlink: boolean;
}

/** What `create` read from the client's namespace; written into vm.json for the host process and `delete`. */
export interface VmNetwork {
  /** The namespace path from the spec, and which namespace it was then ("dev:ino"): a reused path is not touched. */
  netnsPath: string;
  netnsId: string;
  /** Index in linux.namespaces (for trace sources). */
  specIndex: number;
  interfaces: GuestInterface[];
  routes: GuestRoute[];
}

const RT_SCOPE: Record<string, number> = { global: 0, universe: 0, site: 200, link: 253, host: 254 };
const IFA_F_NODAD = 0x02;
const IFA_F_NOPREFIXROUTE = 0x200;
/** How long the guest executor waits for the NIC's driver to have probed. */
const NIC_PROBE_WAIT_MS = 5000;

/** Interface names go into tc's batch input and error messages: refuse anything odd rather than quote it. */
const SAFE_IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

/** The tap beside the container's i-th interface: unique per container, so two VMs never fight over a name. */
export function tapName(containerId: string, i: number): string {
  const hash = new Bun.CryptoHasher("sha256").update(containerId).digest("hex").slice(0, 8);
  return `nk${hash}t${i}`;
}

const netnsIdOf = (path: string) => {
  const s = statSync(path);
  return `${s.dev}:${s.ino}`;
};

/** `ip -j addr` / `ip -j route` records, loosely typed: iproute2 adds fields over time. */
type Json = Record<string, unknown>;

function prefixOf(dst: string, family: 4 | 6): { dst: string; dstLength: number } {
  if (dst === "default") return { dst: "", dstLength: 0 };
  const [address, length] = dst.split("/");
  return { dst: address!, dstLength: length === undefined ? (family === 4 ? 32 : 128) : Number(length) };
}

/**
 * Pure: the interfaces and routes to give the guest, from `ip -j -d addr
 * show` and `ip -j [-6] route show table main` of the client's namespace.
 * Ethernet links other than taps are taken; IPv6 link-local addresses and the
 * routes the kernel makes from addresses (proto kernel) are left to the
 * guest's kernel, which makes the same ones from the same MAC and addresses.
 */
export function parseNetns(
  links: Json[],
  routes4: Json[],
  routes6: Json[],
  opts: { containerId: string },
): { interfaces: GuestInterface[]; routes: GuestRoute[]; notes: string[] } {
  const notes: string[] = [];
  const interfaces: GuestInterface[] = [];
  for (const link of links) {
    const name = String(link.ifname ?? "");
    const kind = (link.linkinfo as Json | undefined)?.info_kind;
    if (link.link_type !== "ether" || kind === "tun") continue; // lo, tunnels without a MAC, taps (another VM's)
    if (!SAFE_IFNAME.test(name)) {
      notes.push(`network interface ${JSON.stringify(name)}: a name tc cannot take; not given to the VM`);
      continue;
    }
    const mac = String(link.address ?? "").toLowerCase();
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac) || mac === "00:00:00:00:00:00") {
      notes.push(`network interface ${name}: no usable MAC address (${mac || "none"}); not given to the VM`);
      continue;
    }
    const addresses: GuestAddress[] = [];
    for (const a of (link.addr_info as Json[] | undefined) ?? []) {
      const family = a.family === "inet" ? 4 : a.family === "inet6" ? 6 : undefined;
      if (!family || typeof a.local !== "string") continue;
      const scope = RT_SCOPE[String(a.scope ?? "global")] ?? 0;
      if (family === 6 && scope === RT_SCOPE.link) continue; // fe80::: the guest derives the same one from the MAC
      let flags = 0;
      // The namespace already ran duplicate address detection: the guest must not wait a second more for it.
      if (family === 6) flags |= IFA_F_NODAD;
      if (a.noprefixroute) flags |= IFA_F_NOPREFIXROUTE;
      addresses.push({ family, address: a.local, prefixLength: Number(a.prefixlen), broadcast: family === 4 && typeof a.broadcast === "string" ? a.broadcast : "", flags, scope });
    }
    interfaces.push({ name, mac, mtu: Number(link.mtu) || 0, tap: tapName(opts.containerId, interfaces.length), addresses });
  }

  const given = new Set(interfaces.map((i) => i.name));
  const routes: GuestRoute[] = [];
  for (const [family, list] of [[4, routes4], [6, routes6]] as const) {
    for (const r of list) {
      const dev = String(r.dev ?? "");
      if (!given.has(dev)) continue;
      if (r.protocol === "kernel") continue; // made by the guest's kernel from the addresses
      const dst = String(r.dst ?? "");
      if ((r.type !== undefined && r.type !== "unicast") || r.nexthops) {
        notes.push(`route ${dst} dev ${dev}: only plain unicast routes are given to the VM`);
        continue;
      }
      routes.push({
        dev,
        family,
        ...prefixOf(dst, family),
        gateway: typeof r.gateway === "string" ? r.gateway : "",
        source: typeof r.prefsrc === "string" ? r.prefsrc : "",
        metric: Number(r.metric ?? 0) || 0,
        scope: RT_SCOPE[String(r.scope ?? "global")] ?? 0,
        onlink: Array.isArray(r.flags) && r.flags.includes("onlink"),
      });
    }
  }
  // Routes through a gateway need the route to the gateway first.
  routes.sort((a, b) => Number(a.gateway !== "") - Number(b.gateway !== ""));
  return { interfaces, routes, notes };
}

function nsenter(netnsPath: string, argv: string[], input?: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync("nsenter", [`--net=${netnsPath}`, "--", ...argv], { encoding: "utf8", input, timeout: 10_000 });
  if (r.error) throw new VmError("network-inspect-failed", `nsenter --net=${netnsPath} ${argv.join(" ")}: ${r.error.message} (util-linux's nsenter and iproute2 are needed for VM-mode networking)`);
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

/** Read the client's namespace (in `create`). */
export function inspectNetns(netnsPath: string, specIndex: number, containerId: string): { network: VmNetwork; notes: string[] } {
  let netnsId: string;
  try {
    netnsId = netnsIdOf(netnsPath);
  } catch (e) {
    throw new VmError("network-inspect-failed", `linux.namespaces[${specIndex}]: network namespace ${netnsPath}: ${(e as Error).message}`);
  }
  // Mirroring the host's own interfaces into a VM would take the host off its network.
  if (netnsId === netnsIdOf("/proc/self/ns/net")) {
    throw new VmError("vm-unsupported", `linux.namespaces[${specIndex}]: ${netnsPath} is the runtime's own (the host's) network namespace, which a VM cannot share`);
  }
  // One process in the namespace for the three reads; IPv6 may be disabled there (no IPv6 routes then).
  const script = [
    "echo '#links'; ip -j -d addr show || exit 1",
    "echo '#routes4'; ip -j route show table main || exit 1",
    "echo '#routes6'; ip -j -6 route show table main 2>/dev/null || echo '[]'",
    "echo '#qdiscs'; tc -j qdisc show || exit 1",
  ].join("; ");
  const r = nsenter(netnsPath, ["sh", "-c", script]);
  if (r.code !== 0) throw new VmError("network-inspect-failed", `linux.namespaces[${specIndex}]: reading network namespace ${netnsPath}: ${r.stderr.trim() || `exit ${r.code}`}`);
  const sections = new Map<string, Json[]>();
  let section = "";
  try {
    for (const line of r.stdout.split("\n")) {
      if (line.startsWith("#")) section = line.slice(1);
      else if (line.trim()) sections.set(section, [...(sections.get(section) ?? []), ...(JSON.parse(line) as Json[])]);
    }
  } catch (e) {
    throw new VmError("network-inspect-failed", `linux.namespaces[${specIndex}]: ip -j output from ${netnsPath}: ${(e as Error).message}`);
  }
  const parsed = parseNetns(sections.get("links") ?? [], sections.get("routes4") ?? [], sections.get("routes6") ?? [], { containerId });
  // An ingress qdisc already there is another VM-mode container's in this namespace, or someone's tc setup: not ours to replace.
  const busy = takenIngress(parsed.interfaces, sections.get("qdiscs") ?? []);
  if (busy.length) {
    throw new VmError(
      "network-busy",
      `linux.namespaces[${specIndex}]: network interface ${busy.join(", ")} in ${netnsPath} already has an ingress qdisc (another VM-mode container in this namespace?): refusing to replace it`,
    );
  }
  return { network: { netnsPath, netnsId, specIndex, interfaces: parsed.interfaces, routes: parsed.routes }, notes: parsed.notes };
}

/** The guest's side as plan ops: moved into init's namespace by stage0, configured by init. Pure. */
export function guestNetworkOps(net: VmNetwork): { parent: PlanOp[]; init: PlanOp[] } {
  const source = (what: string) => `linux.namespaces[${net.specIndex}] (network ${net.netnsPath}: ${what})`;
  const op = (section: Section, code: OpCode, args: (string | number)[], what: string): PlanOp => ({ code, section, args: args.map(String), source: source(what) });
  const parent = net.interfaces.map((i) => op(Section.Parent, OpCode.NET_LINK_NETNS, [i.mac, NIC_PROBE_WAIT_MS], `the VM's NIC ${i.mac} into the container's namespace`));
  const init: PlanOp[] = [];
  for (const i of net.interfaces) {
    init.push(op(Section.Init, OpCode.NET_LINK_SET, [i.mac, i.name, i.mtu], `${i.name}: name and MTU`));
    init.push(op(Section.Init, OpCode.NET_LINK_UP, [i.name], `${i.name} up`));
    for (const a of i.addresses) {
      init.push(op(Section.Init, OpCode.NET_ADDR_ADD, [i.name, a.family, a.address, a.prefixLength, a.broadcast, a.flags, a.scope], `${i.name} address ${a.address}/${a.prefixLength}`));
    }
  }
  for (const r of net.routes) {
    const what = `route ${r.dst ? `${r.dst}/${r.dstLength}` : "default"}${r.gateway ? ` via ${r.gateway}` : ""} dev ${r.dev}`;
    init.push(op(Section.Init, OpCode.NET_ROUTE_ADD, [r.dev, r.family, r.dst, r.dstLength, r.gateway, r.source, r.metric, r.scope, r.onlink ? 1 : 0], what));
  }
  return { parent, init };
}

/** The tc commands that join each interface and its tap, both ways. Pure. */
export function mirrorCommands(net: VmNetwork): string[] {
  const redirect = (from: string, to: string) => [
    `qdisc add dev ${from} ingress`,
    `filter add dev ${from} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${to}`,
  ];
  return net.interfaces.flatMap((i) => [...redirect(i.name, i.tap), ...redirect(i.tap, i.name)]);
}

/** Whether the namespace at netnsPath is still the one `create` read (a path like /proc/<pid>/ns/net can be reused). */
function sameNamespace(net: VmNetwork): boolean {
  try {
    return netnsIdOf(net.netnsPath) === net.netnsId;
  } catch {
    return false;
  }
}

/** The interfaces that already have an ingress qdisc (`tc -j qdisc show`). Pure. */
export function takenIngress(interfaces: readonly GuestInterface[], qdiscs: Json[]): string[] {
  return interfaces.filter((i) => qdiscs.some((q) => q.kind === "ingress" && q.dev === i.name)).map((i) => i.name);
}

/** Host process, once the taps exist: the tc mirroring. */
export function wireMirror(net: VmNetwork): void {
  if (!net.interfaces.length) return;
  const r = nsenter(net.netnsPath, ["tc", "-batch", "-"], mirrorCommands(net).join("\n") + "\n");
  if (r.code !== 0) throw new VmError("network-setup-failed", `tc mirroring in ${net.netnsPath}: ${r.stderr.trim() || `exit ${r.code}`}`);
}

/**
 * Undo wireMirror: delete the ingress qdiscs (their filters go with them) on
 * the container's interfaces. The taps' own qdiscs went with the taps.
 * Quiet and idempotent; skipped when the namespace is gone or is another one.
 */
export function unwireMirror(net: VmNetwork): void {
  if (!net.interfaces.length || !sameNamespace(net)) return;
  const lines = net.interfaces.map((i) => `qdisc del dev ${i.name} ingress`);
  try {
    nsenter(net.netnsPath, ["tc", "-force", "-batch", "-"], lines.join("\n") + "\n");
  } catch {}
}

/**
 * Host process, before the VM starts: make the taps, then the tc mirroring
 * (`create` checked that no interface's ingress was taken). onWiring runs
 * just before tc changes anything (the caller records it, so its finish()
 * and `delete` know to unwire). Returns the taps' fds in interface order
 * (the caller gives them to QEMU and then closes them); on failure they are
 * closed, and the caller unwires.
 */
export function connectNetwork(net: VmNetwork, onWiring: () => void): number[] {
  if (!net.interfaces.length) return [];
  if (!sameNamespace(net)) throw new VmError("network-gone", `network namespace ${net.netnsPath} is gone or was replaced since create`);
  const fds = openTaps(net.netnsPath, net.interfaces.map((i) => ({ name: i.tap, mtu: i.mtu })));
  try {
    onWiring();
    wireMirror(net);
    return fds;
  } catch (error) {
    for (const fd of fds) closeSync(fd);
    throw error;
  }
}
