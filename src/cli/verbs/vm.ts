import type { Verb } from "../main.ts";
import { UsageError } from "../../util/errors.ts";
import { writeStdout } from "../../util/output.ts";

const USAGE = `check [--probe] [--format text|json] | build-image [--kernel minimal|debian] [--force]

  check        can VM mode run here: /dev/kvm and whether KVM boots the guest, qemu, virtiofsd,
               the guest image (present, stale), the accelerator create would use and why
  build-image  build the guest kernel and initramfs into $NK_VM_CACHE (default /var/cache/nano-kata/vm);
               rebuilds only when an input changed. --kernel minimal (default, or $NK_VM_KERNEL): compiled
               from Debian's linux-source-6.1 with src/vm/image/guest-kernel.config (minutes, once; the fast
               one to boot); --kernel debian: Debian's stock cloud kernel and its modules (no compiling)
  host DIR     (internal) the host process of a VM-mode container; create starts it
  member DIR   (internal) the stand-in of a container that joined its pod sandbox's VM
  exec-relay F (internal) the stand-in of an \`exec -d\` process; exec starts it`;

const vm: Verb = {
  summary: "VM mode: check the host, build the guest image",
  usage: USAGE,
  flagsBeforePositionals: false,
  flags: [
    { name: "format", kind: "string", value: "text|json", help: "check: output format (default text)" },
    { name: "probe", kind: "bool", help: "check: boot the guest under KVM now, even if a probe result is cached" },
    { name: "force", kind: "bool", help: "build-image: rebuild even when nothing changed" },
    { name: "kernel", kind: "string", value: "minimal|debian", help: "build-image: the guest kernel (default $NK_VM_KERNEL, else minimal)" },
  ],
  async run(global, flags, args) {
    const [sub, ...rest] = args;
    switch (sub) {
      case "check": {
        const { vmCheck, formatCheck } = await import("../../vm/check.ts");
        const report = await vmCheck({ probe: Boolean(flags.probe) });
        writeStdout(flags.format === "json" ? JSON.stringify(report, null, 2) + "\n" : formatCheck(report));
        return report.ok ? 0 : 1;
      }
      case "build-image": {
        const { buildImage } = await import("../../vm/image/build.ts");
        const { vmCacheDir, parseKernelKind } = await import("../../vm/config.ts");
        const started = Date.now();
        await buildImage({
          dir: vmCacheDir(),
          kernel: typeof flags.kernel === "string" ? parseKernelKind(flags.kernel, "--kernel") : undefined,
          force: Boolean(flags.force),
          progress: (line) => writeStdout(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}\n`),
        });
        return 0;
      }
      case "host": {
        if (rest.length !== 1) throw new UsageError(`"vm host" requires exactly 1 argument (the container's state directory)`);
        const { runHost } = await import("../../vm/host.ts");
        return runHost(rest[0]!, global.log);
      }
      case "member": {
        if (rest.length !== 1) throw new UsageError(`"vm member" requires exactly 1 argument (the container's state directory)`);
        const { runMember } = await import("../../vm/pod.ts");
        return runMember(rest[0]!, global.log);
      }
      case "exec-relay": {
        if (rest.length !== 1) throw new UsageError(`"vm exec-relay" requires exactly 1 argument (the request file)`);
        const { runDetachedRelay } = await import("../../vm/exec.ts");
        return runDetachedRelay(rest[0]!, global.log);
      }
      default:
        throw new UsageError(sub ? `no such vm command: ${sub} (check, build-image)` : `usage: nk-runtime vm ${USAGE}`);
    }
  },
};
export default vm;
