/**
 * VM mode with the rootfs as a block image (src/vm/rootfs-image.ts): real
 * microVMs under QEMU (TCG here). The image is made by `mkfs.ext4 -d` in the
 * container's state directory, attached as a virtio-blk device and mounted by
 * the plan as the container's root; no virtiofsd runs. Writes stay in the
 * image; bind mounts from the spec are refused by name; `delete` removes the
 * image. Every test checks that nothing of its container is left.
 */
import { describe, expect } from "bun:test";
import { closeSync, existsSync, openSync, readFileSync, readSync } from "node:fs";
import { join } from "node:path";
import { ok, rt, startContainer, stateRoot, testIf, waitForStatus } from "../helpers/runtime.ts";
import type { Bundle } from "../helpers/bundle.ts";
import { bundlesCheckedAfterEach, ensureVmImage, expectNothingLeft, processesNaming, vcreate, VM_ENV, VM_TIMEOUT, vmSkipReason, vrt, which } from "./vm-helpers.ts";

const SKIP = vmSkipReason() ?? (which("mkfs.ext4") || existsSync("/usr/sbin/mkfs.ext4") ? null : "mkfs.ext4 is not installed (apt-get install e2fsprogs)");
let imageError = "";

const BLOCK = { "io.nanokata.vm.rootfs": "block" };

const checkedBundle = bundlesCheckedAfterEach();
function blockBundle(args: string[], override?: (c: Record<string, any>) => void, copyRootfs = false): Bundle {
  return checkedBundle({
    args,
    copyRootfs,
    override: (c) => {
      c.annotations = { ...c.annotations, ...BLOCK };
      override?.(c);
    },
  });
}

if (!SKIP) imageError = ensureVmImage();

describe("VM mode with a block rootfs (mkfs.ext4 -d, virtio-blk)", () => {
  testIf(SKIP, "the container runs on the image: output, exit code, root is /dev/vda ext4; a write stays in the image, not on the host's rootfs", () => {
    expect(imageError).toBe("");
    const b = blockBundle(
      ["sh", "-c", "grep ' / ' /proc/mounts; echo written > /in-the-image && cat /in-the-image; echo err >&2; exit 7"],
      (c) => {
        c.root.readonly = false;
      },
      true,
    );
    const r = vrt(["--debug", "run", "--bundle", b.dir, b.id]);
    expect(r.code).toBe(7);
    expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 rw[ ,]/);
    expect(r.stdout).toContain("written\n");
    expect(r.stderr).toContain("err\n");
    // --debug says how the rootfs reaches the guest, and why; the image's size and how long mkfs took.
    expect(r.stderr).toContain('rootfs through a block image (ext4): annotations["io.nanokata.vm.rootfs"] = "block"');
    expect(r.stderr).toMatch(/rootfs image \S+\/rootfs\.img: \d+ MiB, \d+ inodes, \d+ KiB of files, made in \d+ ms/);
    // The bundle's own rootfs copy never saw the write.
    expect(existsSync(join(b.rootfs, "in-the-image"))).toBe(false);
  }, VM_TIMEOUT);

  testIf(SKIP, "root.readonly: the image is mounted read-only and a write fails", () => {
    const b = blockBundle(["sh", "-c", "grep ' / ' /proc/mounts; touch /x 2>&1; echo status $?"]);
    expect(b.config.root.readonly).toBe(true);
    const r = vrt(["run", "--bundle", b.dir, b.id]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 ro[ ,]/);
    expect(r.stdout).toContain("Read-only file system");
    expect(r.stdout).toMatch(/status [1-9]/);
  }, VM_TIMEOUT);

  testIf(SKIP, "create makes the image in the state directory, no virtiofsd runs; delete removes the image", async () => {
    const b = blockBundle(["sh", "-c", "echo started; exec sleep 600"]);
    ok(vcreate(b));
    const stateDir = join(stateRoot(), b.id);
    const image = join(stateDir, "rootfs.img");
    // An ext4 superblock: magic 0xEF53 at byte 1024 + 56.
    const head = Buffer.alloc(2048);
    const fd = openSync(image, "r");
    readSync(fd, head, 0, 2048, 0);
    closeSync(fd);
    expect(head.readUInt16LE(1024 + 56)).toBe(0xef53);
    const pids = JSON.parse(readFileSync(join(stateDir, "vm-pids.json"), "utf8"));
    expect(pids.virtiofsd).toBeUndefined();
    expect(pids.vmm.pid).toBeGreaterThan(0);
    const qemuCmdline = readFileSync(`/proc/${pids.vmm.pid}/cmdline`, "utf8").split("\0");
    expect(qemuCmdline).toContain("virtio-blk-device,drive=nkroot");
    expect(qemuCmdline.some((a) => a.startsWith(`file=${image},if=none,format=raw,id=nkroot`))).toBe(true);
    expect(qemuCmdline.some((a) => a.includes("vhost-user-fs"))).toBe(false);
    expect(processesNaming(stateDir).filter((p) => p.includes("virtiofsd"))).toEqual([]);
    ok(startContainer(b.id));
    waitForStatus(b.id, "running");
    // exec joins the container's mount namespace: the same image as its root.
    const exec = vrt(["exec", b.id, "sh", "-c", "grep ' / ' /proc/mounts"]);
    expect({ code: exec.code, out: exec.stdout }).toEqual({ code: 0, out: expect.stringMatching(/^\/dev\/vda \/ ext4 ro[ ,]/) });
    // A container that would join this VM as a pod member: refused (members join the sandbox's virtiofs share).
    const member = checkedBundle({ args: ["true"], override: (c) => void (c.annotations = { "io.nanokata.sandbox": b.id }) });
    const joined = vrt(["run", "--bundle", member.dir, member.id]);
    expect(joined.code).not.toBe(0);
    expect(joined.stderr).toContain(`its pod's sandbox ${b.id} has its rootfs as a block image and no virtiofs share`);
    ok(rt(["kill", b.id, "KILL"]));
    waitForStatus(b.id, "stopped", 60_000);
    ok(rt(["delete", b.id]));
    expect(existsSync(image)).toBe(false);
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "a bind mount in the spec is refused, naming mounts[i], and nothing is left", async () => {
    const b = blockBundle(["true"], (c) => {
      c.mounts.push({ destination: "/data", type: "bind", source: "/tmp", options: ["rbind", "rw"] });
    });
    const i = b.config.mounts.length - 1;
    const r = vrt(["run", "--bundle", b.dir, b.id]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`mounts[${i}] (/data): a bind mount cannot reach a VM whose rootfs is a block image`);
    expect(existsSync(join(stateRoot(), b.id))).toBe(false);
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "without virtiofsd the rootfs comes as a block image by itself, and --debug says why", () => {
    const b = checkedBundle({ args: ["sh", "-c", "grep ' / ' /proc/mounts"] });
    const r = vrt(["--debug", "run", "--bundle", b.dir, b.id], { env: { ...VM_ENV, NK_VIRTIOFSD: "/nonexistent/virtiofsd" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 ro[ ,]/);
    expect(r.stderr).toContain("rootfs through a block image (ext4): no virtiofsd installed");
  }, VM_TIMEOUT);

  testIf(SKIP, "refused: a bad annotation value, and a pod sandbox with a block rootfs", async () => {
    const bad = blockBundle(["true"], (c) => {
      c.annotations["io.nanokata.vm.rootfs"] = "nbd";
    });
    const r1 = vrt(["run", "--bundle", bad.dir, bad.id]);
    expect(r1.code).not.toBe(0);
    expect(r1.stderr).toContain('annotations["io.nanokata.vm.rootfs"]: must be "block" or "virtiofs", not "nbd"');
    const sandbox = blockBundle(["true"], (c) => {
      c.annotations["io.kubernetes.cri.container-type"] = "sandbox";
    });
    const r2 = vrt(["run", "--bundle", sandbox.dir, sandbox.id]);
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toContain("a pod sandbox's rootfs cannot be a block image");
    for (const id of [bad.id, sandbox.id]) expect(existsSync(join(stateRoot(), id))).toBe(false);
  }, VM_TIMEOUT);
});

describe("VM mode with Firecracker (the rootfs as its root drive, the channel over vsock)", () => {
  const reason =
    SKIP ??
    (!which("firecracker") && !process.env.NK_FIRECRACKER
      ? "no firecracker binary on PATH (it cannot be installed here: the driver follows the documented API but is untested)"
      : !existsSync("/dev/kvm")
        ? "Firecracker needs /dev/kvm"
        : !existsSync("/dev/vhost-vsock")
          ? "no vsock transport on this host (/dev/vhost-vsock)"
          : null);
  testIf(reason, "a container runs under Firecracker: output and exit code", () => {
    const b = blockBundle(["sh", "-c", "grep ' / ' /proc/mounts; uname -r; exit 5"]);
    const r = vrt(["--debug", "run", "--bundle", b.dir, b.id], { env: { ...VM_ENV, NK_VM_DRIVER: "firecracker" } });
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 ro[ ,]/);
    expect(r.stderr).toContain("rootfs through a block image (ext4): Firecracker has no virtiofs");
  }, VM_TIMEOUT);
});
