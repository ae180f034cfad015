/**
 * The host <-> guest channel of VM mode (native/agent.h mirrors the numbers;
 * test/unit/vm.test.ts keeps them in step). One byte stream -- a
 * virtio-serial port behind a unix socket for QEMU, a vsock stream for
 * Firecracker -- carries frames:
 *
 *   u32 payload length (LE) | u8 type | u16 session (LE) | u8 reserved (0) | payload
 *
 * A session is one executor run in the guest with its own stdio, sync
 * socket, terminal and exit status. Session 0 is the container's init; the
 * host picks other ids for `exec` processes (and, later, further containers
 * of a pod in the same VM). The agent keeps no other notion of them.
 *
 * The conversation of one session:
 *   guest HELLO "<version> <uptime ms>"      the agent is up (session 0, once)
 *   host  CONSOLE "/run/nk/tty-<n>.sock"      optional: the agent listens there for the
 *                                             pty master the plan's SETUP_TERMINAL sends
 *   host  PLAN <ExecPlan bytes>              computed on the host for the guest
 *   guest SYNCOUT "ok 0 ...\n" "pid 42\n"     the executor's sync lines, verbatim
 *   host  SYNC "go\n"                         answers at WAIT_GO / SYNC points
 *   guest SYNCOUT "ready\n"                   init waits on the exec fifo (create)
 *   host  START "/run/nk/exec.fifo"           `start`: the agent reads the fifo
 *   both  STDIN / STDOUT / STDERR, SIGNAL (pid, signo), STDIN_ACK
 *   host  RESIZE (rows, cols)                 TIOCSWINSZ on the session's pty master
 *   guest EXIT <u32 status>                   code, or 128+signal; the session is over
 *
 * Outside any executor run: host READ "<path>" -> guest FILE <u32 errno><contents>
 * (the guest's cgroup files for `events`/stats), answered on the same session id.
 *
 * A template being made gets WARM (u32 clone flags): the agent runs a
 * throwaway process in such namespaces and answers HELLO "... warm <status>".
 *
 * A VM restored from a template (template.ts) said HELLO long ago, to the host
 * that made the template; its host begins with WAKE (the wall clock, entropy
 * to reseed the guest's CRNG with, the root disk whose cache to drop, the
 * container's MAC for each network card) and the agent answers with a fresh
 * HELLO "<version> <uptime ms> woken".
 *
 * With a terminal, the pty's output comes as STDOUT and STDIN goes to the
 * pty. stdin is flow-controlled: a host keeps at most STDIN_WINDOW bytes per
 * session that the guest has not acknowledged with STDIN_ACK.
 *
 * The host process's control socket (<vm run dir>/control.sock) speaks the
 * same framing: an `exec` client sends session-0 frames that the host process
 * forwards under a session id of its own (and the guest's back as 0), and
 * Control frames that the host process answers itself with a REPLY.
 */

export const Frame = {
  PLAN: 1,
  SYNC: 2,
  STDIN: 3,
  SIGNAL: 4,
  START: 5,
  CONSOLE: 6,
  RESIZE: 7,
  READ: 8,
  WAKE: 9,
  WARM: 10,
  HELLO: 16,
  SYNCOUT: 17,
  STDOUT: 18,
  STDERR: 19,
  EXIT: 20,
  LOG: 21,
  STDIN_ACK: 22,
  FILE: 23,
} as const;
export type FrameType = (typeof Frame)[keyof typeof Frame];

/** Frames between a client and the host process only; never on the guest channel. */
export const Control = {
  /** Freeze the whole VM (QMP stop); REPLY. */
  PAUSE: 64,
  /** QMP cont; REPLY. */
  RESUME: 65,
  /** JSON {"ok":true} or {"error":"...","code":"..."}. */
  REPLY: 66,
  /** u32 rows, u32 cols: the window size of the container init's terminal (RESIZE on session 0); REPLY. */
  RESIZE_INIT: 67,
} as const;
export type ControlType = (typeof Control)[keyof typeof Control];

export const FRAME_HEADER = 8;
export const FRAME_MAX = 16 << 20;
export const STDIN_WINDOW = 256 << 10;
/** Session ids are u16. */
export const SESSION_MAX = 0xffff;

export function encodeFrame(type: FrameType | ControlType, payload: Uint8Array | string = new Uint8Array(0), session = 0): Uint8Array {
  const body = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  if (body.length > FRAME_MAX) throw new Error(`channel frame of ${body.length} bytes exceeds ${FRAME_MAX}`);
  if (!Number.isInteger(session) || session < 0 || session > SESSION_MAX) throw new Error(`channel session ${session} is not a u16`);
  const out = new Uint8Array(FRAME_HEADER + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, body.length, true);
  out[4] = type;
  view.setUint16(5, session, true);
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

/** WAKE's entropy, in bytes (NK_WAKE_ENTROPY): 512 bits, twice what the guest's CRNG needs to count as seeded. */
export const WAKE_ENTROPY_BYTES = 64;

/**
 * WAKE: u64 seconds, u32 nanoseconds of the host's wall clock, the entropy,
 * u8 length + the root disk's path (or nothing), then per network card its
 * template's MAC and the container's, 6 bytes each.
 */
export function wakePayload(nowMs: number, entropy: Uint8Array, rootDevice = "", macs: ReadonlyArray<{ from: string; to: string }> = []): Uint8Array {
  if (entropy.length !== WAKE_ENTROPY_BYTES) throw new Error(`WAKE needs ${WAKE_ENTROPY_BYTES} bytes of entropy, not ${entropy.length}`);
  const device = new TextEncoder().encode(rootDevice);
  if (device.length > 63) throw new Error(`WAKE: the root device path ${rootDevice} is too long`);
  const macBytes = (mac: string) => {
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(mac)) throw new Error(`WAKE: ${JSON.stringify(mac)} is not a MAC address`);
    return mac.split(":").map((h) => parseInt(h, 16));
  };
  const out = new Uint8Array(12 + WAKE_ENTROPY_BYTES + 1 + device.length + 12 * macs.length);
  const view = new DataView(out.buffer);
  const seconds = Math.floor(nowMs / 1000);
  view.setBigUint64(0, BigInt(seconds), true);
  view.setUint32(8, Math.round((nowMs - seconds * 1000) * 1e6), true);
  out.set(entropy, 12);
  let at = 12 + WAKE_ENTROPY_BYTES;
  out[at++] = device.length;
  out.set(device, at);
  at += device.length;
  for (const { from, to } of macs) {
    out.set(macBytes(from), at);
    out.set(macBytes(to), at + 6);
    at += 12;
  }
  return out;
}

/** Splits a byte stream into frames; push() chunks as they arrive. */
export class FrameReader {
  private buf: Uint8Array = new Uint8Array(0);
  constructor(private readonly onFrame: (type: number, payload: Uint8Array, session: number) => void) {}

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
      const view = new DataView(this.buf.buffer, this.buf.byteOffset + at, FRAME_HEADER);
      const len = view.getUint32(0, true);
      if (len > FRAME_MAX) throw new Error(`channel: frame of ${len} bytes exceeds ${FRAME_MAX} (stream out of step)`);
      if (this.buf[at + 7] !== 0) throw new Error(`channel: reserved header byte is ${this.buf[at + 7]} (stream out of step)`);
      if (this.buf.length - at < FRAME_HEADER + len) break;
      const type = this.buf[at + 4]!;
      const session = view.getUint16(5, true);
      // A copy: the caller may keep the payload while the buffer moves on.
      this.onFrame(type, this.buf.slice(at + FRAME_HEADER, at + FRAME_HEADER + len), session);
      at += FRAME_HEADER + len;
    }
    this.buf = at === this.buf.length ? new Uint8Array(0) : this.buf.slice(at);
  }
}

/** Whole lines out of SYNCOUT payloads (the executor's sync lines may arrive cut anywhere). */
export class LineBuffer {
  private rest = "";
  push(chunk: Uint8Array): string[] {
    this.rest += new TextDecoder().decode(chunk);
    const lines = this.rest.split("\n");
    this.rest = lines.pop()!;
    return lines;
  }
}
