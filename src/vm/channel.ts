/**
 * The host <-> guest channel of VM mode (native/agent.h mirrors the numbers;
 * test/unit/vm-channel.test.ts keeps them in step). One byte stream -- a
 * virtio-serial port behind a unix socket for QEMU, a vsock stream for
 * Firecracker -- carries frames:
 *
 *   u32 payload length (LE) | u8 type | 3 zero bytes | payload
 *
 * The conversation for one container:
 *   guest HELLO "<version> <uptime ms>"      the agent is up
 *   host  PLAN <ExecPlan bytes>              computed on the host for the guest
 *   guest SYNCOUT "ok 0 ...\n" "pid 42\n"     the executor's sync lines, verbatim
 *   host  SYNC "go\n"                         answers at WAIT_GO / SYNC points
 *   guest SYNCOUT "ready\n"                   init waits on the exec fifo
 *   host  START "/run/nk/exec.fifo"           `start`: the agent reads the fifo
 *   both  STDIN / STDOUT / STDERR, SIGNAL (pid, signo), STDIN_ACK
 *   guest EXIT <u32 status>                   code, or 128+signal
 *
 * stdin is flow-controlled: the host keeps at most STDIN_WINDOW bytes that
 * the guest has not acknowledged with STDIN_ACK.
 */

export const Frame = {
  PLAN: 1,
  SYNC: 2,
  STDIN: 3,
  SIGNAL: 4,
  START: 5,
  HELLO: 16,
  SYNCOUT: 17,
  STDOUT: 18,
  STDERR: 19,
  EXIT: 20,
  LOG: 21,
  STDIN_ACK: 22,
} as const;
export type FrameType = (typeof Frame)[keyof typeof Frame];

export const FRAME_HEADER = 8;
export const FRAME_MAX = 16 << 20;
export const STDIN_WINDOW = 256 << 10;

export function encodeFrame(type: FrameType, payload: Uint8Array | string = new Uint8Array(0)): Uint8Array {
  const body = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  if (body.length > FRAME_MAX) throw new Error(`channel frame of ${body.length} bytes exceeds ${FRAME_MAX}`);
  const out = new Uint8Array(FRAME_HEADER + body.length);
  new DataView(out.buffer).setUint32(0, body.length, true);
  out[4] = type;
  out.set(body, FRAME_HEADER);
  return out;
}

export function u32Payload(...values: number[]): Uint8Array {
  const out = new Uint8Array(4 * values.length);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setUint32(4 * i, v >>> 0, true));
  return out;
}

export function readU32(payload: Uint8Array, index = 0): number {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(4 * index, true);
}

/** Splits a byte stream into frames; push() chunks as they arrive. */
export class FrameReader {
  private buf: Uint8Array = new Uint8Array(0);
  constructor(private readonly onFrame: (type: number, payload: Uint8Array) => void) {}

  push(chunk: Uint8Array): void {
    if (this.buf.length === 0) this.buf = chunk;
    else {
      const joined = new Uint8Array(this.buf.length + chunk.length);
      joined.set(this.buf);
      joined.set(chunk, this.buf.length);
      this.buf = joined;
    }
    let at = 0;
    while (this.buf.length - at >= FRAME_HEADER) {
      const len = new DataView(this.buf.buffer, this.buf.byteOffset + at, 4).getUint32(0, true);
      if (len > FRAME_MAX) throw new Error(`channel: frame of ${len} bytes exceeds ${FRAME_MAX} (stream out of step)`);
      if (this.buf.length - at < FRAME_HEADER + len) break;
      const type = this.buf[at + 4]!;
      // A copy: the caller may keep the payload while the buffer moves on.
      this.onFrame(type, this.buf.slice(at + FRAME_HEADER, at + FRAME_HEADER + len));
      at += FRAME_HEADER + len;
    }
    this.buf = at === this.buf.length ? new Uint8Array(0) : this.buf.slice(at);
  }
}
