/**
 * `nk-runtime features` reports whether VM mode can run here, from cheap
 * facts only (src/vm/availability.ts): the binaries and the guest image.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VM_FEATURE_ANNOTATIONS, vmFeatureAnnotations } from "../../src/vm/availability.ts";

const saved = { ...process.env };
const dirs: string[] = [];
afterEach(() => {
  for (const k of ["NK_QEMU", "NK_VIRTIOFSD", "NK_MKFS_EXT4", "NK_VM_CACHE"]) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("VM mode in `features`", () => {
  test("names every missing piece: hypervisor, virtiofsd, guest image", async () => {
    const empty = mkdtempSync(join(tmpdir(), "nk-features-"));
    dirs.push(empty);
    process.env.NK_QEMU = join(empty, "no-qemu");
    process.env.NK_VIRTIOFSD = join(empty, "no-virtiofsd");
    process.env.NK_MKFS_EXT4 = join(empty, "no-mkfs.ext4");
    process.env.NK_VM_CACHE = empty;
    const a = await vmFeatureAnnotations();
    expect(a[VM_FEATURE_ANNOTATIONS.modes]).toBe("container,vm");
    expect(a[VM_FEATURE_ANNOTATIONS.vm]).toBe(`unavailable: no qemu-system-x86_64; no virtiofsd and no mkfs.ext4; no guest image in ${empty} (nk-runtime vm build-image)`);
    // Without an image and a hypervisor there is no accelerator to name.
    expect(a[VM_FEATURE_ANNOTATIONS.accelerator]).toBeUndefined();
  });

  test("the CLI prints them beside runc's fields", () => {
    const r = Bun.spawnSync([join(import.meta.dir, "../../bin/nk-runtime"), "features"], { env: { ...process.env, NK_VM_CACHE: "/nonexistent-nk-cache" } });
    const report = JSON.parse(r.stdout.toString());
    expect(report.ociVersionMax).toMatch(/^1\./);
    expect(report.annotations[VM_FEATURE_ANNOTATIONS.vm]).toContain("no guest image in /nonexistent-nk-cache");
  });
});
