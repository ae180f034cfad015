/**
 * Tap devices in another network namespace, opened by this process and
 * handed to QEMU as file descriptors (`-netdev tap,fd=N`), as Kata and
 * libvirt do. The calling thread enters the namespace with setns(2) only for
 * the few synchronous calls below (a network namespace is per thread, and
 * nothing else runs on this thread meanwhile), then returns to its own.
 *
 * The taps are not persistent: the kernel removes one when the last file
 * descriptor on it closes, so a tap lives exactly as long as the QEMU that
 * holds it, however QEMU ends (SIGKILL included), and none can be left in
 * the client's namespace.
 */
import { closeSync, openSync } from "node:fs";
import { openLibc } from "../util/ffi.ts";
import { VmError } from "./driver.ts";

const CLONE_NEWNET = 0x40000000;
const TUNSETIFF = 0x400454ca;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCSIFMTU = 0x8922;
const IFF_UP = 0x1;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const IFNAMSIZ = 16;
/** struct ifreq: the name, then a union (flags: short, mtu: int) at offset 16; 40 bytes on x86_64. */
const IFREQ_SIZE = 40;

interface Calls {
  setns(fd: number, type: number): number;
  unshare(flags: number): number;
  ioctl(fd: number, request: number, arg: Uint8Array): number;
  socket(domain: number, type: number, protocol: number): number;
  close(fd: number): number;
  errno(): number;
}

let calls: Calls | undefined;
function libc(): Calls {
  if (calls) return calls;
  const { fns: s, errno, ffi: { ptr } } = openLibc((FFIType) => ({
    setns: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    unshare: { args: [FFIType.i32], returns: FFIType.i32 },
    ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
  }));
  calls = {
    setns: (fd, type) => s.setns(fd, type) as number,
    unshare: (flags) => s.unshare(flags) as number,
    ioctl: (fd, request, arg) => s.ioctl(fd, request, ptr(arg)) as number,
    socket: (d, t, p) => s.socket(d, t, p) as number,
    close: (fd) => s.close(fd) as number,
    errno,
  };
  return calls;
}

function ifreq(name: string): Uint8Array {
  const req = new Uint8Array(IFREQ_SIZE);
  const bytes = new TextEncoder().encode(name);
  if (bytes.length >= IFNAMSIZ) throw new VmError("bad-interface-name", `tap name ${name} is longer than ${IFNAMSIZ - 1} bytes`);
  req.set(bytes);
  return req;
}

export interface TapRequest {
  name: string;
  mtu: number;
}

/**
 * Create each tap in the network namespace at netnsPath, set its MTU and
 * bring it up; returns one open fd per tap (the caller hands them to QEMU,
 * then closes its copies). On failure nothing stays open.
 */
export function openTaps(netnsPath: string, taps: readonly TapRequest[]): number[] {
  return inNetns(netnsPath, () => {
    const target = openSync(netnsPath, "r");
    try {
      if (libc().setns(target, CLONE_NEWNET) !== 0) throw new VmError("tap-failed", `setns in network namespace ${netnsPath}: errno ${libc().errno()}`);
    } finally {
      closeSync(target);
    }
  }, taps).fds;
}

/**
 * Taps in a network namespace of their own, made for the purpose (unshare):
 * a VM template's network cards need a backend while the template boots,
 * and nothing of the host's network may see them. The namespace lives while
 * its fd is open (the caller closes it once the VM is gone).
 */
export function openTapsInNewNetns(taps: readonly TapRequest[]): { fds: number[]; netnsFd: number } {
  let netnsFd = -1;
  try {
    const { fds } = inNetns("(a new one)", () => {
      if (libc().unshare(CLONE_NEWNET) !== 0) throw new VmError("tap-failed", `unshare a network namespace: errno ${libc().errno()}`);
      netnsFd = openSync("/proc/thread-self/ns/net", "r");
    }, taps);
    return { fds, netnsFd };
  } catch (error) {
    if (netnsFd >= 0) closeSync(netnsFd);
    throw error;
  }
}

/** Enter a network namespace on this thread (enter()), make the taps there, and come back. */
function inNetns(netnsPath: string, enter: () => void, taps: readonly TapRequest[]): { fds: number[] } {
  const c = libc();
  const fail = (what: string, errno: number) => new VmError("tap-failed", `${what} in network namespace ${netnsPath}: errno ${errno}`);
  const ownNs = openSync("/proc/thread-self/ns/net", "r");
  const fds: number[] = [];
  let sock = -1;
  let entered = false;
  try {
    enter();
    entered = true;
    // A socket made in the namespace: the interface ioctls act on its namespace.
    sock = c.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) throw fail("socket", c.errno());
    for (const tap of taps) {
      const fd = openSync("/dev/net/tun", "r+");
      fds.push(fd);
      const req = ifreq(tap.name);
      new DataView(req.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI, true);
      if (c.ioctl(fd, TUNSETIFF, req) !== 0) throw fail(`create tap ${tap.name} (TUNSETIFF)`, c.errno());
      if (tap.mtu > 0) {
        const mtu = ifreq(tap.name);
        new DataView(mtu.buffer).setInt32(IFNAMSIZ, tap.mtu, true);
        if (c.ioctl(sock, SIOCSIFMTU, mtu) !== 0) throw fail(`set the MTU of ${tap.name} to ${tap.mtu}`, c.errno());
      }
      const flags = ifreq(tap.name);
      if (c.ioctl(sock, SIOCGIFFLAGS, flags) !== 0) throw fail(`read the flags of ${tap.name}`, c.errno());
      const view = new DataView(flags.buffer);
      view.setUint16(IFNAMSIZ, view.getUint16(IFNAMSIZ, true) | IFF_UP, true);
      if (c.ioctl(sock, SIOCSIFFLAGS, flags) !== 0) throw fail(`bring ${tap.name} up`, c.errno());
    }
    return { fds };
  } catch (error) {
    for (const fd of fds) closeSync(fd);
    if (error instanceof VmError) throw error;
    throw new VmError("tap-failed", `taps in network namespace ${netnsPath}: ${(error as Error).message}`);
  } finally {
    if (sock >= 0) c.close(sock);
    // Back to our own namespace before anything else runs on this thread (unshare or setns may have failed
    // after changing it: come back whatever happened).
    if (c.setns(ownNs, CLONE_NEWNET) !== 0 && entered) {
      throw new VmError("tap-failed", `setns back to the runtime's network namespace: errno ${c.errno()}`);
    }
    closeSync(ownNs);
  }
}
