/**
 * `npm start`: build examples/busybox (if missing) and run it in the
 * foreground with nano-kata:
 *
 *   bin/nk-runtime run --bundle examples/busybox nk-example-<pid>
 *
 * NK_RUNTIME=/usr/sbin/runc runs the same bundle with another runtime, for
 * comparison. Needs root (namespaces, mounts, cgroups).
 */
import { spawnSync } from "node:child_process";
import { join, relative } from "node:path";
import { buildExampleBundle } from "./example-bundle.ts";
import { repoRoot } from "../test/helpers/rootfs.ts";

function main(): number {
  if (process.getuid?.() !== 0) {
    console.error("npm start runs a real container and needs root: try `sudo npm start`.");
    return 1;
  }
  const root = repoRoot();
  const bundle = relative(root, buildExampleBundle());
  const runtime = process.env.NK_RUNTIME || join(root, "bin", "nk-runtime");
  const shown = runtime.startsWith(`${root}/`) ? relative(root, runtime) : runtime;
  const id = `nk-example-${process.pid}`;
  const args = ["run", "--bundle", bundle, id];
  console.log(`$ ${shown} ${args.join(" ")}`);
  // Run from the repository root so the bundle path above is the one used.
  const r = spawnSync(runtime, args, { stdio: "inherit", cwd: root });
  if (r.error) {
    console.error(`could not start ${runtime}: ${r.error.message}`);
    return 1;
  }
  if (r.status === null) {
    console.error(`${runtime} was killed by ${r.signal}`);
    return 1;
  }
  return r.status;
}

process.exit(main());
