/**
 * The minimal guest kernel: built from Debian's linux-source package with our
 * Kconfig fragment (guest-kernel.config) on top of `make allnoconfig`, no
 * modules, and entered by QEMU through its PVH note. Under TCG it boots in a
 * fraction of the stock cloud kernel's time: no ACPI, no PCI, no module
 * loading, no drivers probing for hardware a microVM does not have.
 *
 * The source comes from /usr/src/<package>.tar.xz when that package is
 * installed at the version apt names, else from `apt-get download` +
 * `dpkg-deb -x` into a work directory under the cache (the system is not
 * changed). The build runs `nice`d with one job per CPU, takes minutes, and
 * reports progress; its tree is removed afterwards (~1.5 GB), so the kernel is
 * rebuilt from scratch only when an input changes: the source package's
 * version, the fragment's SHA256, the compiler or the linker.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { kernelConfigFragmentPath, kernelSourcePackageName } from "../config.ts";
import { hasPvhNote } from "./bzimage.ts";
import { aptPackage, ImageError, installedVersion, run, runStreaming, sha256File, toolVersion, type AptPackage } from "./tools.ts";

export interface MinimalKernelInputs {
  kind: "minimal";
  source: AptPackage;
  configSha256: string;
  /** `gcc --version` and `ld --version`, first lines: another compiler makes another kernel. */
  compiler: string;
}

export function minimalKernelInputs(): MinimalKernelInputs {
  const name = kernelSourcePackageName();
  // The installed source (if any) is what gets built; otherwise apt's candidate.
  const installed = installedVersion(name);
  let source: AptPackage;
  if (installed && existsSync(sourceTarball(name))) {
    try {
      source = aptPackage(name, installed);
    } catch {
      source = { name, version: installed, sha256: "" }; // installed, but no longer in apt's lists
    }
  } else {
    source = aptPackage(name);
  }
  const fragment = kernelConfigFragmentPath();
  if (!existsSync(fragment)) throw new ImageError(`the guest kernel's config fragment ${fragment} is missing`, "image-kernel-config");
  return { kind: "minimal", source, configSha256: sha256File(fragment), compiler: `${toolVersion("gcc")}; ${toolVersion("ld")}` };
}

const sourceTarball = (pkg: string) => `/usr/src/${pkg}.tar.xz`;

/**
 * What the build needs besides gcc and make (checked first, so a missing tool
 * fails in a second with the apt-get line rather than minutes into the build):
 * flex and bison (Kconfig's parser), bc (timeconst.h), libelf's headers
 * (objtool, which x86-64 always runs), xz (the source tarball).
 */
export const BUILD_TOOLS = ["gcc", "make", "flex", "bison", "bc", "xz", "tar", "perl"];
export const BUILD_PACKAGES = "gcc make libc6-dev flex bison bc libelf-dev xz-utils";

export function missingBuildTools(): string[] {
  const missing = BUILD_TOOLS.filter((t) => spawnSync("sh", ["-c", `command -v ${t}`], { stdio: "ignore" }).status !== 0);
  if (!existsSync("/usr/include/gelf.h")) missing.push("libelf-dev (gelf.h)");
  return missing;
}

/** Kconfig assignments of a fragment: "CONFIG_X" -> "y" | "n" | "\"string\"" | "64". */
export function parseConfigFragment(text: string): Map<string, string> {
  const wanted = new Map<string, string>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    const unset = /^# (CONFIG_\w+) is not set$/.exec(line);
    if (unset) wanted.set(unset[1]!, "n");
    const set = /^(CONFIG_\w+)=(.*)$/.exec(line);
    if (set) wanted.set(set[1]!, set[2]!);
  }
  return wanted;
}

/** The fragment's assignments the final .config does not carry (Kconfig drops a symbol whose dependencies are unmet, silently). */
export function unmetConfig(fragment: string, finalConfig: string): string[] {
  const have = parseConfigFragment(finalConfig);
  const unmet: string[] = [];
  for (const [symbol, value] of parseConfigFragment(fragment)) {
    const got = have.get(symbol) ?? "n";
    if (got !== value) unmet.push(`${symbol}=${value} (got ${got})`);
  }
  return unmet;
}

/** A rough count of a full build's steps with our fragment, for the first build's progress (later builds use the last count). */
const EXPECTED_STEPS = 1510;

export interface MinimalKernelResult {
  vmlinux: Uint8Array;
  release: string;
  config: string;
  steps: number;
  seconds: number;
}

export async function buildMinimalKernel(
  inputs: MinimalKernelInputs,
  opts: { workParent: string; say: (line: string) => void; previousSteps?: number },
): Promise<MinimalKernelResult> {
  const { say } = opts;
  const missing = missingBuildTools();
  if (missing.length) {
    throw new ImageError(`building the guest kernel needs: ${missing.join(", ")} (apt-get install ${BUILD_PACKAGES}); or use Debian's stock kernel: vm build-image --kernel debian`, "image-build-tools");
  }
  const started = Date.now();
  mkdirSync(opts.workParent, { recursive: true });
  const work = mkdtempSync(join(opts.workParent, ".kernel-"));
  try {
    const { name, version, sha256 } = inputs.source;
    let tarball = sourceTarball(name);
    if (installedVersion(name) !== version || !existsSync(tarball)) {
      say(`downloading ${name} ${version} (apt-get download)`);
      run("apt-get", ["download", "-q", "-o", "APT::Sandbox::User=root", `${name}=${version}`], { cwd: work });
      const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
      if (!deb) throw new ImageError(`apt-get download ${name}=${version} left no .deb`, "image-apt");
      if (sha256 && sha256File(join(work, deb)) !== sha256) throw new ImageError(`${deb}: SHA256 differs from apt's metadata`, "image-apt");
      run("dpkg-deb", ["-x", join(work, deb), join(work, "deb")]);
      rmSync(join(work, deb));
      tarball = join(work, "deb", "usr", "src", `${name}.tar.xz`);
      if (!existsSync(tarball)) throw new ImageError(`${deb} has no usr/src/${name}.tar.xz`, "image-apt");
    } else {
      say(`using the installed ${tarball} (${name} ${version})`);
    }
    say(`unpacking ${tarball.replace(work + "/", "")} (tar -xJ, ~1.5 GB)`);
    run("tar", ["-xJf", tarball, "-C", work]);
    rmSync(join(work, "deb"), { recursive: true, force: true });
    const top = readdirSync(work, { withFileTypes: true }).find((e) => e.isDirectory() && existsSync(join(work, e.name, "Makefile")));
    if (!top) throw new ImageError(`${tarball} holds no kernel tree`, "image-kernel-build");
    const tree = join(work, top.name);

    const fragmentPath = join(work, "guest-kernel.config");
    const fragment = readFileSync(kernelConfigFragmentPath(), "utf8");
    writeFileSync(fragmentPath, fragment); // the fragment as hashed, even if the file changes meanwhile
    // A fixed environment: reproducible version strings, no stray ARCH/CROSS_COMPILE from the caller.
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
      HOME: work,
      LC_ALL: "C",
      KBUILD_BUILD_USER: "nano-kata",
      KBUILD_BUILD_HOST: "build-image",
      KBUILD_BUILD_TIMESTAMP: `${name} ${version}`,
    };
    const make = (args: string[]) => run("make", ["ARCH=x86_64", ...args], { cwd: tree, env });
    say("configuring: make allnoconfig with src/vm/image/guest-kernel.config, then olddefconfig");
    make(["-s", "allnoconfig", `KCONFIG_ALLCONFIG=${fragmentPath}`]);
    make(["-s", "olddefconfig"]);
    const config = readFileSync(join(tree, ".config"), "utf8");
    const unmet = unmetConfig(fragment, config);
    if (unmet.length) throw new ImageError(`guest-kernel.config: Kconfig did not keep ${unmet.join(", ")} (a dependency is missing from the fragment)`, "image-kernel-config");

    const jobs = availableParallelism();
    const expected = opts.previousSteps ?? EXPECTED_STEPS;
    say(`compiling vmlinux (nice make -j${jobs}; about ${expected} steps, minutes on a small machine)`);
    let steps = 0;
    let last = "";
    let reported = Date.now();
    await runStreaming("nice", ["-n", "10", "make", "ARCH=x86_64", `-j${jobs}`, "vmlinux"], {
      cwd: tree,
      env,
      onLine: (line) => {
        const m = /^\s+([A-Z][A-Z0-9_]*)\s+(\S+)/.exec(line);
        if (!m) return;
        steps++;
        last = m[2]!;
        if (Date.now() - reported >= 10_000) {
          reported = Date.now();
          say(`compiling: step ${steps} of ~${expected} (${Math.min(99, Math.round((100 * steps) / expected))}%), ${last}`);
        }
      },
    });
    const release = make(["-s", "kernelrelease"]).trim();
    const vmlinux = readFileSync(join(tree, "vmlinux"));
    if (vmlinux[0] !== 0x7f || vmlinux[1] !== 0x45 || vmlinux[2] !== 0x4c || vmlinux[3] !== 0x46) throw new ImageError("the built vmlinux is not an ELF file", "image-kernel-build");
    if (!hasPvhNote(vmlinux)) throw new ImageError("the built vmlinux has no PVH entry note (CONFIG_PVH)", "image-kernel-build");
    const seconds = Math.round((Date.now() - started) / 1000);
    say(`built ${release} in ${seconds} s (${steps} steps)`);
    return { vmlinux, release, config, steps, seconds };
  } finally {
    say("removing the build tree");
    rmSync(work, { recursive: true, force: true });
  }
}
