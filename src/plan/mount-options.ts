/**
 * config.json mount options -> mount(2) flags, propagation flags and the data
 * string, the way runc and crun read them. Unknown options are filesystem data
 * (size=64k, mode=755, gid=5, ...), which the kernel validates.
 */
import { MS } from "./constants.ts";

export interface ParsedMountOptions {
  /** Flags for the mount itself (MS_RDONLY, MS_NOSUID, ...). */
  flags: number;
  /** Flags that can only be applied by a later remount when the mount is a bind. */
  bindRemountFlags: number;
  /** MS_SHARED/MS_SLAVE/... (with MS_REC for the r-forms): a separate mount(2) call. */
  propagation: number;
  bind: boolean;
  recursive: boolean;
  data: string;
  /** Options accepted but not acted on, with why (reported by --trace/--debug). */
  ignored: string[];
  unsupported: string[];
}

const SET: Record<string, number> = {
  ro: MS.RDONLY,
  nosuid: MS.NOSUID,
  nodev: MS.NODEV,
  noexec: MS.NOEXEC,
  sync: MS.SYNCHRONOUS,
  dirsync: MS.DIRSYNC,
  mand: MS.MANDLOCK,
  noatime: MS.NOATIME,
  nodiratime: MS.NODIRATIME,
  relatime: MS.RELATIME,
  strictatime: MS.STRICTATIME,
  nosymfollow: MS.NOSYMFOLLOW,
  lazytime: MS.LAZYTIME,
};

const CLEAR: Record<string, number> = {
  rw: MS.RDONLY,
  suid: MS.NOSUID,
  dev: MS.NODEV,
  exec: MS.NOEXEC,
  async: MS.SYNCHRONOUS,
  nomand: MS.MANDLOCK,
  atime: MS.NOATIME,
  diratime: MS.NODIRATIME,
  norelatime: MS.RELATIME,
  nostrictatime: MS.STRICTATIME,
  nolazytime: MS.LAZYTIME,
  symfollow: MS.NOSYMFOLLOW,
};

const PROPAGATION: Record<string, number> = {
  private: MS.PRIVATE,
  rprivate: MS.PRIVATE | MS.REC,
  shared: MS.SHARED,
  rshared: MS.SHARED | MS.REC,
  slave: MS.SLAVE,
  rslave: MS.SLAVE | MS.REC,
  unbindable: MS.UNBINDABLE,
  runbindable: MS.UNBINDABLE | MS.REC,
};

/** Flags that a bind mount only takes through MS_REMOUNT|MS_BIND. */
const BIND_REMOUNTABLE =
  MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC | MS.NOATIME | MS.NODIRATIME | MS.RELATIME | MS.STRICTATIME | MS.NOSYMFOLLOW;

export function parseMountOptions(options: readonly string[] | undefined, type: string | undefined): ParsedMountOptions {
  let flags = 0;
  let propagation = 0;
  let bind = type === "bind";
  let recursive = false;
  const data: string[] = [];
  const ignored: string[] = [];
  const unsupported: string[] = [];
  for (const option of options ?? []) {
    if (option in SET) flags |= SET[option]!;
    else if (option in CLEAR) flags &= ~CLEAR[option]!;
    else if (option in PROPAGATION) propagation = PROPAGATION[option]!;
    else if (option === "bind") bind = true;
    else if (option === "rbind") {
      bind = true;
      recursive = true;
    } else if (option === "defaults" || option === "remount") {
      // "defaults" means no flags; "remount" makes no sense for a fresh mount (runc ignores both).
    } else if (option === "tmpcopyup") {
      ignored.push("tmpcopyup (copying the image's files into the tmpfs is not implemented)");
    } else if (option === "idmap" || option === "ridmap" || option.startsWith("r") && ["rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec", "rnoatime", "ratime", "rrelatime", "rnorelatime", "rstrictatime", "rnodiratime", "rdiratime", "rnosymfollow", "rsymfollow"].includes(option)) {
      unsupported.push(option);
    } else data.push(option);
  }
  return {
    flags: bind ? flags & ~BIND_REMOUNTABLE : flags,
    bindRemountFlags: bind ? flags & BIND_REMOUNTABLE : 0,
    propagation,
    bind,
    recursive,
    data: data.join(","),
    ignored,
    unsupported,
  };
}
