/**
 * A minimal root filesystem for tests and the example bundle, built from
 * Debian's busybox-static: one static binary plus a symlink per applet, the
 * standard top-level directories and just enough of /etc for `id` and
 * `hostname` to print names.
 *
 * The tree is built once and cached under <repo>/.cache/rootfs-busybox/rootfs.
 * A stamp file beside it records the size and mtime of the /bin/busybox it was
 * built from, so an upgraded busybox causes a rebuild. The whole
 * .cache/rootfs-busybox directory (tree + stamp) is built in a temporary
 * directory and renamed into place, so concurrent test files never see a half
 * built tree: whoever renames first wins and the others throw their copy away.
 */
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const BUSYBOX_PATH = "/bin/busybox";

/** The uid/gid of the unprivileged account written into the test rootfs' /etc/passwd. */
export const ROOTFS_USER = { name: "user", uid: 1000, gid: 1000 } as const;

/** Hostname written to /etc/hostname (the container's UTS hostname comes from config.json, not from here). */
export const ROOTFS_HOSTNAME = "nano-kata";

/** Directories that tests use as mount points; pre-created so runtimes never need to create them in the shared read-only tree. */
export const ROOTFS_MOUNT_POINTS = ["mnt/ro", "mnt/rw", "mnt/tmpfs", "mnt/extra"] as const;

export class RootfsError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "RootfsError";
    this.code = code;
  }
}

/** Absolute path of the repository root (test/helpers/../..). */
export function repoRoot(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
}

function busyboxStamp(): string {
  const st = statSync(BUSYBOX_PATH);
  return JSON.stringify({ source: BUSYBOX_PATH, size: st.size, mtimeMs: Math.trunc(st.mtimeMs), layout: 2 });
}

function readStamp(cacheDir: string): string | null {
  try {
    return readFileSync(join(cacheDir, "stamp.json"), "utf8");
  } catch {
    return null;
  }
}

/**
 * Return the absolute path of the cached busybox rootfs, building it first if it
 * is missing or was built from a different /bin/busybox.
 */
export function ensureBusyboxRootfs(): string {
  if (!existsSync(BUSYBOX_PATH)) {
    throw new RootfsError(
      "BUSYBOX_MISSING",
      `${BUSYBOX_PATH} not found: install it with \`apt-get install -y busybox-static\``,
    );
  }
  const cacheDir = join(repoRoot(), ".cache", "rootfs-busybox");
  const rootfs = join(cacheDir, "rootfs");
  const want = busyboxStamp();
  if (readStamp(cacheDir) === want && existsSync(join(rootfs, "bin", "busybox"))) return rootfs;

  mkdirSync(dirname(cacheDir), { recursive: true });
  const tmp = `${cacheDir}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
  try {
    buildRootfsTree(join(tmp, "rootfs"));
    writeFileSync(join(tmp, "stamp.json"), want);
    if (existsSync(cacheDir)) {
      // Stale (different busybox) or incomplete: move it aside first so the
      // rename below is a single atomic step. Another process may race us
      // here; losing the race is fine as long as someone's fresh tree wins.
      if (readStamp(cacheDir) === want) return rootfs;
      const old = `${cacheDir}.old-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
      try {
        renameSync(cacheDir, old);
        rmSync(old, { recursive: true, force: true });
      } catch {
        /* someone else moved it */
      }
    }
    try {
      renameSync(tmp, cacheDir);
    } catch (err) {
      // EEXIST/ENOTEMPTY: a concurrent builder renamed first. Accept theirs if it is fresh.
      if (readStamp(cacheDir) !== want) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return rootfs;
}

/** Build a busybox rootfs at `dest` (which must not exist). Exported for the example bundle. */
export function buildRootfsTree(dest: string): void {
  const listing = spawnSync(BUSYBOX_PATH, ["--list"], { encoding: "utf8" });
  if (listing.status !== 0) {
    throw new RootfsError("BUSYBOX_LIST_FAILED", `${BUSYBOX_PATH} --list failed: ${listing.stderr}`);
  }
  const applets = listing.stdout.split("\n").map((s) => s.trim()).filter((s) => s !== "" && s !== "busybox");

  mkdirSync(dest, { recursive: true, mode: 0o755 });
  chmodSync(dest, 0o755);
  for (const dir of ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "etc", "root", "var", "run", "home/user", ...ROOTFS_MOUNT_POINTS]) {
    mkdirSync(join(dest, dir), { recursive: true, mode: 0o755 });
  }
  mkdirSync(join(dest, "tmp"));
  chmodSync(join(dest, "tmp"), 0o1777);
  chmodSync(join(dest, "root"), 0o700);

  copyFileSync(BUSYBOX_PATH, join(dest, "bin", "busybox"));
  chmodSync(join(dest, "bin", "busybox"), 0o755);
  for (const applet of applets) {
    // Applet names are plain words; anything with a slash would escape bin/.
    if (applet.includes("/")) continue;
    symlinkSync("busybox", join(dest, "bin", applet));
  }

  writeFileSync(
    join(dest, "etc", "passwd"),
    [
      "root:x:0:0:root:/root:/bin/sh",
      `${ROOTFS_USER.name}:x:${ROOTFS_USER.uid}:${ROOTFS_USER.gid}:${ROOTFS_USER.name}:/home/user:/bin/sh`,
      "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
      "",
    ].join("\n"),
  );
  writeFileSync(
    join(dest, "etc", "group"),
    ["root:x:0:", `${ROOTFS_USER.name}:x:${ROOTFS_USER.gid}:`, "nogroup:x:65534:", ""].join("\n"),
  );
  writeFileSync(join(dest, "etc", "hostname"), `${ROOTFS_HOSTNAME}\n`);
  writeFileSync(join(dest, "etc", "hosts"), "127.0.0.1\tlocalhost\n");
  writeFileSync(join(dest, "etc", "resolv.conf"), "");
}
