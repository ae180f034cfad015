/**
 * LZ4 decompression, enough for what Linux's build makes: the "legacy" frame
 * format (magic 0x184C2102, then blocks of u32 compressed size + LZ4 block,
 * each decompressing to at most 8 MiB), which is how an LZ4 bzImage carries
 * vmlinux. Written here so that building the guest kernel needs no lz4 tool.
 */

export const LZ4_LEGACY_MAGIC = 0x184c2102;
const LEGACY_BLOCK_MAX = 8 << 20;

export class Lz4Error extends Error {}

/**
 * Decode one LZ4 block from src[start, end) into dst at dstPos; returns the new
 * dstPos. dst must be large enough (a legacy block decodes to <= 8 MiB).
 */
export function decodeBlock(src: Uint8Array, start: number, end: number, dst: Uint8Array, dstPos: number): number {
  let s = start;
  let d = dstPos;
  while (s < end) {
    const token = src[s++]!;
    let literals = token >>> 4;
    if (literals === 15) {
      let b: number;
      do {
        if (s >= end) throw new Lz4Error("literal length runs past the block");
        b = src[s++]!;
        literals += b;
      } while (b === 255);
    }
    if (s + literals > end) throw new Lz4Error("literals run past the block");
    if (d + literals > dst.length) throw new Lz4Error("output overflows the buffer");
    dst.set(src.subarray(s, s + literals), d);
    s += literals;
    d += literals;
    if (s >= end) break; // the last sequence has literals only
    const offset = src[s]! | (src[s + 1]! << 8);
    s += 2;
    // Legacy blocks are independent: a match never reaches into an earlier block.
    if (offset === 0 || offset > d - dstPos) throw new Lz4Error(`bad match offset ${offset}`);
    let matchLen = (token & 15) + 4;
    if ((token & 15) === 15) {
      let b: number;
      do {
        if (s >= end) throw new Lz4Error("match length runs past the block");
        b = src[s++]!;
        matchLen += b;
      } while (b === 255);
    }
    if (d + matchLen > dst.length) throw new Lz4Error("output overflows the buffer");
    let from = d - offset;
    if (offset >= matchLen) {
      dst.copyWithin(d, from, from + matchLen);
      d += matchLen;
    } else {
      // Overlapping match: a repeating pattern, copied byte by byte.
      for (let i = 0; i < matchLen; i++) dst[d++] = dst[from++]!;
    }
  }
  return d;
}

/**
 * Decompress a legacy-format stream. Decoding stops at the end of the input,
 * or at a block size that cannot be one (the kernel appends the uncompressed
 * size after the last block). `sizeHint` pre-sizes the output.
 */
export function decompressLegacy(src: Uint8Array, sizeHint = 0): Uint8Array {
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  if (src.length < 4 || view.getUint32(0, true) !== LZ4_LEGACY_MAGIC) throw new Lz4Error("not an LZ4 legacy stream (bad magic)");
  let out = new Uint8Array(Math.max(sizeHint, LEGACY_BLOCK_MAX));
  let at = 4;
  let d = 0;
  while (at + 4 <= src.length) {
    const size = view.getUint32(at, true);
    if (size === LZ4_LEGACY_MAGIC) {
      at += 4; // concatenated streams
      continue;
    }
    if (size === 0 || size > src.length - at - 4 || size > LEGACY_BLOCK_MAX + (LEGACY_BLOCK_MAX >>> 8) + 16) break;
    at += 4;
    if (out.length - d < LEGACY_BLOCK_MAX) {
      const bigger = new Uint8Array(Math.max(out.length * 2, d + LEGACY_BLOCK_MAX));
      bigger.set(out.subarray(0, d));
      out = bigger;
    }
    d = decodeBlock(src, at, at + size, out, d);
    at += size;
  }
  if (d === 0) throw new Lz4Error("LZ4 stream holds no block");
  return out.subarray(0, d);
}
