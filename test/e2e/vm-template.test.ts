/**
 * VM templating (src/vm/template.ts): real microVMs under QEMU (TCG here).
 * A container with io.nanokata.vm.template=true starts as a copy-on-write
 * clone of a guest saved once per VM shape, made on first use or by
 * `vm template init`. Each clone must be its own machine: its CRNG reseeded
 * from the host (two clones never draw the same random bytes), its wall
 * clock the host's, its disk the container's image. A broken template is
 * removed and reported, and nothing of a container or of a half-made
 * template is left. The templates live in a directory of this suite's own
 * (NK_VM_TEMPLATE_DIR), removed at the end.
 */
import { afterAll, describe, expect } from "bun:test";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ok, rt, stateRoot, testIf } from "../helpers/runtime.ts";
import type { Bundle } from "../helpers/bundle.ts";
import { repoRoot } from "../helpers/rootfs.ts";
import { bundlesCheckedAfterEach, ensureVmImage, processesNaming, VM_ENV, VM_TIMEOUT, vmSkipReason, vrt, which } from "./vm-helpers.ts";

const SKIP = vmSkipReason() ?? (which("mkfs.ext4") || existsSync("/usr/sbin/mkfs.ext4") ? null : "mkfs.ext4 is not installed (apt-get install e2fsprogs)");
let imageError = "";
if (!SKIP) imageError = ensureVmImage();

const templates = mkdtempSync(join(tmpdir(), "nkt-templates-"));
const ENV = { ...VM_ENV, NK_VM_TEMPLATE_DIR: templates };
afterAll(() => rmSync(templates, { recursive: true, force: true }));

const finishedTemplates = () => readdirSync(templates).filter((n) => /^[0-9a-f]{20}$/.test(n));

const checkedBundle = bundlesCheckedAfterEach();
function templated(args: string[], override?: (c: Record<string, any>) => void): Bundle {
  return checkedBundle({
    args,
    override: (c) => {
      c.annotations = { ...c.annotations, "io.nanokata.vm.template": "true" };
      override?.(c);
    },
  });
}

const run = (b: Bundle, debug = true) => vrt([...(debug ? ["--debug"] : []), "run", "--bundle", b.dir, b.id], { env: ENV });

describe("VM templating (io.nanokata.vm.template)", () => {
  testIf(SKIP, "vm template init makes the default shape's template; status lists it; a container then starts from it", () => {
    expect(imageError).toBe("");
    const init = rt(["vm", "template", "init"], { noRoot: true, env: ENV, timeoutMs: VM_TIMEOUT });
    expect(init.stderr).toBe("");
    expect(init.code).toBe(0);
    expect(init.stdout).toMatch(/^made in \d+ ms: [0-9a-f]{20}  256 MiB, 1 vCPU, (tcg|kvm), disk 2048 MiB/);
    expect(finishedTemplates()).toHaveLength(1);
    const again = rt(["vm", "template", "init"], { noRoot: true, env: ENV, timeoutMs: VM_TIMEOUT });
    expect(again.stdout).toMatch(/^already made: /);
    const status = rt(["vm", "template", "status"], { noRoot: true, env: ENV });
    expect(status.stdout).toContain(finishedTemplates()[0]!);
    expect(rt(["vm", "check"], { noRoot: true, env: ENV }).stdout).toContain(`templates:    1 made in ${templates}`);

    const b = templated(["sh", "-c", "uname -r; grep ' / ' /proc/mounts; echo out; exit 5"], (c) => (c.root.readonly = false));
    const r = run(b);
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(/-nano-kata\n/);
    expect(r.stdout).toMatch(/\/dev\/vda \/ ext4 rw[ ,]/);
    expect(r.stdout).toContain("out\n");
    // create's shape is init's: the template was found, not made again.
    expect(r.stderr).toContain(`template ${finishedTemplates()[0]} found`);
    expect(r.stderr).toContain("woken (version, guest uptime ms)");
    expect(finishedTemplates()).toHaveLength(1);
  }, VM_TIMEOUT);

  testIf(SKIP, "clones are machines of their own: fresh random bytes, the host's clock, their own disk", () => {
    const probe = "cat /proc/sys/kernel/random/uuid; date +%s; cat /marker 2>/dev/null || echo none; echo written > /marker";
    const first = templated(["sh", "-c", probe], (c) => (c.root.readonly = false));
    const second = templated(["sh", "-c", probe], (c) => (c.root.readonly = false));
    const a = run(first, false);
    const b = run(second, false);
    expect(a.code).toBe(0);
    expect(b.code).toBe(0);
    const [uuidA, clockA, markerA] = a.stdout.trim().split("\n");
    const [uuidB, clockB, markerB] = b.stdout.trim().split("\n");
    // Without the reseed both clones would continue the template's CRNG from the same state.
    expect(uuidA).toMatch(/^[0-9a-f-]{36}$/);
    expect(uuidB).toMatch(/^[0-9a-f-]{36}$/);
    expect(uuidA).not.toBe(uuidB);
    // The template's clock stopped when it was saved; each clone gets the host's.
    const now = Math.floor(Date.now() / 1000);
    expect(Math.abs(Number(clockA) - now)).toBeLessThan(60);
    expect(Math.abs(Number(clockB) - now)).toBeLessThan(60);
    // A write in one clone's disk is nowhere in the next one's.
    expect(markerA).toBe("none");
    expect(markerB).toBe("none");
  }, VM_TIMEOUT);

  testIf(SKIP, "another VM size gets a template of its own, made on first use", () => {
    const before = finishedTemplates().length;
    const b = templated(["sh", "-c", "grep MemTotal /proc/meminfo"], (c) => (c.linux.resources = { ...c.linux.resources, memory: { limit: 200 * 1024 * 1024 } }));
    const r = run(b);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/template [0-9a-f]{20} made in \d+ ms/);
    const kib = Number(/MemTotal:\s+(\d+)/.exec(r.stdout)?.[1]);
    expect(kib).toBeGreaterThan(256 * 1024); // 200 MiB + 96 MiB of overhead, less the kernel's own
    expect(finishedTemplates()).toHaveLength(before + 1);
  }, VM_TIMEOUT);

  testIf(SKIP, "two creates that need the same new template make it once (a lock per template) and both start from it", async () => {
    const env = { ...ENV, NK_VM_TEMPLATE_DIR: join(templates, "concurrent") };
    const runAsync = (b: Bundle) =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const p = spawn(join(repoRoot(), "bin", "nk-runtime"), ["--root", stateRoot(), "--mode", "vm", "--debug", "run", "--bundle", b.dir, b.id], { env, stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let err = "";
        p.stdout!.on("data", (d: Buffer) => (out += d));
        p.stderr!.on("data", (d: Buffer) => (err += d));
        p.on("close", (code) => resolve({ code, out, err }));
      });
    const [a, b] = await Promise.all([runAsync(templated(["echo", "a"])), runAsync(templated(["echo", "b"]))]);
    expect([a.code, a.out, b.code, b.out]).toEqual([0, "a\n", 0, "b\n"]);
    expect([a.err, b.err].filter((e) => /template [0-9a-f]{20} made in/.test(e))).toHaveLength(1);
    expect([a.err, b.err].filter((e) => /template [0-9a-f]{20} found/.test(e))).toHaveLength(1);
    expect(readdirSync(join(templates, "concurrent")).filter((n) => /^[0-9a-f]{20}$/.test(n))).toHaveLength(1);
  }, VM_TIMEOUT);

  testIf(SKIP, "a broken template: it is removed, the VM boots instead (with a warning), nothing of the clone is left; the next create makes a new one", () => {
    // Damage the default template's saved state (made now if an earlier test did not): the clone cannot load it.
    ok(rt(["vm", "template", "init"], { noRoot: true, env: ENV, timeoutMs: VM_TIMEOUT }));
    let damaged = "";
    for (const key of finishedTemplates()) {
      const meta = JSON.parse(readFileSync(join(templates, key, "meta.json"), "utf8"));
      if (meta.inputs.memoryMiB === 256) {
        writeFileSync(join(templates, key, "state"), "not a migration stream");
        damaged = key;
      }
    }
    expect(damaged).not.toBe("");
    const broken = templated(["sh", "-c", "echo booted; grep ' / ' /proc/mounts | cut -d' ' -f1"]);
    const r = run(broken);
    expect({ code: r.code, out: r.stdout }).toEqual({ code: 0, out: "booted\n/dev/vda\n" });
    expect(r.stderr).toContain(`warning: container ${broken.id}: restoring VM template ${damaged} failed, the template was removed: `);
    expect(r.stderr).toContain("Not a migration stream");
    expect(r.stderr).toContain("the VM boots instead");
    expect(finishedTemplates()).not.toContain(damaged);
    expect(processesNaming(templates)).toEqual([]);
    const next = templated(["echo", "fine"]);
    const r2 = run(next);
    expect(r2.stdout).toBe("fine\n");
    expect(r2.stderr).toMatch(/template [0-9a-f]{20} made in \d+ ms/);
  }, VM_TIMEOUT);

  testIf(SKIP, "a rootfs too big for the template's disk: the early-started clone is stopped and the VM boots instead, and says why", () => {
    const env = { ...ENV, NK_VM_TEMPLATE_DISK_MIB: "256" };
    // Made first, so that what is stopped is a clone, not a template being made.
    ok(rt(["vm", "template", "init"], { noRoot: true, env, timeoutMs: VM_TIMEOUT }));
    const b = templated(["echo", "booted"]);
    const r = vrt(["--debug", "run", "--bundle", b.dir, b.id], { env });
    expect(r.stderr).toContain("started early");
    expect(r.stderr).toMatch(/the rootfs needs a \d+ MiB image, more than a template's 256 MiB disk \(NK_VM_TEMPLATE_DISK_MIB\): the VM boots instead of starting from a template/);
    expect(r.stdout).toBe("booted\n");
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain("woken");
    expect(processesNaming(templates)).toEqual([]);
  }, VM_TIMEOUT);

  testIf(SKIP, "create killed while the early-started VM runs: the host process stops it by itself; delete --force leaves nothing", async () => {
    ok(rt(["vm", "template", "init"], { noRoot: true, env: ENV, timeoutMs: VM_TIMEOUT })); // made already, or now: not during create
    // 200 MB of file for mkfs.ext4 to copy: create says "go" only after that, well after the VM has started.
    const b = checkedBundle({
      args: ["true"],
      prepareRootfs: (rootfs) => writeFileSync(join(rootfs, "big"), Buffer.alloc(200 << 20, 1)),
      override: (c) => (c.annotations = { ...c.annotations, "io.nanokata.vm.template": "true" }),
    });
    const stateDir = join(stateRoot(), b.id);
    const create = spawn(join(repoRoot(), "bin", "nk-runtime"), ["--root", stateRoot(), "--mode", "vm", "create", "--bundle", b.dir, b.id], { env: ENV, stdio: "ignore" });
    let vmm = 0;
    for (let i = 0; i < 1500 && !vmm; i++) {
      await Bun.sleep(2);
      try {
        vmm = JSON.parse(readFileSync(join(stateDir, "vm-pids.json"), "utf8")).vmm?.pid ?? 0;
      } catch {}
    }
    expect(vmm).toBeGreaterThan(0);
    expect(existsSync(join(stateDir, "vm.json"))).toBe(false); // no "go" yet
    create.kill("SIGKILL");
    const hostPid = JSON.parse(readFileSync(join(stateDir, "vm-pids.json"), "utf8")).host.pid;
    // No "go" will come: the host process stops its VM and exits, delete or not.
    for (let i = 0; i < 500 && (existsSync(`/proc/${vmm}`) || existsSync(`/proc/${hostPid}`)); i++) await Bun.sleep(10);
    expect(existsSync(`/proc/${vmm}/cmdline`) && readFileSync(`/proc/${vmm}/cmdline`, "latin1").includes("qemu")).toBe(false);
    expect(existsSync(`/proc/${hostPid}/cmdline`) && readFileSync(`/proc/${hostPid}/cmdline`, "latin1").includes(stateDir)).toBe(false);
    ok(rt(["delete", "--force", b.id], { env: ENV }));
    expect(existsSync(stateDir)).toBe(false);
  }, VM_TIMEOUT);

  testIf(SKIP, "a pod sandbox that asks for a template boots (its pod's containers need its virtiofs share), with a warning", () => {
    const sandbox = templated(["sh", "-c", "grep ' / ' /proc/mounts | cut -d' ' -f3"], (c) => (c.annotations["io.kubernetes.cri.container-type"] = "sandbox"));
    const r = run(sandbox, false);
    expect({ code: r.code, out: r.stdout }).toEqual({ code: 0, out: "virtiofs\n" });
    expect(r.stderr).toContain("a pod sandbox's VM needs virtiofs for the pod's containers: the VM boots instead of starting from a template");
  }, VM_TIMEOUT);

  testIf(SKIP, "a bad annotation value, and a template with virtiofs asked for, are refused by name; nothing is left", () => {
    const bad = templated(["true"], (c) => (c.annotations["io.nanokata.vm.template"] = "yes"));
    const r = vrt(["run", "--bundle", bad.dir, bad.id], { env: ENV });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('annotations["io.nanokata.vm.template"]: must be "true" or "false", not "yes"');
    expect(existsSync(join(stateRoot(), bad.id))).toBe(false);
    const conflict = templated(["true"], (c) => (c.annotations["io.nanokata.vm.rootfs"] = "virtiofs"));
    const r2 = vrt(["run", "--bundle", conflict.dir, conflict.id], { env: ENV });
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toContain('a VM started from a template has no virtiofs, but annotations["io.nanokata.vm.rootfs"] asks for it');
    expect(existsSync(join(stateRoot(), conflict.id))).toBe(false);
  }, VM_TIMEOUT);

  testIf(SKIP, "vm template destroy removes them all", () => {
    ok(rt(["vm", "template", "destroy"], { noRoot: true, env: ENV }));
    expect(readdirSync(templates)).toEqual([]);
    expect(rt(["vm", "template", "status"], { noRoot: true, env: ENV }).stdout).toContain("no VM templates");
  }, VM_TIMEOUT);
});
