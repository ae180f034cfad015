/**
 * The container's rootfs as a block image, for a VM that cannot read a
 * virtiofs share: Firecracker (it has no virtiofs), a host without
 * virtiofsd, or a container that asks for it (io.nanokata.vm.rootfs=block).
 *
 * The image is made without mounting anything on the host: `mkfs.ext4 -d`
 * (e2fsprogs) copies the rootfs tree into a fresh file system in a regular
 * file in the container's state directory, which goes with the state
 * directory at `delete`. The guest mounts it as the container's root (the
 * plan's MOUNT_IN_ROOT, plan.ts). The trade-off, documented: writes stay in
 * the image -- the host's rootfs never sees them -- and bind mounts from the
 * spec cannot reach the guest (there is no share to carry them), so they are
 * refused by name.
 */
import { spawn } from "node:child_process";
import { accessSync, constants, existsSync, lstatSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Spec } from "../spec/types.ts";
import { parseMountOptions } from "../plan/mount-options.ts";
import { VmError } from "./driver.ts";

/** Per container: "block" (an ext4 image) or "virtiofs" (the default where virtiofsd is installed). */
export const ROOTFS_ANNOTATION = "io.nanokata.vm.rootfs";

export type RootfsSharing = "block" | "virtiofs";

/** The image's name in the container's state directory. */
export const ROOTFS_IMAGE_NAME = "rootfs.img";

/** The guest's block device: the image is the VM's only disk, so the first virtio-blk device. */
export const GUEST_ROOT_DEVICE = "/dev/vda";

/**
 * How the rootfs reaches the guest, and why (for --debug). Firecracker and
 * a host without virtiofsd leave only the block image; otherwise the
 * annotation decides, virtiofs by default.
 */
export function selectRootfsSharing(
  spec: Spec,
  host: { driver: "qemu" | "firecracker"; virtiofsd: boolean },
): { sharing: RootfsSharing; reason: string } {
  const field = `annotations["${ROOTFS_ANNOTATION}"]`;
  const asked = spec.annotations?.[ROOTFS_ANNOTATION];
  if (asked !== undefined && asked !== "block" && asked !== "virtiofs") {
    throw new VmError("bad-rootfs-sharing", `${field}: must be "block" or "virtiofs", not ${JSON.stringify(asked)}`);
  }
  if (host.driver === "firecracker") {
    if (asked === "virtiofs") throw new VmError("vm-unsupported", `${field}: Firecracker has no virtiofs; the rootfs can only be a block image there`);
    return { sharing: "block", reason: "Firecracker has no virtiofs" };
  }
  if (asked === "block") return { sharing: "block", reason: `${field} = "block"` };
  if (!host.virtiofsd) {
    if (asked === "virtiofs") throw new VmError("no-virtiofsd", `${field}: virtiofsd not found (Debian's qemu-system-common has /usr/lib/qemu/virtiofsd; or set NK_VIRTIOFSD)`);
    return { sharing: "block", reason: "no virtiofsd installed (set NK_VIRTIOFSD, or install qemu-system-common)" };
  }
  return { sharing: "virtiofs", reason: asked ? `${field} = "virtiofs"` : "the default" };
}

/**
 * What a block rootfs cannot carry: a bind mount's source is a host path,
 * and without a share nothing brings it into the guest. The kernel file
 * systems and tmpfs the guest makes itself (proc, sysfs, devpts, mqueue,
 * cgroup, tmpfs) are fine. Refused with the field's name, before anything
 * is made. A pod needs virtiofs too: its further containers' rootfs join the
 * sandbox's running share (pod.ts).
 */
export function checkBlockRootfs(spec: Spec, why: string): void {
  (spec.mounts ?? []).forEach((m, i) => {
    if (parseMountOptions(m.options, m.type).bind) {
      throw new VmError(
        "vm-unsupported",
        `mounts[${i}] (${m.destination}): a bind mount cannot reach a VM whose rootfs is a block image (${why}); ` +
          `bind mounts need virtiofs (${ROOTFS_ANNOTATION}=virtiofs, with virtiofsd installed)`,
      );
    }
  });
  if (spec.annotations?.["io.kubernetes.cri.container-type"] === "sandbox") {
    throw new VmError("vm-unsupported", `a pod sandbox's rootfs cannot be a block image (${why}): the pod's containers join its VM through virtiofs`);
  }
}

/** Bytes in use (allocated blocks, each hard-linked file once) and the number of inodes under dir. */
export function measureTree(dir: string): { bytes: number; inodes: number } {
  let bytes = 0;
  let inodes = 0;
  const seen = new Set<string>();
  const walk = (path: string) => {
    const st = lstatSync(path, { bigint: false });
    if (st.nlink > 1 && !st.isDirectory()) {
      const key = `${st.dev}:${st.ino}`;
      if (seen.has(key)) return;
      seen.add(key);
    }
    inodes++;
    bytes += st.blocks * 512;
    if (st.isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
  };
  walk(dir);
  return { bytes, inodes };
}

const MIB = 1 << 20;
/** Room for the container's own writes, on top of what the rootfs holds. */
export const IMAGE_FREE_MIB = 256;
/** The smallest image: ext4's metadata and a little room, whatever the rootfs. */
export const IMAGE_FLOOR_MIB = 256;

/**
 * The image's size: the rootfs's usage plus an eighth for ext4's metadata
 * (inode tables, directories' blocks) plus IMAGE_FREE_MIB, at least
 * IMAGE_FLOOR_MIB, in whole MiB. The file is sparse: mkfs writes only
 * metadata and the copied files, so the free room costs no disk until used.
 * Inodes: the tree's count with half again for the container's new files,
 * and at least 16384.
 */
export function imageGeometry(usage: { bytes: number; inodes: number }): { sizeMiB: number; inodes: number } {
  const sizeMiB = Math.max(IMAGE_FLOOR_MIB, Math.ceil((usage.bytes + usage.bytes / 8) / MIB) + IMAGE_FREE_MIB);
  return { sizeMiB, inodes: Math.max(16384, Math.ceil(usage.inodes * 1.5)) };
}

/**
 * mkfs.ext4's command line, pure (unit-tested). -d copies the tree with its
 * owners, modes, devices, symlinks and hard links; -F because the target is
 * a regular file; -m 0: no blocks reserved for root (the container is the
 * file system's only user); no journal: the image lives as long as the
 * container and no longer, so there is nothing to recover after a crash, and
 * it saves the journal's writes in the guest.
 */
export function mkfsArgs(rootfs: string, image: string, geometry: { sizeMiB: number; inodes: number }): string[] {
  return ["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-N", String(geometry.inodes), "-L", "nk-rootfs", "-d", rootfs, image, `${geometry.sizeMiB}M`];
}

export function mkfsPath(): string | undefined {
  if (process.env.NK_MKFS_EXT4) return existsSync(process.env.NK_MKFS_EXT4) ? process.env.NK_MKFS_EXT4 : undefined;
  // Debian keeps it in /usr/sbin (/sbin), which a non-login PATH may lack.
  const dirs = [...(process.env.PATH ?? "").split(":").filter(Boolean), "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    try {
      accessSync(`${dir}/mke2fs`, constants.X_OK);
      accessSync(`${dir}/mkfs.ext4`, constants.X_OK);
      return `${dir}/mkfs.ext4`;
    } catch {}
  }
  return undefined;
}

/** Make the image; on failure nothing is left at `image`. Returns its geometry and how long it took. */
export async function makeRootfsImage(rootfs: string, image: string): Promise<{ sizeMiB: number; inodes: number; usedBytes: number; ms: number }> {
  const mkfs = mkfsPath();
  if (!mkfs) throw new VmError("no-mkfs", "a block rootfs needs mkfs.ext4 (apt-get install e2fsprogs, or set NK_MKFS_EXT4)");
  const started = Date.now();
  const usage = measureTree(rootfs);
  const geometry = imageGeometry(usage);
  const out = await new Promise<{ code: number; stderr: string }>((resolve) => {
    const child = spawn(mkfs, mkfsArgs(rootfs, image, geometry), { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stdout!.on("data", (b: Buffer) => (stderr += b.toString("utf8")));
    child.stderr!.on("data", (b: Buffer) => (stderr += b.toString("utf8")));
    child.on("error", (e) => resolve({ code: 127, stderr: e.message }));
    child.on("exit", (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stderr }));
  });
  if (out.code !== 0) {
    rmSync(image, { force: true });
    throw new VmError("rootfs-image-failed", `mkfs.ext4 -d ${rootfs} (${geometry.sizeMiB} MiB) failed (${out.code}): ${out.stderr.trim().slice(-2000) || "(no message)"}`);
  }
  return { ...geometry, usedBytes: usage.bytes, ms: Date.now() - started };
}
