// VM templating's pure parts (src/vm/template.ts, the QEMU command lines of
// a template and its clones) and its directory handling on a scratch
// directory. The real thing -- a template made and cloned under QEMU -- is
// test/e2e/vm-template.test.ts.
import { afterAll, afterEach, beforeEach, describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readProcStat } from "../../src/state/proc.ts";
import type { VmConfig } from "../../src/vm/driver.ts";
import { qemuArgs } from "../../src/vm/qemu.ts";
import {
  describeTemplates,
  isStale,
  listTemplates,
  removeAbandonedScratch,
  removeStaleTemplates,
  removeTemplates,
  templateDiskMiB,
  templateKey,
  templateRequested,
  type TemplateInputs,
} from "../../src/vm/template.ts";

const saved = { ...process.env };
afterEach(() => {
  for (const name of ["NK_VM_TEMPLATE", "NK_VM_TEMPLATE_DISK_MIB", "NK_VM_TEMPLATE_DIR"]) {
    if (saved[name] === undefined) delete process.env[name];
    else process.env[name] = saved[name];
  }
});

describe("asking for a template", () => {
  test("the annotation decides; without it NK_VM_TEMPLATE; a bad value names the field", () => {
    delete process.env.NK_VM_TEMPLATE;
    expect(templateRequested(undefined)).toBe(false);
    expect(templateRequested({ "io.nanokata.vm.template": "true" })).toBe(true);
    process.env.NK_VM_TEMPLATE = "1";
    expect(templateRequested({})).toBe(true);
    expect(templateRequested({ "io.nanokata.vm.template": "false" })).toBe(false);
    expect(() => templateRequested({ "io.nanokata.vm.template": "on" })).toThrow('annotations["io.nanokata.vm.template"]: must be "true" or "false", not "on"');
  });

  test("the disk size: 2048 MiB unless NK_VM_TEMPLATE_DISK_MIB says otherwise; nonsense is refused by name", () => {
    delete process.env.NK_VM_TEMPLATE_DISK_MIB;
    expect(templateDiskMiB()).toBe(2048);
    process.env.NK_VM_TEMPLATE_DISK_MIB = "512";
    expect(templateDiskMiB()).toBe(512);
    for (const bad of ["12", "1.5", "lots"]) {
      process.env.NK_VM_TEMPLATE_DISK_MIB = bad;
      expect(() => templateDiskMiB()).toThrow("NK_VM_TEMPLATE_DISK_MIB");
    }
  });
});

const inputs: TemplateInputs = {
  layout: 3,
  qemu: { path: "/usr/bin/qemu-system-x86_64", size: 1000, mtimeMs: 1 },
  kernel: { path: "/c/vmlinux", size: 2000, mtimeMs: 2 },
  initramfs: { path: "/c/initramfs.cpio", size: 3000, mtimeMs: 3 },
  cmdline: "console=ttyS0 nk.port=nk.0",
  acpi: false,
  memoryMiB: 256,
  vcpus: 1,
  accel: "tcg",
  driveMiB: 2048,
  nics: 0,
};

describe("a template's key", () => {
  test("the same inputs give the same key; anything that reaches the guest or QEMU changes it", () => {
    expect(templateKey(inputs)).toMatch(/^[0-9a-f]{20}$/);
    expect(templateKey({ ...inputs })).toBe(templateKey(inputs));
    const variants: Partial<TemplateInputs>[] = [
      { memoryMiB: 512 },
      { vcpus: 2 },
      { cmdline: `${inputs.cmdline} nk.debug=1` },
      { accel: "kvm" },
      { driveMiB: 256 },
      { nics: 1 }, // microvm has no hotplug: a clone has its template's cards
      { qemu: { ...inputs.qemu, mtimeMs: 5 } }, // an upgraded QEMU may save devices differently
      { kernel: { ...inputs.kernel, size: 2001 } },
      { initramfs: { ...inputs.initramfs, mtimeMs: 9 } }, // a rebuilt agent
    ];
    const keys = new Set(variants.map((v) => templateKey({ ...inputs, ...v })));
    expect(keys.size).toBe(variants.length);
    expect(keys.has(templateKey(inputs))).toBe(false);
  });
});

const vm: VmConfig = {
  runDir: "/run/x",
  kernel: "/c/vmlinux",
  initramfs: "/c/initramfs.cpio",
  cmdline: "console=ttyS0 nk.port=nk.0",
  acpi: false,
  memoryMiB: 256,
  vcpus: 1,
  accel: "tcg",
  channelName: "nk.0",
  rootDrive: { path: "/s/rootfs.img", readOnly: false },
  startTimeoutMs: 1000,
};
const sockets = { channel: "/run/x/channel.sock", qmp: "/run/x/qmp.sock", console: "/run/x/console.log" };

describe("QEMU command lines of a template and of its clones", () => {
  test("the template's RAM is a shared file (its writes reach the file); it boots the kernel", () => {
    const template = { role: "save" as const, ram: "/t/k,1/ram", state: "/t/k,1/state" };
    const args = qemuArgs({ ...vm, template }, sockets, { file: template.ram, shared: true });
    expect(args).toContain("memory-backend-file,id=mem,size=256M,share=on,mem-path=/t/k,,1/ram");
    expect(args).toEqual(expect.arrayContaining(["-kernel", "/c/vmlinux", "-initrd", "/c/initramfs.cpio", "-append", vm.cmdline]));
    expect(args).not.toContain("-incoming");
  });

  test("a clone maps it privately, waits for the devices' state, and loads no kernel", () => {
    const template = { role: "restore" as const, ram: "/t/k/ram", state: "/t/k/state" };
    const args = qemuArgs({ ...vm, template }, sockets, { file: template.ram, shared: false });
    expect(args).toContain("memory-backend-file,id=mem,size=256M,share=off,mem-path=/t/k/ram");
    expect(args.join(" ")).toContain("-incoming defer");
    for (const flag of ["-kernel", "-initrd", "-append"]) expect(args).not.toContain(flag);
    // Everything the devices' state describes is the same as in the template: the disk (another file), the channel.
    const template2 = qemuArgs({ ...vm, template: { ...template, role: "save" } }, sockets, { file: template.ram, shared: true });
    const devices = (a: string[]) => a.filter((x, i) => a[i - 1] === "-device" || a[i - 1] === "-M" || a[i - 1] === "-smp");
    expect(devices(args)).toEqual(devices(template2));
  });
});

describe("the template directory", () => {
  let root: string;
  const made: string[] = [];
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), "nkt-template-unit-"));
    made.push(root);
    process.env.NK_VM_TEMPLATE_DIR = root;
  });
  afterAll(() => {
    for (const dir of made) rmSync(dir, { recursive: true, force: true });
  });

  const finished = (key: string, parts = ["meta.json", "ram", "state"]) => {
    mkdirSync(join(root, key));
    for (const part of parts) writeFileSync(join(root, key, part), part === "meta.json" ? JSON.stringify({ key, inputs, madeAt: "x", bootMs: 1, saveMs: 1 }) : "");
  };

  test("status lists finished templates only; destroy removes everything, half-made ones too", () => {
    finished("0123456789abcdef0123");
    finished("11111111111111111111", ["meta.json", "ram"]); // no state: not finished
    mkdirSync(join(root, "0123456789abcdef0123.making-abc"));
    writeFileSync(join(root, "0123456789abcdef0123.lock"), "");
    expect(listTemplates().map((t) => t.meta.key)).toEqual(["0123456789abcdef0123"]);
    expect(removeTemplates()).toBe(2);
    expect(readdirSync(root)).toEqual([]);
  });

  test("a template whose guest image or QEMU changed is stale: status says so, and it is removed; a current one stays", () => {
    const files = ["qemu", "vmlinux", "initramfs"].map((name) => {
      const path = join(root, `file-${name}`);
      writeFileSync(path, name);
      const st = statSync(path);
      return { path, size: st.size, mtimeMs: st.mtimeMs };
    });
    const current: TemplateInputs = { ...inputs, qemu: files[0]!, kernel: files[1]!, initramfs: files[2]! };
    const write = (key: string, made: TemplateInputs) => {
      mkdirSync(join(root, key));
      writeFileSync(join(root, key, "meta.json"), JSON.stringify({ key, inputs: made, madeAt: "x", bootMs: 1, saveMs: 1 }));
      for (const part of ["ram", "state"]) writeFileSync(join(root, key, part), "");
    };
    write("aaaaaaaaaaaaaaaaaaaa", current);
    write("bbbbbbbbbbbbbbbbbbbb", { ...current, kernel: { ...current.kernel, size: current.kernel.size + 1 } }); // a rebuilt kernel
    write("cccccccccccccccccccc", { ...current, qemu: { ...current.qemu, path: join(root, "gone") } }); // QEMU moved away
    const byKey = Object.fromEntries(listTemplates().map((t) => [t.meta.key, isStale(t)]));
    expect(byKey).toEqual({ aaaaaaaaaaaaaaaaaaaa: false, bbbbbbbbbbbbbbbbbbbb: true, cccccccccccccccccccc: true });
    expect(describeTemplates(listTemplates())).toMatch(/^bbbbbbbbbbbbbbbbbbbb .*STALE/m);
    expect(removeStaleTemplates().sort()).toEqual(["bbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccc"]);
    expect(listTemplates().map((t) => t.meta.key)).toEqual(["aaaaaaaaaaaaaaaaaaaa"]);
  });

  test("a dead maker's scratch directory of the key is removed and its QEMU stopped; other keys' are left", async () => {
    const stand = spawn("sleep", ["60"], { stdio: "ignore" });
    await Bun.sleep(20);
    const pid = stand.pid!;
    const mine = join(root, "aaaaaaaaaaaaaaaaaaaa.making-1");
    const other = join(root, "bbbbbbbbbbbbbbbbbbbb.making-1");
    mkdirSync(mine);
    mkdirSync(other);
    writeFileSync(join(mine, "vmm.json"), JSON.stringify({ pid, startTime: readProcStat(pid)!.startTime }));
    const exited = new Promise((resolve) => stand.on("exit", (_code, signal) => resolve(signal)));
    removeAbandonedScratch(root, "aaaaaaaaaaaaaaaaaaaa");
    expect(await exited).toBe("SIGKILL");
    expect(existsSync(mine)).toBe(false);
    expect(existsSync(other)).toBe(true);
  });
});
