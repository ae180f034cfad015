/**
 * Debian's stock cloud kernel as the guest kernel (`vm build-image --kernel
 * debian`): `apt-get download` of the package behind linux-image-cloud-amd64,
 * `dpkg-deb -x`, the ELF vmlinux extracted from its LZ4 bzImage, and the
 * modules the guest needs (Debian builds virtio, virtiofs and overlay as
 * modules) with their dependencies. Slower to boot than the minimal kernel,
 * but nothing to compile: the fallback where a kernel build is not wanted.
 */
import { copyFileSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { GUEST_MODULES, kernelPackageName } from "../config.ts";
import { extractVmlinux } from "./bzimage.ts";
import { resolveModules } from "./modules.ts";
import { aptPackage, ImageError, run, sha256File, type AptPackage } from "./tools.ts";

export interface DebianKernelInputs {
  kind: "debian";
  package: AptPackage;
  /** The modules asked for (their dependencies are added at build time). */
  modules: string[];
}

/** The concrete kernel package behind a meta-package (or the package itself), from apt's local lists. */
export function resolveKernelPackage(name = kernelPackageName()): AptPackage {
  let concrete = name;
  const depends = run("apt-cache", ["depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", name]);
  const dep = /^\s*Depends:\s*(linux-image-\S+)/m.exec(depends);
  if (dep && !name.match(/^linux-image-\d/)) concrete = dep[1]!;
  return aptPackage(concrete);
}

export function debianKernelInputs(): DebianKernelInputs {
  return { kind: "debian", package: resolveKernelPackage(), modules: [...GUEST_MODULES] };
}

export interface DebianKernelResult {
  vmlinux: Uint8Array;
  release: string;
  /** Module names in load order, and the wanted ones that are built in. */
  modules: string[];
  builtin: string[];
}

/** Download, unpack, extract vmlinux, copy the modules (NN-name.ko, load order) into `modulesDir`. */
export function buildDebianKernel(inputs: DebianKernelInputs, work: string, modulesDir: string, say: (line: string) => void): DebianKernelResult {
  const { name, version, sha256 } = inputs.package;
  say(`downloading ${name} ${version} (apt-get download)`);
  run("apt-get", ["download", "-q", "-o", "APT::Sandbox::User=root", `${name}=${version}`], { cwd: work });
  const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
  if (!deb) throw new ImageError(`apt-get download ${name}=${version} left no .deb`, "image-apt");
  const debPath = join(work, deb);
  if (sha256File(debPath) !== sha256) throw new ImageError(`${deb}: SHA256 differs from apt's metadata`, "image-apt");
  say(`unpacking ${deb} (dpkg-deb -x)`);
  const tree = join(work, "tree");
  run("dpkg-deb", ["-x", debPath, tree]);
  const vmlinuz = readdirSync(join(tree, "boot")).find((f) => f.startsWith("vmlinuz-"));
  if (!vmlinuz) throw new ImageError(`${deb} has no /boot/vmlinuz-*`, "image-kernel");
  const release = vmlinuz.slice("vmlinuz-".length);
  say(`extracting vmlinux from ${vmlinuz} (LZ4 payload -> ELF)`);
  const vmlinux = extractVmlinux(readFileSync(join(tree, "boot", vmlinuz)));
  const { load, builtin } = resolveModules(join(tree, "lib", "modules", release), inputs.modules);
  say(`modules: ${load.map((m) => m.name).join(" ")}${builtin.length ? `; built in: ${builtin.join(" ")}` : ""}`);
  mkdirSync(modulesDir, { recursive: true });
  load.forEach((m, i) => copyFileSync(m.path, join(modulesDir, `${String(i).padStart(2, "0")}-${m.name}.ko`)));
  return { vmlinux, release, modules: load.map((m) => m.name), builtin };
}
