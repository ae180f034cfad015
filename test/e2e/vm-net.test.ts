/**
 * VM-mode networking end to end: real microVMs (TCG here) whose NIC is
 * mirrored (tc) onto the container's interface in a network namespace the
 * test prepares, as podman/CNI would: a veth pair, one end as eth0 in the
 * "container" namespace, the other in a "peer" namespace with a server.
 * Then podman's default network (CNI bridge) with a VM-mode container.
 *
 * Both namespaces are held by `unshare --net sleep` processes this file
 * starts and stops (nothing is configured in the host's namespace); after
 * each container: no tap and no tc qdisc/filter left in the namespace.
 */
import { afterAll, beforeAll, describe, expect } from "bun:test";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { release, tmpdir } from "node:os";
import { join } from "node:path";
import {
  containerStdout,
  ok,
  outputPaths,
  rt,
  startContainer,
  state,
  stateRoot,
  testIf,
  waitForStatus,
  waitUntil,
} from "../helpers/runtime.ts";
import type { Bundle } from "../helpers/bundle.ts";
import { startNetnsHolder, type NetnsHolder } from "./daemons.ts";
import { bundlesCheckedAfterEach, ensureVmImage, expectNothingLeft, podmanOnNanoKata, processesNaming, vcreate, VM_ENV, VM_TIMEOUT, vmSkipReason, which } from "./vm-helpers.ts";

/** The test network: the container's eth0 and its peer, IPv4 and IPv6, an MTU and MAC of our choosing. */
const NET = {
  mac: "02:6e:6b:00:07:02",
  mtu: 1400,
  guest4: "10.213.7.2",
  peer4: "10.213.7.1",
  guest6: "fd42:7::2",
  peer6: "fd42:7::1",
  port: 8080,
  /** A second interface: two NICs, each found by its MAC in the guest. */
  mac1: "02:6e:6b:00:08:02",
  guest1: "10.213.8.2",
  peer1: "10.213.8.1",
};

/** Why these tests cannot run here: VM mode's reasons, then the network tools they use. */
function netSkipReason(): string | null {
  const base = vmSkipReason();
  if (base) return base;
  for (const tool of ["ip", "tc", "nsenter", "unshare"]) if (!which(tool)) return `${tool} is not installed (iproute2, util-linux)`;
  if (!existsSync("/dev/net/tun")) return "/dev/net/tun does not exist";
  return null;
}

const SKIP = netSkipReason();
// At load time: a hook is bound by the per-test timeout, a first build may take longer.
const imageError = SKIP ? "" : ensureVmImage();

/** A command run in a namespace (nsenter), its output as text. */
function inNs(ns: NetnsHolder, argv: string[], timeout = 30_000) {
  const r = spawnSync(ns.enter[0]!, [...ns.enter.slice(1), ...argv], { encoding: "utf8", timeout, killSignal: "SIGKILL" });
  return { code: r.status ?? 1, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}

function mustInNs(ns: NetnsHolder, argv: string[]): string {
  const r = inNs(ns, argv);
  if (r.code !== 0) throw new Error(`${argv.join(" ")} in ${ns.nsPath}: exit ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** Links and tc state of the container's namespace: what must be back to the client's after a container. */
function netnsState(ns: NetnsHolder): { taps: string[]; qdiscs: string[]; filters: string } {
  const links = JSON.parse(mustInNs(ns, ["ip", "-j", "-d", "link", "show"])) as Array<{ ifname: string; linkinfo?: { info_kind?: string } }>;
  const qdiscs = JSON.parse(mustInNs(ns, ["tc", "-j", "qdisc", "show"])) as Array<{ kind: string; dev: string }>;
  return {
    taps: links.filter((l) => l.linkinfo?.info_kind === "tun").map((l) => l.ifname),
    qdiscs: qdiscs.filter((q) => q.kind === "ingress").map((q) => `${q.dev} ${q.kind}`),
    filters: ["eth0", "eth1"].map((dev) => mustInNs(ns, ["tc", "filter", "show", "dev", dev, "ingress"])).join("").trim(),
  };
}

const CLEAN = { taps: [], qdiscs: [], filters: "" };

let container: NetnsHolder | undefined;
let peer: NetnsHolder | undefined;
let peerServer: ChildProcess | undefined;
let wwwDir = "";

/** The client's side of the network: what podman and CNI would have made before `create`. */
async function setUpNetwork(): Promise<void> {
  container = await startNetnsHolder();
  peer = await startNetnsHolder();
  mustInNs(container, ["ip", "link", "add", "eth0", "address", NET.mac, "mtu", String(NET.mtu), "type", "veth", "peer", "name", "peer0", "netns", String(peer.pid)]);
  mustInNs(container, ["ip", "addr", "add", `${NET.guest4}/24`, "dev", "eth0"]);
  mustInNs(container, ["ip", "-6", "addr", "add", `${NET.guest6}/64`, "dev", "eth0", "nodad"]);
  mustInNs(container, ["ip", "link", "set", "eth0", "up"]);
  mustInNs(container, ["ip", "route", "add", "default", "via", NET.peer4]);
  mustInNs(container, ["ip", "-6", "route", "add", "default", "via", NET.peer6, "dev", "eth0"]);
  mustInNs(peer, ["ip", "link", "set", "peer0", "mtu", String(NET.mtu)]);
  mustInNs(peer, ["ip", "addr", "add", `${NET.peer4}/24`, "dev", "peer0"]);
  mustInNs(peer, ["ip", "-6", "addr", "add", `${NET.peer6}/64`, "dev", "peer0", "nodad"]);
  mustInNs(peer, ["ip", "link", "set", "peer0", "up"]);
  mustInNs(container, ["ip", "link", "add", "eth1", "address", NET.mac1, "type", "veth", "peer", "name", "peer1", "netns", String(peer.pid)]);
  mustInNs(container, ["ip", "addr", "add", `${NET.guest1}/24`, "dev", "eth1"]);
  mustInNs(container, ["ip", "link", "set", "eth1", "up"]);
  mustInNs(peer, ["ip", "addr", "add", `${NET.peer1}/24`, "dev", "peer1"]);
  mustInNs(peer, ["ip", "link", "set", "peer1", "up"]);
  wwwDir = mkdtempSync(join(tmpdir(), "nkt-vm-net-www-"));
  writeFileSync(join(wwwDir, "index.html"), "hello from the peer\n");
  peerServer = spawn(peer.enter[0]!, [...peer.enter.slice(1), "busybox", "httpd", "-f", "-p", String(NET.port), "-h", wwwDir], { stdio: "ignore" });
}

async function tearDownNetwork(): Promise<void> {
  if (peerServer?.pid && peerServer.exitCode === null) {
    peerServer.kill("SIGKILL");
    await new Promise((r) => peerServer!.once("exit", r));
  }
  await container?.stop();
  await peer?.stop();
  if (wwwDir) rmSync(wwwDir, { recursive: true, force: true });
}

// After each test: its containers deleted, nothing of them left, and the test's netns as it was.
const checkedBundle = bundlesCheckedAfterEach(() => {
  if (container) expect(netnsState(container)).toEqual(CLEAN);
});
function netBundle(args: string[], override?: (c: Record<string, any>) => void): Bundle {
  return checkedBundle({
    args,
    override: (c) => {
      c.linux.namespaces = c.linux.namespaces.map((n: { type: string }) => (n.type === "network" ? { type: "network", path: container!.nsPath } : n));
      // ping needs a raw socket, the server a writable /tmp (and busybox 1.35's wget -T crashes: no -T here).
      c.process.capabilities = Object.fromEntries(Object.entries(c.process.capabilities).map(([set, caps]) => [set, [...(caps as string[]), "CAP_NET_RAW"]]));
      c.mounts.push({ destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev"] });
      override?.(c);
    },
  });
}


beforeAll(async () => {
  if (!SKIP) await setUpNetwork();
}, 60_000);

afterAll(async () => {
  await tearDownNetwork();
}, 60_000);

describe("VM mode: the container's network namespace, mirrored into the VM", () => {
  testIf(SKIP, "the guest's NICs have eth0's and eth1's MACs, MTU, addresses and routes; traffic flows both ways; delete leaves no tap or tc filter", async () => {
    expect(imageError).toBe("");
    const script = [
      "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu",
      "ip -o addr show dev eth0 | grep -v fe80 | awk '{print $3, $4}'",
      "ip route | tr -s ' ' | sed 's/ $//'",
      "ip -6 route | grep default | cut -d' ' -f1-3",
      "ip -o link | cut -d' ' -f2 | tr -d :",
      "cat /sys/class/net/eth1/address",
      `ping -c1 -W10 ${NET.peer4} >/dev/null && echo ping4 ok`,
      `ping -c1 -W10 ${NET.peer1} >/dev/null && echo ping eth1 ok`,
      `ping -c1 -W10 ${NET.peer6} >/dev/null && echo ping6 ok`,
      `wget -q -O- http://${NET.peer4}:${NET.port}/index.html`,
      "mkdir -p /tmp/www && echo hello from the guest > /tmp/www/index.html",
      `httpd -p ${NET.port} -h /tmp/www && echo serving`,
      "exec sleep 600",
    ].join("; ");
    const b = netBundle(["sh", "-c", script]);
    ok(vcreate(b));
    // While it runs: a tap beside eth0, both joined by tc.
    const wired = netnsState(container!);
    expect(wired.taps.length).toBe(2);
    expect(wired.qdiscs.sort()).toEqual([...wired.taps.map((t) => `${t} ingress`), "eth0 ingress", "eth1 ingress"].sort());
    for (const tap of wired.taps) expect(wired.filters).toContain(`mirred (Egress Redirect to device ${tap})`);
    ok(startContainer(b.id));
    waitUntil("the container to serve (or stop)", () => containerStdout(b).includes("serving") || state(b.id).status === "stopped", 90_000);
    expect(readFileSync(outputPaths(b).stderr, "utf8")).toBe("");
    const lines = containerStdout(b).trim().split("\n");
    expect(lines).toEqual([
      NET.mac,
      String(NET.mtu),
      `inet ${NET.guest4}/24`,
      `inet6 ${NET.guest6}/64`,
      `default via ${NET.peer4} dev eth0`,
      `10.213.7.0/24 dev eth0 scope link src ${NET.guest4}`,
      `10.213.8.0/24 dev eth1 scope link src ${NET.guest1}`,
      `default via ${NET.peer6}`,
      "lo",
      "eth0",
      "eth1",
      NET.mac1,
      "ping4 ok",
      "ping eth1 ok",
      "ping6 ok",
      "hello from the peer",
      "serving",
    ]);
    // The other way: the peer reaches the server in the guest.
    const fromPeer = inNs(peer!, ["busybox", "wget", "-q", "-O-", `http://${NET.guest4}:${NET.port}/index.html`]);
    expect({ code: fromPeer.code, body: fromPeer.stdout }).toEqual({ code: 0, body: "hello from the guest\n" });
    expect(inNs(peer!, ["busybox", "ping", "-c1", "-W10", NET.guest6]).code).toBe(0);
    expect(inNs(peer!, ["busybox", "ping", "-c1", "-W10", NET.guest1]).code).toBe(0);
    ok(rt(["kill", b.id, "KILL"]));
    waitForStatus(b.id, "stopped", 30_000);
    ok(rt(["delete", b.id]));
    await expectNothingLeft(b.id);
    expect(netnsState(container!)).toEqual(CLEAN);
  }, VM_TIMEOUT);

  testIf(SKIP, "from a VM template (two cards): each clone's cards take the container's MACs; traffic flows both ways; nothing left", async () => {
    const templates = mkdtempSync(join(tmpdir(), "nkt-vm-net-templates-"));
    const env = { ...VM_ENV, NK_VM_TEMPLATE_DIR: templates };
    try {
      const script = [
        "cat /sys/class/net/eth0/address /sys/class/net/eth1/address",
        "ip -o addr show dev eth0 | grep -v fe80 | awk '{print $3, $4}'",
        `ping -c1 -W10 ${NET.peer4} >/dev/null && echo ping4 ok`,
        `ping -c1 -W10 ${NET.peer1} >/dev/null && echo ping eth1 ok`,
        `wget -q -O- http://${NET.peer4}:${NET.port}/index.html`,
      ].join("; ");
      // The first makes the template (its cards on taps of a namespace of its own), the second is a clone of it.
      for (const round of ["makes the template", "clones it"]) {
        const b = netBundle(["sh", "-c", script], (c) => (c.annotations = { ...c.annotations, "io.nanokata.vm.template": "true" }));
        const r = rt(["--mode", "vm", "--debug", "run", "--bundle", b.dir, b.id], { env, timeoutMs: VM_TIMEOUT });
        expect({ round, code: r.code, out: r.stdout.trim().split("\n") }).toEqual({
          round,
          code: 0,
          out: [NET.mac, NET.mac1, `inet ${NET.guest4}/24`, `inet6 ${NET.guest6}/64`, "ping4 ok", "ping eth1 ok", "hello from the peer"],
        });
        expect(r.stderr).toContain("woken");
        await expectNothingLeft(b.id);
        expect(netnsState(container!)).toEqual(CLEAN);
      }
      // The template's own taps were in a namespace of their own: none is anywhere now.
      expect(processesNaming(templates).filter((p) => p.includes("qemu"))).toEqual([]);
    } finally {
      rmSync(templates, { recursive: true, force: true });
    }
  }, VM_TIMEOUT);

  testIf(SKIP, "a plan that fails in the guest: the error, and no tap or tc filter left in the namespace", async () => {
    const b = netBundle(["/no/such/binary"]);
    const r = rt(["--mode", "vm", "run", "--bundle", b.dir, b.id], { env: VM_ENV, timeoutMs: VM_TIMEOUT });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no/such/binary");
    await expectNothingLeft(b.id);
    expect(netnsState(container!)).toEqual(CLEAN);
  }, VM_TIMEOUT);

  testIf(SKIP, "SIGKILL of the host process: the tap goes with QEMU, and delete removes the tc mirroring it could not", async () => {
    const b = netBundle(["sleep", "600"]);
    ok(vcreate(b));
    ok(startContainer(b.id));
    waitForStatus(b.id, "running");
    const pids = JSON.parse(readFileSync(join(stateRoot(), b.id, "vm-pids.json"), "utf8"));
    expect(pids.networkWired).toBe(true);
    process.kill(pids.host.pid, "SIGKILL");
    const alive = (pid: number) => existsSync(`/proc/${pid}`) && !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
    waitUntil("qemu to exit by itself", () => !alive(pids.vmm.pid), 30_000);
    const left = netnsState(container!);
    expect({ taps: left.taps, qdiscs: left.qdiscs.sort() }).toEqual({ taps: [], qdiscs: ["eth0 ingress", "eth1 ingress"] });
    ok(rt(["delete", b.id]));
    await expectNothingLeft(b.id);
    expect(netnsState(container!)).toEqual(CLEAN);
  }, VM_TIMEOUT);

  testIf(SKIP, "an interface whose ingress is already taken: create refuses, and leaves the client's qdisc alone", async () => {
    mustInNs(container!, ["tc", "qdisc", "add", "dev", "eth0", "ingress"]);
    try {
      const b = netBundle(["true"]);
      const r = vcreate(b);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("network interface eth0 in");
      expect(r.stderr).toContain("already has an ingress qdisc");
      await expectNothingLeft(b.id);
      expect(netnsState(container!)).toEqual({ ...CLEAN, qdiscs: ["eth0 ingress"] });
    } finally {
      mustInNs(container!, ["tc", "qdisc", "del", "dev", "eth0", "ingress"]);
    }
  }, VM_TIMEOUT);

  testIf(SKIP, "no network namespace (the host's network): refused in VM mode, with the reason", async () => {
    const b = checkedBundle({
      args: ["true"],
      override: (c) => {
        c.linux.namespaces = c.linux.namespaces.filter((n: { type: string }) => n.type !== "network");
      },
    });
    const r = rt(["--mode", "vm", "run", "--bundle", b.dir, b.id], { env: VM_ENV, timeoutMs: VM_TIMEOUT });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("linux.namespaces: no network namespace means the host's network");
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "--network none style (a new namespace, no path): loopback only, up", () => {
    const b = checkedBundle({
      args: ["sh", "-c", "ip -o link | cut -d' ' -f2,3; ping -c1 -W5 127.0.0.1 >/dev/null && echo lo ok"],
      override: (c) => {
        c.process.capabilities = Object.fromEntries(Object.entries(c.process.capabilities).map(([set, caps]) => [set, [...(caps as string[]), "CAP_NET_RAW"]]));
      },
    });
    const r = rt(["--mode", "vm", "run", "--bundle", b.dir, b.id], { env: VM_ENV, timeoutMs: VM_TIMEOUT });
    expect({ code: r.code, out: r.stdout }).toEqual({ code: 0, out: "lo: <LOOPBACK,UP,LOWER_UP>\nlo ok\n" });
  }, VM_TIMEOUT);
});

describe("VM mode on podman's default network (CNI bridge)", () => {
  const reason = SKIP ?? (which("podman") && which("conmon") && which("iptables") ? null : "podman, conmon or iptables is not installed");
  testIf(reason, "podman run --annotation io.nanokata.mode=vm, booting and from a template: eth0 from CNI's IPAM, the bridge's server reached from the guest", async () => {
    // podman, CNI's bridge and its iptables rules all live in a namespace of our own.
    const holder = await startNetnsHolder();
    const { dir, podman, image, importBusybox, teardown } = podmanOnNanoKata("nkt-vm-podman-net-", {
      enter: holder.enter,
      env: (d) => ({ NK_VM_TEMPLATE_DIR: join(d, "templates") }),
    });
    const www = join(dir, "www");
    mkdirSync(www);
    writeFileSync(join(www, "index.html"), "hello from the bridge side\n");
    // Listening on every address of the holder's namespace: the bridge's 10.88.0.1 once CNI makes it.
    const server = spawn(holder.enter[0]!, [...holder.enter.slice(1), "busybox", "httpd", "-f", "-p", String(NET.port), "-h", www], { stdio: "ignore" });
    try {
      importBusybox();
      const script = [
        "uname -r",
        "ip -o -4 addr show dev eth0 | awk '{print $4}'",
        "ip route | grep default | cut -d' ' -f1-3",
        `wget -q -O- http://10.88.0.1:${NET.port}/index.html`,
      ].join("; ");
      // A booting VM, then (from a template: the first run makes it, the second clones it) block-rootfs clones whose
      // card takes CNI's MAC: the same network either way.
      const vm = ["--annotation", "io.nanokata.mode=vm"];
      const templated = [...vm, "--annotation", "io.nanokata.vm.template=true"];
      for (const [how, flags] of [["boots", vm], ["makes the template", templated], ["clones it", templated]] as const) {
        const r = podman(["run", "--rm", ...flags, image, "sh", "-c", script]);
        const [kernel, address, route, body] = r.stdout.trim().split("\n");
        expect({ how, code: r.status, stderr: r.stderr }).toEqual({ how, code: 0, stderr: "" });
        expect(kernel).not.toBe(release()); // the guest's kernel
        expect(address).toMatch(/^10\.88\.\d+\.\d+\/16$/);
        expect(route).toBe("default via 10.88.0.1");
        expect(body).toBe("hello from the bridge side");
      }
      expect(podman(["ps", "--all", "--quiet"]).stdout.trim()).toBe("");
    } finally {
      server.kill("SIGKILL");
      try {
        teardown();
      } finally {
        await holder.stop();
      }
    }
  }, VM_TIMEOUT);
});
