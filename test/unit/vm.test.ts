/**
 * VM mode's pure parts: the image builder's decoders and writers (LZ4,
 * bzImage, cpio, module info), the channel codec and its C mirror, the QEMU
 * and Firecracker requests, the guest plan, the VM's size, mode selection.
 */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { decodeBlock, decompressLegacy, LZ4_LEGACY_MAGIC, Lz4Error } from "../../src/vm/image/lz4.ts";
import { bzImagePayload, hasPvhNote, KernelImageError } from "../../src/vm/image/bzimage.ts";
import { writeCpio } from "../../src/vm/image/cpio.ts";
import { readModinfo, resolveModules } from "../../src/vm/image/modules.ts";
import { changedInputs, changedKernel, hasSymbolTable, type ImageInputs } from "../../src/vm/image/build.ts";
import { parseConfigFragment, unmetConfig, type MinimalKernelInputs } from "../../src/vm/image/minimal-kernel.ts";
import { Control, encodeFrame, Frame, FRAME_HEADER, FRAME_MAX, FrameReader, readU32, SESSION_MAX, u32Payload, wakePayload, WAKE_ENTROPY_BYTES } from "../../src/vm/channel.ts";
import { qemuArgs } from "../../src/vm/qemu.ts";
import { firecrackerRequests } from "../../src/vm/firecracker.ts";
import { buildGuestPlan, checkVmSupport, GUEST_INIT_CONSOLE } from "../../src/vm/plan.ts";
import { buildVmExecPlan } from "../../src/vm/exec.ts";
import { virtiofsdPlan } from "../../src/vm/virtiofsd.ts";
import { guestCgroupOps } from "../../src/vm/guest-cgroup.ts";
import { selectMode, vmSize } from "../../src/vm/container.ts";
import { guestCmdline } from "../../src/vm/config.ts";
import type { VmConfig } from "../../src/vm/driver.ts";
import { OpCode, OpName, Section } from "../../src/plan/ops.ts";
import { MS, CLONE } from "../../src/plan/constants.ts";
import type { Spec } from "../../src/spec/types.ts";

const NATIVE = resolve(import.meta.dir, "../../native");
const bytes = (...b: (number | string)[]) => new Uint8Array(b.flatMap((x) => (typeof x === "string" ? [...Buffer.from(x)] : [x])));

describe("LZ4 (legacy frames, as in an LZ4 bzImage)", () => {
  test("a block of literals, then an overlapping match (a repeated pattern)", () => {
    // token 0x35: 3 literals "abc", match length 5+4 = 9 at offset 3 -> "abc" + "abcabcabc"; then 2 literals "XY".
    const block = bytes(0x35, "abc", 3, 0, 0x20, "XY");
    const out = new Uint8Array(64);
    const end = decodeBlock(block, 0, block.length, out, 0);
    expect(Buffer.from(out.subarray(0, end)).toString()).toBe("abcabcabcabcXY");
  });

  test("extended literal and match lengths (the 255-continuation bytes)", () => {
    const literals = "L".repeat(15 + 255 + 3);
    // literal length 15 + 255 + 3; match length 4 + 15 + 255 + 10 at offset 1 (a run of the last 'L').
    const block = bytes(0xff, 255, 3, literals, 1, 0, 255, 10, 0x00);
    const out = new Uint8Array(2048);
    const end = decodeBlock(block, 0, block.length, out, 0);
    expect(end).toBe(literals.length + 4 + 15 + 255 + 10);
    expect(Buffer.from(out.subarray(0, end)).toString()).toBe("L".repeat(end));
  });

  test("corrupt input is refused, not decoded into garbage", () => {
    expect(() => decodeBlock(bytes(0x10, "a", 9, 0), 0, 4, new Uint8Array(64), 0)).toThrow(Lz4Error); // offset before the block
    expect(() => decodeBlock(bytes(0xf0), 0, 1, new Uint8Array(64), 0)).toThrow(Lz4Error); // length runs past the end
    expect(() => decompressLegacy(bytes(1, 2, 3, 4))).toThrow("bad magic");
  });

  test("legacy framing: magic, sized blocks, and the kernel's trailing size word is not a block", () => {
    const block = bytes(0x50, "hello");
    const stream = new Uint8Array(4 + 4 + block.length + 4);
    const view = new DataView(stream.buffer);
    view.setUint32(0, LZ4_LEGACY_MAGIC, true);
    view.setUint32(4, block.length, true);
    stream.set(block, 8);
    view.setUint32(8 + block.length, 5, true); // the uncompressed size the kernel build appends
    expect(Buffer.from(decompressLegacy(stream)).toString()).toBe("hello");
  });

  const lz4 = spawnSync("sh", ["-c", "command -v lz4"]).status === 0;
  test.skipIf(!lz4)("agrees with the lz4 tool (-l, legacy format) on a megabyte of mixed data", () => {
    const dir = mkdtempSync(join(tmpdir(), "nkt-lz4-"));
    try {
      const data = Buffer.alloc(1 << 20);
      for (let i = 0; i < data.length; i++) data[i] = i % 251 < 120 ? (i * 7) % 13 : (i * 2654435761) >>> 24;
      writeFileSync(join(dir, "in"), data);
      expect(spawnSync("lz4", ["-l", "-q", "-f", join(dir, "in"), join(dir, "in.lz4")]).status).toBe(0);
      expect(Buffer.from(decompressLegacy(readFileSync(join(dir, "in.lz4")))).equals(data)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  if (!lz4) process.stderr.write("SKIP lz4 tool comparison: no lz4 binary (apt-get install lz4)\n");
});

describe("bzImage and vmlinux", () => {
  test("the payload is found through the setup header, not by searching", () => {
    const image = new Uint8Array(0x1000);
    const view = new DataView(image.buffer);
    image[0x1f1] = 1; // setup_sects: protected mode starts at (1 + 1) * 512
    view.setUint32(0x202, 0x53726448, true);
    view.setUint32(0x248, 0x10, true);
    view.setUint32(0x24c, 4, true);
    image.set(bytes("PAYL"), 1024 + 0x10);
    expect(Buffer.from(bzImagePayload(image)).toString()).toBe("PAYL");
    view.setUint32(0x202, 0, true);
    expect(() => bzImagePayload(image)).toThrow(KernelImageError);
  });

  test("the PVH entry note (Xen, type 18) is recognised in an ELF64 program header", () => {
    const elf = new Uint8Array(256);
    const v = new DataView(elf.buffer);
    elf.set([0x7f, 0x45, 0x4c, 0x46, 2], 0);
    v.setBigUint64(0x20, 64n, true); // phoff
    v.setUint16(0x36, 56, true); // phentsize
    v.setUint16(0x38, 1, true); // phnum
    v.setUint32(64, 4, true); // PT_NOTE
    v.setBigUint64(64 + 8, 128n, true); // offset
    v.setBigUint64(64 + 32, 24n, true); // filesz
    v.setUint32(128, 4, true); // namesz "Xen\0"
    v.setUint32(132, 4, true); // descsz
    v.setUint32(136, 18, true); // XEN_ELFNOTE_PHYS32_ENTRY
    elf.set(bytes("Xen", 0), 140);
    expect(hasPvhNote(elf)).toBe(true);
    v.setUint32(136, 17, true);
    expect(hasPvhNote(elf)).toBe(false);
  });
});

/** A minimal reader for newc archives, to check what writeCpio wrote. */
function readCpio(archive: Uint8Array) {
  const entries: Array<{ name: string; mode: number; data: string; rdev: [number, number] }> = [];
  let at = 0;
  const text = (a: number, n: number) => Buffer.from(archive.subarray(a, a + n)).toString("latin1");
  for (;;) {
    expect(text(at, 6)).toBe("070701");
    const field = (i: number) => parseInt(text(at + 6 + 8 * i, 8), 16);
    const [mode, size, rmajor, rminor, namesize] = [field(1), field(6), field(9), field(10), field(11)];
    const name = text(at + 110, namesize - 1);
    at += 110 + namesize;
    at += (4 - (at % 4)) % 4;
    const data = text(at, size);
    at += size;
    at += (4 - (at % 4)) % 4;
    if (name === "TRAILER!!!") break;
    entries.push({ name, mode, data, rdev: [rmajor, rminor] });
  }
  return { entries, size: at };
}

describe("cpio newc (the initramfs)", () => {
  test("directories, files, symlinks and device nodes, 4-byte aligned, ending in the trailer", () => {
    const archive = writeCpio([
      { kind: "dir", path: "dev" },
      { kind: "chardev", path: "/dev/console", major: 5, minor: 1 },
      { kind: "file", path: "init", data: bytes("#!x"), mode: 0o755 },
      { kind: "symlink", path: "bin/sh", target: "busybox" },
    ]);
    expect(archive.length % 4).toBe(0);
    const { entries, size } = readCpio(archive);
    expect(size).toBe(archive.length);
    expect(entries.map((e) => [e.name, (e.mode >>> 12).toString(8), (e.mode & 0o7777).toString(8), e.data])).toEqual([
      ["dev", "4", "755", ""],
      ["dev/console", "2", "600", ""],
      ["init", "10", "755", "#!x"],
      ["bin/sh", "12", "777", "busybox"],
    ]);
    expect(entries[1]!.rdev).toEqual([5, 1]);
  });

  const cpio = spawnSync("sh", ["-c", "command -v cpio"]).status === 0;
  test.skipIf(!cpio)("GNU cpio lists what we wrote", () => {
    const archive = writeCpio([{ kind: "dir", path: "a" }, { kind: "file", path: "a/b", data: bytes("x") }]);
    const r = spawnSync("cpio", ["-t", "--quiet"], { input: archive, encoding: "utf8" });
    expect(r.stdout.split("\n").filter(Boolean)).toEqual(["a", "a/b"]);
  });
});

/** An ELF64 relocatable with just .shstrtab and .modinfo, like a .ko as far as readModinfo cares. */
function fakeModule(modinfo: string): Uint8Array {
  const shstr = bytes(0, ".shstrtab", 0, ".modinfo", 0);
  const info = bytes(modinfo);
  const shoff = 64 + shstr.length + info.length + 8;
  const out = new Uint8Array(shoff + 3 * 64);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  v.setBigUint64(0x28, BigInt(shoff), true);
  v.setUint16(0x3a, 64, true);
  v.setUint16(0x3c, 3, true);
  v.setUint16(0x3e, 1, true);
  out.set(shstr, 64);
  out.set(info, 64 + shstr.length);
  const section = (i: number, name: number, offset: number, size: number) => {
    v.setUint32(shoff + i * 64, name, true);
    v.setBigUint64(shoff + i * 64 + 0x18, BigInt(offset), true);
    v.setBigUint64(shoff + i * 64 + 0x20, BigInt(size), true);
  };
  section(1, 1, 64, shstr.length);
  section(2, 11, 64 + shstr.length, info.length);
  return out;
}

describe("kernel modules", () => {
  test(".modinfo is read as key=value strings", () => {
    const info = readModinfo(fakeModule("license=GPL\0depends=virtio,virtio_ring\0alias=a\0alias=b\0"));
    expect(info.get("depends")).toEqual(["virtio,virtio_ring"]);
    expect(info.get("alias")).toEqual(["a", "b"]);
  });

  test("dependencies come first; built-in modules are skipped; '-' and '_' are one", () => {
    const dir = mkdtempSync(join(tmpdir(), "nkt-modules-"));
    try {
      mkdirSync(join(dir, "kernel", "drivers"), { recursive: true });
      writeFileSync(join(dir, "kernel", "drivers", "virtio_console.ko"), fakeModule("depends=virtio,virtio-ring\0"));
      writeFileSync(join(dir, "kernel", "drivers", "virtio.ko"), fakeModule("depends=virtio_ring\0"));
      writeFileSync(join(dir, "kernel", "drivers", "virtio_ring.ko"), fakeModule("depends=\0"));
      writeFileSync(join(dir, "modules.builtin"), "kernel/fs/overlayfs/overlay.ko\n");
      const r = resolveModules(dir, ["virtio_console", "overlay"]);
      expect(r.load.map((m) => m.name)).toEqual(["virtio_ring", "virtio", "virtio_console"]);
      expect(r.builtin).toEqual(["overlay"]);
      expect(() => resolveModules(dir, ["no_such_module"])).toThrow("neither in");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the image stamp", () => {
  const debian: ImageInputs = {
    layout: 2,
    kernel: { kind: "debian", package: { name: "k", version: "1", sha256: "a" }, modules: ["m"] },
    agentSha256: "x",
    busyboxSha256: "y",
  };
  const minimal: ImageInputs = {
    ...debian,
    kernel: { kind: "minimal", source: { name: "linux-source-6.1", version: "6.1.1-1", sha256: "s" }, configSha256: "c", compiler: "gcc 12" },
  };
  test("names each input that changed, and nothing when none did", () => {
    expect(changedInputs(debian, debian)).toEqual([]);
    expect(changedInputs(minimal, minimal)).toEqual([]);
    const newer = { ...debian, agentSha256: "z", kernel: { ...debian.kernel, package: { name: "k", version: "2", sha256: "b" } } as ImageInputs["kernel"] };
    expect(changedInputs(debian, newer)).toEqual(["kernel (k 1 -> k 2)", "agent binary"]);
    expect(changedInputs(debian, minimal)).toEqual(["kernel kind (debian -> minimal)"]);
  });

  test("the minimal kernel is rebuilt for a new source version, config fragment or compiler", () => {
    const k = minimal.kernel as MinimalKernelInputs;
    expect(changedKernel(k, { ...k, source: { ...k.source, version: "6.1.2-1" } })).toEqual(["kernel source (linux-source-6.1 6.1.1-1 -> linux-source-6.1 6.1.2-1)"]);
    expect(changedKernel(k, { ...k, configSha256: "d", compiler: "gcc 13" })).toEqual(["guest-kernel.config", "compiler (gcc 12 -> gcc 13)"]);
    // A stamp from before kernel kinds (layout 1) had no kind: it was Debian's kernel.
    expect(changedKernel(undefined, k)).toEqual(["kernel kind (debian -> minimal)"]);
  });
});

describe("the minimal kernel's config fragment", () => {
  test("assignments and 'is not set' lines are read; comments are not", () => {
    const parsed = parseConfigFragment('# a comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="-x"\nCONFIG_N=64\n');
    expect([...parsed]).toEqual([
      ["CONFIG_A", "y"],
      ["CONFIG_B", "n"],
      ["CONFIG_C", '"-x"'],
      ["CONFIG_N", "64"],
    ]);
  });

  test("a symbol Kconfig dropped (or changed) is reported with what it became", () => {
    const fragment = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=64\n";
    const final = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_N=8\n";
    expect(unmetConfig(fragment, final)).toEqual(["CONFIG_B=y (got n)", "CONFIG_C=n (got y)", "CONFIG_N=64 (got 8)"]);
    expect(unmetConfig(fragment, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=64\n")).toEqual([]);
  });

  test("the committed fragment asks for what the guest needs, and no modules", () => {
    const wanted = parseConfigFragment(readFileSync(resolve(import.meta.dir, "../../src/vm/image/guest-kernel.config"), "utf8"));
    for (const symbol of ["PVH", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_CONSOLE", "VIRTIO_FS", "OVERLAY_FS", "VIRTIO_NET", "CGROUP_BPF", "SECCOMP_FILTER", "USER_NS", "DEVTMPFS"]) {
      expect({ symbol, value: wanted.get(`CONFIG_${symbol}`) }).toEqual({ symbol, value: "y" });
    }
    expect(wanted.get("CONFIG_MODULES")).toBeUndefined(); // allnoconfig leaves it off
  });
});

describe("the channel (src/vm/channel.ts and native/agent.h)", () => {
  test("frames survive being cut anywhere and glued together", () => {
    const frames = [encodeFrame(Frame.HELLO, "0.1.0 1500"), encodeFrame(Frame.STDOUT, new Uint8Array(70_000).fill(7)), encodeFrame(Frame.EXIT, u32Payload(137))];
    const stream = Buffer.concat(frames);
    const got: Array<[number, number]> = [];
    const reader = new FrameReader((type, payload) => got.push([type, type === Frame.EXIT ? readU32(payload) : payload.length]));
    for (let at = 0; at < stream.length; at += 4099) reader.push(stream.subarray(at, at + 4099));
    expect(got).toEqual([
      [Frame.HELLO, 10],
      [Frame.STDOUT, 70_000],
      [Frame.EXIT, 137],
    ]);
  });

  test("sessions: the u16 after the type names the executor run; byte 7 stays zero", () => {
    const frame = encodeFrame(Frame.STDIN, "hi", 0x1234);
    expect([...frame.subarray(0, FRAME_HEADER)]).toEqual([2, 0, 0, 0, Frame.STDIN, 0x34, 0x12, 0]);
    const got: Array<[number, number, string]> = [];
    const reader = new FrameReader((type, payload, session) => got.push([type, session, new TextDecoder().decode(payload)]));
    const stream = Buffer.concat([encodeFrame(Frame.STDOUT, "init", 0), encodeFrame(Frame.STDOUT, "exec", 7), encodeFrame(Frame.EXIT, u32Payload(0), SESSION_MAX)]);
    for (const byte of stream) reader.push(new Uint8Array([byte]));
    expect(got).toEqual([
      [Frame.STDOUT, 0, "init"],
      [Frame.STDOUT, 7, "exec"],
      [Frame.EXIT, SESSION_MAX, "\0\0\0\0"],
    ]);
    expect(() => encodeFrame(Frame.PLAN, "", SESSION_MAX + 1)).toThrow("u16");
    expect(() => encodeFrame(Frame.PLAN, "", -1)).toThrow("u16");
    // A non-zero reserved byte means the stream is out of step (or an older peer).
    const bad = encodeFrame(Frame.SYNC, "go\n", 1);
    bad[7] = 1;
    expect(() => new FrameReader(() => {}).push(bad)).toThrow("reserved");
  });

  test("control frames stay off the guest's numbers", () => {
    const guest = new Set<number>(Object.values(Frame));
    for (const v of Object.values(Control)) expect(guest.has(v)).toBe(false);
  });

  test("a length beyond the maximum is a broken stream, not an allocation", () => {
    const bad = new Uint8Array(FRAME_HEADER);
    new DataView(bad.buffer).setUint32(0, FRAME_MAX + 1, true);
    expect(() => new FrameReader(() => {}).push(bad)).toThrow("exceeds");
  });

  test("agent.h defines the same frame types, header size and maximum", () => {
    const header = readFileSync(join(NATIVE, "agent.h"), "utf8");
    const defines = new Map([...header.matchAll(/^#define\s+NK_F_([A-Z_]+)\s+(\d+)/gm)].map((m) => [m[1]!, Number(m[2])]));
    expect(Object.fromEntries(defines)).toEqual({ ...Frame });
    expect(Number(/NK_FRAME_HEADER\s+(\d+)/.exec(header)?.[1])).toBe(FRAME_HEADER);
    expect(/NK_FRAME_MAX\s+\((\d+)u << (\d+)\)/.exec(header)?.slice(1).map(Number)).toEqual([16, 20]);
    expect(FRAME_MAX).toBe(16 << 20);
    // The agent's session table must hold at least a pod's worth; ids are u16 on both sides.
    expect(Number(/NK_SESSIONS_MAX\s+(\d+)/.exec(header)?.[1])).toBeGreaterThanOrEqual(16);
    expect(readFileSync(join(NATIVE, "agent.c"), "utf8")).toContain("buf[at + 5] | (unsigned)buf[at + 6] << 8");
    expect(Number(/NK_WAKE_ENTROPY\s+(\d+)/.exec(header)?.[1])).toBe(WAKE_ENTROPY_BYTES);
  });

  test("WAKE carries the wall clock (u64 s, u32 ns), the entropy, the root disk and each card's MACs", () => {
    const entropy = new Uint8Array(WAKE_ENTROPY_BYTES).map((_, i) => i + 1);
    const payload = wakePayload(1_764_369_000_250.5, entropy, "/dev/vda", [{ from: "02:6e:6b:7e:00:00", to: "0A:0b:0c:0d:0e:0f" }]);
    const view = new DataView(payload.buffer);
    expect(view.getBigUint64(0, true)).toBe(1_764_369_000n);
    expect(view.getUint32(8, true)).toBe(250_500_000);
    expect([...payload.subarray(12, 12 + WAKE_ENTROPY_BYTES)]).toEqual([...entropy]);
    const at = 12 + WAKE_ENTROPY_BYTES;
    expect(payload[at]).toBe(8);
    expect(new TextDecoder().decode(payload.subarray(at + 1, at + 9))).toBe("/dev/vda");
    expect([...payload.subarray(at + 9)]).toEqual([0x02, 0x6e, 0x6b, 0x7e, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]);
    expect(wakePayload(0, entropy).length).toBe(12 + WAKE_ENTROPY_BYTES + 1);
    expect(() => wakePayload(0, new Uint8Array(8))).toThrow("entropy");
    expect(() => wakePayload(0, entropy, "", [{ from: "nope", to: "02:00:00:00:00:01" }])).toThrow("not a MAC");
  });
});

const vmConfig: VmConfig = {
  runDir: "/run/x",
  kernel: "/c/vmlinux",
  initramfs: "/c/initramfs.cpio",
  cmdline: "console=ttyS0 nk.port=nk.0",
  memoryMiB: 256,
  vcpus: 2,
  accel: "tcg",
  channelName: "nk.0",
  share: { tag: "nkshare", socket: "/run/x/virtiofsd.sock" },
  startTimeoutMs: 1000,
};

describe("the QEMU command line", () => {
  const sockets = { channel: "/run/x/channel.sock", qmp: "/run/x/qmp.sock", console: "/run/x/console.log" };
  const pairs = (args: string[]) => args.flatMap((a, i) => (a.startsWith("-") && args[i + 1] && !args[i + 1]!.startsWith("-") ? [`${a} ${args[i + 1]}`] : []));

  test("microvm under TCG: PVH kernel, shared memfd RAM, modern virtio-mmio, channel, QMP, virtiofs", () => {
    const p = pairs(qemuArgs(vmConfig, sockets));
    expect(p).toEqual(
      expect.arrayContaining([
        "-M microvm,pit=on,pic=on,rtc=on,isa-serial=on,memory-backend=mem",
        "-accel tcg",
        "-cpu max",
        "-m 256M",
        "-smp 2",
        "-object memory-backend-memfd,id=mem,size=256M,share=on",
        "-kernel /c/vmlinux",
        "-initrd /c/initramfs.cpio",
        "-append console=ttyS0 nk.port=nk.0",
        "-global virtio-mmio.force-legacy=false",
        "-chardev socket,id=nkch,path=/run/x/channel.sock",
        "-device virtserialport,chardev=nkch,name=nk.0",
        "-mon chardev=qmp,mode=control",
        "-device vhost-user-fs-device,chardev=fs,tag=nkshare",
        "-serial file:/run/x/console.log",
      ]),
    );
    expect(qemuArgs(vmConfig, sockets)).toEqual(expect.arrayContaining(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]));
  });

  test("guest RAM from a file QEMU inherits as an fd: mapped 2 MiB-aligned, so the host can back it with huge pages", () => {
    const args = qemuArgs(vmConfig, sockets, { fd: 4 });
    expect(pairs(args)).toContain("-object memory-backend-file,id=mem,size=256M,share=on,mem-path=/proc/self/fd/4,align=2M");
    expect(args.join(" ")).not.toContain("memory-backend-memfd");
    // Still the one backend the machine names.
    expect(args[1]).toContain("memory-backend=mem");
  });

  test("the minimal kernel's VMs have no ACPI (QEMU puts virtio_mmio.device= on the command line); the stock kernel's do", () => {
    expect(qemuArgs({ ...vmConfig, acpi: false }, sockets)[1]).toMatch(/^microvm,.*,acpi=off$/);
    expect(qemuArgs({ ...vmConfig, acpi: true }, sockets)[1]).not.toContain("acpi");
    expect(qemuArgs(vmConfig, sockets)[1]).not.toContain("acpi");
  });

  test("KVM uses the host CPU; no share, no vhost-user device", () => {
    const args = qemuArgs({ ...vmConfig, accel: "kvm", share: undefined }, sockets);
    expect(pairs(args)).toEqual(expect.arrayContaining(["-accel kvm", "-cpu host"]));
    expect(args.join(" ")).not.toContain("vhost-user-fs");
  });

  test("the guest command line: trimmed, with the host TSC rate and the agent's names", () => {
    const line = guestCmdline({ tscKhz: 2_000_000, share: true, extra: "nk.debug=1" }).split(" ");
    expect(line).toEqual(expect.arrayContaining(["quiet", "pci=off", "8250.nr_uarts=1", "tsc_early_khz=2000000", "nk.port=nk.0", "nk.share=nkshare", "nk.debug=1", "panic=-1"]));
    expect(guestCmdline({ share: false })).not.toContain("nk.share");
    // The minimal kernel has no i8042, PCI or crypto self-tests: those parameters would reach the agent's environment.
    const minimal = guestCmdline({ kernel: "minimal", share: true }).split(" ");
    expect(minimal).toEqual(expect.arrayContaining(["quiet", "panic=-1", "reboot=t", "nk.port=nk.0"]));
    expect(minimal.filter((p) => /^(i8042|pci=|cryptomgr|init_on_alloc)/.test(p))).toEqual([]);
    // Under TCG: the emulated TSC is trusted; the APIC timer's calibration (200 ms) is skipped where it is safe (the minimal kernel).
    const tcg = (kernel: "minimal" | "debian") => guestCmdline({ kernel, accel: "tcg", share: false }).split(" ").filter((p) => p === "noapictimer" || p === "tsc=reliable");
    expect([tcg("minimal"), tcg("debian")]).toEqual([["tsc=reliable", "noapictimer"], ["tsc=reliable"]]);
    expect(guestCmdline({ kernel: "minimal", accel: "kvm", share: false })).not.toMatch(/noapictimer|tsc=reliable/);
  });
});

describe("the Firecracker API requests (documented shapes; the driver is untested here)", () => {
  test("machine-config, boot-source, the rootfs drive, vsock, then InstanceStart", () => {
    const config = { ...vmConfig, share: undefined, rootDrive: { path: "/s/rootfs.img", readOnly: true } };
    expect(firecrackerRequests(config, "/run/x/vsock.sock")).toEqual([
      { path: "/machine-config", body: { vcpu_count: 2, mem_size_mib: 256, smt: false } },
      { path: "/boot-source", body: { kernel_image_path: "/c/vmlinux", initrd_path: "/c/initramfs.cpio", boot_args: "console=ttyS0 nk.port=nk.0" } },
      { path: "/drives/rootfs", body: { drive_id: "rootfs", path_on_host: "/s/rootfs.img", is_root_device: true, is_read_only: true } },
      { path: "/vsock", body: { guest_cid: 3, uds_path: "/run/x/vsock.sock" } },
      { path: "/actions", body: { action_type: "InstanceStart" } },
    ]);
  });
});

function spec(over: Partial<Spec> = {}): Spec {
  return {
    ociVersion: "1.2.0",
    root: { path: "rootfs" },
    process: { cwd: "/", args: ["sh"], user: { uid: 0, gid: 0 } },
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/data", type: "bind", source: "/srv/data", options: ["rbind", "rw"] },
      { destination: "/etc/app.conf", type: "bind", source: "app.conf", options: ["bind", "ro"] },
    ],
    linux: { namespaces: [{ type: "mount" }, { type: "pid" }, { type: "network", path: "/var/run/netns/x" }] },
    ...over,
  } as Spec;
}

describe("the guest plan", () => {
  const plan = buildGuestPlan({
    spec: spec(),
    bundle: "/b",
    rootfs: "/b/rootfs",
    containerId: "c1",
    noPivot: false,
    noNewKeyring: false,
    isDirectory: (p) => p !== "/b/app.conf",
  });
  const ops = (code: OpCode) => plan.ops.filter((o) => o.code === code);

  test("the rootfs and each bind source come from the share; the host paths go to virtiofsd", () => {
    expect(plan.shares).toEqual([
      { name: "rootfs", hostPath: "/b/rootfs", isDirectory: true },
      { name: "m1", hostPath: "/srv/data", isDirectory: true },
      { name: "m2", hostPath: "/b/app.conf", isDirectory: false },
    ]);
    const binds = ops(OpCode.MOUNT_IN_ROOT).filter((o) => o.args[2]!.toString().startsWith("/run/nk/share/m"));
    expect(binds.map((o) => [o.args[0], o.args[1], o.args[2], o.args[6]])).toEqual([
      ["/run/nk/share/rootfs", "/data", "/run/nk/share/m1", "dir"],
      ["/run/nk/share/rootfs", "/etc/app.conf", "/run/nk/share/m2", "file"],
    ]);
    expect(ops(OpCode.PIVOT_ROOT)[0]!.args).toEqual(["/run/nk/share/rootfs"]);
  });

  test("stage0 stays as the monitor; the exec fifo is the guest's; host namespace paths are not joined", () => {
    expect(ops(OpCode.MONITOR).map((o) => o.args)).toEqual([["none"]]);
    expect(ops(OpCode.EXIT)).toEqual([]);
    expect(ops(OpCode.FIFO_PREPARE)[0]!.args).toEqual(["/run/nk", "exec.fifo"]);
    expect(plan.guestFifo).toBe("/run/nk/exec.fifo");
    expect(ops(OpCode.SETNS)).toEqual([]);
    expect(Number(ops(OpCode.CLONE)[0]!.args[0]) & CLONE.NEWNET).toBe(CLONE.NEWNET);
    expect(plan.notes.join("\n")).toContain("/var/run/netns/x");
  });

  test("what VM mode cannot do is refused by field name; a terminal needs a console socket unless in the foreground", () => {
    const tty = spec({ process: { cwd: "/", args: ["sh"], terminal: true, user: { uid: 0, gid: 0 } } });
    expect(() => checkVmSupport(tty, { preserveFds: 0 })).toThrow("--console-socket");
    expect(() => checkVmSupport(tty, { preserveFds: 0, consoleSocket: "/run/c.sock" })).not.toThrow();
    expect(() => checkVmSupport(tty, { preserveFds: 0, foreground: true })).not.toThrow();
    expect(() => checkVmSupport(spec(), { preserveFds: 2 })).toThrow("--preserve-fds");
    expect(() => checkVmSupport(spec({ hooks: { createContainer: [{ path: "/bin/true" }] } }), { preserveFds: 0 })).toThrow("hooks.createContainer");
    expect(() => checkVmSupport(spec({ hooks: { startContainer: [{ path: "/bin/true" }] } }), { preserveFds: 0 })).toThrow("hooks.startContainer");
    expect(() => checkVmSupport(spec({ hooks: { prestart: [{ path: "/bin/true" }], poststop: [{ path: "/bin/true" }] } }), { preserveFds: 0 })).not.toThrow();
    expect(() => checkVmSupport(spec(), { preserveFds: 0 })).not.toThrow();
  });

  test("a terminal: init's pty master goes to the agent's console socket; prestart makes init stop for the host", () => {
    const p = buildGuestPlan({
      spec: spec({ process: { cwd: "/", args: ["sh"], terminal: true, user: { uid: 0, gid: 0 } }, hooks: { prestart: [{ path: "/bin/true" }] } }),
      bundle: "/b",
      rootfs: "/b/rootfs",
      containerId: "c1",
      noPivot: false,
      noNewKeyring: false,
      isDirectory: () => true,
    });
    const args = (code: OpCode) => p.ops.filter((o) => o.code === code).map((o) => o.args);
    expect(args(OpCode.CONNECT_CONSOLE)).toEqual([[GUEST_INIT_CONSOLE]]);
    expect(args(OpCode.SETUP_TERMINAL)[0]![0]).toBe("socket");
    expect(args(OpCode.MONITOR)).toEqual([["none"]]);
    expect(args(OpCode.SYNC)).toEqual([["hooks"]]);
    expect(args(OpCode.RUN_HOOK)).toEqual([]);
  });
});

describe("the exec plan in the guest (src/vm/exec.ts)", () => {
  const ops = (terminal: boolean) =>
    buildVmExecPlan({
      process: { cwd: "/tmp", args: ["sh", "-c", "echo hi"], env: ["A=1"], user: { uid: 1000, gid: 1000 }, terminal },
      guestInit: 42,
      spec: spec(),
      guestConsole: terminal ? "/run/nk/tty-abc.sock" : undefined,
    });

  test("stage0 joins the guest cgroup first, then init's namespaces by its guest pid; a host namespace path is not used", () => {
    const plan = ops(false);
    expect(plan[0]).toMatchObject({ code: OpCode.WRITE_FILE, section: Section.Pre, args: ["/sys/fs/cgroup/nk/cgroup.procs", "0"] });
    expect(plan.filter((o) => o.code === OpCode.SETNS).map((o) => o.args)).toEqual([
      ["/proc/42/ns/net", "network"],
      ["/proc/42/ns/pid", "pid"],
      ["/proc/42/ns/mnt", "mount"],
    ]);
    // stage0 always stays: the guest reports the exit status, whatever -d said on the host.
    expect(plan.filter((o) => o.code === OpCode.MONITOR).map((o) => o.args)).toEqual([["none"]]);
    expect(plan.filter((o) => o.code === OpCode.EXIT)).toEqual([]);
    expect(plan.some((o) => o.code === OpCode.CONNECT_CONSOLE || o.code === OpCode.SETUP_TERMINAL)).toBe(false);
    expect(plan.find((o) => o.code === OpCode.CHDIR)?.args).toEqual(["/tmp"]);
  });

  test("a terminal: the pty master goes to the session's console socket in the guest", () => {
    const plan = ops(true);
    expect(plan.filter((o) => o.code === OpCode.CONNECT_CONSOLE).map((o) => o.args)).toEqual([["/run/nk/tty-abc.sock"]]);
    expect(plan.find((o) => o.code === OpCode.SETUP_TERMINAL)?.args.slice(0, 1)).toEqual(["socket"]);
    expect(plan.filter((o) => o.code === OpCode.MONITOR).map((o) => o.args)).toEqual([["none"]]);
  });
});

describe("linux.resources in the guest's cgroup v2", () => {
  test("container mode's v2 conversions become WRITE_FILE ops that stage0 runs before CLONE, ending in cgroup.procs", () => {
    const { ops, notes } = guestCgroupOps({
      memory: { limit: 64 << 20, swap: 96 << 20 },
      cpu: { shares: 1024, quota: 50_000, period: 100_000, cpus: "2-3" },
      pids: { limit: 64 },
      devices: [{ allow: false, access: "rwm" }],
    });
    expect(ops.every((o) => o.code === OpCode.WRITE_FILE && o.section === Section.Pre)).toBe(true);
    expect(ops.map((o) => [o.args[0], o.args[1], o.source])).toEqual([
      ["/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids +cpu", "linux.resources (guest: enable controllers)"],
      ["/sys/fs/cgroup/nk/memory.swap.max", String(32 << 20), "linux.resources.memory.swap"],
      ["/sys/fs/cgroup/nk/memory.max", String(64 << 20), "linux.resources.memory.limit"],
      ["/sys/fs/cgroup/nk/cpu.weight", "39", "linux.resources.cpu.shares"],
      ["/sys/fs/cgroup/nk/cpu.max", "50000 100000", "linux.resources.cpu.quota"],
      ["/sys/fs/cgroup/nk/pids.max", "64", "linux.resources.pids.limit"],
      ["/sys/fs/cgroup/nk/cgroup.procs", "0", "linux.cgroupsPath (guest: the container's cgroup)"],
    ]);
    expect(notes).toEqual(["linux.resources: not applied in the guest: cpu.cpus/mems (host CPU numbers; the VM's vCPU count comes from them)"]);
  });

  test("without limits the container still gets its own cgroup, with memory and pids accounting; the plan starts there", () => {
    const expected = [
      ["/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids"],
      ["/sys/fs/cgroup/nk/cgroup.procs", "0"],
    ];
    expect(guestCgroupOps(undefined).ops.map((o) => o.args)).toEqual(expected);
    const plan = buildGuestPlan({ spec: spec(), bundle: "/b", rootfs: "/b/rootfs", containerId: "c", noPivot: false, noNewKeyring: false, isDirectory: () => true });
    expect(plan.ops.slice(0, 2).map((o) => o.args)).toEqual(expected);
    expect(plan.ops.findIndex((o) => o.code === OpCode.CLONE)).toBeGreaterThan(0);
  });
});

describe("the image's vmlinux without its symbol table (QEMU would load and sort it at every start)", () => {
  /** An ELF64 file with a null section and one of sectionType. */
  const elf = (sectionType: number) => {
    const b = Buffer.alloc(64 + 2 * 64);
    b.writeUInt32BE(0x7f454c46, 0);
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // little-endian
    b.writeBigUInt64LE(64n, 0x28); // e_shoff
    b.writeUInt16LE(64, 0x3a); // e_shentsize
    b.writeUInt16LE(2, 0x3c); // e_shnum
    b.writeUInt32LE(sectionType, 64 + 64 + 4); // section 1's sh_type
    return b;
  };
  test("a symbol table section is found; string tables, no sections and non-ELF files are not one", () => {
    const dir = mkdtempSync(join(tmpdir(), "nkt-elf-"));
    try {
      const file = (name: string, data: Uint8Array) => (writeFileSync(join(dir, name), data), join(dir, name));
      expect(hasSymbolTable(file("symtab", elf(2)))).toBe(true);
      expect(hasSymbolTable(file("strtab", elf(3)))).toBe(false);
      const noSections = elf(2);
      noSections.writeUInt16LE(0, 0x3c);
      expect(hasSymbolTable(file("none", noSections))).toBe(false);
      expect(hasSymbolTable(file("text", Buffer.from("#!/bin/sh\n".padEnd(200, " "))))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("virtiofsd's plan", () => {
  test("a private mount namespace (slave, so no bind reaches the host), the binds, then exec", () => {
    const ops = virtiofsdPlan({
      binary: "/usr/lib/qemu/virtiofsd",
      socket: "/r/fs.sock",
      shareDir: "/r/share",
      logFile: "/r/log",
      entries: [{ name: "rootfs", hostPath: "/b/rootfs", isDirectory: true }],
    });
    const named = ops.map((o) => `${Object.keys(Section)[o.section]} ${OpName[o.code]}`);
    expect(named).toEqual([
      "Pre CLONE",
      "Parent SEND_PID",
      "Parent WAIT_GO",
      "Parent RELEASE_CHILD",
      "Parent EXIT",
      "Init WAIT_RELEASE",
      "Init MOUNT",
      "Init MOUNT",
      "Init CLOSE_FDS",
      "Init EXEC_LOOKUP",
      "Init REPORT_READY",
      "Init EXEC",
    ]);
    expect(ops[0]!.args).toEqual([String(CLONE.NEWNS)]);
    expect(ops[6]!.args).toEqual(["", "/", "", String(MS.SLAVE | MS.REC), ""]);
    expect(ops[7]!.args).toEqual(["/b/rootfs", "/r/share/rootfs", "", String(MS.BIND | MS.REC), ""]);
    // The vhost-user socket comes listening as fd 3 (the host process made it): CLOSE_FDS keeps exactly that one.
    expect(ops[8]!.args).toEqual(["1"]);
    expect(ops[11]!.args).toContain("--fd=3");
    expect(ops[11]!.args.join(" ")).not.toContain("--socket-path");
    expect(ops[11]!.args).toContain("source=/r/share");
  });
});

describe("VM size and mode selection", () => {
  test("memory limit plus overhead; vCPUs from the quota or the cpuset, capped by the host", () => {
    expect(vmSize(spec())).toEqual({ memoryMiB: 256, vcpus: 1 });
    expect(vmSize(spec({ linux: { resources: { memory: { limit: 512 * 1024 * 1024 }, cpu: { quota: 150_000, period: 100_000 } } } }), 8)).toEqual({ memoryMiB: 608, vcpus: 2 });
    expect(vmSize(spec({ linux: { resources: { cpu: { cpus: "0-2,5" } } } }), 8).vcpus).toBe(4);
    expect(vmSize(spec({ linux: { resources: { cpu: { cpus: "0-15" } } } }), 2).vcpus).toBe(2);
  });

  test("the annotation wins over --mode; an unknown value is an error naming the annotation", () => {
    expect(selectMode(spec(), undefined)).toBe("container");
    expect(selectMode(spec(), "vm")).toBe("vm");
    expect(selectMode(spec({ annotations: { "io.nanokata.mode": "vm" } }), "container")).toBe("vm");
    expect(selectMode(spec({ annotations: { "io.nanokata.mode": "container" } }), "vm")).toBe("container");
    expect(() => selectMode(spec({ annotations: { "io.nanokata.mode": "kvm" } }), undefined)).toThrow('annotations["io.nanokata.mode"]');
  });
});
