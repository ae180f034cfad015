/**
 * The cgroup v2 device program in a real kernel. This host is hybrid, so the
 * runtime enforces devices through v1 here; these tests drive the manager
 * with a layout that names only the cgroup2 mount (/sys/fs/cgroup/unified),
 * which is exactly what it does on a pure v2 host: BPF programs attach to any
 * cgroup2 directory, whatever controllers it has.
 *
 * 1. A shell we spawn is moved into /nano-kata-test/<id> on cgroup2; the
 *    program from "deny all, c 1:3 rwm, c 1:5 r" must let it read /dev/zero
 *    and write /dev/null, and refuse (EPERM) reading /dev/full and writing
 *    /dev/zero; an update swaps the program and the answers; destroy detaches
 *    it and removes the directory.
 * 2. Parity with v1 in the kernel itself: for random rule lists, a probe
 *    process in a v1 devices cgroup and one in a v2 cgroup with our program
 *    get the same answer (EPERM or not) for opens and mknods.
 *
 * Only cgroups this file creates are touched, and only processes it spawned.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface, type Interface } from "node:readline";
import { BPF_CGROUP_DEVICE, bpfSyscalls } from "../../src/cgroups/bpf-syscall.ts";
import { detectCgroupLayout, type CgroupLayout } from "../../src/cgroups/detect.ts";
import { openCgroupManager, type CgroupManager } from "../../src/cgroups/index.ts";
import { DEVICE_PROGRAM_NAME } from "../../src/cgroups/v2.ts";
import type { LinuxDeviceCgroup } from "../../src/spec/types.ts";

const PARENT = "/nano-kata-test";
const suffix = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const shellId = `ebpf-${suffix}`;
const parityV1Id = `ebpf-v1-${suffix}`;
const parityV2Id = `ebpf-v2-${suffix}`;
const BUN = process.execPath;

function skipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root (bpf(2) and cgroup writes)";
  if (process.arch !== "x64" && process.arch !== "arm64") return `bpf(2) not wired for ${process.arch}`;
  try {
    const layout = detectCgroupLayout();
    if (layout.v2Mount === undefined) return "no cgroup2 mount";
  } catch (error) {
    return `cannot read the cgroup layout: ${(error as Error).message}`;
  }
  return undefined;
}
const reason = skipReason();
if (reason) console.log(`skipping cgroup v2 device program tests: ${reason}`);

/** The host's cgroup2 mount as the only hierarchy, driving no controller (nothing gets enabled in its root). */
function v2OnlyLayout(): CgroupLayout {
  const real = detectCgroupLayout();
  return { kind: "v2", v1: new Map(), v2Mount: real.v2Mount, v2Controllers: [], mountRoots: real.mountRoots };
}

/** The host's v1 devices hierarchy as the only hierarchy. */
function v1DevicesLayout(): CgroupLayout {
  const real = detectCgroupLayout();
  const mount = real.v1.get("devices")!;
  return { kind: "v1", v1: new Map([["devices", mount]]), v2Mount: undefined, v2Controllers: [], mountRoots: real.mountRoots };
}

const children: ChildProcess[] = [];
const managers: CgroupManager[] = [];
const tempDirs: string[] = [];

async function waitForExit(child: ChildProcess, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await Promise.race([new Promise((resolve) => child.once("exit", resolve)), Bun.sleep(ms)]);
}

afterAll(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid!, "SIGKILL");
      } catch {}
    }
  }
  for (const child of children) await waitForExit(child, 2000);
  for (const manager of managers) {
    try {
      manager.destroy();
    } catch (error) {
      console.log(`cleanup: ${(error as Error).message}`);
    }
  }
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** A child speaking a line protocol on stdin/stdout. */
class LineChild {
  readonly child: ChildProcess;
  private readonly lines: Interface;
  private readonly queue: string[] = [];
  private waiter: (() => void) | undefined;

  constructor(command: string, args: string[], env: Record<string, string>) {
    this.child = spawn(command, args, { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, ...env } });
    children.push(this.child);
    this.lines = createInterface({ input: this.child.stdout! });
    this.lines.on("line", (line) => {
      this.queue.push(line);
      this.waiter?.();
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  send(line: string): void {
    this.child.stdin!.write(line + "\n");
  }

  async next(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`child ${this.pid} exited`);
      if (Date.now() > deadline) throw new Error(`child ${this.pid}: no answer within ${timeoutMs} ms`);
      await Promise.race([new Promise<void>((resolve) => (this.waiter = resolve)), Bun.sleep(50)]);
      this.waiter = undefined;
    }
    return this.queue.shift()!;
  }

  async exit(): Promise<void> {
    this.send("exit");
    await waitForExit(this.child, 5000);
  }
}

/** This process's cgroup2 path for pid ("0::/path"). */
function unifiedCgroupOf(pid: number): string | undefined {
  const line = readFileSync(`/proc/${pid}/cgroup`, "utf8")
    .split("\n")
    .find((l) => l.startsWith("0::"));
  return line?.slice(3);
}

/** Programs attached to dir itself: [id, name]. */
function attachedPrograms(dir: string): { id: number; name: string }[] {
  const bpf = bpfSyscalls();
  const cgroupFd = bpf.openCgroup(dir);
  try {
    return bpf.progQuery(cgroupFd, BPF_CGROUP_DEVICE).map((id) => {
      const fd = bpf.progFdById(id);
      try {
        return { id, name: bpf.progInfo(fd).name };
      } finally {
        bpf.close(fd);
      }
    });
  } finally {
    bpf.close(cgroupFd);
  }
}

/** Whether a program id still exists (programs are freed once detached and closed). */
async function programExists(id: number): Promise<boolean> {
  const bpf = bpfSyscalls();
  for (let i = 0; i < 100; i++) {
    try {
      bpf.close(bpf.progFdById(id));
    } catch {
      return false;
    }
    await Bun.sleep(20);
  }
  return true;
}

// ---------------------------------------------------------------- 1. the shell

const SHELL_PROBE = `
while read -r cmd; do
  case "$cmd" in
    exit) exit 0 ;;
    probe)
      for step in "read-zero:head -c1 /dev/zero" "write-null:echo x > /dev/null" "read-full:head -c1 /dev/full" "write-zero:echo x > /dev/zero"; do
        name=\${step%%:*}
        if err=$(sh -c "\${step#*:}" 2>&1 >"$T/out"); then echo "$name ok"; else echo "$name fail $err"; fi
      done
      echo done ;;
  esac
done
`;

async function probeShell(shell: LineChild): Promise<Record<string, string>> {
  shell.send("probe");
  const result: Record<string, string> = {};
  for (;;) {
    const line = await shell.next();
    if (line === "done") return result;
    const [name, verdict, ...rest] = line.split(" ");
    const message = rest.join(" ");
    result[name!] = verdict === "ok" ? "ok" : message.includes("Operation not permitted") ? "EPERM" : `failed: ${message}`;
  }
}

describe.skipIf(reason !== undefined)("cgroup v2 device program on a real cgroup2 directory", () => {
  test("create -> enforce -> update -> destroy", async () => {
    const temp = mkdtempSync(join(tmpdir(), "nk-ebpf-shell-"));
    tempDirs.push(temp);
    const warnings: string[] = [];
    const manager = openCgroupManager({ cgroupsPath: `${PARENT}/${shellId}`, id: shellId, layout: v2OnlyLayout(), warn: (m) => warnings.push(m) });
    managers.push(manager);
    const dir = manager.paths.unified!;
    expect(dir).toBe(join(detectCgroupLayout().v2Mount!, PARENT, shellId));

    manager.create();
    const shell = new LineChild("sh", ["-c", SHELL_PROBE], { T: temp });
    manager.addProcess(shell.pid);
    expect(unifiedCgroupOf(shell.pid)).toBe(`${PARENT}/${shellId}`);

    // Before any program: the four opens work (so a refusal below is the program's doing).
    expect(await probeShell(shell)).toEqual({ "read-zero": "ok", "write-null": "ok", "read-full": "ok", "write-zero": "ok" });

    const rulesA: LinuxDeviceCgroup[] = [
      { allow: false, access: "rwm" },
      { allow: true, type: "c", major: 1, minor: 3, access: "rwm" },
      { allow: true, type: "c", major: 1, minor: 5, access: "r" },
    ];
    manager.applyResources({ devices: rulesA });
    const first = attachedPrograms(dir);
    expect(first.map((p) => p.name)).toEqual([DEVICE_PROGRAM_NAME]);
    expect(await probeShell(shell)).toEqual({ "read-zero": "ok", "write-null": "ok", "read-full": "EPERM", "write-zero": "EPERM" });

    // update: /dev/full readable, /dev/zero writable only; /dev/null gone.
    const rulesB: LinuxDeviceCgroup[] = [
      { allow: false, access: "rwm" },
      { allow: true, type: "c", major: 1, minor: 7, access: "r" },
      { allow: true, type: "c", major: 1, minor: 5, access: "w" },
    ];
    manager.applyResources({ devices: rulesB }, { update: true });
    const second = attachedPrograms(dir);
    expect(second.map((p) => p.name)).toEqual([DEVICE_PROGRAM_NAME]);
    expect(second[0]!.id).not.toBe(first[0]!.id);
    expect(await programExists(first[0]!.id)).toBe(false); // the replaced program was detached and freed
    expect(await probeShell(shell)).toEqual({ "read-zero": "EPERM", "write-null": "EPERM", "read-full": "ok", "write-zero": "ok" });
    expect(warnings).toEqual([]);

    await shell.exit();
    expect(shell.child.exitCode).toBe(0);
    manager.destroy();
    expect(existsSync(dir)).toBe(false);
    expect(await programExists(second[0]!.id)).toBe(false);
  });

  test("a rule the kernel cannot take leaves no program behind and names the field", () => {
    const manager = openCgroupManager({ cgroupsPath: `${PARENT}/${shellId}-bad`, id: `${shellId}-bad`, layout: v2OnlyLayout() });
    managers.push(manager);
    manager.create();
    let error: unknown;
    try {
      manager.applyResources({ devices: [{ allow: true, type: "c", major: 2 ** 33, access: "r" }] });
    } catch (e) {
      error = e;
    }
    expect((error as { code?: string }).code).toBe("cgroup-resource-invalid");
    expect((error as Error).message).toContain("linux.resources.devices[0].major");
    expect(attachedPrograms(manager.paths.unified!)).toEqual([]);
    manager.destroy();
    expect(existsSync(manager.paths.unified!)).toBe(false);
  });
});

// ---------------------------------------------------------------- 2. parity with v1, in the kernel

const PROBE_SCRIPT = `
import { closeSync, openSync, unlinkSync } from "node:fs";
import { constants } from "node:os";
import { createInterface } from "node:readline";
import { dlopen, FFIType, read } from "bun:ffi";
const libc = dlopen("libc.so.6", {
  mknod: { args: [FFIType.ptr, FFIType.u32, FFIType.u64], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
});
const names = new Map(Object.entries(constants.errno).map(([k, v]) => [v, k]));
const dir = process.env.T;
let n = 0;
for await (const line of createInterface({ input: process.stdin })) {
  if (line === "exit") process.exit(0);
  const req = JSON.parse(line);
  let answer = "ok";
  if (req.op === "open") {
    try { closeSync(openSync(req.path, req.flags)); } catch (e) { answer = e.code ?? String(e); }
  } else {
    const path = dir + "/node" + n++;
    // makedev for major < 4096, minor < 256; S_IFCHR 0o020000, S_IFBLK 0o060000
    const mode = (req.type === "c" ? 0o020000 : 0o060000) | 0o600;
    const rc = libc.symbols.mknod(new TextEncoder().encode(path + "\\0"), mode, req.major * 256 + req.minor);
    if (rc !== 0) answer = names.get(read.i32(libc.symbols.__errno_location(), 0)) ?? "errno?";
    else unlinkSync(path);
  }
  process.stdout.write(answer + "\\n");
}
`;

type Request = { op: "open"; path: string; flags: number } | { op: "mknod"; type: "b" | "c"; major: number; minor: number };

const OPEN_TARGETS: [string, number][] = [
  ["/dev/null", 3],
  ["/dev/zero", 5],
  ["/dev/full", 7],
  ["/dev/urandom", 9],
];
const MAJORS = [1, 8, 240];
const MINORS = [0, 3, 5, 7, 9];

function requests(): Request[] {
  const list: Request[] = [];
  for (const [path] of OPEN_TARGETS) for (const flags of [0, 1, 2]) list.push({ op: "open", path, flags }); // O_RDONLY, O_WRONLY, O_RDWR
  for (const type of ["c", "b"] as const) for (const major of MAJORS) for (const minor of MINORS) list.push({ op: "mknod", type, major, minor });
  return list;
}

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

function randomRules(random: () => number): LinuxDeviceCgroup[] {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
  const rules: LinuxDeviceCgroup[] = [random() < 0.7 ? { allow: false, access: "rwm" } : { allow: true, access: "rwm" }];
  const count = 1 + Math.floor(random() * 7);
  for (let i = 0; i < count; i++) {
    let access = "";
    for (const letter of ["r", "w", "m"]) if (random() < 0.55) access += letter;
    rules.push({
      allow: random() < 0.6,
      type: pick(["c", "c", "b", "a"] as const),
      major: pick([undefined, ...MAJORS]),
      minor: pick([undefined, ...MINORS]),
      access: access || "rwm",
    });
  }
  return rules;
}

async function ask(probe: LineChild, list: Request[]): Promise<string[]> {
  const answers: string[] = [];
  for (const req of list) {
    probe.send(JSON.stringify(req));
    answers.push(await probe.next());
  }
  return answers;
}

const parityReason = reason ?? (detectCgroupLayoutSafe()?.v1.has("devices") ? undefined : "no v1 devices controller to compare with");
function detectCgroupLayoutSafe(): CgroupLayout | undefined {
  try {
    return detectCgroupLayout();
  } catch {
    return undefined;
  }
}
if (!reason && parityReason) console.log(`skipping v1/v2 device parity test: ${parityReason}`);

describe.skipIf(parityReason !== undefined)("v1 devices controller == v2 device program, in the kernel", () => {
  test("24 random rule lists x 42 opens and mknods: same EPERM answers", async () => {
    const temp = mkdtempSync(join(tmpdir(), "nk-ebpf-parity-"));
    tempDirs.push(temp);
    writeFileSync(join(temp, "probe.ts"), PROBE_SCRIPT);
    const v1 = openCgroupManager({ cgroupsPath: `${PARENT}/${parityV1Id}`, id: parityV1Id, layout: v1DevicesLayout() });
    const v2 = openCgroupManager({ cgroupsPath: `${PARENT}/${parityV2Id}`, id: parityV2Id, layout: v2OnlyLayout() });
    managers.push(v1, v2);
    v1.create();
    v2.create();
    const probeV1 = new LineChild(BUN, [join(temp, "probe.ts")], { T: temp });
    const probeV2 = new LineChild(BUN, [join(temp, "probe.ts")], { T: temp });
    // Both answer once before joining, so they are past start-up when the rules land.
    const list = requests();
    const unrestricted = await ask(probeV1, list);
    expect(unrestricted.every((a) => a === "ok")).toBe(true);
    await ask(probeV2, list.slice(0, 1));
    v1.addProcess(probeV1.pid);
    v2.addProcess(probeV2.pid);

    const random = prng(0xdec0de);
    let refusals = 0;
    let grants = 0;
    for (let round = 0; round < 24; round++) {
      const rules = randomRules(random);
      v1.applyResources({ devices: rules }, { update: round > 0 });
      v2.applyResources({ devices: rules }, { update: round > 0 });
      const [a, b] = [await ask(probeV1, list), await ask(probeV2, list)];
      for (let i = 0; i < list.length; i++) {
        const v1Denied = a[i] === "EPERM";
        const v2Denied = b[i] === "EPERM";
        if (v1Denied !== v2Denied) {
          throw new Error(`round ${round} rules ${JSON.stringify(rules)}\n${JSON.stringify(list[i])}: v1 ${a[i]}, v2 ${b[i]}`);
        }
        if (v1Denied) refusals++;
        else grants++;
      }
    }
    // The sample must exercise both answers for the comparison to mean anything.
    expect(refusals).toBeGreaterThan(100);
    expect(grants).toBeGreaterThan(100);

    await probeV1.exit();
    await probeV2.exit();
    v1.destroy();
    v2.destroy();
    expect(existsSync(v1.paths.devices!)).toBe(false);
    expect(existsSync(v2.paths.unified!)).toBe(false);
  });
});
