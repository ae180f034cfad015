/**
 * Writing to stdout/stderr with plain write(2). Touching process.stdout or
 * process.stderr in Bun sets up a stream object that costs ~20 ms of start-up,
 * more than the rest of a `state` call; a runtime CLI started several times per
 * container cannot afford that.
 */
import { writeSync } from "node:fs";

function writeAll(fd: number, text: string): void {
  let bytes = Buffer.from(text);
  while (bytes.length) {
    try {
      const n = writeSync(fd, bytes);
      bytes = bytes.subarray(n);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") continue; // a non-blocking pipe that is full: try again
      if (code === "EPIPE") return; // the reader went away: nothing more to say
      throw e;
    }
  }
}

export function writeStdout(text: string): void {
  writeAll(1, text);
}

export function writeStderr(text: string): void {
  writeAll(2, text);
}
