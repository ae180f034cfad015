/**
 * Regenerates src/seccomp/syscalls-*.ts, the syscall name -> number tables the
 * seccomp compiler resolves profile names with.
 *
 *   bun scripts/gen-syscalls.ts
 *
 * Numbers come from the kernel UAPI headers installed on this machine, read
 * through the C preprocessor (`cc -E -dM`) so the conditionals in
 * asm-generic/unistd.h are settled exactly as the kernel build settles them:
 *
 *   x86_64   /usr/include/x86_64-linux-gnu/asm/unistd_64.h   (linux-libc-dev)
 *   x32      /usr/include/x86_64-linux-gnu/asm/unistd_x32.h  (linux-libc-dev)
 *   i386     /usr/include/x86_64-linux-gnu/asm/unistd_32.h   (linux-libc-dev)
 *   aarch64  /usr/include/asm-generic/unistd.h with arm64's __ARCH_WANT_* set
 *   arm      /usr/arm-linux-gnueabihf/include/asm/unistd.h   (linux-libc-dev-armhf-cross)
 *
 * Debian 12 ships 6.1 headers; syscalls added since are appended from
 * NEWER_SYSCALLS below (numbers checked against the kernel's syscall tables).
 * The output is committed: nothing here runs when the runtime starts.
 */
import { execFileSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";

interface TableSource {
  /** Output file under src/seccomp/. */
  file: string;
  /** Exported constant name. */
  exportName: string;
  /** One line for the doc comment. */
  description: string;
  header: string;
  includeDirs: string[];
  defines: string[];
  /** Macros the header uses without defining (seeded into the evaluator). */
  seed: Record<string, number>;
  /** Subtracted from every value: x32 numbers are stored without __X32_SYSCALL_BIT. */
  subtract: number;
  /** Syscalls newer than the installed headers, [name, number]. */
  newer: ReadonlyArray<readonly [string, number]>;
  /** A package that provides the header, for the error message. */
  debianPackage: string;
}

/** Added to every table in 6.2 .. 6.19; the same numbers on every architecture we cover. */
const COMMON_SINCE_6_2: ReadonlyArray<readonly [string, number]> = [
  ["cachestat", 451], // 6.5
  ["fchmodat2", 452], // 6.6
  ["map_shadow_stack", 453], // 6.6
  ["futex_wake", 454], // 6.7
  ["futex_wait", 455], // 6.7
  ["futex_requeue", 456], // 6.7
  ["statmount", 457], // 6.8
  ["listmount", 458], // 6.8
  ["lsm_get_self_attr", 459], // 6.8
  ["lsm_set_self_attr", 460], // 6.8
  ["lsm_list_modules", 461], // 6.8
  ["mseal", 462], // 6.10
  ["setxattrat", 463], // 6.13
  ["getxattrat", 464], // 6.13
  ["listxattrat", 465], // 6.13
  ["removexattrat", 466], // 6.13
  ["open_tree_attr", 467], // 6.15
  ["file_getattr", 468], // 6.17
  ["file_setattr", 469], // 6.17
  ["listns", 470], // 6.19
];

/** x86-64 only (syscall_64.tbl "common", so x32 too). */
const X86_64_UPROBES: ReadonlyArray<readonly [string, number]> = [
  ["uretprobe", 335], // 6.11
  ["uprobe", 336], // 6.16
];

const X86_INCLUDE = "/usr/include/x86_64-linux-gnu";

const SOURCES: TableSource[] = [
  {
    file: "syscalls-x86_64.ts",
    exportName: "X86_64_SYSCALLS",
    description: "x86-64 (AUDIT_ARCH_X86_64, __X32_SYSCALL_BIT clear)",
    header: `${X86_INCLUDE}/asm/unistd_64.h`,
    includeDirs: [],
    defines: [],
    seed: {},
    subtract: 0,
    newer: [...X86_64_UPROBES, ...COMMON_SINCE_6_2],
    debianPackage: "linux-libc-dev",
  },
  {
    file: "syscalls-x32.ts",
    exportName: "X32_SYSCALLS",
    description: "x32 (AUDIT_ARCH_X86_64 with __X32_SYSCALL_BIT set; stored without the bit)",
    header: `${X86_INCLUDE}/asm/unistd_x32.h`,
    includeDirs: [],
    defines: [],
    seed: { __X32_SYSCALL_BIT: 0x40000000 },
    subtract: 0x40000000,
    newer: [...X86_64_UPROBES, ...COMMON_SINCE_6_2],
    debianPackage: "linux-libc-dev",
  },
  {
    file: "syscalls-i386.ts",
    exportName: "I386_SYSCALLS",
    description: "i386 (AUDIT_ARCH_I386)",
    header: `${X86_INCLUDE}/asm/unistd_32.h`,
    includeDirs: [],
    defines: [],
    seed: {},
    subtract: 0,
    newer: COMMON_SINCE_6_2,
    debianPackage: "linux-libc-dev",
  },
  {
    file: "syscalls-aarch64.ts",
    exportName: "AARCH64_SYSCALLS",
    description: "aarch64 (AUDIT_ARCH_AARCH64; the asm-generic table)",
    header: "/usr/include/asm-generic/unistd.h",
    includeDirs: [],
    // What arch/arm64/include/uapi/asm/unistd.h defines before including the
    // generic table (6.1); newer kernels express the same set as the ABIs
    // "renameat newstat rlimit memfd_secret" in arch/arm64/kernel/Makefile.syscalls.
    defines: [
      "__ARCH_WANT_RENAMEAT",
      "__ARCH_WANT_NEW_STAT",
      "__ARCH_WANT_SET_GET_RLIMIT",
      "__ARCH_WANT_TIME32_SYSCALLS",
      "__ARCH_WANT_SYS_CLONE3",
      "__ARCH_WANT_MEMFD_SECRET",
    ],
    seed: {},
    subtract: 0,
    newer: COMMON_SINCE_6_2,
    debianPackage: "linux-libc-dev",
  },
  {
    file: "syscalls-arm.ts",
    exportName: "ARM_SYSCALLS",
    description: "32-bit ARM EABI (AUDIT_ARCH_ARM), including the ARM private calls at 0x0f0000",
    header: "/usr/arm-linux-gnueabihf/include/asm/unistd.h",
    includeDirs: ["/usr/arm-linux-gnueabihf/include"],
    defines: ["__ARM_EABI__"],
    seed: {},
    subtract: 0,
    newer: COMMON_SINCE_6_2,
    debianPackage: "linux-libc-dev-armhf-cross",
  },
];

/** Macro names that are not syscalls. */
const NOT_SYSCALLS = new Set(["syscalls", "arch_specific_syscall", "SYSCALL_BASE", "OABI_SYSCALL_BASE", "SYSCALL_MASK", "BASE"]);

function preprocessorMacros(source: TableSource): Map<string, string> {
  if (!existsSync(source.header)) {
    throw new Error(`${source.header} is missing: apt-get install -y ${source.debianPackage}`);
  }
  const args = ["-E", "-dM", "-x", "c"];
  // Cross headers must not mix with the host's asm/ directory.
  if (source.includeDirs.length > 0) args.push("-nostdinc");
  for (const dir of source.includeDirs) args.push("-I", dir);
  for (const define of source.defines) args.push(`-D${define}`);
  args.push("-include", source.header, "/dev/null");
  const output = execFileSync("cc", args, { encoding: "utf8" });
  const macros = new Map<string, string>();
  for (const line of output.split("\n")) {
    const match = /^#define\s+(\w+)\s+(.+?)\s*$/.exec(line);
    if (match?.[1] !== undefined && match[2] !== undefined) macros.set(match[1], match[2]);
  }
  return macros;
}

/**
 * Evaluates the few expression forms the headers use: integers, macro names,
 * parentheses and + / -. Anything else is a bug in the assumptions here.
 */
function evaluate(expression: string, macros: Map<string, string>, seed: Record<string, number>, depth = 0): number {
  if (depth > 20) throw new Error(`macro recursion too deep in ${expression}`);
  const tokens = expression.match(/0x[0-9a-fA-F]+|\d+|\w+|[()+-]/g) ?? [];
  if (tokens.join("") !== expression.replace(/\s+/g, "")) throw new Error(`cannot evaluate ${JSON.stringify(expression)}`);
  let position = 0;
  const primary = (): number => {
    const token = tokens[position++];
    if (token === undefined) throw new Error(`truncated expression ${expression}`);
    if (token === "(") {
      const value = sum();
      if (tokens[position++] !== ")") throw new Error(`unbalanced ${expression}`);
      return value;
    }
    if (/^(0x[0-9a-fA-F]+|\d+)$/.test(token)) return Number(token);
    if (token in seed) return seed[token] as number;
    const body = macros.get(token);
    if (body === undefined) throw new Error(`undefined macro ${token} in ${expression}`);
    return evaluate(body, macros, seed, depth + 1);
  };
  const sum = (): number => {
    let value = primary();
    while (tokens[position] === "+" || tokens[position] === "-") {
      const operator = tokens[position++];
      const right = primary();
      value = operator === "+" ? value + right : value - right;
    }
    return value;
  };
  const value = sum();
  if (position !== tokens.length) throw new Error(`trailing tokens in ${expression}`);
  return value;
}

function buildTable(source: TableSource): Map<string, number> {
  const macros = preprocessorMacros(source);
  const table = new Map<string, number>();
  for (const [macro, body] of macros) {
    const match = /^__(?:ARM_)?NR_(\w+)$/.exec(macro);
    const name = match?.[1];
    if (name === undefined || NOT_SYSCALLS.has(name) || name.startsWith("3264_")) continue;
    const value = evaluate(body, macros, source.seed) - source.subtract;
    if (!Number.isInteger(value) || value < 0) throw new Error(`${macro} = ${body} is not a syscall number`);
    table.set(name, value);
  }
  for (const [name, number] of source.newer) {
    const known = table.get(name);
    if (known !== undefined && known !== number) throw new Error(`${name}: header says ${known}, NEWER_SYSCALLS says ${number}`);
    for (const [other, otherNumber] of table) {
      if (otherNumber === number && other !== name) throw new Error(`${name} = ${number} collides with ${other}`);
    }
    table.set(name, number);
  }
  return table;
}

function render(source: TableSource, table: Map<string, number>): string {
  const entries = [...table].sort(([nameA, a], [nameB, b]) => a - b || nameA.localeCompare(nameB));
  const body = entries.map(([name, number]) => `  ${name}: ${number},`).join("\n");
  return `// Generated by scripts/gen-syscalls.ts from ${source.header}
// plus syscalls added after the 6.1 headers. Do not edit by hand: rerun the script.

/**
 * Syscall numbers for ${source.description}.
 * Look names up with syscallNumber() (src/seccomp/arch.ts), never with a bare
 * index, so "constructor" and friends are not found on Object.prototype.
 */
export const ${source.exportName}: Readonly<Record<string, number>> = {
${body}
};
`;
}

function main(): void {
  const outputDir = join(import.meta.dir, "..", "src", "seccomp");
  for (const source of SOURCES) {
    const table = buildTable(source);
    // A 64-bit table that came out of a 32-bit configuration would lack these.
    if (source.exportName === "AARCH64_SYSCALLS" && (table.get("fstat") !== 80 || table.has("fcntl64"))) {
      throw new Error("asm-generic table was not evaluated as a 64-bit ABI");
    }
    writeFileSync(join(outputDir, source.file), render(source, table));
    console.log(`${source.file}: ${table.size} syscalls`);
  }
}

main();
