/**
 * The guest kernel: Debian ships an x86 bzImage whose payload is vmlinux
 * compressed with LZ4. QEMU's microvm (and Firecracker) boot an uncompressed
 * ELF vmlinux directly through its PVH entry point, which skips the bzImage's
 * own decompression (~100 ms under TCG), so the build extracts it here.
 *
 * bzImage layout (Documentation/arch/x86/boot.rst): the real-mode setup of
 * (setup_sects + 1) * 512 bytes, then the protected-mode part, in which the
 * header fields payload_offset (0x248) and payload_length (0x24c) locate the
 * compressed vmlinux.
 */
import { decompressLegacy, LZ4_LEGACY_MAGIC } from "./lz4.ts";

export class KernelImageError extends Error {}

const GZIP_MAGIC = 0x8b1f;

export function bzImagePayload(image: Uint8Array): Uint8Array {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.length < 0x250 || view.getUint32(0x202, true) !== 0x53726448 /* "HdrS" */) {
    throw new KernelImageError("not an x86 bzImage (no HdrS boot header)");
  }
  const setupSects = image[0x1f1] || 4;
  const protectedStart = (setupSects + 1) * 512;
  const offset = view.getUint32(0x248, true);
  const length = view.getUint32(0x24c, true);
  const start = protectedStart + offset;
  if (!offset || !length || start + length > image.length) throw new KernelImageError("bzImage payload_offset/payload_length point outside the file");
  return image.subarray(start, start + length);
}

/** bzImage -> ELF vmlinux (LZ4 payloads; other compressions are named in the error). */
export function extractVmlinux(image: Uint8Array): Uint8Array {
  const payload = bzImagePayload(image);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (view.getUint32(0, true) !== LZ4_LEGACY_MAGIC) {
    const kind = view.getUint16(0, true) === GZIP_MAGIC ? "gzip" : `magic 0x${view.getUint32(0, true).toString(16)}`;
    throw new KernelImageError(`bzImage payload is ${kind}, not LZ4: only LZ4 kernels (Debian's) are supported`);
  }
  // The kernel's build appends the uncompressed size as a u32 after the stream.
  const sizeHint = view.getUint32(payload.length - 4, true);
  const elf = decompressLegacy(payload, sizeHint < 1 << 30 ? sizeHint : 0);
  if (elf[0] !== 0x7f || elf[1] !== 0x45 || elf[2] !== 0x4c || elf[3] !== 0x46) throw new KernelImageError("decompressed payload is not an ELF file");
  if (!hasPvhNote(elf)) throw new KernelImageError("vmlinux has no PVH entry note (the kernel needs CONFIG_PVH=y)");
  return elf;
}

/** Does this ELF64 carry XEN_ELFNOTE_PHYS32_ENTRY (type 18, name "Xen"), the PVH entry point? */
export function hasPvhNote(elf: Uint8Array): boolean {
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  if (elf[4] !== 2) return false; // ELFCLASS64 only
  const phoff = Number(view.getBigUint64(0x20, true));
  const phentsize = view.getUint16(0x36, true);
  const phnum = view.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (view.getUint32(ph, true) !== 4 /* PT_NOTE */) continue;
    const off = Number(view.getBigUint64(ph + 8, true));
    const size = Number(view.getBigUint64(ph + 32, true));
    let at = off;
    while (at + 12 <= off + size) {
      const namesz = view.getUint32(at, true);
      const descsz = view.getUint32(at + 4, true);
      const type = view.getUint32(at + 8, true);
      const name = new TextDecoder().decode(elf.subarray(at + 12, at + 12 + namesz)).replace(/\0+$/, "");
      if (name === "Xen" && type === 18) return true;
      at += 12 + align4(namesz) + align4(descsz);
    }
  }
  return false;
}

const align4 = (n: number) => (n + 3) & ~3;
