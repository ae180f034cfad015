/**
 * The plan wire contract has two copies: src/plan/ops.ts and native/ops.h.
 * These tests keep them (and the executor's dispatch table) in step.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { OpCode, OpName, Section } from "../../src/plan/ops.ts";

const NATIVE = resolve(import.meta.dir, "../../native");

function headerDefines(prefix: "OP_" | "SECTION_"): Map<string, number> {
  const text = readFileSync(join(NATIVE, "ops.h"), "utf8");
  const defines = new Map<string, number>();
  for (const m of text.matchAll(/^#define\s+([A-Z0-9_]+)\s+(\d+)\s*$/gm)) {
    const [, name, value] = m;
    if (name!.startsWith(prefix)) defines.set(name!.slice(prefix.length), Number(value));
  }
  return defines;
}

describe("native/ops.h matches src/plan/ops.ts", () => {
  test("every OpCode is defined in ops.h with the same value", () => {
    const header = headerDefines("OP_");
    for (const [name, code] of Object.entries(OpCode)) expect({ name, code: header.get(name) }).toEqual({ name, code });
  });

  test("every OP_ define in ops.h is an OpCode with the same value", () => {
    const header = headerDefines("OP_");
    expect(header.size).toBeGreaterThan(0);
    const codes: Record<string, number> = OpCode;
    for (const [name, code] of header) expect({ name, code: codes[name] }).toEqual({ name, code });
  });

  test("sections match both ways", () => {
    const header = headerDefines("SECTION_");
    const fromTs = Object.fromEntries(Object.entries(Section).map(([n, v]) => [n.toUpperCase(), v]));
    expect(Object.fromEntries(header)).toEqual(fromTs);
  });

  test("op codes are unique", () => {
    const codes = Object.values(OpCode);
    expect(new Set(codes).size).toBe(codes.length);
    expect(Object.keys(OpName).length).toBe(codes.length);
  });
});

describe("the executor dispatches every op", () => {
  const source = readFileSync(join(NATIVE, "nk-exec.c"), "utf8");
  const table = new Map<string, string>();
  for (const m of source.matchAll(/\[OP_([A-Z0-9_]+)\]\s*=\s*\{"([A-Z0-9_]+)"/g)) table.set(m[1]!, m[2]!);

  test("op_table has an entry named after each OpCode", () => {
    for (const name of Object.keys(OpCode)) expect({ name, entry: table.get(name) }).toEqual({ name, entry: name });
  });

  test("op_table has no entry for an unknown op", () => {
    const codes: Record<string, number> = OpCode;
    for (const name of table.keys()) expect({ name, known: name in codes }).toEqual({ name, known: true });
  });
});
