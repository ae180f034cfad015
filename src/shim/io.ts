/**
 * A process's stdio as containerd describes it: fifo paths (ctr, the CRI
 * plugin), "file:///path" log files, or "" for none. The fds are handed to
 * the executor as its stdio, so the container reads and writes the fifos
 * directly: the shim copies no bytes.
 *
 *   stdin   the read end, made blocking. The container sees EOF when the
 *           client closes its write end (containerd's clients open that end
 *           before Create, so it is never missing at the start). CloseIO
 *           cannot force EOF while a client keeps its end open: the shim holds
 *           no write end that it could close (containerd's clients close
 *           theirs as well as calling CloseIO).
 *   stdout  opened O_RDWR (never blocks, whether or not the client has opened
 *   stderr  its end yet); the shim keeps its copy until the process exits, so
 *           output written before the client's reader opened is not lost.
 *
 * Everything is closed when the process exits: the client then sees EOF.
 */
import { closeSync, constants as fs, mkdirSync, openSync, statSync } from "node:fs";
import { dirname } from "node:path";
import type { ExecutorStdio } from "../linux/executor.ts";
import { setBlocking } from "./sys.ts";
import { Code, TtrpcError } from "./ttrpc.ts";

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export class ProcessIO {
  private held: number[] = [];
  private stdinFd = -1;

  private constructor(readonly stdio: ExecutorStdio) {}

  static open(paths: StdioPaths): ProcessIO {
    const opened: number[] = [];
    try {
      const open = (path: string, flags: number, mode?: number): number => {
        const fd = openSync(path, flags, mode);
        opened.push(fd);
        return fd;
      };
      let stdin: number | "ignore" = "ignore";
      if (paths.stdin) {
        const path = localPath(paths.stdin);
        if (isFifo(path)) {
          stdin = open(path, fs.O_RDONLY | fs.O_NONBLOCK);
          setBlocking(stdin);
        } else stdin = open(path, fs.O_RDONLY);
      }
      const output = (uri: string): number | "ignore" => {
        if (!uri) return "ignore";
        const path = localPath(uri);
        if (isFifo(path)) return open(path, fs.O_RDWR);
        mkdirSync(dirname(path), { recursive: true });
        return open(path, fs.O_WRONLY | fs.O_APPEND | fs.O_CREAT, 0o640);
      };
      const stdout = output(paths.stdout);
      // A terminal merges both streams into the pty: stderr goes nowhere of its own.
      const stderr = paths.terminal ? "ignore" : output(paths.stderr);
      const io = new ProcessIO([stdin, stdout, stderr]);
      io.held = opened.filter((fd) => fd !== stdin);
      if (typeof stdin === "number") io.stdinFd = stdin;
      return io;
    } catch (e) {
      for (const fd of opened) closeQuietly(fd);
      if (e instanceof TtrpcError) throw e;
      throw new TtrpcError(Code.INVALID_ARGUMENT, `cannot open the process's stdio: ${(e as Error).message}`);
    }
  }

  /** CloseIO(stdin): the client is done writing; the shim lets go of its copy of the read end. */
  closeStdin(): void {
    if (this.stdinFd >= 0) closeQuietly(this.stdinFd);
    this.stdinFd = -1;
  }

  close(): void {
    this.closeStdin();
    for (const fd of this.held) closeQuietly(fd);
    this.held = [];
  }
}

/** A stdio URI as a path: plain paths and file:// are local; other schemes (binary://) are not served. */
export function localPath(uri: string): string {
  if (uri.startsWith("/")) return uri;
  if (uri.startsWith("file://")) return decodeURIComponent(uri.slice("file://".length).replace(/\?.*$/, ""));
  if (uri.startsWith("fifo://")) return uri.slice("fifo://".length);
  throw new TtrpcError(Code.UNIMPLEMENTED, `stdio ${JSON.stringify(uri)}: only fifo paths and file:// URIs are supported`);
}

function isFifo(path: string): boolean {
  try {
    return statSync(path).isFIFO();
  } catch {
    return false;
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {}
}
