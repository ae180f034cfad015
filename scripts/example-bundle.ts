/**
 * Builds examples/busybox/, a self-contained OCI bundle: rootfs/ (busybox-static
 * plus applet links, from the same builder the tests use) and a config.json
 * that prints a greeting, the container's pid-namespace view and capabilities,
 * and lists /.
 *
 * The bundle is built once (in a temporary directory, renamed into place) and
 * reused while rootfs/bin/busybox and config.json exist. Run directly
 * (`bun scripts/example-bundle.ts [--force]`) or through `npm start`.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { baseConfig } from "../test/helpers/bundle.ts";
import { BUSYBOX_PATH, buildRootfsTree, repoRoot } from "../test/helpers/rootfs.ts";

export const EXAMPLE_ARGS = [
  "sh",
  "-c",
  "echo Hello from nano-kata: $(hostname); cat /proc/self/status | grep -E '^(NSpid|CapEff)'; ls /",
];

export class ExampleError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "ExampleError";
    this.code = code;
  }
}

export function exampleBundleDir(): string {
  return join(repoRoot(), "examples", "busybox");
}

/**
 * Make sure /bin/busybox exists. As root, install Debian's busybox-static
 * (saying so); otherwise explain what to run.
 */
export function ensureBusybox(log: (line: string) => void = (l) => console.log(l)): void {
  if (existsSync(BUSYBOX_PATH)) return;
  if (process.getuid?.() !== 0) {
    throw new ExampleError(
      "BUSYBOX_MISSING",
      `${BUSYBOX_PATH} is missing. Install it as root with: apt-get install -y busybox-static`,
    );
  }
  log("busybox-static is not installed; running: apt-get install -y busybox-static");
  const r = spawnSync("apt-get", ["install", "-y", "busybox-static"], { stdio: "inherit" });
  if (r.status !== 0 || !existsSync(BUSYBOX_PATH)) {
    throw new ExampleError("BUSYBOX_INSTALL_FAILED", "apt-get install -y busybox-static failed (try apt-get update first)");
  }
}

/** The example's config.json: the runtime-spec default shape, relative rootfs, our greeting. */
export function exampleConfig(): Record<string, unknown> {
  const config = baseConfig("nk-example", "rootfs");
  config.process.args = EXAMPLE_ARGS;
  config.process.terminal = false;
  config.hostname = "nano-kata";
  // No cgroupsPath: the runtime picks its default for each container id.
  delete config.linux.cgroupsPath;
  return config;
}

/**
 * examples/demo: a long-running container on the same rootfs, with resource
 * limits, for trying the operational verbs (exec, pause, ps, events, update).
 */
export function demoConfig(): Record<string, unknown> {
  const config = exampleConfig() as ReturnType<typeof baseConfig>;
  config.root.path = "../busybox/rootfs";
  config.process.args = ["sh", "-c", "echo demo running; while :; do sleep 1; done"];
  config.hostname = "nk-demo";
  config.linux.resources = {
    ...(config.linux.resources ?? {}),
    memory: { limit: 64 * 1024 * 1024 },
    pids: { limit: 64 },
  };
  return config;
}

/** Build examples/busybox if it is missing (or when force); returns its path. */
export function buildExampleBundle(opts: { force?: boolean; log?: (line: string) => void } = {}): string {
  const log = opts.log ?? ((l: string) => console.log(l));
  const dir = exampleBundleDir();
  const demoDir = join(dir, "..", "demo");
  const complete = existsSync(join(dir, "config.json")) && existsSync(join(dir, "rootfs", "bin", "busybox"));
  if (!existsSync(join(demoDir, "config.json")) || opts.force) {
    mkdirSync(demoDir, { recursive: true });
    writeFileSync(join(demoDir, "config.json"), `${JSON.stringify(demoConfig(), null, 2)}\n`);
  }
  if (complete && !opts.force) return dir;

  ensureBusybox(log);
  log(`building example bundle in ${dir}`);
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    buildRootfsTree(join(tmp, "rootfs"));
    writeFileSync(join(tmp, "config.json"), `${JSON.stringify(exampleConfig(), null, 2)}\n`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return dir;
}

if (import.meta.main) {
  try {
    console.log(buildExampleBundle({ force: process.argv.includes("--force") }));
  } catch (err) {
    console.error(err instanceof Error ? err.message : String(err));
    process.exit(1);
  }
}
