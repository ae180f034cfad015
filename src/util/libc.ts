/**
 * The few libc calls the Bun process needs and Node's APIs do not offer.
 * Loaded lazily: dlopen costs ~0.5 ms, and most verbs never need it.
 */
import { openLibc } from "./ffi.ts";

interface Libc {
  flock(fd: number, op: number): number;
  socketpair(domain: number, type: number, protocol: number, fds: Int32Array): number;
  poll(fds: Uint8Array, count: number, timeoutMs: number): number;
  mkfifo(path: Uint8Array, mode: number): number;
  prctl(option: number, arg2: number, arg3: number, arg4: number, arg5: number): number;
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, address: Uint8Array, length: number): number;
  listen(fd: number, backlog: number): number;
  close(fd: number): number;
  errno(): number;
}

let loaded: Libc | undefined;

function libc(): Libc {
  if (loaded) return loaded;
  const { fns: s, errno, ffi: { ptr } } = openLibc((FFIType) => ({
    flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    socketpair: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    poll: { args: [FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
    mkfifo: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    prctl: { args: [FFIType.i32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64], returns: FFIType.i32 },
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
  }));
  loaded = {
    flock: (fd, op) => s.flock(fd, op) as number,
    socketpair: (domain, type, protocol, fds) => s.socketpair(domain, type, protocol, ptr(fds)) as number,
    poll: (fds, count, timeoutMs) => s.poll(ptr(fds), count, timeoutMs) as number,
    mkfifo: (path, mode) => s.mkfifo(path, mode) as number,
    prctl: (o, a, b, c, d) => s.prctl(o, a, b, c, d) as number,
    socket: (d, t, p) => s.socket(d, t, p) as number,
    bind: (fd, address, length) => s.bind(fd, ptr(address), length) as number,
    listen: (fd, backlog) => s.listen(fd, backlog) as number,
    close: (fd) => s.close(fd) as number,
    errno,
  };
  return loaded;
}

export const LOCK_EX = 2;
export const LOCK_NB = 4;

/** flock(2); returns 0 or the errno. */
export function flock(fd: number, op: number): number {
  const l = libc();
  return l.flock(fd, op) === 0 ? 0 : l.errno();
}

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const EINTR = 4;
const POLLIN = 0x1;

/**
 * socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): two connected, blocking
 * stream sockets. Returns the fds or throws with the errno.
 */
export function socketPair(): [number, number] {
  const l = libc();
  const fds = new Int32Array(2);
  if (l.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) !== 0) throw new Error(`socketpair: errno ${l.errno()}`);
  return [fds[0]!, fds[1]!];
}

/**
 * Wait until fd is readable (or hung up) for at most timeoutMs (-1: no
 * limit). True when it is, false on timeout; a signal restarts the wait.
 */
export function waitReadable(fd: number, timeoutMs: number): boolean {
  const l = libc();
  // struct pollfd { int fd; short events; short revents; }
  const pollfd = new Uint8Array(8);
  const view = new DataView(pollfd.buffer);
  view.setInt32(0, fd, true);
  view.setInt16(4, POLLIN, true);
  for (;;) {
    const n = l.poll(pollfd, 1, timeoutMs);
    if (n > 0) return true;
    if (n === 0) return false;
    const errno = l.errno();
    if (errno !== EINTR) throw new Error(`poll: errno ${errno}`);
  }
}

export function cString(s: string): Uint8Array {
  return new TextEncoder().encode(s + "\0");
}

/** PR_SET_CHILD_SUBREAPER, so that a foreground container's orphans are ours to reap. */
export function setChildSubreaper(): number {
  const l = libc();
  return l.prctl(36, 1, 0, 0, 0) === 0 ? 0 : l.errno();
}

/** mkfifo(3); returns 0 or the errno. */
export function mkfifo(path: string, mode: number): number {
  const l = libc();
  return l.mkfifo(cString(path), mode) === 0 ? 0 : l.errno();
}

/** struct sockaddr_un: sa_family_t, then sun_path[108]. */
const SOCKADDR_UN_SIZE = 110;

/**
 * A listening unix stream socket at path (close-on-exec), as an fd to hand
 * to another process (a server started with its listening socket already
 * made: clients can connect before it runs). Throws with the errno.
 */
export function listenUnix(path: string, backlog = 8): number {
  const l = libc();
  const name = new TextEncoder().encode(path);
  if (name.length >= SOCKADDR_UN_SIZE - 2) throw new Error(`unix socket path ${path} is longer than ${SOCKADDR_UN_SIZE - 3} bytes`);
  const address = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(name, 2);
  const fd = l.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`socket: errno ${l.errno()}`);
  if (l.bind(fd, address, 2 + name.length + 1) !== 0 || l.listen(fd, backlog) !== 0) {
    const errno = l.errno();
    l.close(fd);
    throw new Error(`listen on ${path}: errno ${errno}`);
  }
  return fd;
}
