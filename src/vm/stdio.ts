/**
 * One session's stdio on the host side of the channel: the host process uses
 * it for the container's init (session 0), an `exec` client for its process.
 * Output frames go to fds; stdin is read and sent with flow control (at most
 * STDIN_WINDOW unacknowledged bytes); with a terminal, the size of the
 * host-side tty is polled and sent as RESIZE when it changes (a console
 * client resizes its pty master, which raises no signal we could catch
 * unless the slave were our controlling terminal).
 */
import { read, writeSync } from "node:fs";
import { Frame, readU32, STDIN_WINDOW, u32Payload, type FrameType } from "./channel.ts";

export interface SessionStdio {
  /** Read for STDIN frames; undefined: no input (end of input at once). */
  input?: number;
  output: number;
  errors: number;
  /** A tty whose size the guest pty follows. */
  tty?: number;
}

const RESIZE_POLL_MS = 250;

export function writeBytes(fd: number, bytes: Uint8Array): void {
  let at = 0;
  while (at < bytes.length) {
    try {
      at += writeSync(fd, bytes, at);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") continue;
      return; // EPIPE, EBADF, EIO: nobody reads that stream any more
    }
  }
}

export class StdioRelay {
  private inFlight = 0;
  private resume: (() => void) | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  private lastSize = "";
  private stopped = false;

  constructor(
    private readonly send: (type: FrameType, payload?: Uint8Array) => void,
    private readonly io: SessionStdio,
    private readonly windowSize?: (fd: number) => { rows: number; cols: number },
  ) {}

  /** Start relaying input (and following the terminal's size). */
  start(): void {
    if (this.io.tty !== undefined && this.windowSize) {
      this.sendSize();
      this.timer = setInterval(() => this.sendSize(), RESIZE_POLL_MS);
    }
    void this.pumpInput();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.resume?.();
  }

  /** STDOUT, STDERR and STDIN_ACK frames; false for any other type. */
  handle(type: number, payload: Uint8Array): boolean {
    switch (type) {
      case Frame.STDOUT:
        writeBytes(this.io.output, payload);
        return true;
      case Frame.STDERR:
        writeBytes(this.io.errors, payload);
        return true;
      case Frame.STDIN_ACK:
        this.inFlight -= readU32(payload);
        if (this.inFlight < STDIN_WINDOW && this.resume) {
          const r = this.resume;
          this.resume = undefined;
          r();
        }
        return true;
    }
    return false;
  }

  private sendSize(): void {
    const size = this.windowSize!(this.io.tty!);
    const key = `${size.rows}x${size.cols}`;
    if (key === this.lastSize || (size.rows === 0 && size.cols === 0)) return;
    this.lastSize = key;
    this.send(Frame.RESIZE, u32Payload(size.rows, size.cols));
  }

  private async pumpInput(): Promise<void> {
    const fd = this.io.input;
    if (fd === undefined) {
      this.send(Frame.STDIN);
      return;
    }
    const buf = Buffer.alloc(65536);
    for (;;) {
      while (this.inFlight >= STDIN_WINDOW && !this.stopped) await new Promise<void>((r) => (this.resume = r));
      if (this.stopped) return;
      let n = 0;
      try {
        n = await new Promise<number>((resolve, reject) => read(fd, buf, 0, buf.length, null, (err, bytes) => (err ? reject(err) : resolve(bytes))));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EAGAIN") {
          await Bun.sleep(5);
          continue;
        }
        n = 0; // EBADF (no stdin), EIO (the console client closed its master): as good as the end
      }
      if (this.stopped) return;
      this.send(Frame.STDIN, n ? buf.subarray(0, n) : undefined);
      if (!n) return;
      this.inFlight += n;
    }
  }
}
