/**
 * A cheap answer to "can VM mode run here?" for `nk-runtime features`: the
 * same facts `vm check` reports, minus everything that costs time (no QEMU
 * start, no `qemu --version`, no KVM probe, no apt metadata). Tools such as
 * podman call `features` to decide what to ask for, so it must stay fast;
 * `vm check` is the thorough version.
 */
import { qemuPath, virtiofsdPath, vmCacheDir } from "./config.ts";
import { mkfsPath } from "./rootfs-image.ts";
import { chooseAccelerator } from "./check.ts";
import { findImage } from "./image/build.ts";

/** The annotation keys `features` reports VM mode under (runc puts its own facts in `annotations` too). */
export const VM_FEATURE_ANNOTATIONS = {
  modes: "io.nanokata.modes",
  vm: "io.nanokata.vm",
  accelerator: "io.nanokata.vm.accelerator",
} as const;

export async function vmFeatureAnnotations(): Promise<Record<string, string>> {
  const problems: string[] = [];
  const qemu = qemuPath();
  if (!qemu) problems.push("no qemu-system-x86_64");
  // Without virtiofsd the rootfs can still come as an ext4 image (rootfs-image.ts), which needs mkfs.ext4.
  if (!virtiofsdPath() && !mkfsPath()) problems.push("no virtiofsd and no mkfs.ext4");
  const image = findImage(vmCacheDir());
  if (!image) problems.push(`no guest image in ${vmCacheDir()} (nk-runtime vm build-image)`);
  const out: Record<string, string> = {
    [VM_FEATURE_ANNOTATIONS.modes]: "container,vm",
    [VM_FEATURE_ANNOTATIONS.vm]: problems.length ? `unavailable: ${problems.join("; ")}` : "available",
  };
  if (image && qemu) {
    // probe:false reads the cached KVM probe only; `vm check` runs it.
    const accel = await chooseAccelerator(image, { probe: false });
    out[VM_FEATURE_ANNOTATIONS.accelerator] = `${accel.accel}: ${accel.reason}`;
  }
  return out;
}
