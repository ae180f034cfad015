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
 *
 * Each action's code is imported only when it runs: containerd starts this
 * binary twice per container, and Bun evaluating the runtime's modules costs
 * more than Bun's own start-up.
 */
import { writeStderr, writeStdout } from "../util/output.ts";
import { parseShimFlags, SHIM_NAME, SHIM_VERSION, type ShimFlags } from "./flags.ts";

export { parseShimFlags, shimSocketAddress, stateRoot, GROUP_ANNOTATIONS, SHIM_NAME } from "./flags.ts";

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
      case "start": {
        const mod = await import("./start.ts");
        // The launcher runs us in the background with a pipe on fd 3 (NK_SHIM_IN_PLACE): become the shim.
        if (process.env.NK_SHIM_IN_PLACE === "1") return await mod.startInPlace(f);
        // Otherwise the shim is this same program without "start": Bun and this script (bundle or source).
        return await mod.start(f, [process.execPath, process.argv[1]!]);
      }
      case "delete":
        return await (await import("./delete.ts")).del(f);
      case "":
        await (await import("./serve.ts")).serve(f);
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
