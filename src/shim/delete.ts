/**
 * `delete`: containerd calls it when a shim's connection is gone (the shim
 * exited, or was killed with its container still running) to clean up what
 * the shim would have: kill and delete the container (`nk-runtime delete
 * --force`, in-process), unmount <bundle>/rootfs, remove the dead shim's
 * socket. Prints a DeleteResponse on stdout.
 *
 * After every normal shutdown containerd makes this call too, on the path
 * of `ctr run --rm`: when nothing is left to clean, it loads nothing heavy.
 */
import { existsSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";
import { writeStderr } from "../util/output.ts";
import { SHIM_NAME, stateRoot, type ShimFlags } from "./flags.ts";
import { encodeDeleteResponse } from "./messages.ts";
import { socketPath } from "./ttrpc.ts";

function isMountPoint(path: string): boolean {
  try {
    const escaped = path.replace(/ /g, "\\040");
    return readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .some((line) => line.split(" ")[4] === escaped);
  } catch {
    return false;
  }
}

export async function del(f: ShimFlags): Promise<number> {
  if (!f.id) throw new Error("delete: -id is required");
  const bundle = f.bundle || process.cwd();
  const root = stateRoot(f.namespace || "default");
  let pid = 0;
  if (existsSync(join(root, f.id))) {
    const [{ StateStore }, { deleteContainer }, { Tracer }, { Logger }] = await Promise.all([
      import("../state/store.ts"),
      import("../linux/container.ts"),
      import("../linux/trace.ts"),
      import("../util/log.ts"),
    ]);
    const store = new StateStore(root);
    try {
      pid = store.read(f.id).pid;
    } catch {}
    try {
      await deleteContainer({ store, log: new Logger(undefined, "text", f.debug), tracer: new Tracer(false) }, f.id, { force: true });
    } catch (e) {
      writeStderr(`${SHIM_NAME} delete: ${(e as Error).message}\n`);
    }
  }
  const rootfs = join(bundle, "rootfs");
  if (isMountPoint(rootfs)) {
    try {
      const { unmountAll } = await import("./mount.ts");
      unmountAll(rootfs);
    } catch (e) {
      writeStderr(`${SHIM_NAME} delete: unmount rootfs: ${(e as Error).message}\n`);
    }
  }
  // The dead shim's socket, unless a shim (a pod's) still serves it.
  try {
    const address = readFileSync(join(bundle, "address"), "utf8").trim();
    const path = socketPath(address);
    if (existsSync(path)) {
      const { canConnect } = await import("./start.ts");
      if (!(await canConnect(address))) unlinkSync(path);
    }
  } catch {}
  writeSync(1, encodeDeleteResponse({ pid, exitStatus: 128 + 9, exitedAt: new Date() }));
  return 0;
}
