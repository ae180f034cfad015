/** linux.seccomp -> the BPF program the executor loads (compiled here, in TypeScript, without libseccomp). */
import type { Spec } from "../spec/types.ts";
import type { CompiledSeccompFilter } from "../plan/build.ts";
import type { RuntimeContext } from "./container.ts";
import { NanoKataError } from "../util/errors.ts";

/** Loaded only for a spec with linux.seccomp: the syscall tables are the largest part of the CLI. */
export async function compileContainerSeccomp(
  spec: Spec,
  ctx: RuntimeContext,
  container: { id: string; bundle: string; listenerAllowed: boolean },
): Promise<CompiledSeccompFilter | undefined> {
  const profile = spec.linux?.seccomp;
  if (!profile) return undefined;
  const { compileSeccomp } = await import("../seccomp/compile.ts");
  const nativeArch = process.arch === "arm64" ? "aarch64" : "x86_64";
  const compiled = compileSeccomp(profile, { nativeArch });
  let listener: CompiledSeccompFilter["listener"];
  if (compiled.needsNotifyListener) {
    if (!container.listenerAllowed) {
      throw new NanoKataError("seccomp-notify-unsupported", "linux.seccomp: SCMP_ACT_NOTIFY is not supported in VM mode (the listener is a host socket)");
    }
    if (!profile.listenerPath) throw new NanoKataError("seccomp-notify-no-listener", "linux.seccomp.listenerPath: required with SCMP_ACT_NOTIFY");
    listener = { path: profile.listenerPath, payloadTemplate: listenerPayloadTemplate(spec, container, profile.listenerMetadata) };
  }
  for (const note of compiled.notes) {
    ctx.log.debug(`seccomp: ${note}`);
    ctx.tracer.note(`linux.seccomp: ${note}`);
  }
  ctx.tracer.runtime(`seccomp compiled: ${compiled.program.length / 8} BPF instructions`, "linux.seccomp");
  return { flags: compiled.flags, program: compiled.program, listener };
}

/** A pid no process has: replaced by "{pid}", which the executor fills in with init's host pid. */
const PID_SENTINEL = -7_000_001;

/**
 * runtime-spec config-linux.md "containerProcessState": what the listener
 * receives with the notify fd. The pid is known only to the executor, so the
 * JSON carries a "{pid}" placeholder there.
 */
export function listenerPayloadTemplate(spec: Spec, container: { id: string; bundle: string }, metadata: string | undefined): string {
  const state = { ociVersion: spec.ociVersion, id: container.id, status: "creating", pid: PID_SENTINEL, bundle: container.bundle, annotations: spec.annotations ?? {} };
  const payload = { ociVersion: spec.ociVersion, fds: ["seccompFd"], pid: PID_SENTINEL, metadata: metadata ?? "", state };
  return JSON.stringify(payload).replaceAll(String(PID_SENTINEL), "{pid}");
}
