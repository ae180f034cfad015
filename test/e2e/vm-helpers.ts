/**
 * What the VM-mode end-to-end suites share: the test guest image (built by
 * the tests with `nk-runtime vm build-image` into <repo>/.cache/vm, cached),
 * why they cannot run, running the runtime against that image, and the
 * "nothing of this container is left" check (no state directory, no qemu,
 * virtiofsd, host process or stand-in that names it).
 */
import { afterAll, afterEach, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureBusyboxRootfs, repoRoot } from "../helpers/rootfs.ts";
import { cleanupAll, deleteForce, describeResult, integrationSkipReason, newBundle, outputPaths, rt, runtimeBinary, runtimeKind, stateRoot } from "../helpers/runtime.ts";
import type { Bundle, BundleOptions } from "../helpers/bundle.ts";
import { cgroupTopLevel, removeNewCgroupParents } from "./daemons.ts";

/** NK_TEST_VM_CACHE: another image directory (to try a kernel without touching the shared cache). */
export const VM_CACHE = process.env.NK_TEST_VM_CACHE ?? join(repoRoot(), ".cache", "vm");
export const VM_ENV = { ...process.env, NK_VM_CACHE: VM_CACHE };
export const VM_TIMEOUT = 180_000;

export function which(name: string): string | undefined {
  const r = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Why VM tests cannot run here (printed), or null. */
export function vmSkipReason(): string | null {
  const base = integrationSkipReason();
  if (base) return base;
  if (runtimeKind() !== "nk") return `VM mode is nano-kata's (runtime under test: ${runtimeKind()})`;
  if (!which("qemu-system-x86_64")) return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)";
  if (!existsSync("/usr/lib/qemu/virtiofsd") && !which("virtiofsd")) return "virtiofsd is not installed (Debian: qemu-system-common)";
  if (!existsSync(join(repoRoot(), "native", "build", "nk-agent"))) return "native/build/nk-agent is missing (npm run build)";
  return null;
}

let imageState: { built: boolean; error: string } | undefined;

/** Build (or confirm) the guest image once per test process; "" when it is there, else why not. */
export function ensureVmImage(): string {
  if (!imageState) {
    const r = rt(["vm", "build-image"], { noRoot: true, env: VM_ENV, timeoutMs: 3_600_000 });
    imageState = { built: r.code === 0, error: r.code === 0 ? "" : describeResult(r) };
    process.stderr.write(`vm build-image:\n${r.stdout}${r.stderr}`);
  }
  return imageState.error;
}

/** Run the runtime with the test image (and --mode vm unless told not to). */
export function vrt(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; mode?: boolean; timeoutMs?: number } = {}) {
  return rt([...(opts.mode === false ? [] : ["--mode", "vm"]), ...args], { env: opts.env ?? VM_ENV, input: opts.input, timeoutMs: opts.timeoutMs ?? VM_TIMEOUT });
}

/** `create` in VM mode, the container's stdio going to the bundle's log files. */
export function vcreate(b: Bundle, flags: string[] = [], env = VM_ENV, id = b.id) {
  const paths = outputPaths(b);
  return rt(["--mode", "vm", "create", "--bundle", b.dir, ...flags, id], { env, stdoutPath: paths.stdout, stderrPath: paths.stderr, timeoutMs: VM_TIMEOUT });
}

/** Processes whose command line names `needle` (a container's state directory, for instance). */
export function processesNaming(needle: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "latin1").replaceAll("\0", " ");
      if (cmd.includes(needle) && Number(pid) !== process.pid) found.push(`${pid}: ${cmd.slice(0, 160)}`);
    } catch {}
  }
  return found;
}

/** Nothing of container `id` may remain: state dir, sockets, qemu, virtiofsd, the host process. */
export async function expectNothingLeft(id: string): Promise<void> {
  const dir = join(stateRoot(), id);
  // The host process stops its VM on its way out; give it a moment.
  for (let i = 0; i < 250 && (existsSync(dir) || processesNaming(dir).length); i++) await Bun.sleep(20);
  expect({ id, stateDir: existsSync(dir) }).toEqual({ id, stateDir: false });
  expect(processesNaming(dir)).toEqual([]);
}

/**
 * A suite's bundle maker: every container made from its bundles is deleted
 * with --force after each test and checked to have left nothing (its own
 * afterEach); `after` runs once those checks passed. At the end of the suite
 * its bundles' directories go (cleanupAll).
 */
export function bundlesCheckedAfterEach(after?: () => void): (opts: BundleOptions) => Bundle {
  const used: string[] = [];
  // The bundles' directories (and the suite's state root) once the suite is done.
  afterAll(() => cleanupAll());
  afterEach(async () => {
    for (const id of used.splice(0)) {
      deleteForce(id);
      await expectNothingLeft(id);
    }
    after?.();
  });
  return (opts) => {
    const b = newBundle(opts);
    used.push(b.id);
    return b;
  };
}

/**
 * podman driving nano-kata from a directory of the test's own (its storage,
 * run root and a wrapper for the runtime), with the busybox rootfs imported
 * as `image` (importBusybox). conmon does not pass podman's environment on to the runtime,
 * so the wrapper sets NK_VM_CACHE (and `env`) and adds `runtimeFlags`.
 * teardown() removes every container and image, checks that no process or
 * mount names the directory, removes it, and removes the cgroup parent
 * podman made (/libpod_parent) if this test made it.
 */
export function podmanOnNanoKata(
  prefix: string,
  opts: { runtimeFlags?: (dir: string) => string[]; env?: (dir: string) => Record<string, string>; /** run podman through this (nsenter into a namespace) */ enter?: string[] } = {},
) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const cgroupsBefore = cgroupTopLevel();
  const wrapper = join(dir, "nk-runtime");
  const env = Object.entries({ NK_VM_CACHE: VM_CACHE, ...opts.env?.(dir) }).map(([k, v]) => `${k}='${v}'`);
  const flags = (opts.runtimeFlags?.(dir) ?? []).map((f) => `'${f}'`);
  writeFileSync(wrapper, `#!/bin/sh\n${env.join(" ")} exec '${runtimeBinary()}' ${flags.join(" ")} "$@"\n`, { mode: 0o755 });
  const podman = (args: string[], input?: string) =>
    spawnSync(
      opts.enter?.[0] ?? "podman",
      [...(opts.enter ? [...opts.enter.slice(1), "podman"] : []), "--root", join(dir, "root"), "--runroot", join(dir, "runroot"), "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", wrapper, ...args],
      { encoding: "utf8", input, timeout: VM_TIMEOUT, killSignal: "SIGKILL" },
    );
  const image = "localhost/nkt-vm-busybox:latest";
  return {
    dir,
    podman,
    image,
    importBusybox(): void {
      const tar = join(dir, "rootfs.tar");
      expect(spawnSync("tar", ["--numeric-owner", "-C", ensureBusyboxRootfs(), "-cf", tar, "."]).status).toBe(0);
      expect(podman(["import", tar, image]).status).toBe(0);
    },
    teardown(): void {
      podman(["rm", "--all", "--force", "--time", "0"]);
      podman(["rmi", "--all", "--force"]);
      expect(processesNaming(dir)).toEqual([]);
      expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(dir);
      rmSync(dir, { recursive: true, force: true });
      expect(removeNewCgroupParents(cgroupsBefore, ["libpod_parent"])).toEqual([]);
    },
  };
}
