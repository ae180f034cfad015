/**
 * The long-running shim: serve the task service on the group's socket until
 * Shutdown finds no task left (or SIGTERM). The bundle is the cwd and stderr
 * containerd's "log" fifo; see start.ts for how it is launched.
 */
import { closeSync, mkdirSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import { writeStderr } from "../util/output.ts";
import { Publisher } from "./events.ts";
import { stateRoot, shimSocketAddress, type ShimFlags } from "./flags.ts";
import { TASK_SERVICE } from "./messages.ts";
import { TaskService } from "./service.ts";
import { socketPath, TtrpcServer } from "./ttrpc.ts";

function logLine(level: string, msg: string): void {
  writeStderr(`time="${new Date().toISOString()}" level=${level} msg=${JSON.stringify(msg)} runtime=io.containerd.nanokata.v2\n`);
}

/** Serve on path (default: from the environment or the flags); onReady runs once connections are accepted. */
export async function serve(f: ShimFlags, socket?: string, onReady?: () => void): Promise<void> {
  const path = socket || process.env.NK_SHIM_SOCKET || f.socket || socketPath(shimSocketAddress(f.address, f.namespace, f.id));
  mkdirSync(dirname(path), { recursive: true, mode: 0o711 });
  const log = (msg: string) => logLine("warning", msg);
  const publisher = new Publisher({
    namespace: f.namespace,
    address: f.address,
    ttrpcAddress: process.env.TTRPC_ADDRESS,
    publishBinary: f.publishBinary,
    log,
  });
  const server = new TtrpcServer({
    onError: f.debug ? (ctx, e) => logLine("debug", `${ctx ? ctx.method : "frame"}: ${(e as Error)?.message ?? e}`) : undefined,
    onCall: f.debug ? (ctx, ms) => logLine("debug", `${ctx.method} ${ms.toFixed(1)} ms`) : undefined,
  });
  let exiting = false;
  const exit = async (code: number): Promise<never> => {
    if (!exiting) {
      exiting = true;
      await Promise.race([publisher.flush(), Bun.sleep(5000)]);
      publisher.close();
      await server.close();
    }
    process.exit(code);
  };
  const service = new TaskService({
    namespace: f.namespace,
    stateRoot: stateRoot(f.namespace),
    publisher,
    log,
    debug: f.debug,
    onShutdown: () => void exit(0),
  });
  server.register(TASK_SERVICE, service.handlers());
  await server.listen(path);
  process.on("SIGTERM", () => void exit(0));
  process.on("SIGINT", () => void exit(0));
  process.on("SIGPIPE", () => {});
  if (onReady) onReady();
  else {
    // Tell `start` we are serving; fd 3 is its pipe.
    try {
      writeSync(3, "ready\n");
      closeSync(3);
    } catch {}
  }
  if (f.debug) logLine("debug", `serving ${path} (events: ${publisher.mode})`);
}
