/**
 * Builds a classic BPF program from instructions with symbolic jump targets.
 *
 * Conditional jumps only reach 255 instructions ahead (u8 jt/jf); BPF_JA
 * reaches anywhere (u32 k). When a conditional target is too far, the
 * assembler puts a BPF_JA "trampoline" right after the jump and points the
 * short offset at it. Adding a trampoline can push other jumps out of range,
 * so layout is repeated until nothing changes; trampolines are only ever
 * added, so this terminates.
 */
import {
  BPF_ABS,
  BPF_ALU,
  BPF_AND,
  BPF_JA,
  BPF_JMP,
  BPF_K,
  BPF_LD,
  BPF_RET,
  BPF_W,
  type JumpTest,
  MAX_CONDITIONAL_JUMP,
  type SockFilter,
} from "./bpf.ts";

export interface Label {
  readonly id: number;
  readonly name: string;
}

type Item =
  | { kind: "plain"; insn: SockFilter }
  /** jt/jf undefined: continue with the next instruction. */
  | { kind: "branch"; code: number; k: number; jt: Label | undefined; jf: Label | undefined; farTrue: boolean; farFalse: boolean }
  | { kind: "goto"; target: Label }
  | { kind: "label"; label: Label };

export class ProgramBuilder {
  private readonly items: Item[] = [];
  private readonly placed = new Set<number>();
  private nextLabelId = 0;

  /** A fresh jump target; place() it exactly once, after every jump to it. */
  label(name: string): Label {
    return { id: this.nextLabelId++, name };
  }

  place(label: Label): void {
    if (this.placed.has(label.id)) throw new Error(`label ${label.name} placed twice`);
    this.placed.add(label.id);
    this.items.push({ kind: "label", label });
  }

  /** A = the 32-bit word at `offset` of seccomp_data. */
  loadWord(offset: number): void {
    this.plain(BPF_LD | BPF_W | BPF_ABS, offset);
  }

  /** A &= k. */
  andConstant(k: number): void {
    this.plain(BPF_ALU | BPF_AND | BPF_K, k);
  }

  ret(verdict: number): void {
    this.plain(BPF_RET | BPF_K, verdict);
  }

  /** if (A <test> k) goto jt else goto jf; an omitted target falls through. */
  branch(test: JumpTest, k: number, jt: Label | undefined, jf: Label | undefined): void {
    if (jt === undefined && jf === undefined) throw new Error("a branch needs at least one target");
    this.items.push({ kind: "branch", code: BPF_JMP | test | BPF_K, k: k >>> 0, jt, jf, farTrue: false, farFalse: false });
  }

  goto(target: Label): void {
    this.items.push({ kind: "goto", target });
  }

  private plain(code: number, k: number): void {
    this.items.push({ kind: "plain", insn: { code, jt: 0, jf: 0, k: k >>> 0 } });
  }

  assemble(): SockFilter[] {
    let addresses = this.layout();
    for (;;) {
      // Decide against one consistent layout, then apply: growing an item
      // mid-pass would make the addresses of everything after it stale.
      const growTrue: Item[] = [];
      const growFalse: Item[] = [];
      let pc = 0;
      for (const item of this.items) {
        if (item.kind === "branch") {
          if (!item.farTrue && item.jt && this.distance(addresses, pc, item.jt) > MAX_CONDITIONAL_JUMP) growTrue.push(item);
          if (!item.farFalse && item.jf && this.distance(addresses, pc, item.jf) > MAX_CONDITIONAL_JUMP) growFalse.push(item);
        }
        pc += size(item);
      }
      if (growTrue.length === 0 && growFalse.length === 0) break;
      for (const item of growTrue) if (item.kind === "branch") item.farTrue = true;
      for (const item of growFalse) if (item.kind === "branch") item.farFalse = true;
      addresses = this.layout();
    }
    return this.emit(addresses);
  }

  /** Address of every label under the current trampoline choices. */
  private layout(): Map<number, number> {
    const addresses = new Map<number, number>();
    let pc = 0;
    for (const item of this.items) {
      if (item.kind === "label") addresses.set(item.label.id, pc);
      pc += size(item);
    }
    return addresses;
  }

  /** Offset a jump at `pc` needs to reach `target` (0 = the next instruction). */
  private distance(addresses: Map<number, number>, pc: number, target: Label): number {
    const address = addresses.get(target.id);
    if (address === undefined) throw new Error(`label ${target.name} was never placed`);
    // Classic BPF only jumps forward; that is what guarantees termination.
    if (address <= pc) throw new Error(`jump backwards to ${target.name}`);
    return address - pc - 1;
  }

  private emit(addresses: Map<number, number>): SockFilter[] {
    const out: SockFilter[] = [];
    for (const item of this.items) {
      const pc = out.length;
      switch (item.kind) {
        case "label":
          break;
        case "plain":
          out.push({ ...item.insn });
          break;
        case "goto":
          out.push({ code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: this.distance(addresses, pc, item.target) });
          break;
        case "branch": {
          // Layout: the branch, then its trampolines (true first), then what follows.
          const trueSlot = pc + 1;
          const falseSlot = pc + 1 + (item.farTrue ? 1 : 0);
          const after = pc + size(item);
          const offsetTo = (target: Label | undefined, far: boolean, slot: number): number => {
            if (far) return slot - pc - 1;
            if (target === undefined) return after - pc - 1;
            return this.distance(addresses, pc, target);
          };
          out.push({
            code: item.code,
            jt: offsetTo(item.jt, item.farTrue, trueSlot),
            jf: offsetTo(item.jf, item.farFalse, falseSlot),
            k: item.k,
          });
          if (item.farTrue && item.jt) out.push({ code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: this.distance(addresses, trueSlot, item.jt) });
          if (item.farFalse && item.jf) out.push({ code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: this.distance(addresses, falseSlot, item.jf) });
          break;
        }
      }
    }
    return out;
  }
}

function size(item: Item): number {
  switch (item.kind) {
    case "label":
      return 0;
    case "branch":
      return 1 + (item.farTrue ? 1 : 0) + (item.farFalse ? 1 : 0);
    default:
      return 1;
  }
}
