/**
 * The shim's command line and naming rules, kept free of heavy imports: every
 * containerd call starts a process that reads these first.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";

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
  const digest = new Bun.CryptoHasher("sha256").update(join(containerdAddress, namespace, group)).digest("hex");
  return `unix://${join(dir, digest)}`;
}

/** The shim group a bundle belongs to: its pod sandbox, or the container itself. */
export function groupOf(bundle: string, id: string): string {
  try {
    const spec = JSON.parse(readFileSync(join(bundle, "config.json"), "utf8")) as { annotations?: Record<string, string> };
    for (const key of GROUP_ANNOTATIONS) {
      const v = spec.annotations?.[key];
      if (v) return v;
    }
  } catch {}
  return id;
}

/** The shim version, as `-v` and Connect report it. */
export const SHIM_VERSION = "0.1.0";
