import { describe, expect, test } from "bun:test";
import { parseFlags, type FlagSpec } from "../../src/cli/args.ts";
import { parseSignal } from "../../src/util/signals.ts";
import { parseDuration, parseSize } from "../../src/cli/units.ts";

const SPECS: FlagSpec[] = [
  { name: "bundle", short: "b", kind: "string", help: "" },
  { name: "detach", short: "d", kind: "bool", help: "" },
  { name: "preserve-fds", kind: "number", help: "" },
  { name: "env", short: "e", kind: "list", help: "" },
];

describe("runc-style flag parsing", () => {
  test("long, short, single-dash long and = forms", () => {
    const p = parseFlags(["--bundle", "/b", "-d", "-preserve-fds=2", "--env", "A=1", "-e", "B=2", "id"], SPECS, { stopAtPositional: false });
    expect(p.flags).toEqual({ bundle: "/b", detach: true, "preserve-fds": 2, env: ["A=1", "B=2"] });
    expect(p.positionals).toEqual(["id"]);
  });
  test("flags after the positional (conmon style) are still flags", () => {
    const p = parseFlags(["id", "--bundle=/x"], SPECS, { stopAtPositional: false });
    expect(p.flags.bundle).toBe("/x");
    expect(p.positionals).toEqual(["id"]);
  });
  test("global parsing stops at the verb", () => {
    const p = parseFlags(["--bundle", "x", "create", "--detach"], SPECS, { stopAtPositional: true });
    expect(p.positionals).toEqual(["create", "--detach"]);
  });
  test("boolean with explicit false", () => {
    expect(parseFlags(["--detach=false"], SPECS, { stopAtPositional: false }).flags.detach).toBe(false);
  });
  test("unknown flag names the flag", () => {
    expect(() => parseFlags(["--nope"], SPECS, { stopAtPositional: false })).toThrow("flag provided but not defined: -nope");
  });
  test("missing value and bad number", () => {
    expect(() => parseFlags(["--bundle"], SPECS, { stopAtPositional: false })).toThrow("flag needs an argument: -bundle");
    expect(() => parseFlags(["--preserve-fds", "x"], SPECS, { stopAtPositional: false })).toThrow("preserve-fds");
  });
  test("-- ends flags", () => {
    expect(parseFlags(["--", "-d"], SPECS, { stopAtPositional: false }).positionals).toEqual(["-d"]);
  });
});

describe("signals", () => {
  test.each([
    ["9", 9],
    ["KILL", 9],
    ["SIGKILL", 9],
    ["kill", 9],
    ["TERM", 15],
    ["SIGRTMIN", 34],
    ["RTMIN+3", 37],
    ["SIGRTMAX-1", 63],
    ["64", 64],
    ["0", 0],
  ])("%s -> %d", (text, n) => expect(parseSignal(text)).toBe(n));
  test.each(["65", "NOPE", "RTMIN+40", ""])("%s is not a signal", (text) => expect(parseSignal(text)).toBeUndefined());
});

describe("units", () => {
  test("sizes", () => {
    expect(parseSize("512m", "--memory")).toBe(512 * 1024 * 1024);
    expect(parseSize("1g", "--memory")).toBe(1024 ** 3);
    expect(parseSize("4096", "--memory")).toBe(4096);
    expect(parseSize("-1", "--memory")).toBe(-1);
    expect(() => parseSize("lots", "--memory")).toThrow("--memory");
  });
  test("durations", () => {
    expect(parseDuration("5s", "--interval")).toBe(5000);
    expect(parseDuration("250ms", "--interval")).toBe(250);
    expect(() => parseDuration("5", "--interval")).toThrow("--interval");
  });
});
