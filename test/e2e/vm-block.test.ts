/**
 * VM mode with the rootfs as a block image (src/vm/rootfs-image.ts): real
 * microVMs under QEMU (TCG here). The image is made by `mkfs.ext4 -d` in the
 * container's state directory, attached as a virtio-blk device and mounted by
 * the plan as the container's root; no virtiofsd runs. Writes stay in the
 * image; bind mounts of small files are copied into the image (a snapshot),
 * /dev/shm's becomes a tmpfs, other bind mounts are refused by name; `delete`
 * removes the image. Every test checks that nothing of its container is
 * left. And podman on a block rootfs, end to end.
 */
import { afterAll, describe, expect } from "bun:test";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cleanupAll, containerStdout, ok, outputPaths, rt, startContainer, stateRoot, testIf, waitForStatus } from "../helpers/runtime.ts";
import type { Bundle } from "../helpers/bundle.ts";
import { bundlesCheckedAfterEach, ensureVmImage, expectNothingLeft, podmanOnNanoKata, processesNaming, vcreate, VM_CACHE, VM_ENV, VM_TIMEOUT, vmSkipReason, vrt, which } from "./vm-helpers.ts";

const SKIP = vmSkipReason() ?? (which("mkfs.ext4") || existsSync("/usr/sbin/mkfs.ext4") ? null : "mkfs.ext4 is not installed (apt-get install e2fsprogs)");
let imageError = "";

const BLOCK = { "io.nanokata.vm.rootfs": "block" };

const checkedBundle = bundlesCheckedAfterEach();
function blockBundle(args: string[], override?: (c: Record<string, any>) => void, copyRootfs = false): Bundle {
  return checkedBundle({
    args,
    copyRootfs,
    override: (c) => {
      c.annotations = { ...c.annotations, ...BLOCK };
      override?.(c);
    },
  });
}

if (!SKIP) imageError = ensureVmImage();
// The bundles' directories (and the source files the bind tests put in them) go at the end.
afterAll(() => cleanupAll());

describe("VM mode with a block rootfs (mkfs.ext4 -d, virtio-blk)", () => {
  testIf(SKIP, "the container runs on the image: output, exit code, root is /dev/vda ext4; a write stays in the image, not on the host's rootfs", () => {
    expect(imageError).toBe("");
    const b = blockBundle(
      ["sh", "-c", "grep ' / ' /proc/mounts; echo written > /in-the-image && cat /in-the-image; echo err >&2; exit 7"],
      (c) => {
        c.root.readonly = false;
      },
      true,
    );
    const r = vrt(["--debug", "run", "--bundle", b.dir, b.id]);
    expect(r.code).toBe(7);
    expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 rw[ ,]/);
    expect(r.stdout).toContain("written\n");
    expect(r.stderr).toContain("err\n");
    // --debug says how the rootfs reaches the guest, and why; the image's size and how long mkfs took.
    expect(r.stderr).toContain('rootfs through a block image (ext4): annotations["io.nanokata.vm.rootfs"] = "block"');
    expect(r.stderr).toMatch(/rootfs image \S+\/rootfs\.img: \d+ MiB, \d+ inodes, \d+ KiB of files, made in \d+ ms/);
    // The bundle's own rootfs copy never saw the write.
    expect(existsSync(join(b.rootfs, "in-the-image"))).toBe(false);
  }, VM_TIMEOUT);

  testIf(SKIP, "root.readonly: the image is mounted read-only and a write fails", () => {
    const b = blockBundle(["sh", "-c", "grep ' / ' /proc/mounts; touch /x 2>&1; echo status $?"]);
    expect(b.config.root.readonly).toBe(true);
    const r = vrt(["run", "--bundle", b.dir, b.id]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 ro[ ,]/);
    expect(r.stdout).toContain("Read-only file system");
    expect(r.stdout).toMatch(/status [1-9]/);
  }, VM_TIMEOUT);

  testIf(SKIP, "create makes the image in the state directory, no virtiofsd runs; delete removes the image", async () => {
    const b = blockBundle(["sh", "-c", "echo started; exec sleep 600"]);
    ok(vcreate(b));
    const stateDir = join(stateRoot(), b.id);
    const image = join(stateDir, "rootfs.img");
    // An ext4 superblock: magic 0xEF53 at byte 1024 + 56.
    const head = Buffer.alloc(2048);
    const fd = openSync(image, "r");
    readSync(fd, head, 0, 2048, 0);
    closeSync(fd);
    expect(head.readUInt16LE(1024 + 56)).toBe(0xef53);
    const pids = JSON.parse(readFileSync(join(stateDir, "vm-pids.json"), "utf8"));
    expect(pids.virtiofsd).toBeUndefined();
    expect(pids.vmm.pid).toBeGreaterThan(0);
    const qemuCmdline = readFileSync(`/proc/${pids.vmm.pid}/cmdline`, "utf8").split("\0");
    expect(qemuCmdline).toContain("virtio-blk-device,drive=nkroot");
    expect(qemuCmdline.some((a) => a.startsWith(`file=${image},if=none,format=raw,id=nkroot`))).toBe(true);
    expect(qemuCmdline.some((a) => a.includes("vhost-user-fs"))).toBe(false);
    expect(processesNaming(stateDir).filter((p) => p.includes("virtiofsd"))).toEqual([]);
    ok(startContainer(b.id));
    waitForStatus(b.id, "running");
    // exec joins the container's mount namespace: the same image as its root.
    const exec = vrt(["exec", b.id, "sh", "-c", "grep ' / ' /proc/mounts"]);
    expect({ code: exec.code, out: exec.stdout }).toEqual({ code: 0, out: expect.stringMatching(/^\/dev\/vda \/ ext4 ro[ ,]/) });
    // A container that would join this VM as a pod member: refused (members join the sandbox's virtiofs share).
    const member = checkedBundle({ args: ["true"], override: (c) => void (c.annotations = { "io.nanokata.sandbox": b.id }) });
    const joined = vrt(["run", "--bundle", member.dir, member.id]);
    expect(joined.code).not.toBe(0);
    expect(joined.stderr).toContain(`its pod's sandbox ${b.id} has its rootfs as a block image and no virtiofs share`);
    ok(rt(["kill", b.id, "KILL"]));
    waitForStatus(b.id, "stopped", 60_000);
    ok(rt(["delete", b.id]));
    expect(existsSync(image)).toBe(false);
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "a directory bind mount (other than /dev/shm) is refused, naming mounts[i], and nothing is left", async () => {
    const b = blockBundle(["true"], (c) => {
      c.mounts.push({ destination: "/data", type: "bind", source: "/tmp", options: ["rbind", "rw"] });
    });
    const i = b.config.mounts.length - 1;
    const r = vrt(["run", "--bundle", b.dir, b.id]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`mounts[${i}] (/data): a bind mount of the directory /tmp cannot reach a VM whose rootfs is a block image`);
    expect(existsSync(join(stateRoot(), b.id))).toBe(false);
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "file binds are copied into the image at create (a snapshot): content, mode, ro not writable, under a tmpfs too; /dev/shm a tmpfs; the host's files unchanged", async () => {
    const script = [
      "cat /etc/motd /etc/ro.conf /run/under-tmpfs",
      "ls -ln /etc/ro.conf | cut -c1-10",
      "grep -E ' (/etc/motd|/etc/ro.conf|/run/under-tmpfs|/dev/shm) ' /proc/mounts",
      "echo from-guest >> /etc/motd && tail -n1 /etc/motd",
      "(echo x >> /etc/ro.conf) 2>&1; echo ro $?",
      "(echo x >> /run/under-tmpfs) 2>&1; echo under $?",
      "echo in-shm > /dev/shm/f && cat /dev/shm/f",
    ].join("; ");
    const b = blockBundle(["sh", "-c", script], (c) => {
      c.root.readonly = false;
      c.mounts = c.mounts.filter((m: { destination: string }) => m.destination !== "/dev/shm");
      c.mounts.push(
        // Relative sources are the bundle's; /etc/motd is not in the rootfs: made in the image.
        { destination: "/etc/motd", type: "bind", source: "motd-src", options: ["bind", "rprivate"] },
        { destination: "/etc/ro.conf", type: "bind", source: "ro-src", options: ["rbind", "ro"] },
        // A tmpfs covers the copy's place in the image: the guest binds it from the image's second mount.
        { destination: "/run", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev"] },
        { destination: "/run/under-tmpfs", type: "bind", source: "motd-src", options: ["bind", "ro"] },
        { destination: "/dev/shm", type: "bind", source: "shm-dir", options: ["bind", "rprivate", "nosuid", "noexec", "nodev"] },
      );
    });
    writeFileSync(join(b.dir, "motd-src"), "motd at create\n");
    writeFileSync(join(b.dir, "ro-src"), "key=value\n", { mode: 0o640 });
    mkdirSync(join(b.dir, "shm-dir"));
    const rootfsMotd = existsSync(join(b.rootfs, "etc", "motd"));
    // The container's stdio (and create's --debug lines) go to the bundle's log files.
    ok(rt(["--mode", "vm", "--debug", "create", "--bundle", b.dir, b.id], { env: VM_ENV, stdoutPath: outputPaths(b).stdout, stderrPath: outputPaths(b).stderr, timeoutMs: VM_TIMEOUT }));
    const debug = readFileSync(outputPaths(b).stderr, "utf8");
    expect(debug).toContain(`(/etc/ro.conf): ${b.dir}/ro-src (10 bytes) copied into the rootfs image at /etc/ro.conf, bound read-only: a snapshot -- later changes on the host do not reach the guest`);
    expect(debug).toMatch(/\(\/dev\/shm\): a tmpfs of the guest's own \(rprivate,nosuid,noexec,nodev\) in place of the host's \S+shm-dir \(not a tmpfs mount: default size\)/);
    expect(debug).toMatch(/3 bind-mounted file\(s\), 0 directories written with debugfs in \d+ ms/);
    // A snapshot: what the host writes after create does not reach the guest.
    writeFileSync(join(b.dir, "motd-src"), "changed on the host\n");
    ok(startContainer(b.id));
    waitForStatus(b.id, "stopped", 60_000);
    const out = containerStdout(b).split("\n");
    expect(out.slice(0, 4)).toEqual(["motd at create", "key=value", "motd at create", "-rw-r-----"]);
    expect(out).toContain("/dev/vda /etc/motd ext4 rw,relatime 0 0");
    expect(out).toContain("/dev/vda /etc/ro.conf ext4 ro,relatime 0 0");
    expect(out).toContain("/dev/vda /run/under-tmpfs ext4 ro,relatime 0 0");
    expect(out.find((l) => l.startsWith("shm /dev/shm tmpfs "))).toMatch(/^shm \/dev\/shm tmpfs rw,nosuid,nodev,noexec[ ,]/);
    expect(out).toContain("from-guest");
    expect(out.filter((l) => l.includes("Read-only file system")).length).toBe(2);
    expect(out).toContain("ro 1");
    expect(out).toContain("under 1");
    expect(out).toContain("in-shm");
    // Nothing reached the host: the sources, and the bundle's rootfs.
    expect(readFileSync(join(b.dir, "motd-src"), "utf8")).toBe("changed on the host\n");
    expect(readFileSync(join(b.dir, "ro-src"), "utf8")).toBe("key=value\n");
    expect(readdirSync(join(b.dir, "shm-dir"))).toEqual([]);
    expect(existsSync(join(b.rootfs, "etc", "motd"))).toBe(rootfsMotd);
    ok(rt(["delete", b.id]));
    await expectNothingLeft(b.id);
  }, VM_TIMEOUT);

  testIf(SKIP, "without virtiofsd the rootfs comes as a block image by itself, and --debug says why", () => {
    const b = checkedBundle({ args: ["sh", "-c", "grep ' / ' /proc/mounts"] });
    const r = vrt(["--debug", "run", "--bundle", b.dir, b.id], { env: { ...VM_ENV, NK_VIRTIOFSD: "/nonexistent/virtiofsd" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 ro[ ,]/);
    expect(r.stderr).toContain("rootfs through a block image (ext4): no virtiofsd installed");
  }, VM_TIMEOUT);

  testIf(SKIP, "refused: a bad annotation value, and a pod sandbox with a block rootfs", async () => {
    const bad = blockBundle(["true"], (c) => {
      c.annotations["io.nanokata.vm.rootfs"] = "nbd";
    });
    const r1 = vrt(["run", "--bundle", bad.dir, bad.id]);
    expect(r1.code).not.toBe(0);
    expect(r1.stderr).toContain('annotations["io.nanokata.vm.rootfs"]: must be "block" or "virtiofs", not "nbd"');
    const sandbox = blockBundle(["true"], (c) => {
      c.annotations["io.kubernetes.cri.container-type"] = "sandbox";
    });
    const r2 = vrt(["run", "--bundle", sandbox.dir, sandbox.id]);
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toContain("a pod sandbox's rootfs cannot be a block image");
    for (const id of [bad.id, sandbox.id]) expect(existsSync(join(stateRoot(), id))).toBe(false);
  }, VM_TIMEOUT);
});

describe("podman with a block rootfs", () => {
  const reason = SKIP ?? (which("podman") && which("conmon") ? null : "podman or conmon is not installed");
  testIf(reason, "podman run --annotation io.nanokata.vm.rootfs=block: /etc/hosts, /etc/hostname and a -v file in the image (ro not writable), /dev/shm a tmpfs, exec; a -v directory refused by mounts[i]; rm leaves nothing", async () => {
    // A state root of the test's own (so every process and file of its containers names its directory) and a debug log.
    const { dir, podman, image, importBusybox, teardown } = podmanOnNanoKata("nkt-vm-podblock-", {
      runtimeFlags: (d) => ["--root", join(d, "nk"), "--debug", "--log", join(d, "nk.log")],
      env: (d) => ({ NK_VM_TEMPLATE_DIR: join(d, "templates") }),
    });
    const stateDirs = join(dir, "nk");
    const log = join(dir, "nk.log");
    const vmBlock = ["--network", "none", "--annotation", "io.nanokata.mode=vm", "--annotation", "io.nanokata.vm.rootfs=block"];
    try {
      importBusybox();
      writeFileSync(join(dir, "app.conf"), "setting=1\n");
      const script = [
        "hostname",
        "cat /etc/hostname; echo",
        "grep -c blockhost /etc/hosts",
        "cat /etc/app.conf",
        "(echo x >> /etc/app.conf) 2>&1; echo ro $?",
        "test -f /run/.containerenv && echo containerenv",
        "grep -E ' (/|/dev/shm|/etc/app.conf|/etc/hosts) ' /proc/mounts",
        "echo in-shm > /dev/shm/f && cat /dev/shm/f",
      ].join("; ");
      const r = podman(["run", "--rm", ...vmBlock, "--hostname", "blockhost", "-v", `${join(dir, "app.conf")}:/etc/app.conf:ro`, image, "sh", "-c", script]);
      expect({ code: r.status, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
      const out = r.stdout.split("\n");
      expect(out.slice(0, 5)).toEqual(["blockhost", "blockhost", "1", "setting=1", "sh: can't create /etc/app.conf: Read-only file system"]);
      expect(out).toContain("ro 1");
      expect(out).toContain("containerenv");
      expect(out.find((l) => l.includes(" / "))).toMatch(/^\/dev\/vda \/ ext4 rw[ ,]/);
      expect(out.find((l) => l.includes(" /etc/app.conf "))).toMatch(/^\/dev\/vda \/etc\/app.conf ext4 ro[ ,]/);
      expect(out.find((l) => l.includes(" /etc/hosts "))).toMatch(/^\/dev\/vda \/etc\/hosts ext4 rw[ ,]/);
      // podman's /dev/shm is a 64000k tmpfs on the host (userdata/shm): the guest's has its size and the spec's options.
      expect(out.find((l) => l.includes(" /dev/shm "))).toMatch(/^shm \/dev\/shm tmpfs rw,nosuid,nodev,noexec,relatime,size=64000k /);
      expect(out).toContain("in-shm");
      expect(readFileSync(join(dir, "app.conf"), "utf8")).toBe("setting=1\n");
      // --debug says what became of each bind mount.
      const debug = readFileSync(log, "utf8");
      expect(debug).toContain("copied into the rootfs image at /etc/app.conf, bound read-only: a snapshot -- later changes on the host do not reach the guest");
      expect(debug).toMatch(/\(\/etc\/hosts\): \S+\/userdata\/hosts \(\d+ bytes\) copied into the rootfs image at \/etc\/hosts: a snapshot/);
      expect(debug).toMatch(/\(\/dev\/shm\): a tmpfs of the guest's own \(rprivate,nosuid,noexec,nodev,size=64000k\) in place of the host's \S+\/userdata\/shm: nothing written there is shared with the host/);

      // From a VM template (made by this first run, cloned by the second): the same copies, the clone woken.
      const templated = [...vmBlock, "--annotation", "io.nanokata.vm.template=true", "--hostname", "clonehost"];
      for (const round of ["makes the template", "clones it"]) {
        const t = podman(["run", "--rm", ...templated, image, "sh", "-c", "cat /etc/hostname; echo; grep -c clonehost /etc/hosts"]);
        expect({ round, code: t.status, stderr: t.stderr, out: t.stdout }).toEqual({ round, code: 0, stderr: "", out: "clonehost\n1\n" });
      }
      expect(readFileSync(log, "utf8")).toMatch(/template [0-9a-f]{20} found[\s\S]*woken/);

      // --read-only: the image is mounted read-only, so the mount points busybox lacks (podman's /var/tmp tmpfs) were
      // made in the image at create; the copies are read-only with it, the tmpfs mounts writable.
      const ro = podman(["run", "--rm", ...vmBlock, "--read-only", image, "sh", "-c", "grep ' / ' /proc/mounts; touch /var/tmp/x /run/x /tmp/x && echo tmpfs-writable; (touch /etc/hosts) 2>&1; echo status $?"]);
      expect({ code: ro.status, stderr: ro.stderr }).toEqual({ code: 0, stderr: "" });
      expect(ro.stdout).toMatch(/^\/dev\/vda \/ ext4 ro[ ,][^\n]*\ntmpfs-writable\ntouch: \/etc\/hosts: Read-only file system\nstatus 1\n$/);

      // Detached, then exec (which joins the container's mount namespace: the same copies).
      expect(podman(["run", "-d", "--name", "vmblock", ...vmBlock, "-v", `${join(dir, "app.conf")}:/etc/app.conf`, image, "sleep", "600"]).status).toBe(0);
      const e = podman(["exec", "vmblock", "sh", "-c", "cat /etc/app.conf; grep ' /dev/shm ' /proc/mounts | cut -d' ' -f3"]);
      expect({ code: e.status, out: e.stdout }).toEqual({ code: 0, out: "setting=1\ntmpfs\n" });
      expect(podman(["rm", "--force", "--time", "0", "vmblock"]).status).toBe(0);

      // A directory other than /dev/shm: refused by name before anything is made.
      mkdirSync(join(dir, "data"));
      const refused = podman(["run", "--rm", ...vmBlock, "-v", `${join(dir, "data")}:/data`, image, "true"]);
      expect(refused.status).not.toBe(0);
      expect(refused.stderr).toMatch(new RegExp(`mounts\\[\\d+\\] \\(/data\\): a bind mount of the directory ${join(dir, "data")} cannot reach a VM whose rootfs is a block image`));
      expect(podman(["ps", "--all", "--quiet"]).stdout.trim()).toBe("");
      expect(readdirSync(stateDirs)).toEqual([]);
    } finally {
      teardown();
    }
  }, 3 * VM_TIMEOUT);
});

describe("VM mode with Firecracker (the rootfs as its root drive, the channel over vsock)", () => {
  const reason =
    SKIP ??
    (!which("firecracker") && !process.env.NK_FIRECRACKER
      ? "no firecracker binary on PATH (it cannot be installed here: the driver follows the documented API but is untested)"
      : !existsSync("/dev/kvm")
        ? "Firecracker needs /dev/kvm"
        : !existsSync("/dev/vhost-vsock")
          ? "no vsock transport on this host (/dev/vhost-vsock)"
          : null);
  testIf(reason, "a container runs under Firecracker: output and exit code", () => {
    const b = blockBundle(["sh", "-c", "grep ' / ' /proc/mounts; uname -r; exit 5"]);
    const r = vrt(["--debug", "run", "--bundle", b.dir, b.id], { env: { ...VM_ENV, NK_VM_DRIVER: "firecracker" } });
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 ro[ ,]/);
    expect(r.stderr).toContain("rootfs through a block image (ext4): Firecracker has no virtiofs");
  }, VM_TIMEOUT);
});
