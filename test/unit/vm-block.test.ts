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
import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Spec } from "../../src/spec/types.ts";
import { MS } from "../../src/plan/constants.ts";
import { OpCode, Section } from "../../src/plan/ops.ts";
import { guestCmdline } from "../../src/vm/config.ts";
import type { VmConfig } from "../../src/vm/driver.ts";
import { api, connectVsock, firecrackerRequests, parseVsockAnswer } from "../../src/vm/firecracker.ts";
import { buildGuestPlan, GUEST_BLOCK_IMAGE_VIEW, GUEST_BLOCK_ROOTFS } from "../../src/vm/plan.ts";
import { qemuArgs } from "../../src/vm/qemu.ts";
import {
  checkBlockRootfs,
  debugfsErrors,
  debugfsPath,
  debugfsScript,
  FILE_COPY_MAX_BYTES,
  FILE_COPY_TOTAL_MAX_BYTES,
  imageGeometry,
  IMAGE_FLOOR_MIB,
  IMAGE_FREE_MIB,
  makeRootfsImage,
  measureTree,
  mkfsArgs,
  mkfsPath,
  resolveInRootfs,
  selectRootfsSharing,
  shmTmpfs,
  tmpfsOptionsAt,
  type BlockBind,
  type FileCopy,
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
  test("a block rootfs refuses directory bind mounts by index (but /dev/shm), and pod sandboxes; kernel file systems and tmpfs are fine", () => {
    const host = { bundle: "/b", rootfs: temp };
    expect(checkBlockRootfs(spec(), "asked", host)).toEqual({ binds: new Map(), dirs: [], files: [], notes: [] });
    const withBind = spec();
    withBind.mounts!.push({ destination: "/data", type: "none", source: "/srv", options: ["rbind"] });
    mkdirSync(join(temp, "srv-dir"), { recursive: true });
    withBind.mounts![2]!.source = join(temp, "srv-dir");
    expect(() => checkBlockRootfs(withBind, "asked", host)).toThrow(`mounts[2] (/data): a bind mount of the directory ${join(temp, "srv-dir")} cannot reach a VM whose rootfs is a block image (asked)`);
    const sandbox = spec({ annotations: { "io.kubernetes.cri.container-type": "sandbox" } });
    expect(() => checkBlockRootfs(sandbox, "asked", host)).toThrow("a pod sandbox's rootfs cannot be a block image");
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

describe("bind mounts on a block rootfs: small files copied into the image, /dev/shm a tmpfs", () => {
  // A rootfs with the traps a destination can hold: symlinks out of the tree (absolute and climbing), a loop, a file as a directory.
  const rootfs = join(temp, "bm-rootfs");
  mkdirSync(join(rootfs, "etc"), { recursive: true });
  mkdirSync(join(rootfs, "adir"));
  writeFileSync(join(rootfs, "etc", "hosts"), "image's hosts\n");
  writeFileSync(join(rootfs, "file"), "");
  symlinkSync("../run/systemd/resolve/stub.conf", join(rootfs, "etc", "resolv.conf"));
  symlinkSync("/../../..", join(rootfs, "escape"));
  symlinkSync("../../../../etc", join(rootfs, "climb"));
  symlinkSync("loop", join(rootfs, "loop"));
  const src = (name: string, content: string | Buffer, mode = 0o644) => {
    const path = join(temp, `bm-src-${name}`);
    writeFileSync(path, content, { mode });
    chmodSync(path, mode);
    return path;
  };
  const hostsSource = src("hosts", "10.0.0.1 host-written\n");
  chownSync(hostsSource, 1234, 5678);
  const resolvSource = src("resolv", "nameserver 192.0.2.53\n", 0o600);
  const shmDir = join(temp, "bm-shm");
  mkdirSync(shmDir, { recursive: true });
  const mountinfo = () =>
    [
      `22 1 0:21 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw,size=1000k`,
      `40 22 0:38 / ${shmDir} rw,nosuid - tmpfs shm rw,size=1000k`,
      // The topmost mount of the path is the one the bind would see.
      `42 40 0:39 / ${shmDir} rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=64000k,mode=1777`,
    ].join("\n");
  const host = { bundle: temp, rootfs, mountinfo };
  const bind = (destination: string, source: string, options = ["bind", "rprivate"]) => ({ destination, type: "bind", source, options });

  test("destinations resolve inside the rootfs by lstat and readlink: symlinks out of it stay in it, loops and files-as-directories are refused", () => {
    expect(resolveInRootfs(rootfs, "/etc/hosts", "f")).toEqual({ path: "/etc/hosts", makeDirs: [], existing: "file" });
    expect(resolveInRootfs(rootfs, "/etc/resolv.conf", "f")).toEqual({
      path: "/run/systemd/resolve/stub.conf",
      makeDirs: ["/run", "/run/systemd", "/run/systemd/resolve"],
      existing: "none",
    });
    // /escape -> /../../.. is the rootfs's root, not the host's: the host's /etc/passwd exists, the rootfs's does not.
    expect(resolveInRootfs(rootfs, "/escape/etc/passwd", "f")).toEqual({ path: "/etc/passwd", makeDirs: [], existing: "none" });
    expect(resolveInRootfs(rootfs, "/climb/hosts", "f")).toEqual({ path: "/etc/hosts", makeDirs: [], existing: "file" });
    expect(resolveInRootfs(rootfs, "/../../etc/./hosts", "f").path).toBe("/etc/hosts");
    expect(resolveInRootfs(rootfs, "/new/dir/../f", "f")).toEqual({ path: "/new/f", makeDirs: ["/new"], existing: "none" });
    expect(resolveInRootfs(rootfs, "/adir", "f").existing).toBe("dir");
    expect(() => resolveInRootfs(rootfs, "/loop/x", "mounts[9] (/loop/x)")).toThrow("mounts[9] (/loop/x): cannot place a copy at /loop/x inside the rootfs: more than 40 symlinks (ELOOP)");
    expect(() => resolveInRootfs(rootfs, "/file/x", "f")).toThrow("/file is not a directory");
    expect(() => resolveInRootfs(rootfs, "/etc/a\nb", "f")).toThrow("a control character");
    expect(() => resolveInRootfs(rootfs, "/..", "f")).toThrow("the rootfs's root directory");
  });

  test("file binds become copies (content, mode, owner, ro), /dev/shm a tmpfs with the host tmpfs's size; --debug notes say snapshot", () => {
    const s = spec({
      mounts: [
        { destination: "/proc", type: "proc", source: "proc" },
        bind("/etc/hosts", hostsSource),
        bind("/etc/resolv.conf", resolvSource, ["rbind", "ro"]),
        bind("/dev/shm", shmDir, ["bind", "rprivate", "nosuid", "noexec", "nodev"]),
        bind("/etc/hosts", resolvSource),
      ],
    });
    const got = checkBlockRootfs(s, "asked", host);
    expect(got.binds).toEqual(
      new Map<number, BlockBind>([
        [1, { kind: "file", imagePath: "/etc/hosts" }],
        [2, { kind: "file", imagePath: "/run/systemd/resolve/stub.conf" }],
        [3, { kind: "tmpfs", mount: { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["rprivate", "nosuid", "noexec", "nodev", "size=64000k", "mode=1777"] } }],
        [4, { kind: "file", imagePath: "/etc/hosts" }],
      ]),
    );
    expect(got.dirs).toEqual(["/run", "/run/systemd", "/run/systemd/resolve"]);
    const summary = got.files.map((f) => ({ i: f.index, at: f.imagePath, text: f.content.toString(), mode: f.mode, uid: f.uid, gid: f.gid, ro: f.readOnly, replaces: f.replaces }));
    expect(summary).toEqual([
      { i: 1, at: "/etc/hosts", text: "10.0.0.1 host-written\n", mode: 0o644, uid: 1234, gid: 5678, ro: false, replaces: true },
      { i: 2, at: "/run/systemd/resolve/stub.conf", text: "nameserver 192.0.2.53\n", mode: 0o600, uid: 0, gid: 0, ro: true, replaces: false },
      // The same destination again: the later copy replaces the earlier one, as the later bind would cover it.
      { i: 4, at: "/etc/hosts", text: "nameserver 192.0.2.53\n", mode: 0o600, uid: 0, gid: 0, ro: false, replaces: true },
    ]);
    expect(got.notes[0]).toBe(`mounts[1] (/etc/hosts): ${hostsSource} (22 bytes) copied into the rootfs image at /etc/hosts: a snapshot -- later changes on the host do not reach the guest, and the container's writes stay in the image`);
    expect(got.notes[1]).toContain("at /run/systemd/resolve/stub.conf, bound read-only: a snapshot");
    expect(got.notes[2]).toBe(`mounts[3] (/dev/shm): a tmpfs of the guest's own (rprivate,nosuid,noexec,nodev,size=64000k,mode=1777) in place of the host's ${shmDir}: nothing written there is shared with the host`);
    // Nothing on the host was written: the rootfs is as it was.
    expect(readFileSync(join(rootfs, "etc", "hosts"), "utf8")).toBe("image's hosts\n");
    expect(existsSync(join(rootfs, "run"))).toBe(false);
  });

  test("root.readonly: the mount points the rootfs lacks are made in the image (the guest cannot make them on a read-only image)", () => {
    const mounts = [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/var/tmp", type: "tmpfs", source: "tmpfs" },
      bind("/dev/shm", shmDir),
    ];
    expect(checkBlockRootfs(spec({ mounts }), "asked", host).dirs).toEqual([]);
    expect(checkBlockRootfs(spec({ mounts, root: { path: "rootfs", readonly: true } }), "asked", host).dirs).toEqual(["/proc", "/var", "/var/tmp", "/dev", "/dev/shm"]);
  });

  test("refused by name, before anything is made: a file over 1 MiB, over 4 MiB in all, a FIFO, a missing source, a file onto a directory", () => {
    const refusal = (m: ReturnType<typeof bind>[]) => {
      try {
        checkBlockRootfs(spec({ mounts: m }), "asked", host);
      } catch (e) {
        return (e as Error).message;
      }
      return "accepted";
    };
    const big = src("big", Buffer.alloc(FILE_COPY_MAX_BYTES + 1));
    expect(refusal([bind("/big", big)])).toStartWith(`mounts[0] (/big): a bind mount of ${big} (${FILE_COPY_MAX_BYTES + 1} bytes) cannot reach a VM whose rootfs is a block image (asked)`);
    const max = src("max", Buffer.alloc(FILE_COPY_MAX_BYTES));
    const count = FILE_COPY_TOTAL_MAX_BYTES / FILE_COPY_MAX_BYTES;
    expect(refusal(Array.from({ length: count }, (_, k) => bind(`/m${k}`, max)))).toBe("accepted");
    expect(refusal(Array.from({ length: count + 1 }, (_, k) => bind(`/m${k}`, max)))).toStartWith(`mounts[${count}] (/m${count}): a bind mount of ${max}, past 4 MiB of copied files in all,`);
    const fifo = join(temp, "bm-fifo");
    expect(spawnSync("mkfifo", [fifo]).status).toBe(0);
    expect(refusal([bind("/etc/hosts", hostsSource), bind("/f", fifo)])).toStartWith(`mounts[1] (/f): a bind mount of ${fifo} (a FIFO, not a regular file) cannot reach`);
    expect(refusal([bind("/x", join(temp, "bm-missing"))])).toBe(`mounts[0] (/x): bind source ${join(temp, "bm-missing")}: ENOENT`);
    expect(refusal([bind("/adir", hostsSource)])).toBe("mounts[0] (/adir): /adir is a directory in the rootfs; a file cannot be bound onto it");
    // A relative source is the bundle's.
    expect(checkBlockRootfs(spec({ mounts: [bind("/etc/hosts", "bm-src-hosts")] }), "asked", host).files[0]!.source).toBe(`${temp}/bm-src-hosts`);
  });

  test("mountinfo: the topmost tmpfs at the path, escapes decoded; the spec's own options win over the host's", () => {
    const text = ["30 1 0:5 / /a\\040b rw - tmpfs x rw,size=10k", "31 30 0:6 / /a\\040b rw - ext4 /dev/sda rw", "32 1 0:7 / /c rw shared:4 - tmpfs y rw,size=20k,nr_inodes=5"].join("\n");
    expect(tmpfsOptionsAt(text, "/a b")).toBeUndefined(); // covered by an ext4 mount
    expect(tmpfsOptionsAt(text, "/c")).toEqual(["rw", "size=20k", "nr_inodes=5"]);
    expect(tmpfsOptionsAt(text, "/nowhere")).toBeUndefined();
    const m = { destination: "/dev/shm", type: "bind", source: "/x", options: ["rbind", "nosuid", "size=1m"] };
    expect(shmTmpfs(m, ["rw", "size=20k", "nr_inodes=5"])).toEqual({ destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "size=1m", "nr_inodes=5"] });
    expect(shmTmpfs(m, undefined).options).toEqual(["nosuid", "size=1m"]);
  });

  test("the debugfs script: directories, the old file removed, the copy written with its mode and owner; stderr less the banner is an error", () => {
    const file = (over: Partial<FileCopy>): FileCopy => ({ index: 0, destination: "/d", source: "/s", imagePath: "/d", replaces: false, content: Buffer.from("x"), mode: 0o644, uid: 0, gid: 0, readOnly: false, ...over });
    const script = debugfsScript({ dirs: ["/run", "/run/a b"], files: [file({ imagePath: '/etc/q"x', replaces: true, mode: 0o4755, uid: 7, gid: 8 }), file({ imagePath: "/run/a b/f" })] }, (k) => `/stage/${k}`);
    expect(script.split("\n")).toEqual([
      'mkdir "/run"',
      'mkdir "/run/a b"',
      'rm "/etc/q""x"',
      'write "/stage/0" "/etc/q""x"',
      'sif "/etc/q""x" mode 0104755',
      'sif "/etc/q""x" uid 7',
      'sif "/etc/q""x" gid 8',
      'write "/stage/1" "/run/a b/f"',
      'sif "/run/a b/f" mode 0100644',
      'sif "/run/a b/f" uid 0',
      'sif "/run/a b/f" gid 0',
      "",
    ]);
    expect(debugfsErrors("debugfs 1.47.0 (5-Feb-2023)\n")).toEqual([]);
    expect(debugfsErrors("debugfs 1.47.0 (5-Feb-2023)\nmkdir: Ext2 directory already exists \n")).toEqual(["mkdir: Ext2 directory already exists "]);
  });

  const mkfs = mkfsPath();
  const debugfs = debugfsPath();
  const why = !mkfs || !debugfs ? "mkfs.ext4 or debugfs is not installed (apt-get install e2fsprogs)" : process.getuid?.() !== 0 ? "needs root (chown)" : null;
  if (why) process.stderr.write(`SKIP copies in a real image: ${why}\n`);
  (why ? test.skip : test)("a real image: the copies at their resolved places with mode and owner, the directories made; the host's rootfs untouched; a debugfs failure leaves no image", async () => {
    const contents = checkBlockRootfs(
      spec({ mounts: [bind("/etc/hosts", hostsSource), bind("/etc/resolv.conf", resolvSource, ["rbind", "ro"]), bind("/escape/etc/passwd", resolvSource)] }),
      "asked",
      host,
    );
    const image = join(temp, "bm.img");
    const made = await makeRootfsImage(rootfs, image, { contents });
    expect(made.filesMs).toBeGreaterThanOrEqual(0);
    const fs = (cmd: string) => spawnSync(debugfs!, ["-R", cmd, image], { encoding: "utf8" }).stdout;
    expect(fs("cat /etc/hosts")).toBe("10.0.0.1 host-written\n");
    expect(fs("stat /etc/hosts")).toMatch(/Type: regular\s+Mode:\s+0644[\s\S]*User:\s+1234\s+Group:\s+5678/);
    expect(fs("cat /run/systemd/resolve/stub.conf")).toBe("nameserver 192.0.2.53\n");
    expect(fs("stat /run/systemd/resolve/stub.conf")).toMatch(/Mode:\s+0600/);
    expect(fs("stat /run/systemd")).toMatch(/Type: directory\s+Mode:\s+0755/);
    expect(fs("cat /etc/passwd")).toBe("nameserver 192.0.2.53\n");
    // The image's symlink is kept as it was (the copy went to its target).
    expect(fs("stat /etc/resolv.conf")).toContain('Fast link dest: "../run/systemd/resolve/stub.conf"');
    expect(readFileSync(join(rootfs, "etc", "hosts"), "utf8")).toBe("image's hosts\n");
    expect(existsSync(join(rootfs, "run"))).toBe(false);
    expect(readdirSync(temp).filter((n) => n.startsWith("bm.img."))).toEqual([]); // the staged contents are gone
    // debugfs refusing a command (a directory that exists) fails the image, and no file is left.
    const failed = join(temp, "bm-failed.img");
    await expect(makeRootfsImage(rootfs, failed, { contents: { dirs: ["/etc"], files: [] } })).rejects.toThrow("debugfs -w");
    expect(existsSync(failed)).toBe(false);
  }, 30_000);
});

describe("the guest plan of a block rootfs with bind mounts", () => {
  const input = { bundle: "/b", rootfs: "/b/rootfs", containerId: "c", noPivot: false, noNewKeyring: false, isDirectory: () => true };
  const withBinds = spec({
    mounts: [
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid"] },
      { destination: "/etc/hosts", type: "bind", source: "/h/hosts", options: ["bind", "rprivate"] },
      { destination: "/etc/hostname", type: "bind", source: "/h/hostname", options: ["rbind", "ro"] },
      { destination: "/dev/shm", type: "bind", source: "/h/shm", options: ["bind", "nosuid", "noexec", "nodev"] },
    ],
  });
  const binds = new Map([
    [1, { kind: "file" as const, imagePath: "/etc/hosts" }],
    [2, { kind: "file" as const, imagePath: "/etc/hostname" }],
    [3, { kind: "tmpfs" as const, mount: { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "size=64000k"] } }],
  ]);

  test("the image mounted again without symlinks right after the root; copies bound from it (ro remounted), /dev/shm a tmpfs", () => {
    for (const readOnly of [false, true]) {
      const plan = buildGuestPlan({ ...input, spec: withBinds, rootDevice: { device: "/dev/vda", readOnly, binds } });
      const root = plan.ops.findIndex((op) => op.code === OpCode.MOUNT_IN_ROOT && op.args[1] === "rootfs" && op.args[2] === "/dev/vda");
      expect(plan.ops[root + 1]).toEqual(
        expect.objectContaining({ code: OpCode.MOUNT_IN_ROOT, section: Section.Init, args: ["/run/nk", "image", "/dev/vda", "ext4", String((readOnly ? MS.RDONLY : 0) | MS.NOSYMFOLLOW), "", "dir", "1"] }),
      );
      const on = (dest: string) => plan.ops.filter((op) => op.args[0] === GUEST_BLOCK_ROOTFS && op.args[1] === dest).map((op) => [op.code, ...op.args.slice(2)]);
      expect(on("/etc/hosts")).toEqual([
        [OpCode.MOUNT_IN_ROOT, `${GUEST_BLOCK_IMAGE_VIEW}/etc/hosts`, "", String(MS.BIND), "", "file", "0"],
        // No flags of its own: a remount with ext4's default drops the view's nosymfollow.
        [OpCode.REMOUNT_IN_ROOT, String(MS.RELATIME)],
        [OpCode.MOUNT_IN_ROOT, "", "", String(MS.PRIVATE | MS.REC), "", "none", "0"],
      ]);
      const hostname = on("/etc/hostname");
      expect(hostname[0]).toEqual([OpCode.MOUNT_IN_ROOT, `${GUEST_BLOCK_IMAGE_VIEW}/etc/hostname`, "", String(MS.BIND | MS.REC), "", "file", "0"]);
      expect(hostname[1]![0]).toBe(OpCode.REMOUNT_IN_ROOT);
      expect(Number(hostname[1]![1]) & MS.RDONLY).toBe(MS.RDONLY);
      expect(on("/dev/shm")).toEqual([[OpCode.MOUNT_IN_ROOT, "shm", "tmpfs", String(MS.NOSUID | MS.NOEXEC | MS.NODEV), "size=64000k", "dir", "0"]]);
      // The view is mounted before any bind uses it.
      const firstBind = plan.ops.findIndex((op) => String(op.args[2] ?? "").startsWith(GUEST_BLOCK_IMAGE_VIEW));
      expect(firstBind).toBeGreaterThan(root + 1);
    }
  });

  test("no second mount without copies; a bind mount with no entry is still refused", () => {
    const shmOnly = spec({ mounts: [withBinds.mounts![3]!] });
    const plan = buildGuestPlan({ ...input, spec: shmOnly, rootDevice: { device: "/dev/vda", readOnly: false, binds: new Map([[0, binds.get(3)!]]) } });
    expect(plan.ops.filter((op) => op.args[1] === "image")).toEqual([]);
    expect(() => buildGuestPlan({ ...input, spec: withBinds, rootDevice: { device: "/dev/vda", readOnly: false, binds: new Map([[1, binds.get(1)!]]) } })).toThrow(
      "mounts[2] (/etc/hostname): a bind mount cannot reach a VM whose rootfs is a block image",
    );
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
