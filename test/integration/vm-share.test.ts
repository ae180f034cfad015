/**
 * A running VM's virtiofsd gets a new share entry (a pod's next container's
 * rootfs) without any mount on the host: open_tree on the host, then setns
 * into virtiofsd's mount namespace and move_mount there (src/vm/virtiofsd.ts
 * addShareEntry, the executor's OPEN_TREE/MOVE_MOUNT ops).
 *
 * nano-kata's own machinery (not a runtime verb), so it runs against our
 * executor whatever NK_TEST_RUNTIME says. A `sleep` in a private mount
 * namespace stands in for virtiofsd.
 */
import { afterEach, describe, expect } from "bun:test";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { addShareEntry } from "../../src/vm/virtiofsd.ts";
import { isRoot, testIf } from "../helpers/runtime.ts";

const skip = isRoot() ? null : "needs root (setns into another mount namespace)";
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** A process in its own mount namespace (slave of ours, like virtiofsd's). */
async function namespaceHolder(): Promise<ChildProcess> {
  const child = spawn("unshare", ["--mount", "--propagation", "slave", "sleep", "600"], { stdio: "ignore" });
  cleanups.push(() => child.kill("SIGKILL"));
  const own = readlinkSync("/proc/self/ns/mnt");
  for (let i = 0; i < 200; i++) {
    try {
      // unshare execs sleep once the namespace exists.
      if (readlinkSync(`/proc/${child.pid}/ns/mnt`) !== own && readFileSync(`/proc/${child.pid}/comm`, "utf8").trim() === "sleep") return child;
    } catch {}
    await Bun.sleep(10);
  }
  throw new Error("unshare did not start");
}

const mountsOf = (pid: number | "self") => readFileSync(`/proc/${pid}/mountinfo`, "utf8");

describe("adding a share to a running virtiofsd", () => {
  testIf(skip, "the directory appears in the other mount namespace only, and nothing is mounted on the host", async () => {
    const work = mkdtempSync(join(tmpdir(), "nk-share-"));
    cleanups.push(() => rmSync(work, { recursive: true, force: true }));
    const source = join(work, "rootfs-b");
    mkdirSync(source);
    writeFileSync(join(source, "marker"), "from the host\n");
    const share = join(work, "share");
    mkdirSync(share);
    const holder = await namespaceHolder();
    const hostMountsBefore = mountsOf("self");

    await addShareEntry(holder.pid!, share, { name: "c1", hostPath: source, isDirectory: true });

    const inside = spawnSync("nsenter", [`--mount=/proc/${holder.pid}/ns/mnt`, "cat", join(share, "c1", "marker")], { encoding: "utf8" });
    expect(inside.stdout).toBe("from the host\n");
    expect(mountsOf(holder.pid!)).toContain(join(share, "c1"));
    expect(mountsOf("self")).toBe(hostMountsBefore);
    // On the host the mount point is an empty directory.
    expect(spawnSync("ls", ["-A", join(share, "c1")], { encoding: "utf8" }).stdout).toBe("");
  });

  testIf(skip, "a missing source is an error naming the path; the namespace is unchanged", async () => {
    const work = mkdtempSync(join(tmpdir(), "nk-share-"));
    cleanups.push(() => rmSync(work, { recursive: true, force: true }));
    const holder = await namespaceHolder();
    const before = mountsOf(holder.pid!);
    const missing = join(work, "no-such-dir");
    await expect(addShareEntry(holder.pid!, join(work, "share"), { name: "c2", hostPath: missing, isDirectory: true })).rejects.toThrow(
      `cannot share ${missing} with the VM: open_tree ${missing}: No such file or directory`,
    );
    expect(mountsOf(holder.pid!)).toBe(before);
  });
});
