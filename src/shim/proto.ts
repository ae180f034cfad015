/**
 * A small protocol-buffers codec: just what the shim's messages need.
 *
 * Encoding: a Writer appends fields in the order they are written; proto3
 * defaults (0, "", false, empty bytes) are left out, as every proto3 encoder
 * does. Decoding: `decodeFields` splits a message into its fields (field
 * number -> values in wire order) and the typed readers below pick them out;
 * unknown fields are skipped, a malformed message throws ProtoError.
 *
 * Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 (groups,
 * 3 and 4, are refused).
 */

export class ProtoError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtoError";
  }
}

const TEXT_ENCODER = new TextEncoder();
const TEXT_DECODER = new TextDecoder("utf-8", { fatal: false });

export type Varint = number | bigint;

export class Writer {
  private chunks: number[] = [];
  private parts: Uint8Array[] = [];
  private size = 0;

  private flushBytes(): void {
    if (this.chunks.length) {
      this.parts.push(Uint8Array.from(this.chunks));
      this.size += this.chunks.length;
      this.chunks = [];
    }
  }

  /** Raw varint (no tag). Negative numbers are written as 64-bit two's complement (10 bytes). */
  varint(value: Varint): this {
    let v = typeof value === "bigint" ? value : Number.isSafeInteger(value) ? value : Math.trunc(value);
    if (typeof v === "number" && v >= 0 && v < 0x80000000) {
      while (v > 0x7f) {
        this.chunks.push((v & 0x7f) | 0x80);
        v >>>= 7;
      }
      this.chunks.push(v);
      return this;
    }
    // A double at or past 2^64 (v2's "max" as UINT64_MAX rounds up to 2^64) saturates.
    let b = typeof v === "number" && v >= 2 ** 64 ? (1n << 64n) - 1n : BigInt.asUintN(64, BigInt(v));
    while (b > 0x7fn) {
      this.chunks.push(Number(b & 0x7fn) | 0x80);
      b >>= 7n;
    }
    this.chunks.push(Number(b));
    return this;
  }

  tag(field: number, wireType: number): this {
    return this.varint(field * 8 + wireType);
  }

  raw(bytes: Uint8Array): this {
    this.flushBytes();
    this.parts.push(bytes);
    this.size += bytes.length;
    return this;
  }

  // ---- fields (proto3: defaults are not written) ----

  uint(field: number, value: Varint | undefined): this {
    if (value === undefined || value === 0 || value === 0n) return this;
    return this.tag(field, 0).varint(value);
  }

  bool(field: number, value: boolean | undefined): this {
    return value ? this.tag(field, 0).varint(1) : this;
  }

  string(field: number, value: string | undefined): this {
    if (!value) return this;
    return this.bytes(field, TEXT_ENCODER.encode(value));
  }

  bytes(field: number, value: Uint8Array | undefined): this {
    if (!value || value.length === 0) return this;
    return this.tag(field, 2).varint(value.length).raw(value);
  }

  /** An embedded message, written even when empty (presence matters for messages). */
  message(field: number, value: Uint8Array | undefined): this {
    if (value === undefined) return this;
    return this.tag(field, 2).varint(value.length).raw(value);
  }

  fixed64(field: number, value: Varint): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, BigInt(value)), true);
    return this.tag(field, 1).raw(b);
  }

  fixed32(field: number, value: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    return this.tag(field, 5).raw(b);
  }

  finish(): Uint8Array {
    this.flushBytes();
    if (this.parts.length === 1) return this.parts[0]!;
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** One decoded field value: varint/fixed as bigint, length-delimited as bytes. */
export type FieldValue = { wire: 0 | 1 | 5; n: bigint } | { wire: 2; b: Uint8Array };

export class Fields {
  constructor(private readonly map: Map<number, FieldValue[]>) {}

  private last(field: number): FieldValue | undefined {
    const list = this.map.get(field);
    return list ? list[list.length - 1] : undefined;
  }

  has(field: number): boolean {
    return this.map.has(field);
  }

  /** Unsigned varint or fixed value as a JS number (exact up to 2^53). */
  uint(field: number): number {
    const v = this.last(field);
    if (!v) return 0;
    if (v.wire === 2) throw new ProtoError(`field ${field}: expected a number, got bytes`);
    return Number(v.n);
  }

  /** Signed int64/int32 (two's complement varint). */
  int(field: number): number {
    const v = this.last(field);
    if (!v) return 0;
    if (v.wire === 2) throw new ProtoError(`field ${field}: expected a number, got bytes`);
    return Number(BigInt.asIntN(64, v.n));
  }

  bigint(field: number): bigint {
    const v = this.last(field);
    if (!v) return 0n;
    if (v.wire === 2) throw new ProtoError(`field ${field}: expected a number, got bytes`);
    return v.n;
  }

  bool(field: number): boolean {
    return this.uint(field) !== 0;
  }

  bytes(field: number): Uint8Array {
    const v = this.last(field);
    if (!v) return new Uint8Array(0);
    if (v.wire !== 2) throw new ProtoError(`field ${field}: expected bytes, got a number`);
    return v.b;
  }

  string(field: number): string {
    return TEXT_DECODER.decode(this.bytes(field));
  }

  /** An embedded message, or undefined when absent. */
  message(field: number): Fields | undefined {
    if (!this.has(field)) return undefined;
    return decodeFields(this.bytes(field));
  }

  repeatedBytes(field: number): Uint8Array[] {
    return (this.map.get(field) ?? []).map((v) => {
      if (v.wire !== 2) throw new ProtoError(`field ${field}: expected bytes, got a number`);
      return v.b;
    });
  }

  repeatedString(field: number): string[] {
    return this.repeatedBytes(field).map((b) => TEXT_DECODER.decode(b));
  }

  repeatedMessage(field: number): Fields[] {
    return this.repeatedBytes(field).map(decodeFields);
  }

  /** Repeated unsigned numbers, packed or not. */
  repeatedUint(field: number): number[] {
    const out: number[] = [];
    for (const v of this.map.get(field) ?? []) {
      if (v.wire !== 2) {
        out.push(Number(v.n));
        continue;
      }
      const r = new Reader(v.b);
      while (!r.done()) out.push(Number(r.varint()));
    }
    return out;
  }
}

class Reader {
  at = 0;
  constructor(private readonly buf: Uint8Array) {}

  done(): boolean {
    return this.at >= this.buf.length;
  }

  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.at >= this.buf.length) throw new ProtoError("truncated varint");
      const byte = this.buf[this.at++]!;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return BigInt.asUintN(64, result);
      shift += 7n;
    }
    throw new ProtoError("varint longer than 10 bytes");
  }

  take(n: number): Uint8Array {
    if (n < 0 || this.at + n > this.buf.length) throw new ProtoError(`truncated field: ${n} bytes wanted, ${this.buf.length - this.at} left`);
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
}

export function decodeFields(buf: Uint8Array): Fields {
  const map = new Map<number, FieldValue[]>();
  const r = new Reader(buf);
  while (!r.done()) {
    const key = r.varint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (field < 1 || field > 0x1fffffff) throw new ProtoError(`invalid field number ${field}`);
    let value: FieldValue;
    switch (wire) {
      case 0:
        value = { wire: 0, n: r.varint() };
        break;
      case 1: {
        const b = r.take(8);
        value = { wire: 1, n: new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true) };
        break;
      }
      case 2: {
        const len = r.varint();
        if (len > BigInt(buf.length)) throw new ProtoError(`truncated field ${field}: length ${len}`);
        value = { wire: 2, b: r.take(Number(len)) };
        break;
      }
      case 5: {
        const b = r.take(4);
        value = { wire: 5, n: BigInt(new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true)) };
        break;
      }
      default:
        throw new ProtoError(`unsupported wire type ${wire} (field ${field})`);
    }
    const list = map.get(field);
    if (list) list.push(value);
    else map.set(field, [value]);
  }
  return new Fields(map);
}

// ---------------------------------------------------------------- well-known types

/** google.protobuf.Any: type_url = 1, value = 2. */
export interface Any {
  typeUrl: string;
  value: Uint8Array;
}

export function encodeAny(a: Any): Uint8Array {
  return new Writer().string(1, a.typeUrl).bytes(2, a.value).finish();
}

export function decodeAny(f: Fields | undefined): Any | undefined {
  if (!f) return undefined;
  return { typeUrl: f.string(1), value: f.bytes(2) };
}

/** google.protobuf.Timestamp: seconds = 1 (int64), nanos = 2 (int32). */
export function encodeTimestamp(date: Date | undefined): Uint8Array | undefined {
  if (!date) return undefined;
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  const nanos = (ms - seconds * 1000) * 1_000_000;
  return new Writer().uint(1, seconds).uint(2, nanos).finish();
}

export function decodeTimestamp(f: Fields | undefined): Date | undefined {
  if (!f) return undefined;
  return new Date(f.int(1) * 1000 + Math.floor(f.int(2) / 1_000_000));
}

export const EMPTY = new Uint8Array(0);
