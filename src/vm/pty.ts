/**
 * Host-side terminals of VM mode. A VM-mode process's pty is in the guest;
 * a --console-socket client expects a pty master it can hold on the host
 * (runc's console socket protocol: one fd over SCM_RIGHTS, the pty's name as
 * the message). So the host makes a pty pair of its own, sends the master,
 * keeps the slave in raw mode (the guest's pty does the line discipline:
 * echo, ^C, CR/LF) and relays slave <-> guest pty over the channel.
 *
 * Bun has no pty or sendmsg API: a few libc calls through bun:ffi, loaded
 * only when a terminal is asked for. x86-64 / aarch64 (LP64) struct layouts.
 */
import { closeSync, constants, openSync } from "node:fs";
import type { Pointer } from "bun:ffi";
import { openLibc } from "../util/ffi.ts";
import { VmError } from "./driver.ts";

interface PtyLibc {
  posix_openpt(flags: number): number;
  grantpt(fd: number): number;
  unlockpt(fd: number): number;
  ptsname(fd: number): Pointer | null;
  tcgetattr(fd: number, termios: Uint8Array): number;
  cfmakeraw(termios: Uint8Array): void;
  tcsetattr(fd: number, when: number, termios: Uint8Array): number;
  ioctl(fd: number, request: number, arg: Uint8Array): number;
  socket(domain: number, type: number, protocol: number): number;
  connect(fd: number, addr: Uint8Array, len: number): number;
  sendmsg(fd: number, msg: Uint8Array, flags: number): number;
  close(fd: number): number;
  errno(): number;
  cstring(p: Pointer): string;
  ptr(a: Uint8Array): number;
}

let loaded: PtyLibc | undefined;

function libc(): PtyLibc {
  if (loaded) return loaded;
  const { fns: s, errno, ffi: { CString, ptr } } = openLibc((T) => ({
    posix_openpt: { args: [T.i32], returns: T.i32 },
    grantpt: { args: [T.i32], returns: T.i32 },
    unlockpt: { args: [T.i32], returns: T.i32 },
    ptsname: { args: [T.i32], returns: T.ptr },
    tcgetattr: { args: [T.i32, T.ptr], returns: T.i32 },
    cfmakeraw: { args: [T.ptr], returns: T.void },
    tcsetattr: { args: [T.i32, T.i32, T.ptr], returns: T.i32 },
    ioctl: { args: [T.i32, T.u64, T.ptr], returns: T.i32 },
    socket: { args: [T.i32, T.i32, T.i32], returns: T.i32 },
    connect: { args: [T.i32, T.ptr, T.u32], returns: T.i32 },
    sendmsg: { args: [T.i32, T.ptr, T.i32], returns: T.i64 },
    close: { args: [T.i32], returns: T.i32 },
  }));
  loaded = {
    posix_openpt: (f) => s.posix_openpt(f) as number,
    grantpt: (fd) => s.grantpt(fd) as number,
    unlockpt: (fd) => s.unlockpt(fd) as number,
    ptsname: (fd) => s.ptsname(fd) as Pointer | null,
    tcgetattr: (fd, t) => s.tcgetattr(fd, t) as number,
    cfmakeraw: (t) => void s.cfmakeraw(t),
    tcsetattr: (fd, w, t) => s.tcsetattr(fd, w, t) as number,
    ioctl: (fd, r, a) => s.ioctl(fd, r, a) as number,
    socket: (d, t, p) => s.socket(d, t, p) as number,
    connect: (fd, a, l) => s.connect(fd, a, l) as number,
    sendmsg: (fd, m, f) => Number(s.sendmsg(fd, m, f)),
    close: (fd) => s.close(fd) as number,
    errno,
    cstring: (p) => new CString(p).toString(),
    ptr: (a) => ptr(a) as number,
  };
  return loaded;
}

const O_RDWR = 2;
const O_NOCTTY = 0o400;
const O_CLOEXEC = 0o2000000;
const TIOCGWINSZ = 0x5413;
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;

function failed(what: string): VmError {
  const errno = libc().errno();
  return new VmError("terminal-failed", `${what}: errno ${errno}`);
}

export interface HostPty {
  master: number;
  slave: number;
  /** The slave's path (/dev/pts/N): the console socket message. */
  name: string;
}

/** A new pty pair; the slave in raw mode (the guest's pty does the line discipline). */
export function openHostPty(): HostPty {
  const l = libc();
  const master = l.posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) throw failed("posix_openpt");
  try {
    if (l.grantpt(master) < 0 || l.unlockpt(master) < 0) throw failed("unlock the pty");
    const p = l.ptsname(master);
    if (!p) throw failed("ptsname");
    const name = l.cstring(p);
    const slave = openSync(name, constants.O_RDWR | O_NOCTTY);
    if (!makeRaw(slave)) {
      closeSync(slave);
      throw failed(`raw mode on ${name}`);
    }
    return { master, slave, name };
  } catch (e) {
    l.close(master);
    throw e;
  }
}

/** TIOCGWINSZ: the size the console client gave the master (0x0 when it never set one). */
export function windowSize(fd: number): { rows: number; cols: number } {
  const ws = new Uint8Array(8);
  if (libc().ioctl(fd, TIOCGWINSZ, ws) < 0) return { rows: 0, cols: 0 };
  const view = new DataView(ws.buffer);
  return { rows: view.getUint16(0, true), cols: view.getUint16(2, true) };
}

/** Connect the console socket and send fd with `name` as the message (runc's protocol). */
export function sendConsoleFd(socketPath: string, fd: number, name: string): void {
  const l = libc();
  const path = new TextEncoder().encode(socketPath);
  if (path.length >= 108) throw new VmError("terminal-failed", `--console-socket ${socketPath}: path longer than 107 bytes`);
  const sock = l.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) throw failed("socket");
  try {
    const addr = new Uint8Array(110);
    new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
    addr.set(path, 2);
    if (l.connect(sock, addr, 2 + path.length + 1) < 0) throw failed(`connect --console-socket ${socketPath}`);
    const text = new TextEncoder().encode(name);
    const iov = new Uint8Array(16);
    const control = new Uint8Array(24); // CMSG_SPACE(sizeof(int))
    const msg = new Uint8Array(56);
    const iv = new DataView(iov.buffer);
    iv.setBigUint64(0, BigInt(l.ptr(text)), true);
    iv.setBigUint64(8, BigInt(text.length), true);
    const cv = new DataView(control.buffer);
    cv.setBigUint64(0, 20n, true); // CMSG_LEN(sizeof(int))
    cv.setInt32(8, SOL_SOCKET, true);
    cv.setInt32(12, SCM_RIGHTS, true);
    cv.setInt32(16, fd, true);
    const mv = new DataView(msg.buffer);
    mv.setBigUint64(16, BigInt(l.ptr(iov)), true);
    mv.setBigUint64(24, 1n, true);
    mv.setBigUint64(32, BigInt(l.ptr(control)), true);
    mv.setBigUint64(40, BigInt(control.length), true);
    if (l.sendmsg(sock, msg, MSG_NOSIGNAL) < 0) throw failed(`send the pty master to ${socketPath}`);
  } finally {
    l.close(sock);
  }
}

/**
 * The whole of --console-socket on the host: a pty pair, the master sent to
 * the socket and closed here (the client holds it now); the slave returned.
 */
export function consoleForSocket(socketPath: string): { slave: number; name: string } {
  const pty = openHostPty();
  try {
    sendConsoleFd(socketPath, pty.master, pty.name);
  } catch (e) {
    closeSync(pty.slave);
    throw e;
  } finally {
    libc().close(pty.master);
  }
  return { slave: pty.slave, name: pty.name };
}

/** Put a terminal fd in raw mode; returns what restores it (nothing when fd is no terminal). */
export function makeRaw(fd: number): (() => void) | undefined {
  const l = libc();
  const saved = new Uint8Array(128); // struct termios is 60 bytes on glibc
  if (l.tcgetattr(fd, saved) < 0) return undefined;
  const raw = saved.slice();
  l.cfmakeraw(raw);
  if (l.tcsetattr(fd, 0, raw) < 0) return undefined;
  return () => void l.tcsetattr(fd, 0, saved);
}
