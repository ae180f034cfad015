/**
 * The block rootfs of VM mode and the Firecracker driver's pieces that can
 * be checked without a VM: which sharing a container gets, the mkfs.ext4
 * command line and the image's size, a real image made from a small tree
 * (read back with debugfs), the QEMU drive arguments, the guest plan's mount,
 * the kernel command line's vsock port, and Firecracker's API requests and
 * vsock handshake against fake unix socket servers (no firecracker binary and
 * no vsock transport here).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Spec } from "../../src/spec/types.ts";
import { OpCode, Section } from "../../src/plan/ops.ts";
import { guestCmdline } from "../../src/vm/config.ts";
import type { VmConfig } from "../../src/vm/driver.ts";
import { api, connectVsock, firecrackerRequests, parseVsockAnswer } from "../../src/vm/firecracker.ts";
import { buildGuestPlan, GUEST_BLOCK_ROOTFS } from "../../src/vm/plan.ts";
import { qemuArgs } from "../../src/vm/qemu.ts";
import {
  checkBlockRootfs,
  imageGeometry,
  IMAGE_FLOOR_MIB,
  IMAGE_FREE_MIB,
  makeRootfsImage,
  measureTree,
  mkfsArgs,
  mkfsPath,
  selectRootfsSharing,
} from "../../src/vm/rootfs-image.ts";

const MIB = 1 << 20;
const temp = mkdtempSync(join(tmpdir(), "nk-vm-block-unit-"));
afterAll(() => rmSync(temp, { recursive: true, force: true }));

function spec(over: Partial<Spec> = {}): Spec {
  return {
    ociVersion: "1.2.0",
    root: { path: "rootfs" },
    process: { cwd: "/", args: ["sh"], user: { uid: 0, gid: 0 } },
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid"] },
    ],
    linux: { namespaces: [{ type: "pid" }, { type: "mount" }, { type: "network" }] },
    ...over,
  };
}

const vmConfig: VmConfig = {
  runDir: "/run/x",
  kernel: "/c/vmlinux",
  initramfs: "/c/initramfs.cpio",
  cmdline: "console=ttyS0 nk.vsock=1024",
  memoryMiB: 256,
  vcpus: 1,
  accel: "tcg",
  channelName: "nk.0",
  startTimeoutMs: 1000,
};

describe("which way the rootfs reaches the guest", () => {
  const withAnnotation = (v?: string) => spec({ annotations: v === undefined ? {} : { "io.nanokata.vm.rootfs": v } });
  test("QEMU: virtiofs by default, block when asked or when no virtiofsd is installed; Firecracker: always block", () => {
    expect(selectRootfsSharing(withAnnotation(), { driver: "qemu", virtiofsd: true })).toEqual({ sharing: "virtiofs", reason: "the default" });
    expect(selectRootfsSharing(withAnnotation("block"), { driver: "qemu", virtiofsd: true }).sharing).toBe("block");
    expect(selectRootfsSharing(withAnnotation("virtiofs"), { driver: "qemu", virtiofsd: true }).sharing).toBe("virtiofs");
    const noVirtiofsd = selectRootfsSharing(withAnnotation(), { driver: "qemu", virtiofsd: false });
    expect(noVirtiofsd.sharing).toBe("block");
    expect(noVirtiofsd.reason).toContain("no virtiofsd installed");
    expect(selectRootfsSharing(withAnnotation(), { driver: "firecracker", virtiofsd: true })).toEqual({ sharing: "block", reason: "Firecracker has no virtiofs" });
  });
  test("refused: an unknown value, virtiofs on Firecracker, virtiofs without virtiofsd", () => {
    expect(() => selectRootfsSharing(withAnnotation("9p"), { driver: "qemu", virtiofsd: true })).toThrow('must be "block" or "virtiofs", not "9p"');
    expect(() => selectRootfsSharing(withAnnotation("virtiofs"), { driver: "firecracker", virtiofsd: true })).toThrow("Firecracker has no virtiofs");
    expect(() => selectRootfsSharing(withAnnotation("virtiofs"), { driver: "qemu", virtiofsd: false })).toThrow("virtiofsd not found");
  });
  test("a block rootfs refuses bind mounts by index, and pod sandboxes; kernel file systems and tmpfs are fine", () => {
    expect(() => checkBlockRootfs(spec(), "asked")).not.toThrow();
    const withBind = spec();
    withBind.mounts!.push({ destination: "/data", type: "none", source: "/srv", options: ["rbind"] });
    expect(() => checkBlockRootfs(withBind, "asked")).toThrow("mounts[2] (/data): a bind mount cannot reach a VM whose rootfs is a block image (asked)");
    const sandbox = spec({ annotations: { "io.kubernetes.cri.container-type": "sandbox" } });
    expect(() => checkBlockRootfs(sandbox, "asked")).toThrow("a pod sandbox's rootfs cannot be a block image");
  });
});

describe("VM mode without virtiofsd is still available when mkfs.ext4 is (`features`)", () => {
  test("no virtiofsd alone is no problem; without mkfs.ext4 too, both are named", async () => {
    const { vmFeatureAnnotations, VM_FEATURE_ANNOTATIONS } = await import("../../src/vm/availability.ts");
    const saved = { virtiofsd: process.env.NK_VIRTIOFSD, mkfs: process.env.NK_MKFS_EXT4 };
    try {
      process.env.NK_VIRTIOFSD = join(temp, "no-virtiofsd");
      delete process.env.NK_MKFS_EXT4;
      const withMkfs = (await vmFeatureAnnotations())[VM_FEATURE_ANNOTATIONS.vm]!;
      if (mkfsPath()) expect(withMkfs).not.toContain("virtiofsd");
      process.env.NK_MKFS_EXT4 = join(temp, "no-mkfs");
      expect((await vmFeatureAnnotations())[VM_FEATURE_ANNOTATIONS.vm]).toContain("no virtiofsd and no mkfs.ext4");
    } finally {
      for (const [k, v] of [["NK_VIRTIOFSD", saved.virtiofsd], ["NK_MKFS_EXT4", saved.mkfs]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});

describe("the image: mkfs.ext4 -d, its size and inodes", () => {
  test("the command line: no mount, a regular file, no journal, no reserved blocks, the tree copied with -d", () => {
    expect(mkfsArgs("/b/rootfs", "/s/rootfs.img", { sizeMiB: 300, inodes: 20000 })).toEqual([
      "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-N", "20000", "-L", "nk-rootfs", "-d", "/b/rootfs", "/s/rootfs.img", "300M",
    ]);
  });
  test("size: usage + an eighth + the free room, at least the floor; inodes: half again, at least 16384", () => {
    expect(imageGeometry({ bytes: 2 * MIB, inodes: 400 })).toEqual({ sizeMiB: Math.ceil(2.25) + IMAGE_FREE_MIB, inodes: 16384 });
    expect(imageGeometry({ bytes: 0, inodes: 1 }).sizeMiB).toBe(Math.max(IMAGE_FLOOR_MIB, IMAGE_FREE_MIB));
    expect(imageGeometry({ bytes: 800 * MIB, inodes: 40000 })).toEqual({ sizeMiB: 900 + IMAGE_FREE_MIB, inodes: 60000 });
  });
  test("measureTree counts allocated bytes and inodes, a hard-linked file once", () => {
    const dir = join(temp, "measure");
    mkdirSync(join(dir, "sub"), { recursive: true });
    writeFileSync(join(dir, "sub", "a"), Buffer.alloc(64 * 1024, 1));
    linkSync(join(dir, "sub", "a"), join(dir, "b"));
    symlinkSync("sub/a", join(dir, "c"));
    const m = measureTree(dir);
    expect(m.inodes).toBe(4); // dir, sub, a (= b), c
    expect(m.bytes).toBeGreaterThanOrEqual(64 * 1024);
    expect(m.bytes).toBeLessThan(2 * 64 * 1024);
  });

  const mkfs = mkfsPath();
  const debugfs = ["/usr/sbin/debugfs", "/sbin/debugfs"].find(existsSync);
  const why = !mkfs ? "mkfs.ext4 is not installed (apt-get install e2fsprogs)" : !debugfs ? "debugfs is not installed (e2fsprogs)" : process.getuid?.() !== 0 ? "needs root (chown)" : null;
  if (why) process.stderr.write(`SKIP a real image: ${why}\n`);
  (why ? test.skip : test)("a real image from a small tree: files, modes, owners, symlinks kept; a failure leaves no file", async () => {
    const tree = join(temp, "tree");
    mkdirSync(join(tree, "etc"), { recursive: true });
    writeFileSync(join(tree, "etc", "hostname"), "guest\n");
    chmodSync(join(tree, "etc", "hostname"), 0o640);
    chownSync(join(tree, "etc", "hostname"), 1234, 5678);
    symlinkSync("etc/hostname", join(tree, "link"));
    const image = join(temp, "rootfs.img");
    const made = await makeRootfsImage(tree, image);
    expect(made.sizeMiB).toBe(IMAGE_FLOOR_MIB + 1);
    const fs = (cmd: string) => spawnSync(debugfs!, ["-R", cmd, image], { encoding: "utf8" }).stdout;
    expect(fs("cat /etc/hostname")).toBe("guest\n");
    expect(fs("stat /etc/hostname")).toMatch(/Mode:\s+0640[\s\S]*User:\s+1234\s+Group:\s+5678/);
    expect(fs("stat /link")).toContain('Fast link dest: "etc/hostname"');
    expect(spawnSync(debugfs!, ["-R", "features", image], { encoding: "utf8" }).stdout).not.toContain("has_journal");
    // A rootfs that does not exist: mkfs fails, the error says so, and no image is left.
    const failed = join(temp, "failed.img");
    await expect(makeRootfsImage(join(temp, "missing"), failed)).rejects.toThrow();
    expect(existsSync(failed)).toBe(false);
  }, 30_000);
});

describe("the guest side", () => {
  test("QEMU: the image as a virtio-blk device, read-only for root.readonly, no vhost-user-fs", () => {
    const sockets = { channel: "/r/channel.sock", qmp: "/r/qmp.sock", console: "/r/console.log" };
    const rw = qemuArgs({ ...vmConfig, rootDrive: { path: "/s/a,b/rootfs.img", readOnly: false } }, sockets);
    const at = rw.indexOf("-drive");
    expect(rw.slice(at, at + 4)).toEqual(["-drive", "file=/s/a,,b/rootfs.img,if=none,format=raw,id=nkroot", "-device", "virtio-blk-device,drive=nkroot"]);
    expect(rw.some((a) => a.includes("vhost-user-fs"))).toBe(false);
    const ro = qemuArgs({ ...vmConfig, rootDrive: { path: "/s/rootfs.img", readOnly: true } }, sockets);
    expect(ro).toContain("file=/s/rootfs.img,if=none,format=raw,id=nkroot,readonly=on");
    expect(qemuArgs({ ...vmConfig, share: { tag: "t", socket: "/r/v.sock" } }, sockets)).not.toContain("-drive");
  });

  test("the kernel command line: nk.vsock=<port> instead of the virtio-serial port, no share", () => {
    const cmdline = guestCmdline({ kernel: "minimal", share: false, vsockPort: 1024 }).split(" ");
    expect(cmdline).toContain("nk.vsock=1024");
    expect(cmdline.filter((p) => p.startsWith("nk.port=") || p.startsWith("nk.share="))).toEqual([]);
  });

  test("the plan mounts the device as the container's root, after / is made a slave and before the rootfs is used; no share", () => {
    const input = { spec: spec(), bundle: "/b", rootfs: "/b/rootfs", containerId: "c", noPivot: false, noNewKeyring: false, isDirectory: () => true };
    for (const readOnly of [false, true]) {
      const plan = buildGuestPlan({ ...input, rootDevice: { device: "/dev/vda", readOnly } });
      expect(plan.shares).toEqual([]);
      expect(plan.guestRootfs).toBe(GUEST_BLOCK_ROOTFS);
      const mount = plan.ops.findIndex((op) => op.code === OpCode.MOUNT_IN_ROOT && op.args[2] === "/dev/vda");
      expect(plan.ops[mount]).toEqual(
        expect.objectContaining({ section: Section.Init, args: ["/run/nk", "rootfs", "/dev/vda", "ext4", readOnly ? "1" : "0", "", "dir", "1"] }),
      );
      const slave = plan.ops.findIndex((op) => op.code === OpCode.MOUNT && op.args[0] === "" && op.args[1] === "/");
      const firstUse = plan.ops.findIndex((op, i) => i !== mount && op.args.includes(GUEST_BLOCK_ROOTFS));
      expect(slave).toBeGreaterThan(0);
      expect([slave < mount, mount < firstUse]).toEqual([true, true]);
    }
    const withBind = spec();
    withBind.mounts!.push({ destination: "/data", type: "bind", source: "/srv", options: ["rbind"] });
    expect(() => buildGuestPlan({ ...input, spec: withBind, rootDevice: { device: "/dev/vda", readOnly: false } })).toThrow("mounts[2] (/data)");
    // Without a device, the share as before.
    expect(buildGuestPlan(input).shares.map((s) => s.name)).toEqual(["rootfs"]);
  });
});

describe("Firecracker (documented API; untested against a real firecracker here)", () => {
  test("the requests refuse a config without a rootfs drive (Firecracker has no virtiofs)", () => {
    expect(() => firecrackerRequests(vmConfig, "/r/vsock.sock")).toThrow("block image");
    const paths = firecrackerRequests({ ...vmConfig, rootDrive: { path: "/s/rootfs.img", readOnly: false } }, "/r/vsock.sock").map((r) => r.path);
    expect(paths).toEqual(["/machine-config", "/boot-source", "/drives/rootfs", "/vsock", "/actions"]);
  });

  test("the API client PUTs JSON to the unix socket and reports Firecracker's fault message", async () => {
    const sock = join(temp, "api.sock");
    const seen: Array<{ method: string; path: string; type: string | null; body: unknown }> = [];
    const server = Bun.serve({
      unix: sock,
      async fetch(req) {
        const body = await req.json();
        seen.push({ method: req.method, path: new URL(req.url).pathname, type: req.headers.get("content-type"), body });
        if (new URL(req.url).pathname === "/bad") return new Response(JSON.stringify({ fault_message: "Invalid request" }), { status: 400 });
        return new Response(null, { status: 204 });
      },
    });
    try {
      await api(sock, "/drives/rootfs", { drive_id: "rootfs", path_on_host: "/s/rootfs.img", is_root_device: true, is_read_only: false });
      expect(seen).toEqual([
        { method: "PUT", path: "/drives/rootfs", type: "application/json", body: { drive_id: "rootfs", path_on_host: "/s/rootfs.img", is_root_device: true, is_read_only: false } },
      ]);
      await expect(api(sock, "/bad", {})).rejects.toThrow('firecracker PUT /bad: 400 {"fault_message":"Invalid request"}');
    } finally {
      server.stop(true);
    }
  });

  test("the vsock answer: OK <port> with what follows, a refusal, an incomplete line", () => {
    expect(parseVsockAnswer(Buffer.from("OK 10"))).toBeUndefined();
    const ok = parseVsockAnswer(Buffer.from("OK 1073741824\n\x05\x00"));
    expect(ok).toEqual({ ok: true, hostPort: 1073741824, rest: Buffer.from([5, 0]) });
    expect(parseVsockAnswer(Buffer.from("ERR no listener\n"))).toEqual({ ok: false, line: "ERR no listener" });
    expect(parseVsockAnswer(Buffer.from("x".repeat(100)))).toEqual({ ok: false, line: "x".repeat(64) });
  });

  test("the vsock handshake against a fake Firecracker: retried while nothing listens, then the frames that follow OK reach the reader", async () => {
    const sock = join(temp, "vsock.sock");
    let attempts = 0;
    const lines: string[] = [];
    const server = createServer((c: Socket) => {
      c.once("data", (b) => {
        lines.push(b.toString("latin1"));
        attempts++;
        // Firecracker closes the connection when the guest has no listener on the port (the agent still booting).
        if (attempts < 3) return void c.end();
        c.write("OK 1073741824\nHELLO");
        setTimeout(() => c.write("-MORE"), 10); // arrives before the reader attaches: kept for it
        c.on("data", (more) => c.write(`echo:${more.toString("latin1")}`));
      });
    });
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    try {
      const channel = await connectVsock(sock, 1024, Date.now() + 5000);
      await Bun.sleep(60); // the host process attaches its reader a little later
      const received: string[] = [];
      channel.on("data", (b: Buffer) => received.push(b.toString("latin1")));
      channel.write("PLAN");
      for (let i = 0; i < 200 && received.join("") !== "HELLO-MOREecho:PLAN"; i++) await Bun.sleep(5);
      expect(received.join("")).toBe("HELLO-MOREecho:PLAN");
      expect(lines).toEqual(["CONNECT 1024\n", "CONNECT 1024\n", "CONNECT 1024\n"]);
      channel.destroy();
      // Past the deadline with nothing answering: a timeout naming the port.
      await expect(connectVsock(join(temp, "nobody.sock"), 1024, Date.now() + 50)).rejects.toThrow("no answer on vsock port 1024");
    } finally {
      server.close();
    }
  });
});
