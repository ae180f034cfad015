import type { Verb } from "../main.ts";
import { UsageError } from "../../util/errors.ts";
import { writeStdout } from "../../util/output.ts";

const USAGE = `check [--probe] [--format text|json] | build-image [--kernel minimal|debian] [--force] | template init|status|destroy

  check        can VM mode run here: /dev/kvm and whether KVM boots the guest, qemu, virtiofsd,
               the guest image (present, stale), the accelerator create would use and why
  build-image  build the guest kernel and initramfs into $NK_VM_CACHE (default /var/cache/nano-kata/vm);
               rebuilds only when an input changed. --kernel minimal (default, or $NK_VM_KERNEL): compiled
               from Debian's linux-source-6.1 with src/vm/image/guest-kernel.config (minutes, once; the fast
               one to boot); --kernel debian: Debian's stock cloud kernel and its modules (no compiling)
  template     VM templates (containers with io.nanokata.vm.template=true start as clones of a saved guest):
               init [--memory MIB] [--vcpus N] makes the one a container of that size uses (default 256, 1;
               create also makes it on first use); status lists them; destroy removes them all.
               In $NK_VM_TEMPLATE_DIR (default /run/nano-kata/vm-templates)
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
    { name: "memory", kind: "string", value: "MIB", help: "template init: the VM's memory (default 256)" },
    { name: "vcpus", kind: "string", value: "N", help: "template init: the VM's vCPUs (default 1)" },
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
      case "template": {
        const t = await import("../../vm/template.ts");
        const [action, ...more] = rest;
        if (more.length) throw new UsageError(`"vm template ${action}" takes no further arguments`);
        if (action === "status") {
          writeStdout(t.describeTemplates(t.listTemplates()));
          return 0;
        }
        if (action === "destroy") {
          writeStdout(`removed ${t.removeTemplates()} VM template(s) from ${t.templateDir()}\n`);
          return 0;
        }
        if (action !== "init") throw new UsageError(`usage: nk-runtime vm template init [--memory MIB] [--vcpus N] | status | destroy`);
        const number = (flag: string, fallback: number, min: number) => {
          const raw = flags[flag];
          if (raw === undefined) return fallback;
          const n = Number(raw);
          if (!Number.isInteger(n) || n < min) throw new UsageError(`invalid --${flag} ${JSON.stringify(raw)}: expected a whole number of at least ${min}`);
          return n;
        };
        const started = Date.now();
        const { template, made } = await t.initTemplate({ memoryMiB: number("memory", 256, 128), vcpus: number("vcpus", 1, 1) }, global.log);
        writeStdout(`${made ? `made in ${Date.now() - started} ms` : "already made"}: ${t.describeTemplates([template])}`);
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
        throw new UsageError(sub ? `no such vm command: ${sub} (check, build-image, template)` : `usage: nk-runtime vm ${USAGE}`);
    }
  },
};
export default vm;
