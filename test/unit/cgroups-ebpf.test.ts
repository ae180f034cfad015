/**
 * The cgroup v2 device program: generated eBPF, run by the interpreter,
 * against a reference model of the v1 devices controller written here in the
 * kernel's own terms (security/device_cgroup.c: devcgroup_update_access,
 * dev_exception_add/rm, match_exception, match_exception_partial), fed the
 * same devices.allow/deny lines the v1 driver writes.
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  compileDeviceProgram,
  emulateDeviceCgroup,
  encodeInstructions,
  generateDeviceProgram,
  modelAllows,
  type EbpfInstruction,
} from "../../src/cgroups/devices-ebpf.ts";
import { DEFAULT_ALLOWED_DEVICE_RULES, deviceRulesToV1Writes, type DeviceWrite } from "../../src/cgroups/devices.ts";
import { checkDeviceProgram, decodeProgram, deviceProgramAllows, prepareDeviceProgram } from "../../src/cgroups/ebpf-interpret.ts";
import { CgroupError } from "../../src/cgroups/errors.ts";
import { applyV2Devices, DEVICE_PROGRAM_NAME, removeV2DevicePrograms } from "../../src/cgroups/v2.ts";
import type { LinuxDeviceCgroup } from "../../src/spec/types.ts";
import { fakeBpf } from "../helpers/fake-bpf.ts";

const BLOCK = 1;
const CHAR = 2;
const M = 1; // mknod
const R = 2;
const W = 4;
const RW = R | W;

// ---------------------------------------------------------------- reference: the v1 kernel

interface KernelException {
  type: number;
  major: number;
  minor: number;
  access: number;
}

/** A device cgroup as security/device_cgroup.c keeps it, written from the kernel source, not from devices-ebpf.ts. */
class KernelDeviceCgroup {
  behaviorAllow = true; // a child of the root starts as its parent: allow-all
  exceptions: KernelException[] = [];

  write(file: "devices.allow" | "devices.deny", line: string): void {
    if (line.startsWith("a")) {
      this.exceptions = [];
      this.behaviorAllow = file === "devices.allow";
      return;
    }
    const ex: KernelException = { type: line[0] === "b" ? BLOCK : CHAR, major: 0, minor: 0, access: 0 };
    const [numbers, letters = ""] = line.slice(2).split(" ");
    const [major, minor] = numbers!.split(":");
    ex.major = major === "*" ? 0xffffffff : Number(major);
    ex.minor = minor === "*" ? 0xffffffff : Number(minor);
    for (const c of letters) ex.access |= c === "r" ? R : c === "w" ? W : M;
    const add = file === "devices.allow" ? !this.behaviorAllow : this.behaviorAllow;
    if (add) this.add(ex);
    else this.remove(ex);
  }

  private add(ex: KernelException): void {
    let merged = false;
    for (const walk of this.exceptions) {
      if (walk.type !== ex.type || walk.major !== ex.major || walk.minor !== ex.minor) continue;
      walk.access |= ex.access;
      merged = true;
    }
    if (!merged) this.exceptions.push({ ...ex });
  }

  private remove(ex: KernelException): void {
    for (const walk of [...this.exceptions]) {
      if (walk.type !== ex.type || walk.major !== ex.major || walk.minor !== ex.minor) continue;
      walk.access &= ~ex.access;
      if (!walk.access) this.exceptions.splice(this.exceptions.indexOf(walk), 1);
    }
  }

  /** devcgroup_legacy_check_permission. */
  check(type: number, major: number, minor: number, access: number): boolean {
    if (this.behaviorAllow) {
      // match_exception_partial: any overlap refuses.
      for (const ex of this.exceptions) {
        if (type & BLOCK && !(ex.type & BLOCK)) continue;
        if (type & CHAR && !(ex.type & CHAR)) continue;
        if (ex.major !== 0xffffffff && major !== 0xffffffff && ex.major !== major) continue;
        if (ex.minor !== 0xffffffff && minor !== 0xffffffff && ex.minor !== minor) continue;
        if (!(access & ex.access)) continue;
        return false;
      }
      return true;
    }
    // match_exception: one exception must hold the whole request.
    for (const ex of this.exceptions) {
      if (type & BLOCK && !(ex.type & BLOCK)) continue;
      if (type & CHAR && !(ex.type & CHAR)) continue;
      if (ex.major !== 0xffffffff && ex.major !== major) continue;
      if (ex.minor !== 0xffffffff && ex.minor !== minor) continue;
      if (access & ~ex.access) continue;
      return true;
    }
    return false;
  }
}

function kernelAfter(writes: readonly DeviceWrite[]): KernelDeviceCgroup {
  const cgroup = new KernelDeviceCgroup();
  for (const w of writes) cgroup.write(w.file, w.value);
  return cgroup;
}

// ---------------------------------------------------------------- random rule lists (fixed seed)

/** mulberry32: a tiny deterministic PRNG, so a failure reproduces. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const MAJORS = [1, 5, 8, 136, 0x80000001];
const MINORS = [0, 3, 5, 7];

function randomRules(random: () => number): LinuxDeviceCgroup[] {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
  const rules: LinuxDeviceCgroup[] = [];
  const count = Math.floor(random() * 9);
  for (let i = 0; i < count; i++) {
    let access: string | undefined = "";
    for (const letter of ["r", "w", "m"]) if (random() < 0.5) access += letter;
    if (access === "" && random() < 0.5) access = undefined; // absent and "" both mean rwm
    if (access && random() < 0.3) access = [...access].reverse().join("");
    rules.push({
      allow: random() < 0.6,
      type: pick(["a", "b", "c", "c", undefined] as const),
      major: pick([undefined, -1, ...MAJORS]),
      minor: pick([undefined, -1, ...MINORS]),
      access,
    });
  }
  return rules;
}

/** Every request over the numbers the rules use, plus ones they do not. */
function* requests(): Generator<{ type: number; major: number; minor: number; access: number }> {
  for (const type of [BLOCK, CHAR]) {
    for (const major of [...MAJORS, 7]) {
      for (const minor of [...MINORS, 9]) {
        for (let access = 1; access <= 7; access++) yield { type, major, minor, access };
      }
    }
  }
}

describe("device program == v1 controller (property test, seed 0x5eed)", () => {
  test("1000 random rule lists x 420 requests: program, model and kernel reference agree", () => {
    const random = prng(0x5eed);
    let checks = 0;
    let allowed = 0;
    const modes = { allowAll: 0, denyAll: 0 };
    for (let round = 0; round < 1000; round++) {
      const rules = randomRules(random);
      // Half the lists start with deny-all, as runc and nano-kata configs do. The
      // writes always begin with "a" to devices.deny, so for the other half an
      // allow-all somewhere in the list switches the default midway.
      if (round % 2 === 0) rules.unshift({ allow: false, access: "rwm" });
      else rules.splice(Math.floor(random() * (rules.length + 1)), 0, { allow: true, type: "a", access: "rwm" });
      const writes = deviceRulesToV1Writes(rules);
      const kernel = kernelAfter(writes);
      const program = compileDeviceProgram(rules);
      const run = prepareDeviceProgram(program.bytecode);
      modes[program.model.defaultAllow ? "allowAll" : "denyAll"]++;
      for (const r of requests()) {
        const expected = kernel.check(r.type, r.major, r.minor, r.access);
        const got = run(r) === 1n;
        if (got !== expected || modelAllows(program.model, r.type, r.major, r.minor, r.access) !== expected) {
          throw new Error(`round ${round}: ${JSON.stringify(rules)}\nrequest ${JSON.stringify(r)}: kernel ${expected}, program ${got}`);
        }
        checks++;
        if (got) allowed++;
      }
    }
    expect(checks).toBe(1000 * 420);
    // The sample exercises both verdicts and both default behaviours.
    expect(allowed).toBeGreaterThan(checks * 0.1);
    expect(allowed).toBeLessThan(checks * 0.9);
    expect(modes.allowAll).toBeGreaterThan(300);
    expect(modes.denyAll).toBeGreaterThan(300);
  });

  test("a reference that lets the last matching rule win disagrees with v1, and the program sides with v1", () => {
    // allow r, then allow w on the same device: v1 merges them, so O_RDWR (r|w) is allowed.
    const merged: LinuxDeviceCgroup[] = [
      { allow: false, access: "rwm" },
      { allow: true, type: "c", major: 1, minor: 3, access: "r" },
      { allow: true, type: "c", major: 1, minor: 3, access: "w" },
    ];
    expect(kernelAfter(deviceRulesToV1Writes(merged)).check(CHAR, 1, 3, RW)).toBe(true);
    expect(deviceProgramAllows(compileDeviceProgram(merged).bytecode, { type: CHAR, major: 1, minor: 3, access: RW })).toBe(true);

    // allow-all with "deny w": v1 refuses O_RDWR, which asks for r and w at once.
    const denyWrite: LinuxDeviceCgroup[] = [{ allow: true, access: "rwm" }, { allow: false, type: "c", major: 1, minor: 3, access: "w" }];
    const p = compileDeviceProgram(denyWrite).bytecode;
    expect(deviceProgramAllows(p, { type: CHAR, major: 1, minor: 3, access: RW })).toBe(false);
    expect(deviceProgramAllows(p, { type: CHAR, major: 1, minor: 3, access: R })).toBe(true);
    expect(deviceProgramAllows(p, { type: BLOCK, major: 1, minor: 3, access: W })).toBe(true);
  });
});

describe("v1 quirks the model keeps, and reports", () => {
  test("a deny inside an allowed wildcard is a no-op on v1; the program keeps it a no-op and `ignored` names it", () => {
    const rules: LinuxDeviceCgroup[] = [
      { allow: false, access: "rwm" },
      { allow: true, type: "c", major: 1, access: "rwm" },
      { allow: false, type: "c", major: 1, minor: 3, access: "w" },
    ];
    const program = compileDeviceProgram(rules);
    expect(deviceProgramAllows(program.bytecode, { type: CHAR, major: 1, minor: 3, access: W })).toBe(true);
    expect(program.model.ignored).toEqual([{ field: "linux.resources.devices[2]", rule: "devices.deny c 1:3 w", survivor: "c 1:* rwm" }]);
  });

  test("a wildcard deny leaves a narrower allow standing, and is reported", () => {
    const rules: LinuxDeviceCgroup[] = [
      { allow: false, access: "rwm" },
      { allow: true, type: "c", major: 1, minor: 3, access: "rwm" },
      { allow: false, type: "c", major: 1, access: "rwm" },
    ];
    const program = compileDeviceProgram(rules);
    expect(deviceProgramAllows(program.bytecode, { type: CHAR, major: 1, minor: 3, access: R })).toBe(true);
    expect(program.model.ignored.map((i) => i.survivor)).toEqual(["c 1:3 rwm"]);
  });

  test("an exact deny removes access bits of the exact exception", () => {
    const model = emulateDeviceCgroup(
      deviceRulesToV1Writes([
        { allow: false, access: "rwm" },
        { allow: true, type: "b", major: 8, minor: 0, access: "rwm" },
        { allow: false, type: "b", major: 8, minor: 0, access: "wm" },
      ]),
    );
    expect(model).toEqual({ defaultAllow: false, exceptions: [{ type: BLOCK, major: 8, minor: 0, access: R }], ignored: [] });
  });

  test("type a with numbers becomes a char and a block rule (the kernel reads any 'a' line as allow/deny-all)", () => {
    const program = compileDeviceProgram([{ allow: false, access: "rwm" }, { allow: true, type: "a", major: 4, minor: 1, access: "r" }]);
    expect(program.model.exceptions.map((e) => e.type).sort()).toEqual([BLOCK, CHAR]);
  });

  test("numbers v1 cannot take are refused, naming the rule", () => {
    let error: unknown;
    try {
      compileDeviceProgram([{ allow: true, type: "c", major: 2 ** 32, minor: 1, access: "r" }]);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(CgroupError);
    expect((error as CgroupError).code).toBe("cgroup-resource-invalid");
    expect((error as CgroupError).message).toContain("linux.resources.devices[0].major");
  });
});

describe("generated code", () => {
  test("the prologue's bytes: ldx w r2,[r1+0]; mov32 r3,r2; and32 r3,0xffff; rsh32 r2,16; ldx w r4,[r1+4]; ldx w r5,[r1+8]", () => {
    const bytes = compileDeviceProgram([{ allow: false, access: "rwm" }]).bytecode;
    expect([...bytes.subarray(0, 48)]).toEqual([
      0x61, 0x12, 0, 0, 0, 0, 0, 0,
      0xbc, 0x23, 0, 0, 0, 0, 0, 0,
      0x54, 0x03, 0, 0, 0xff, 0xff, 0, 0,
      0x74, 0x02, 0, 0, 16, 0, 0, 0,
      0x61, 0x14, 4, 0, 0, 0, 0, 0,
      0x61, 0x15, 8, 0, 0, 0, 0, 0,
    ]); // prettier-ignore
    // deny-all alone: r0 = 0; exit.
    expect([...bytes.subarray(48)]).toEqual([0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]);
  });

  test("program sizes: 8 + 4..5 instructions per exception (+2 for the verdict block)", () => {
    const size = (rules: LinuxDeviceCgroup[]): number => compileDeviceProgram(rules).instructions.length;
    const denyAll: LinuxDeviceCgroup = { allow: false, access: "rwm" };
    expect(size([denyAll])).toBe(8);
    expect(size([{ allow: true, access: "rwm" }])).toBe(8);
    // c 1:3 rwm: type, major, minor, ja = 4; c 1:5 r adds the access test = 5.
    expect(size([denyAll, { allow: true, type: "c", major: 1, minor: 3, access: "rwm" }, { allow: true, type: "c", major: 1, minor: 5, access: "r" }])).toBe(8 + 4 + 5 + 2);
    // The default rules: 7 exact "c M:m rwm" (4 each) and "c 136:* rwm" (3: no minor test).
    expect(size([denyAll, ...DEFAULT_ALLOWED_DEVICE_RULES])).toBe(8 + 7 * 4 + 3 + 2);
  });

  test("a major above 2^31 is compared as 32 bits (JMP32), not as a sign-extended immediate", () => {
    const p = compileDeviceProgram([{ allow: false, access: "rwm" }, { allow: true, type: "c", major: 0x80000001, minor: 1, access: "rwm" }]).bytecode;
    expect(deviceProgramAllows(p, { type: CHAR, major: 0x80000001, minor: 1, access: R })).toBe(true);
    expect(deviceProgramAllows(p, { type: CHAR, major: 1, minor: 1, access: R })).toBe(false);
  });

  test("every generated program passes the verifier-like checks (reachable, forward jumps, initialised registers)", () => {
    const random = prng(7);
    for (let i = 0; i < 200; i++) {
      const { bytecode, instructions } = compileDeviceProgram(randomRules(random));
      expect(checkDeviceProgram(bytecode).length).toBe(instructions.length);
      expect(decodeProgram(bytecode)).toEqual(instructions);
    }
  });
});

describe("the interpreter refuses what the verifier refuses", () => {
  const exit: EbpfInstruction = { code: 0x95, dst: 0, src: 0, off: 0, imm: 0 };
  const r0 = (imm: number): EbpfInstruction => ({ code: 0xb7, dst: 0, src: 0, off: 0, imm });
  const refuses = (insns: EbpfInstruction[], message: string): void => {
    let error: unknown;
    try {
      checkDeviceProgram(encodeInstructions(insns));
    } catch (e) {
      error = e;
    }
    expect((error as CgroupError).code).toBe("cgroup-bpf-invalid");
    expect((error as CgroupError).message).toContain(message);
  };

  test("each defect", () => {
    refuses([exit], "R0 !read_ok");
    refuses([r0(1)], "falls off the end");
    refuses([r0(1), { code: 0x05, dst: 0, src: 0, off: 1, imm: 0 }, exit, exit], "unreachable insn");
    refuses([r0(1), { code: 0x56, dst: 0, src: 0, off: -2, imm: 1 }, exit], "backward jump");
    refuses([r0(1), { code: 0x56, dst: 0, src: 0, off: 5, imm: 1 }, exit], "jump out of the program");
    refuses([{ code: 0x61, dst: 2, src: 1, off: 0, imm: 4 }, r0(1), exit], "reserved fields"); // the offset belongs in off
    refuses([{ code: 0x61, dst: 2, src: 1, off: 12, imm: 0 }, r0(1), exit], "invalid bpf_context access");
    refuses([{ code: 0x61, dst: 2, src: 1, off: 2, imm: 0 }, r0(1), exit], "invalid bpf_context access");
    refuses([{ code: 0xbf, dst: 0, src: 6, off: 0, imm: 0 }, exit], "R6 !read_ok");
    refuses([{ code: 0xb7, dst: 1, src: 0, off: 0, imm: 0 }, r0(1), exit], "R1 must stay");
    refuses([{ code: 0x85, dst: 0, src: 0, off: 0, imm: 1 }, r0(1), exit], "unsupported jump"); // helper calls
  });

  test("a hand-written program runs as written (both branches of a JMP32 jset)", () => {
    // r2 = access_type; w2 >>= 16; if w2 & 4 goto deny; r0 = 1; exit; deny: r0 = 0; exit
    const insns: EbpfInstruction[] = [
      { code: 0x61, dst: 2, src: 1, off: 0, imm: 0 },
      { code: 0x74, dst: 2, src: 0, off: 0, imm: 16 },
      { code: 0x46, dst: 2, src: 0, off: 2, imm: W },
      r0(1),
      exit,
      r0(0),
      exit,
    ];
    const bytes = encodeInstructions(insns);
    expect(deviceProgramAllows(bytes, { type: CHAR, major: 1, minor: 1, access: R })).toBe(true);
    expect(deviceProgramAllows(bytes, { type: CHAR, major: 1, minor: 1, access: RW })).toBe(false);
  });
});

describe("applyV2Devices / removeV2DevicePrograms against an in-memory bpf(2)", () => {
  const dirs: string[] = [];
  const cgroupDir = (): string => {
    const dir = mkdtempSync(join(tmpdir(), "nk-ebpf-cg-"));
    dirs.push(dir);
    return dir;
  };
  const cleanup = (): void => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  };

  const rulesA: LinuxDeviceCgroup[] = [
    { allow: false, access: "rwm" },
    { allow: true, type: "c", major: 1, minor: 3, access: "rwm" },
    { allow: true, type: "c", major: 1, minor: 5, access: "r" },
  ];
  const rulesB: LinuxDeviceCgroup[] = [{ allow: false, access: "rwm" }, { allow: true, type: "c", major: 1, minor: 7, access: "rw" }];

  test("install, replace (only our program), remove; every fd closed", () => {
    try {
      const bpf = fakeBpf();
      const dir = cgroupDir();
      // Another agent's permissive program on the same cgroup must survive our updates.
      const allowAll = compileDeviceProgram([{ allow: true, access: "rwm" }]).bytecode;
      const foreign = bpf.attachForeign(dir, "sd_devices", allowAll);

      const first = applyV2Devices(bpf, dir, rulesA);
      expect(first.replaced).toBe(0);
      expect(bpf.attached(dir)).toEqual([foreign, first.id]);
      expect(bpf.program(first.id)!.name).toBe(DEVICE_PROGRAM_NAME);
      expect(bpf.verdict(dir, { type: CHAR, major: 1, minor: 5, access: R })).toBe(true);
      expect(bpf.verdict(dir, { type: CHAR, major: 1, minor: 5, access: W })).toBe(false);
      expect(bpf.openFds()).toBe(0);

      const second = applyV2Devices(bpf, dir, rulesB);
      expect(second.replaced).toBe(1);
      expect(bpf.attached(dir)).toEqual([foreign, second.id]);
      expect(bpf.verdict(dir, { type: CHAR, major: 1, minor: 5, access: R })).toBe(false);
      expect(bpf.verdict(dir, { type: CHAR, major: 1, minor: 7, access: RW })).toBe(true);
      expect(bpf.openFds()).toBe(0);

      expect(removeV2DevicePrograms(bpf, dir)).toBe(1);
      expect(bpf.attached(dir)).toEqual([foreign]);
      expect(removeV2DevicePrograms(bpf, join(dir, "gone"))).toBe(0);
      expect(bpf.openFds()).toBe(0);
    } finally {
      cleanup();
    }
  });

  test("a failed load or attach keeps the previous program and names linux.resources.devices", () => {
    try {
      const bpf = fakeBpf();
      const dir = cgroupDir();
      const first = applyV2Devices(bpf, dir, rulesA);
      for (const method of ["progLoad", "progAttach"] as const) {
        bpf.failNext(method, "EPERM");
        let error: unknown;
        try {
          applyV2Devices(bpf, dir, rulesB);
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(CgroupError);
        expect((error as CgroupError).code).toBe("cgroup-bpf-failed");
        expect((error as CgroupError).errno).toBe("EPERM");
        expect((error as CgroupError).message).toStartWith("linux.resources.devices: ");
        expect(bpf.attached(dir)).toEqual([first.id]);
        expect(bpf.openFds()).toBe(0);
      }
    } finally {
      cleanup();
    }
  });
});
