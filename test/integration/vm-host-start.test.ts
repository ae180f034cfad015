/**
 * What the VM host process prepares before QEMU and virtiofsd run: the guest
 * RAM file on a detached huge-page tmpfs (src/vm/guest-ram.ts) and
 * virtiofsd's vhost-user socket, listening before virtiofsd exists
 * (src/util/libc.ts listenUnix, used by src/vm/virtiofsd.ts).
 *
 * nano-kata's own machinery (not a runtime verb), so it runs whatever
 * NK_TEST_RUNTIME says.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { closeSync, fstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statfsSync, writeSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HUGE_PAGE_BYTES, openHugeGuestRam } from "../../src/vm/guest-ram.ts";
import { listenUnix } from "../../src/util/libc.ts";
import { isRoot, testIf } from "../helpers/runtime.ts";

const TMPFS_MAGIC = 0x01021994;
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

describe("guest RAM on a huge-page tmpfs", () => {
  testIf(isRoot() ? null : "needs root (fsopen/fsmount of a tmpfs)", "a nameless tmpfs file of its own, no mount left anywhere", () => {
    const mountsBefore = readFileSync("/proc/self/mountinfo", "utf8");
    const ram = openHugeGuestRam(64);
    if ("error" in ram) throw new Error(ram.error);
    cleanups.push(() => closeSync(ram.fd));
    // What QEMU opens (mem-path=/proc/self/fd/N) is this file: empty, on a tmpfs, already unlinked.
    expect(fstatSync(ram.fd).isFile()).toBe(true);
    expect(fstatSync(ram.fd).size).toBe(0);
    expect(statfsSync(`/proc/self/fd/${ram.fd}`).type).toBe(TMPFS_MAGIC);
    expect(readlinkSync(`/proc/self/fd/${ram.fd}`)).toEndWith("(deleted)");
    // size= caps it at the guest's RAM: the tmpfs reports 64 MiB.
    const fs = statfsSync(`/proc/self/fd/${ram.fd}`);
    expect(fs.blocks * fs.bsize).toBe(64 * 1024 * 1024);
    // It holds data like any file (QEMU maps it shared; virtiofsd maps it through the fd QEMU sends).
    expect(writeSync(ram.fd, Buffer.alloc(HUGE_PAGE_BYTES, 1), 0, HUGE_PAGE_BYTES, 0)).toBe(HUGE_PAGE_BYTES);
    expect(fstatSync(ram.fd).size).toBe(HUGE_PAGE_BYTES);
    // The tmpfs was never attached: the mount table is what it was.
    expect(readFileSync("/proc/self/mountinfo", "utf8")).toBe(mountsBefore);
    // Two VMs, two independent files.
    const other = openHugeGuestRam(64);
    if ("error" in other) throw new Error(other.error);
    cleanups.push(() => closeSync(other.fd));
    expect(fstatSync(other.fd).size).toBe(0);
    expect(fstatSync(other.fd).dev).not.toBe(fstatSync(ram.fd).dev);
  });
});

describe("a unix socket listening before its server runs", () => {
  test("clients connect to the fd's socket at once; a taken path is refused", async () => {
    const dir = mkdtempSync(join(tmpdir(), "nkt-listen-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, "fs.sock");
    const fd = listenUnix(path);
    cleanups.push(() => closeSync(fd));
    // Nobody accepts yet (virtiofsd is still starting): the connection waits in the backlog, as QEMU's does.
    const client = connect(path);
    cleanups.push(() => client.destroy());
    await new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve());
      client.once("error", reject);
    });
    expect(() => listenUnix(path)).toThrow(/errno 98/); // EADDRINUSE
  });
});
