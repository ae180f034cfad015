import { NanoKataError } from "../util/errors.ts";

/**
 * Stable codes of the seccomp area. Profile errors name the JSON path of the
 * offending field in the message (`linux.seccomp.syscalls[3].args[0].op: ...`).
 */
export type SeccompErrorCode =
  /** An action name libseccomp does not know, or NOTIFY where it cannot work. */
  | "seccomp-bad-action"
  /** An architecture name outside the runtime-spec list. */
  | "seccomp-bad-arch"
  /** An argument operator outside the runtime-spec list. */
  | "seccomp-bad-operator"
  /** An argument index outside 0..5. */
  | "seccomp-bad-arg-index"
  /** A value that is not an unsigned 64-bit integer, or an errno that does not fit SECCOMP_RET_DATA. */
  | "seccomp-bad-value"
  /** errnoRet / defaultErrnoRet with an action that carries no errno. */
  | "seccomp-errno-not-allowed"
  /** A filter flag name outside the runtime-spec list. */
  | "seccomp-bad-flag"
  /** The compiled program exceeds BPF_MAXINSNS. */
  | "seccomp-program-too-large"
  /** A program the interpreter (and the kernel's checker) would reject. */
  | "seccomp-invalid-bpf";

export class SeccompError extends NanoKataError {
  declare readonly code: SeccompErrorCode;

  constructor(code: SeccompErrorCode, message: string) {
    super(code, message);
  }
}
