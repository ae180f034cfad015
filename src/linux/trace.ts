/**
 * --trace: print the plan as executed, one line per op: where it ran, what it
 * did, the config.json field that caused it, and the executor's own result.
 * Only lines the executor (or the runtime itself) reported are printed, so the
 * trace shows what happened, not what was intended.
 */
import { OpName, Section, type PlanOp } from "../plan/ops.ts";

const WHERE: Record<number, string> = { [Section.Pre]: "stage0", [Section.Parent]: "parent", [Section.Init]: "init" };

function showArg(a: string | Uint8Array): string {
  if (typeof a !== "string") return `<${a.length} bytes>`;
  if (a === "") return '""';
  if (a.length > 60) return JSON.stringify(a.slice(0, 57) + "...");
  return /[\s"]/.test(a) ? JSON.stringify(a) : a;
}

export class Tracer {
  private n = 0;
  constructor(
    readonly enabled: boolean,
    private readonly out: (line: string) => void = (l) => process.stderr.write(l + "\n"),
  ) {}

  /** A step the TypeScript side performed itself (cgroups, state, hooks). */
  runtime(action: string, source: string, result = "ok"): void {
    if (!this.enabled) return;
    this.out(`${String(++this.n).padStart(3)} runtime ${action.padEnd(44)} <- ${source}  [${result}]`);
  }

  /** An op the executor reported back. */
  op(op: PlanOp, result: string): void {
    if (!this.enabled) return;
    const line = `${OpName[op.code]} ${op.args.map(showArg).join(" ")}`;
    this.out(`${String(++this.n).padStart(3)} ${WHERE[op.section]!.padEnd(7)} ${line.padEnd(44)} <- ${op.source}  [${result}]`);
  }

  note(text: string): void {
    if (this.enabled) this.out(`    note    ${text}`);
  }
}
