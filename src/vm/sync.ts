/**
 * The executor's sync lines as a VM-mode host sees them (SYNCOUT frames from
 * the guest): the same "ok <op> <detail>" / "err <op> <errno> <message>"
 * lines as in container mode (src/linux/executor.ts), traced against the op
 * they name. Shared by the host process (init) and the exec/member relay.
 */
import { OpCode, Section, type PlanOp } from "../plan/ops.ts";
import type { Tracer } from "../linux/trace.ts";
import { VmError } from "./driver.ts";

/** Trace an "ok" or "err" line; an "err" comes back as the error to report (naming the op's config.json field). */
export function opResult(ops: readonly PlanOp[], tracer: Tracer, kind: "ok" | "err", rest: string[]): VmError | undefined {
  const op = ops[Number(rest[0])];
  if (kind === "ok") {
    if (op) tracer.op(op, rest.slice(1).join(" ") || "ok");
    return undefined;
  }
  const message = rest.slice(2).join(" ");
  if (op) tracer.op(op, `failed: ${message}`);
  return new VmError("executor-op-failed", op ? `${message} (${op.source})` : message);
}

/** At "ready": what init still does once released cannot be reported any more; list it as "later". */
export function traceAfterReady(ops: readonly PlanOp[], tracer: Tracer): void {
  const at = ops.findIndex((op) => op.code === OpCode.REPORT_READY);
  for (const op of ops.slice(at + 1)) if (op.section === Section.Init) tracer.later(op);
}
