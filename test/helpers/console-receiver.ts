/**
 * A one-shot --console-socket receiver for terminal tests (python3 >= 3.9:
 * socket.recv_fds; Bun cannot receive fds over SCM_RIGHTS). It accepts one
 * connection, takes the pty master sent with it exactly as runc sends it,
 * optionally sets the window size (a VM's guest pty must follow it), types
 * `input`, reads until `until` appears (or EOF/EIO, or the timeout), then
 * writes "FDS:<n>\nNAME:<payload>\n<output>" to a file.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { waitUntil } from "./runtime.ts";

const RECEIVER = `
import fcntl, os, select, socket, struct, sys, termios, time
path, out, data, until = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].encode()
rows, cols, accept_s, read_s = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
open(out + ".ready", "w").close()
srv.settimeout(accept_s)
conn, _ = srv.accept()
msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
master = fds[0]
if rows:
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    time.sleep(0.6)
if data:
    os.write(master, data.encode())
buf = b""
deadline = time.time() + read_s
while time.time() < deadline and until not in buf:
    ready, _, _ = select.select([master], [], [], 0.2)
    if not ready:
        continue
    try:
        chunk = os.read(master, 4096)
    except OSError:
        break
    if not chunk:
        break
    buf += chunk
with open(out + ".tmp", "wb") as f:
    f.write(b"FDS:" + str(len(fds)).encode() + b"\\nNAME:" + msg + b"\\n" + buf)
os.rename(out + ".tmp", out)
`;

/** The real interpreter behind a pyenv shim (the shim costs a bash start per call), or null without recv_fds. */
export function pythonForReceiver(): string | null {
  const r = spawnSync("python3", ["-c", "import sys, socket; assert hasattr(socket, 'recv_fds'); print(sys.executable)"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : null;
}

export interface ConsoleReceiver {
  socket: string;
  /** Wait for the receiver to finish; what it got (output with \r removed when asked). */
  result(): { fds: number; name: string; output: string };
}

export interface ReceiverOptions {
  python?: string;
  /** Set the pty's size before typing (0: leave it). */
  size?: { rows: number; cols: number };
  /** Seconds to wait for the runtime's connection, and for `until`. */
  acceptSeconds?: number;
  readSeconds?: number;
  stripCarriageReturns?: boolean;
}

/** Start a receiver in `dir` (the caller's temporary directory). */
export function consoleReceiver(dir: string, input: string, until: string, o: ReceiverOptions = {}): ConsoleReceiver {
  const script = join(dir, "receiver.py");
  writeFileSync(script, RECEIVER);
  const socket = join(dir, "console.sock");
  const out = join(dir, "console.out");
  const readSeconds = o.readSeconds ?? 15;
  const args = [script, socket, out, input, until, String(o.size?.rows ?? 0), String(o.size?.cols ?? 0), String(o.acceptSeconds ?? 20), String(readSeconds)];
  const child = spawn(o.python ?? "python3", args, { stdio: ["ignore", "ignore", "inherit"] });
  child.unref();
  waitUntil("the console socket receiver to listen", () => existsSync(`${out}.ready`), 20_000);
  return {
    socket,
    result() {
      waitUntil("the console socket receiver to finish", () => existsSync(out), (readSeconds + 30) * 1000);
      const [fds, name, ...rest] = readFileSync(out, "latin1").split("\n");
      const output = rest.join("\n");
      return { fds: Number(fds!.slice(4)), name: name!.slice(5), output: o.stripCarriageReturns ? output.replaceAll("\r", "") : output };
    },
  };
}
