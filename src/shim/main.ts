/**
 * containerd-shim-nanokata-v2: the containerd runtime v2 shim binary.
 *
 *   <shim> [flags] start    start (or find) the long-running shim for this
 *                           container, print its ttrpc address, exit
 *   <shim> [flags] delete   clean up after a dead shim; print a DeleteResponse
 *   <shim> -v               version
 *   <shim> [flags]          (no action: the long-running shim itself, as
 *                           `start` launches it)
 *
 * Flags (Go flag syntax, as containerd passes them): -namespace, -address
 * (containerd's grpc socket), -publish-binary, -id, -bundle, -debug,
 * -socket. containerd sets the cwd to the bundle for every call and passes
 * TTRPC_ADDRESS (its ttrpc socket, for events) in the environment.
 *
 * The shim serves on a unix socket file /run/containerd/s/<sha256 of
 * address/namespace/group>, as containerd 1.6's own shims do, where the
 * group is the pod sandbox for CRI containers (one shim per pod) and the
 * container id otherwise; "address" in the bundle records it.
 */
import { spawn } from "node:child_process";
import { closeSync, constants as fs, existsSync, mkdirSync, openSync, readFileSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { createHash } from "node:crypto";
import { isatty } from "node:tty";
import { join, resolve } from "node:path";
import { StateStore } from "../state/store.ts";
import { deleteContainer } from "../linux/container.ts";
import { Tracer } from "../linux/trace.ts";
import { Logger } from "../util/log.ts";
import { writeStderr, writeStdout } from "../util/output.ts";
import { Publisher } from "./events.ts";
import { encodeDeleteResponse, TASK_SERVICE } from "./messages.ts";
import { unmountAll } from "./mount.ts";
import { SHIM_VERSION, TaskService } from "./service.ts";
import { socketPath, TtrpcClient, TtrpcServer } from "./ttrpc.ts";
import { setBlocking } from "./sys.ts";

export const SHIM_NAME = "containerd-shim-nanokata-v2";
/** CRI puts a pod's containers in one shim: they share this annotation's value. */
export const GROUP_ANNOTATIONS = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"];

export interface ShimFlags {
  namespace: string;
  address: string;
  publishBinary: string;
  id: string;
  bundle: string;
  socket: string;
  debug: boolean;
  version: boolean;
  action: string;
}

const STRING_FLAGS: Record<string, keyof ShimFlags> = {
  namespace: "namespace",
  address: "address",
  "publish-binary": "publishBinary",
  id: "id",
  bundle: "bundle",
  socket: "socket",
};

export function parseShimFlags(argv: readonly string[]): ShimFlags {
  const f: ShimFlags = { namespace: "", address: "", publishBinary: "", id: "", bundle: "", socket: "", debug: false, version: false, action: "" };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("-") || arg === "-" ) {
      if (!f.action) f.action = arg;
      continue;
    }
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    const name = eq >= 0 ? body.slice(0, eq) : body;
    if (name === "debug" || name === "v" || name === "version") {
      const on = eq < 0 || !/^(false|0)$/.test(body.slice(eq + 1));
      if (name === "debug") f.debug = on;
      else f.version = on;
      continue;
    }
    const key = STRING_FLAGS[name];
    const value = eq >= 0 ? body.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new Error(`flag needs an argument: -${name}`);
    if (key) (f as unknown as Record<string, string>)[key] = value;
    // Unknown flags (newer containerds add some) are accepted and ignored.
  }
  return f;
}

/** Where this namespace's container state lives ($NK_SHIM_ROOT overrides the base). */
export function stateRoot(namespace: string): string {
  return join(process.env.NK_SHIM_ROOT || "/run/containerd/nanokata", namespace);
}

/** The socket for a group: containerd 1.6's scheme, under $NK_SHIM_SOCKET_DIR when set. */
export function shimSocketAddress(containerdAddress: string, namespace: string, group: string): string {
  const dir = process.env.NK_SHIM_SOCKET_DIR || "/run/containerd/s";
  const digest = createHash("sha256").update(join(containerdAddress, namespace, group)).digest("hex");
  return `unix://${join(dir, digest)}`;
}

function groupOf(bundle: string, id: string): string {
  try {
    const spec = JSON.parse(readFileSync(join(bundle, "config.json"), "utf8")) as { annotations?: Record<string, string> };
    for (const key of GROUP_ANNOTATIONS) {
      const v = spec.annotations?.[key];
      if (v) return v;
    }
  } catch {}
  return id;
}

async function canConnect(address: string): Promise<boolean> {
  try {
    const c = await TtrpcClient.connect(address, 1000);
    c.close();
    return true;
  } catch {
    return false;
  }
}

function logLine(level: string, msg: string): void {
  writeStderr(`time="${new Date().toISOString()}" level=${level} msg=${JSON.stringify(msg)} runtime=io.containerd.nanokata.v2\n`);
}

// ---------------------------------------------------------------- start

async function start(f: ShimFlags): Promise<number> {
  if (!f.id) throw new Error("start: -id is required");
  if (!f.namespace) throw new Error("start: -namespace is required");
  const bundle = process.cwd();
  // Runtime options arrive on stdin (an Any); nothing in them is used yet, but read them so the writer is not blocked.
  if (!isatty(0)) {
    try {
      readFileSync(0);
    } catch {}
  }
  const group = groupOf(bundle, f.id);
  const address = shimSocketAddress(f.address, f.namespace, group);
  const path = socketPath(address);
  if (group !== f.id && existsSync(path) && (await canConnect(address))) {
    writeFileSync(join(bundle, "address"), address);
    writeStdout(address);
    return 0;
  }
  if (existsSync(path)) {
    if (await canConnect(address)) throw new Error(`a shim is already serving ${address}`);
    unlinkSync(path);
  }
  // containerd reads the shim's log from the "log" fifo in the bundle.
  let logFd: number | "ignore" = "ignore";
  try {
    logFd = openSync(join(bundle, "log"), fs.O_WRONLY | fs.O_NONBLOCK);
    setBlocking(logFd);
  } catch {}
  const args = process.argv.slice(1).filter((a) => a !== "start");
  const child = spawn(process.execPath, args, {
    cwd: bundle,
    detached: true,
    stdio: ["ignore", "ignore", logFd, "pipe"],
    env: { ...process.env, NK_SHIM_SOCKET: path },
  });
  if (typeof logFd === "number") closeSync(logFd);
  const ready = await new Promise<string>((resolve) => {
    let text = "";
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    const timer = setTimeout(() => resolve("timeout"), 20_000);
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
      resolve(`exited ${code}`);
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
  writeFileSync(join(bundle, "address"), address);
  writeStdout(address);
  return 0;
}

// ---------------------------------------------------------------- serve

async function serve(f: ShimFlags): Promise<void> {
  const path = process.env.NK_SHIM_SOCKET || f.socket || socketPath(shimSocketAddress(f.address, f.namespace, f.id));
  mkdirSync(resolve(path, ".."), { recursive: true, mode: 0o711 });
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
  // Tell `start` we are serving; fd 3 is its pipe.
  try {
    writeSync(3, "ready\n");
    closeSync(3);
  } catch {}
  if (f.debug) logLine("debug", `serving ${path} (events: ${publisher.mode})`);
}

// ---------------------------------------------------------------- delete

async function del(f: ShimFlags): Promise<number> {
  if (!f.id) throw new Error("delete: -id is required");
  const bundle = f.bundle || process.cwd();
  const store = new StateStore(stateRoot(f.namespace || "default"));
  let pid = 0;
  try {
    pid = store.read(f.id).pid;
  } catch {}
  try {
    await deleteContainer({ store, log: new Logger(undefined, "text", f.debug), tracer: new Tracer(false) }, f.id, { force: true });
  } catch (e) {
    writeStderr(`${SHIM_NAME} delete: ${(e as Error).message}\n`);
  }
  try {
    unmountAll(join(bundle, "rootfs"));
  } catch (e) {
    writeStderr(`${SHIM_NAME} delete: unmount rootfs: ${(e as Error).message}\n`);
  }
  // The dead shim's socket, unless another (a pod's shim) still serves it.
  try {
    const address = readFileSync(join(bundle, "address"), "utf8").trim();
    const path = socketPath(address);
    if (existsSync(path) && !(await canConnect(address))) unlinkSync(path);
  } catch {}
  const out = encodeDeleteResponse({ pid, exitStatus: 128 + 9, exitedAt: new Date() });
  writeSync(1, out);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  let f: ShimFlags;
  try {
    f = parseShimFlags(argv);
  } catch (e) {
    writeStderr(`${SHIM_NAME}: ${(e as Error).message}\n`);
    return 2;
  }
  if (f.version) {
    writeStdout(`${SHIM_NAME}:\n  Version:  ${SHIM_VERSION}\n  Runtime:  nano-kata (bun ${Bun.version})\n`);
    return 0;
  }
  try {
    switch (f.action) {
      case "start":
        return await start(f);
      case "delete":
        return await del(f);
      case "":
        await serve(f);
        return -1; // keep running
      default:
        writeStderr(`${SHIM_NAME}: unknown action ${JSON.stringify(f.action)} (start, delete, or -v)\n`);
        return 2;
    }
  } catch (e) {
    writeStderr(`${SHIM_NAME}: ${(e as Error).message}\n`);
    return 1;
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then((code) => {
    if (code >= 0) process.exit(code);
  });
}
