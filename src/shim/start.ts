/**
 * `start`: find or launch the long-running shim for this container and
 * print its address. Runs with the bundle as cwd; containerd reads stdout
 * (and stderr: it takes the combined output) as the address, so nothing else
 * may be printed on success.
 *
 * Two ways to get there:
 *   in place  (bin/containerd-shim-nanokata-v2 does this) the launcher runs
 *             Bun once, in the background, with fd 3 a pipe it reads the
 *             address from: this process checks, leaves containerd's
 *             session, starts serving, writes "address", sends the address
 *             down fd 3 and stays on as the shim. One Bun start instead of
 *             two on every container's critical path.
 *   spawned   (`bun src/shim/main.ts start`, or the launcher without sh
 *             job control) a start process launches the shim detached and
 *             waits for its "ready" on a pipe.
 */
import { spawn } from "node:child_process";
import { closeSync, constants as fs, existsSync, openSync, readFileSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { isatty } from "node:tty";
import { join } from "node:path";
import { writeStdout } from "../util/output.ts";
import { groupOf, shimSocketAddress, type ShimFlags } from "./flags.ts";
import { dup2, setBlocking, setsid } from "./sys.ts";
import { socketPath, TtrpcClient } from "./ttrpc.ts";

export async function canConnect(address: string): Promise<boolean> {
  try {
    const c = await TtrpcClient.connect(address, 1000);
    c.close();
    return true;
  } catch {
    return false;
  }
}

interface Plan {
  bundle: string;
  address: string;
  path: string;
  /** A shim of the same group already serves this address. */
  reuse: boolean;
}

async function plan(f: ShimFlags): Promise<Plan> {
  if (!f.id) throw new Error("start: -id is required");
  if (!f.namespace) throw new Error("start: -namespace is required");
  const bundle = process.cwd();
  const group = groupOf(bundle, f.id);
  const address = shimSocketAddress(f.address, f.namespace, group);
  const path = socketPath(address);
  if (existsSync(path)) {
    if (await canConnect(address)) {
      if (group === f.id) throw new Error(`a shim is already serving ${address}`);
      // Another container of the pod: its shim serves this one too.
      return { bundle, address, path, reuse: true };
    }
    unlinkSync(path);
  }
  return { bundle, address, path, reuse: false };
}

/** containerd reads the shim's log from the "log" fifo in the bundle (-1 when there is none). */
function openLog(bundle: string): number {
  try {
    const fd = openSync(join(bundle, "log"), fs.O_WRONLY | fs.O_NONBLOCK);
    setBlocking(fd);
    return fd;
  } catch {
    return -1;
  }
}

/** In place: fd 3 is the launcher's pipe; on success this process stays on as the shim. */
export async function startInPlace(f: ShimFlags): Promise<number> {
  const say = (text: string) => {
    try {
      writeSync(3, text + "\n");
      closeSync(3);
    } catch {}
  };
  let p: Plan;
  try {
    setsid();
    p = await plan(f);
  } catch (e) {
    say(`error: ${(e as Error).message}`);
    return 1;
  }
  if (p.reuse) {
    writeFileSync(join(p.bundle, "address"), p.address);
    say(p.address);
    return 0;
  }
  const log = openLog(p.bundle);
  if (log >= 0) {
    dup2(log, 2);
    closeSync(log);
  }
  try {
    const { serve } = await import("./serve.ts");
    await serve(f, p.path, () => {
      writeFileSync(join(p.bundle, "address"), p.address);
      say(p.address);
    });
  } catch (e) {
    say(`error: ${(e as Error).message}`);
    return 1;
  }
  return -1; // serving
}

/** Spawned: launch the shim (this program without "start") detached and wait for its "ready". */
export async function start(f: ShimFlags, entry: string[]): Promise<number> {
  // Runtime options arrive on stdin (an Any); none is used yet, but read them so the writer is not blocked.
  if (!isatty(0)) {
    try {
      readFileSync(0);
    } catch {}
  }
  const p = await plan(f);
  if (p.reuse) {
    writeFileSync(join(p.bundle, "address"), p.address);
    writeStdout(p.address);
    return 0;
  }
  const log = openLog(p.bundle);
  const child = spawn(entry[0]!, [...entry.slice(1), ...process.argv.slice(2).filter((a) => a !== "start")], {
    cwd: p.bundle,
    detached: true,
    stdio: ["ignore", "ignore", log >= 0 ? log : "ignore", "pipe"],
    env: { ...process.env, NK_SHIM_SOCKET: p.path },
  });
  if (log >= 0) closeSync(log);
  const ready = await new Promise<string>((resolve) => {
    let text = "";
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    const timer = setTimeout(() => resolve("no answer in 20 s"), 20_000);
    pipe.on("data", (b: Buffer) => {
      text += b.toString();
      if (text.includes("\n")) {
        clearTimeout(timer);
        resolve(text.trim());
      }
    });
    pipe.on("error", () => {});
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve(`it exited with status ${code} (see containerd's log)`);
    });
  });
  if (ready !== "ready") {
    try {
      child.kill("SIGKILL");
    } catch {}
    throw new Error(`the shim did not start: ${ready}`);
  }
  (child.stdio[3] as unknown as { destroy(): void }).destroy();
  child.unref();
  writeFileSync(join(p.bundle, "address"), p.address);
  writeStdout(p.address);
  return 0;
}
