/**
 * A private containerd with its CRI plugin on, for the Kubernetes path of
 * the shim (test/e2e/cri.test.ts). It is test/e2e/shim-containerd.ts's
 * daemon plus:
 *
 *   - the shim installed as the README says: a symlink to the launcher in a
 *     directory first on the daemon's PATH;
 *   - the runtime handlers the caller gives (cri.test.ts takes them from
 *     docs/shim.md), plus `runc` and `nanokata-path` (a runtime_type no
 *     binary is named after, with runtime_path pointing at our launcher: it
 *     tells whether this containerd honours runtime_path);
 *   - a sandbox ("pause") image made here: one layer holding busybox-static as
 *     /bin/sleep, entrypoint `sleep 2147483647`, imported with
 *     `ctr -n k8s.io images import` together with the busybox test image, so
 *     nothing is pulled;
 *   - the overlayfs snapshotter (the default, which works on this host);
 *   - CNI pointed at two private directories, empty unless the caller asks
 *     for a pod network. Host-network pods (NamespaceOption network = NODE)
 *     need none: the CRI plugin never calls CNI for them; it only logs at
 *     start that it found no network config, and reports NetworkReady=false,
 *     which does not stop host-network pods. With `podNetwork` the daemon
 *     runs in a network namespace of its own and its pods get a CNI bridge
 *     network there (Debian's containernetworking-plugins), so nothing is
 *     configured in the host's namespace.
 */
import { copyFileSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BUSYBOX_PATH, repoRoot } from "../helpers/rootfs.ts";
import { buildImageArchive, buildOciArchive, startContainerd, type Containerd } from "./shim-containerd.ts";

export const PAUSE_IMAGE = "docker.io/nanokata/pause:test";
/** The containerd namespace the CRI plugin keeps its images and containers in. */
export const CRI_NAMESPACE = "k8s.io";
export const HANDLER_BY_PATH = "nanokata-path";
/** A runtime_type with no containerd-shim-*-v2 binary on any PATH: only runtime_path can make it work. */
export const UNNAMED_RUNTIME_TYPE = "io.containerd.nanokatapath.v2";

export interface CriContainerd extends Containerd {
  /** The CRI plugin serves on containerd's own gRPC socket. */
  criSocket: string;
  /** The CRI plugin's state directory (per-container fifos, sandbox shm mounts). */
  criState: string;
}

/**
 * The CRI section of the daemon's config.toml (containerd 1.6, config
 * version 2): the settings this test needs, then `handlers`, the runtime
 * handler tables (the test takes them from docs/shim.md).
 */
export function criConfigToml(dir: string, handlers: string): string {
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  return [
    `[${cri}]`,
    `  sandbox_image = "${PAUSE_IMAGE}"`,
    "  disable_tcp_service = true",
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    // The sandbox's spec asks for oom_score_adj -998; lowering it needs
    // CAP_SYS_RESOURCE, which this host withholds even from root (runc fails
    // the same way). Restricted, the CRI plugin never asks for less than
    // containerd's own value.
    "  restrict_oom_score_adj = true",
    `[${cri}.containerd]`,
    '  snapshotter = "overlayfs"',
    '  default_runtime_name = "runc"',
    `[${cri}.containerd.runtimes.runc]`,
    '  runtime_type = "io.containerd.runc.v2"',
    // runtime_path with a runtime_type that names no binary: works only if
    // containerd honours runtime_path (1.6 does not).
    `[${cri}.containerd.runtimes.${HANDLER_BY_PATH}]`,
    `  runtime_type = "${UNNAMED_RUNTIME_TYPE}"`,
    `  runtime_path = "${join(repoRoot(), "bin", "containerd-shim-nanokata-v2")}"`,
    `[${cri}.cni]`,
    `  bin_dir = "${join(dir, "cni", "bin")}"`,
    `  conf_dir = "${join(dir, "cni", "net.d")}"`,
    handlers,
  ].join("\n");
}

export const CNI_PLUGINS = "/usr/lib/cni";
export const POD_SUBNET = "10.213.40.0/24";

/** A CNI bridge network (bridge + host-local IPAM, state in the daemon's directory) for pods with their own network. */
function writeBridgeNetwork(dir: string): void {
  for (const plugin of ["bridge", "host-local", "loopback"]) symlinkSync(join(CNI_PLUGINS, plugin), join(dir, "cni", "bin", plugin));
  const network = {
    cniVersion: "0.4.0",
    name: "nk-pods",
    plugins: [
      {
        type: "bridge",
        bridge: "nk-cni0",
        isGateway: true,
        ipMasq: false,
        ipam: { type: "host-local", dataDir: join(dir, "cni", "ipam"), ranges: [[{ subnet: POD_SUBNET }]], routes: [{ dst: "0.0.0.0/0" }] },
      },
    ],
  };
  writeFileSync(join(dir, "cni", "net.d", "10-nk-pods.conflist"), JSON.stringify(network, null, 2));
}

/** The pause image's tree: busybox as /bin/sleep and the directories a runtime mounts onto. */
function pauseRootfs(dir: string): string {
  const root = join(dir, "pause-rootfs");
  for (const d of ["bin", "proc", "sys", "dev", "etc", "tmp"]) mkdirSync(join(root, d), { recursive: true, mode: 0o755 });
  copyFileSync(BUSYBOX_PATH, join(root, "bin", "sleep")); // busybox picks the applet from argv[0]
  return root;
}

/**
 * Start the daemon. `handlers` is TOML with the runtime handler tables under
 * test; the shim is installed as a symlink on the daemon's PATH.
 */
export async function startCriContainerd(handlers: string, opts: { env?: Record<string, string>; podNetwork?: { enter: string[] } } = {}): Promise<CriContainerd> {
  const c = await startContainerd({
    shimLink: true,
    env: opts.env,
    enter: opts.podNetwork?.enter,
    criConfig: (dir) => {
      mkdirSync(join(dir, "cni", "bin"), { recursive: true });
      mkdirSync(join(dir, "cni", "net.d"), { recursive: true });
      if (opts.podNetwork) writeBridgeNetwork(dir);
      return criConfigToml(dir, handlers);
    },
  });
  try {
    const rootfs = pauseRootfs(c.dir);
    const archives = [
      buildOciArchive(c.dir, { rootfs, name: PAUSE_IMAGE, config: { Entrypoint: ["/bin/sleep"], Cmd: ["2147483647"], WorkingDir: "/" }, file: "pause-oci.tar" }),
      buildImageArchive(c.dir), // the busybox test image, IMAGE
    ];
    rmSync(rootfs, { recursive: true, force: true });
    for (const archive of archives) {
      const imp = c.ctr(["-n", CRI_NAMESPACE, "images", "import", archive], { timeoutMs: 120_000 });
      if (imp.code !== 0) throw new Error(`ctr -n ${CRI_NAMESPACE} images import: ${imp.stderr}${imp.stdout}`);
      rmSync(archive);
    }
  } catch (e) {
    await c.stop();
    throw e;
  }
  return { ...c, criSocket: c.address, criState: join(c.dir, "state", "io.containerd.grpc.v1.cri") };
}
