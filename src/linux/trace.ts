/**
 * --trace: print the plan as executed, one line per op: where it ran, what it
 * did, the config.json field that caused it, and the executor's own result.
 * Only lines the executor (or the runtime itself) reported are printed, so the
 * trace shows what happened, not what was intended.
 */
import { OpCode, OpName, Section, type PlanOp } from "../plan/ops.ts";
import { CLONE, MS } from "../plan/constants.ts";
import { writeStderr } from "../util/output.ts";

const WHERE: Record<number, string> = { [Section.Pre]: "stage0", [Section.Parent]: "parent", [Section.Init]: "init" };

function showArg(a: string | Uint8Array): string {
  if (typeof a !== "string") return `<${a.length} bytes>`;
  if (a === "") return '""';
  if (a.length > 60) return JSON.stringify(a.slice(0, 57) + "...");
  return /[\s"]/.test(a) ? JSON.stringify(a) : a;
}

/** Show a flags word by name: a learner reads MS_BIND|MS_REC, not 20480. */
function flagNames(value: string, table: Record<string, number>, prefix: string): string {
  let rest = Number(value);
  if (!Number.isInteger(rest) || rest === 0) return value;
  const names: string[] = [];
  for (const [name, bit] of Object.entries(table)) {
    if ((rest & bit) === bit) {
      names.push(prefix + name);
      rest &= ~bit;
    }
  }
  if (rest) names.push(`0x${rest.toString(16)}`);
  return names.join("|");
}

/** Which argument of which op is a flags word. */
const FLAG_ARGS: Partial<Record<number, [index: number, table: Record<string, number>, prefix: string]>> = {
  [OpCode.CLONE]: [0, CLONE, "CLONE_"],
  [OpCode.UNSHARE]: [0, CLONE, "CLONE_"],
  [OpCode.MOUNT]: [3, MS, "MS_"],
  [OpCode.MOUNT_IN_ROOT]: [4, MS, "MS_"],
  [OpCode.REMOUNT_IN_ROOT]: [2, MS, "MS_"],
};

/** `rootfs`, when given, is shown as <rootfs>: it is the first argument of most mount ops. */
export function describeOp(op: PlanOp, rootfs?: string): string {
  const args = op.args.map((a, i) => {
    const flags = FLAG_ARGS[op.code];
    if (rootfs && a === rootfs) return "<rootfs>";
    return flags && flags[0] === i && typeof a === "string" ? flagNames(a, flags[1], flags[2]) : showArg(a);
  });
  return `${OpName[op.code]} ${args.join(" ")}`;
}

export class Tracer {
  private n = 0;
  private rootfs?: string;
  constructor(
    readonly enabled: boolean,
    private readonly out: (line: string) => void = (l) => writeStderr(l + "\n"),
  ) {}

  /** Abbreviate the container's rootfs path in op arguments from now on. */
  setRootfs(path: string): void {
    this.rootfs = path;
    this.note(`<rootfs> = ${path}`);
  }

  /** A step the TypeScript side performed itself (cgroups, state, hooks). */
  runtime(action: string, source: string, result = "ok"): void {
    if (!this.enabled) return;
    this.out(`${String(++this.n).padStart(3)} runtime ${action.padEnd(44)} <- ${source}  [${result}]`);
  }

  /** An op the executor reported back. */
  op(op: PlanOp, result: string): void {
    if (!this.enabled) return;
    const line = describeOp(op, this.rootfs);
    this.out(`${String(++this.n).padStart(3)} ${WHERE[op.section]!.padEnd(7)} ${line.padEnd(44)} <- ${op.source}  [${result}]`);
  }

  /**
   * An op init carries out after REPORT_READY, when it has no channel left to
   * report on (WAIT_FIFO, startContainer hooks, a late SECCOMP, EXEC): shown
   * unnumbered, so the trace still says what will happen and why.
   */
  later(op: PlanOp): void {
    if (!this.enabled) return;
    const line = describeOp(op, this.rootfs);
    this.out(`    ${"later".padEnd(7)} ${line.padEnd(44)} <- ${op.source}  [after ready: not reported]`);
  }

  note(text: string): void {
    if (this.enabled) this.out(`    note    ${text}`);
  }
}
