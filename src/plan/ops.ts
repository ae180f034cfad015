/**
 * The ExecPlan wire contract between TypeScript (which decides) and the C
 * executor in native/ (which carries out). native/ops.h mirrors the codes;
 * test/unit/ops-contract.test.ts keeps the two in step.
 *
 * Wire format (all integers little-endian):
 *   "NKP1"                      magic
 *   u32 opCount
 *   opCount x {
 *     u16 code                  one of OpCode
 *     u8  section               Section.Pre | Section.Parent | Section.Init
 *     u8  reserved (0)
 *     u32 argc
 *     argc x { u32 len; len bytes }   arguments; numbers are ASCII decimal
 *                                      (octal where noted, hex for cap masks)
 *   }
 *
 * The executor reads the whole plan from its sync socket (prefixed by a u32
 * byte length), runs the Pre ops in order, then CLONE splits it in two: the
 * parent (stage0) runs the Parent ops, the child (the container's init) runs
 * the Init ops. Every op reports one line on the sync socket:
 *   "ok <index> <detail>\n"            done (detail may be empty)
 *   "err <index> <errno> <message>\n"  failed; the process then exits 1
 * plus "pid <n>\n" (SEND_PID) and "ready\n" (REPORT_READY). <index> is the
 * op's position in the whole plan, which TypeScript maps back to the
 * config.json field the op came from (this is what --trace prints).
 */

export const Section = { Pre: 0, Parent: 1, Init: 2 } as const;
export type Section = (typeof Section)[keyof typeof Section];

export const OpCode = {
  // ---- valid in any section ----
  /** SETNS(path, nsName): open path, setns(fd, 0). nsName is for messages only. */
  SETNS: 1,
  /** UNSHARE(flags): unshare(flags). */
  UNSHARE: 2,
  /** WRITE_FILE(path, content): open(O_WRONLY|O_CLOEXEC|O_NOFOLLOW), write all. */
  WRITE_FILE: 3,

  // ---- Pre (stage0 before clone) ----
  /** FIFO_PREPARE(dir, name): mkfifo(dir/name, 0622) (must not exist); keep an O_PATH dirfd of dir for WAIT_FIFO. */
  FIFO_PREPARE: 4,
  /** CONNECT_CONSOLE(socketPath): connect a unix stream socket; kept for SETUP_TERMINAL "socket". */
  CONNECT_CONSOLE: 5,
  /** CLONE(flags): create the child with these CLONE_NEW* flags (0 = plain fork). Ends Pre. */
  CLONE: 6,

  // ---- Parent (stage0 after clone; knows the child pid) ----
  /** WRITE_CHILD_PROC(relPath, content): write content to /proc/<child>/<relPath> (uid_map, gid_map, setgroups). */
  WRITE_CHILD_PROC: 10,
  /** SEND_PID(): write "pid <child>\n" to the sync socket. */
  SEND_PID: 12,
  /** WAIT_GO(): read one line from the sync socket; "go" continues, anything else/EOF kills the child and exits 1. */
  WAIT_GO: 13,
  /** RELEASE_CHILD(): let the child past WAIT_RELEASE. */
  RELEASE_CHILD: 14,
  /** EXIT(): close everything and exit 0 (detached: the child lives on). */
  EXIT: 15,
  /**
   * MONITOR(tty): stay as the container's parent until it exits, then exit with
   * its status (code, or 128+signal). tty "copy": receive the pty master from
   * the child and copy it to/from stdio (stdin put in raw mode, SIGWINCH
   * resizes); "none": stdio was inherited. Terminal signals are ignored here:
   * the TypeScript side forwards signals to the container.
   */
  MONITOR: 16,
  /**
   * RUN_ID_MAP_HELPER(path, argv...): fork+execve path (newuidmap or
   * newgidmap, setuid root) with argv, every argument exactly equal to
   * CHILD_PID_PLACEHOLDER replaced by the child's pid; stdin /dev/null,
   * stderr captured for the error message; a non-zero exit is an error. How a
   * rootless caller maps ids other than its own (ranges from /etc/subuid and
   * /etc/subgid): the kernel lets an unprivileged writer map only its own id.
   */
  RUN_ID_MAP_HELPER: 17,

  // ---- Init (the container's first process) ----
  /** WAIT_RELEASE(): block until RELEASE_CHILD; parent gone = exit 1. */
  WAIT_RELEASE: 20,
  /** MOUNT(source, target, fstype, flags, data): plain mount(2); "" means NULL. */
  MOUNT: 23,
  /**
   * MOUNT_IN_ROOT(rootfs, dest, source, fstype, flags, data, create, strict):
   * resolve dest inside rootfs without escaping it (openat2 RESOLVE_IN_ROOT,
   * creating missing parents as directories and the last component as
   * create = "dir" | "file" | "none"), open it O_PATH and mount onto
   * /proc/self/fd/N, so a symlink swapped in meanwhile cannot redirect the
   * mount (CVE-2021-30465). strict = "1": no symlink anywhere in dest and the
   * target must be a directory (proc/sysfs targets, CVE-2019-16884).
   * source "" = NULL (propagation-only changes).
   */
  MOUNT_IN_ROOT: 24,
  /**
   * REMOUNT_IN_ROOT(rootfs, dest, flags): MS_REMOUNT|MS_BIND|flags on the
   * resolved dest, also keeping the locked flags (nosuid/nodev/noexec) the
   * mount already has (statvfs), which a user namespace may not clear.
   */
  REMOUNT_IN_ROOT: 25,
  /** MKNOD_IN_ROOT(rootfs, path, type c|b|p, major, minor, mode octal, uid, gid): mknod + chown; an existing device of the same kind is kept. */
  MKNOD_IN_ROOT: 26,
  /** BIND_DEVICE_IN_ROOT(rootfs, path, hostPath): create an empty file at path and bind hostPath onto it (user namespaces cannot mknod). */
  BIND_DEVICE_IN_ROOT: 27,
  /** SYMLINK_IN_ROOT(rootfs, target, linkPath): symlink linkPath -> target; EEXIST is ok. */
  SYMLINK_IN_ROOT: 28,
  /** PIVOT_ROOT(rootfs): pivot_root into rootfs, detach the old root. */
  PIVOT_ROOT: 29,
  /** CHROOT(rootfs): --no-pivot: MS_MOVE rootfs onto / and chroot. */
  CHROOT: 30,
  /** MASK_PATH(path): directory -> read-only empty tmpfs; otherwise bind /dev/null (verified to be char 1:3, CVE-2025-31133). Missing path is ok ("absent"). */
  MASK_PATH: 31,
  /** READONLY_PATH(path): bind path onto itself and remount read-only. Missing path is ok. */
  READONLY_PATH: 32,
  /** REMOUNT_RO(path): MS_REMOUNT|MS_BIND|MS_RDONLY (+ locked flags) on an existing mount point (root.readonly). */
  REMOUNT_RO: 33,
  /** SETHOSTNAME(name) */
  SETHOSTNAME: 34,
  /** SETDOMAINNAME(name) */
  SETDOMAINNAME: 35,
  /** WRITE_PROC(path, content): like WRITE_FILE but fails unless the opened file is on procfs (fstatfs PROC_SUPER_MAGIC; CVE-2025-52881). */
  WRITE_PROC: 36,
  /** SETRLIMIT(resource, soft, hard): numbers or "unlimited"; setrlimit(2) or prlimit. */
  SETRLIMIT: 37,
  /**
   * CHDIR(path): chdir, then getcwd must return a path inside the root: a cwd
   * reached through a still-open host fd ("/proc/self/fd/N") reads as
   * "(unreachable)/..." and is refused (CVE-2024-21626).
   */
  CHDIR: 38,
  /** SETGROUPS(gid...): setgroups(2) with argc gids (0 args = empty list). */
  SETGROUPS: 39,
  /** SETRESGID(gid) */
  SETRESGID: 40,
  /** SETRESUID(uid) */
  SETRESUID: 41,
  /** CAP_BOUNDING(maskHex): drop every capability up to cap_last_cap that is not in mask from the bounding set. */
  CAP_BOUNDING: 42,
  /** KEEPCAPS(0|1): prctl(PR_SET_KEEPCAPS). */
  KEEPCAPS: 43,
  /** CAPSET(effectiveHex, permittedHex, inheritableHex): capset(2), version 3 (64-bit masks). */
  CAPSET: 44,
  /** CAP_AMBIENT(maskHex): clear the ambient set, then raise each capability in mask. */
  CAP_AMBIENT: 45,
  /** NO_NEW_PRIVS(): prctl(PR_SET_NO_NEW_PRIVS, 1). */
  NO_NEW_PRIVS: 46,
  /**
   * SECCOMP(flags, bpf[, payload]): seccomp(SECCOMP_SET_MODE_FILTER, flags,
   * prog); bpf is raw struct sock_filter bytes. With SCMP_ACT_NOTIFY the
   * kernel returns a notify fd: it is sent over SCM_RIGHTS on the
   * CONNECT_LISTENER socket with payload (the containerProcessState JSON,
   * "{pid}" replaced by init's host pid, which stage0 sent with the release),
   * then closed here.
   */
  SECCOMP: 47,
  /** UMASK(octal) */
  UMASK: 48,
  /**
   * SETUP_TERMINAL(mode, uid, gid): open /dev/ptmx, unlock, open the slave and
   * fchown it to uid:gid; send the master over SCM_RIGHTS (mode "socket": to
   * the console socket, as runc does; "monitor": to stage0), then setsid,
   * TIOCSCTTY and make the slave stdin/stdout/stderr.
   */
  SETUP_TERMINAL: 49,
  /** JOIN_KEYRING(name): keyctl(KEYCTL_JOIN_SESSION_KEYRING, name); ENOSYS/EPERM/EACCES reported ok with detail "unsupported". */
  JOIN_KEYRING: 50,
  /** CLOSE_FDS(preserveCount): mark every fd >= 3+preserveCount close-on-exec (close_range CLOEXEC), so no runtime fd reaches the container (CVE-2024-21626). */
  CLOSE_FDS: 51,
  /** WAIT_FIFO(): openat(fifo dirfd, name, O_WRONLY) -- blocks until `start` opens it -- write "0", close. */
  WAIT_FIFO: 52,
  /** REPORT_READY(): write "ready\n" and close the sync socket. */
  REPORT_READY: 53,
  /** EXEC_LOOKUP(file, pathEnv): resolve file like execvp with this PATH, check it is executable; the result is used by EXEC. Error text as runc: exec: "x": executable file not found in $PATH. */
  EXEC_LOOKUP: 54,
  /** EXEC(argc, argv..., env...): execve(looked-up path, argv, env). If it fails, print to stderr and exit 127. */
  EXEC: 55,
  /**
   * SET_DUMPABLE(0|1): prctl(PR_SET_DUMPABLE). nk-exec starts non-dumpable so
   * a container process cannot reach the host binary through /proc/<pid>/exe
   * (CVE-2019-5736); in a new user namespace init turns it back on, or its own
   * /proc/self files would belong to the host's root.
   */
  SET_DUMPABLE: 56,
  /** SYNC(name): write "sync <name>\n" and wait for "go" (the runtime runs hooks there). */
  SYNC: 57,
  /**
   * RUN_HOOK(path, timeoutSecs, stdin, argc, argv..., env...): fork+execve a
   * hook in the current namespaces with stdin as its input; wait for it
   * (SIGKILL at the timeout, 0 = none); a non-zero exit is an error.
   */
  RUN_HOOK: 58,
  /**
   * LOOPBACK_UP(): set IFF_UP on "lo" (SIOCSIFFLAGS). A new network namespace
   * starts with lo down; runc and crun bring it up, and clients rely on it
   * (`podman run --network none`, `ctr run` without --net-host).
   */
  LOOPBACK_UP: 59,
  /**
   * WRITE_PROC_ATTR(attr, value): write value to /proc/self/attr/<attr>
   * ("apparmor/exec", "exec", "keycreate"): the LSM label the next execve (or
   * the next key) takes. /proc must be a procfs root and the path is opened
   * beneath it with openat2(RESOLVE_BENEATH|RESOLVE_NO_XDEV|RESOLVE_NO_MAGICLINKS),
   * so neither a symlink nor a mount over any component (another procfs file
   * bound onto attr/exec) can redirect the write (CVE-2025-52881).
   */
  WRITE_PROC_ATTR: 60,
  /** CONNECT_LISTENER(path): connect the seccomp notify listener's unix socket (a host path, so before pivot_root). */
  CONNECT_LISTENER: 61,
  /**
   * OPEN_TREE(path): clone the mount tree at path (recursively) into a
   * detached mount the executor holds (open_tree(2) OPEN_TREE_CLONE). With
   * MOVE_MOUNT after a SETNS into another mount namespace, this puts a host
   * directory into that namespace only -- how a running VM's virtiofsd gets a
   * new container's rootfs without any mount on the host.
   */
  OPEN_TREE: 80,
  /** MOVE_MOUNT(target): attach the tree OPEN_TREE holds at target, in the current mount namespace (move_mount(2)). */
  MOVE_MOUNT: 81,
  /** UMOUNT(target): umount2(target, MNT_DETACH) in the current mount namespace (a pod member's share entry, in virtiofsd's). */
  UMOUNT: 82,

  // ---- VM guest network (native/ops-net.c, planned by src/vm/network.ts) ----
  /**
   * NET_LINK_NETNS(mac, waitMs): Parent. Find the Ethernet link whose address
   * is mac (waiting up to waitMs for its driver to probe) and move it into
   * the child's network namespace (RTM_NEWLINK, IFLA_NET_NS_PID). A moved
   * link arrives down, without addresses: the Init ops below configure it.
   */
  NET_LINK_NETNS: 62,
  /** NET_LINK_SET(mac, name, mtu): rename the link with this MAC and set its MTU (0 = keep); RTM_NEWLINK. */
  NET_LINK_SET: 63,
  /** NET_LINK_UP(name): set IFF_UP (RTM_NEWLINK). */
  NET_LINK_UP: 64,
  /**
   * NET_ADDR_ADD(name, family 4|6, address, prefixLen, broadcast, flags, scope):
   * RTM_NEWADDR (create, exclusive) with IFA_LOCAL = IFA_ADDRESS = address,
   * IFA_BROADCAST unless "", IFA_FLAGS = flags (IFA_F_NODAD for IPv6).
   */
  NET_ADDR_ADD: 65,
  /**
   * NET_ROUTE_ADD(name, family 4|6, dst, dstLen, gateway, source, metric, scope, onlink 0|1):
   * RTM_NEWROUTE (create, exclusive) in the main table, protocol boot, type
   * unicast, out of name; dst "" = default, gateway/source "" = none, metric 0 = none.
   */
  NET_ROUTE_ADD: 66,
} as const;
export type OpCode = (typeof OpCode)[keyof typeof OpCode];

/** RUN_ID_MAP_HELPER: the argument the executor replaces with the child's pid. */
export const CHILD_PID_PLACEHOLDER = "{pid}";

export const OpName: Record<number, string> = Object.fromEntries(
  Object.entries(OpCode).map(([name, code]) => [code, name]),
);

/** One planned operation, tagged with the config.json field it came from. */
export interface PlanOp {
  code: OpCode;
  section: Section;
  args: (string | Uint8Array)[];
  /** JSON path of the config.json field (or CLI flag) that caused this op, e.g. "mounts[2]". */
  source: string;
}

const MAGIC = [0x4e, 0x4b, 0x50, 0x31]; // "NKP1"

/** Serialise a plan for the executor (the u32 length prefix is added by the sender). */
export function encodePlan(ops: readonly PlanOp[]): Uint8Array {
  const encoder = new TextEncoder();
  const encodedArgs = ops.map((op) => op.args.map((a) => (typeof a === "string" ? encoder.encode(a) : a)));
  let size = 8;
  for (const args of encodedArgs) {
    size += 8;
    for (const a of args) size += 4 + a.length;
  }
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  view.setUint32(4, ops.length, true);
  let at = 8;
  ops.forEach((op, i) => {
    view.setUint16(at, op.code, true);
    view.setUint8(at + 2, op.section);
    view.setUint8(at + 3, 0);
    view.setUint32(at + 4, encodedArgs[i]!.length, true);
    at += 8;
    for (const a of encodedArgs[i]!) {
      view.setUint32(at, a.length, true);
      out.set(a, at + 4);
      at += 4 + a.length;
    }
  });
  return out;
}
