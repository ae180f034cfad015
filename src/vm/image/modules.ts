/**
 * Kernel modules for the initramfs. A module's dependencies are in the
 * "depends=" string of its .modinfo ELF section (what depmod reads to write
 * modules.dep, which a package extracted with dpkg-deb -x does not have);
 * modules.builtin names the ones compiled into the kernel.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

export class ModuleError extends Error {}

/** Module names compare with '-' and '_' as the same character, as modprobe does. */
export const moduleKey = (name: string) => name.replaceAll("-", "_");

/** The NUL-separated key=value strings of an ELF64 module's .modinfo section. */
export function readModinfo(ko: Uint8Array): Map<string, string[]> {
  const view = new DataView(ko.buffer, ko.byteOffset, ko.byteLength);
  if (ko[0] !== 0x7f || ko[1] !== 0x45 || ko[4] !== 2) throw new ModuleError("not an ELF64 module");
  const shoff = Number(view.getBigUint64(0x28, true));
  const shentsize = view.getUint16(0x3a, true);
  const shnum = view.getUint16(0x3c, true);
  const shstrndx = view.getUint16(0x3e, true);
  const section = (i: number) => {
    const at = shoff + i * shentsize;
    return { name: view.getUint32(at, true), offset: Number(view.getBigUint64(at + 0x18, true)), size: Number(view.getBigUint64(at + 0x20, true)) };
  };
  const strtab = section(shstrndx);
  const decoder = new TextDecoder();
  const cstr = (at: number) => {
    let end = at;
    while (ko[end] !== 0) end++;
    return decoder.decode(ko.subarray(at, end));
  };
  const info = new Map<string, string[]>();
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (cstr(strtab.offset + s.name) !== ".modinfo") continue;
    for (const entry of decoder.decode(ko.subarray(s.offset, s.offset + s.size)).split("\0")) {
      const eq = entry.indexOf("=");
      if (eq <= 0) continue;
      const key = entry.slice(0, eq);
      info.set(key, [...(info.get(key) ?? []), entry.slice(eq + 1)]);
    }
  }
  return info;
}

export interface ResolvedModule {
  name: string;
  /** Absolute path of the .ko file. */
  path: string;
}

/**
 * The modules to load, dependencies first, for the wanted names. Names that
 * are built into the kernel are skipped (listed in `builtin`); a name that is
 * neither a module nor built in is an error.
 */
export function resolveModules(modulesDir: string, wanted: readonly string[]): { load: ResolvedModule[]; builtin: string[] } {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name));
      else if (e.name.endsWith(".ko")) files.set(moduleKey(e.name.slice(0, -3)), join(dir, e.name));
    }
  };
  walk(join(modulesDir, "kernel"));
  let builtinList = "";
  try {
    builtinList = readFileSync(join(modulesDir, "modules.builtin"), "utf8");
  } catch {}
  const builtinSet = new Set(builtinList.split("\n").filter(Boolean).map((l) => moduleKey(l.replace(/^.*\//, "").replace(/\.ko$/, ""))));

  const load: ResolvedModule[] = [];
  const builtin: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (name: string, chain: string[]) => {
    const key = moduleKey(name);
    if (state.get(key) === "done") return;
    if (state.get(key) === "visiting") throw new ModuleError(`module dependency cycle: ${[...chain, name].join(" -> ")}`);
    const path = files.get(key);
    if (!path) {
      if (builtinSet.has(key)) {
        state.set(key, "done");
        builtin.push(key);
        return;
      }
      throw new ModuleError(`kernel module ${name} is neither in ${modulesDir}/kernel nor built in`);
    }
    state.set(key, "visiting");
    const depends = readModinfo(readFileSync(path)).get("depends")?.[0] ?? "";
    for (const dep of depends.split(",").filter(Boolean)) visit(dep, [...chain, name]);
    state.set(key, "done");
    load.push({ name: key, path });
  };
  for (const name of wanted) visit(name, []);
  return { load, builtin };
}
