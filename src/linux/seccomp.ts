/** linux.seccomp -> the BPF program the executor loads (compiled here, in TypeScript, without libseccomp). */
import type { Spec } from "../spec/types.ts";
import type { CompiledSeccompFilter } from "../plan/build.ts";
import type { RuntimeContext } from "./container.ts";
import { NanoKataError } from "../util/errors.ts";

/** Loaded only for a spec with linux.seccomp: the syscall tables are the largest part of the CLI. */
export async function compileContainerSeccomp(spec: Spec, ctx: RuntimeContext): Promise<CompiledSeccompFilter | undefined> {
  const profile = spec.linux?.seccomp;
  if (!profile) return undefined;
  const { compileSeccomp } = await import("../seccomp/compile.ts");
  const nativeArch = process.arch === "arm64" ? "aarch64" : "x86_64";
  const compiled = compileSeccomp(profile, { nativeArch });
  if (compiled.needsNotifyListener) {
    throw new NanoKataError("seccomp-notify-unsupported", "linux.seccomp: SCMP_ACT_NOTIFY is not supported yet (the listener fd cannot be handed to listenerPath)");
  }
  for (const note of compiled.notes) {
    ctx.log.debug(`seccomp: ${note}`);
    ctx.tracer.note(`linux.seccomp: ${note}`);
  }
  ctx.tracer.runtime(`seccomp compiled: ${compiled.program.length / 8} BPF instructions`, "linux.seccomp");
  return { flags: compiled.flags, program: compiled.program };
}
