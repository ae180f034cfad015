import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { defaultSpec } from "../../src/spec/default.ts";
import { SpecError } from "../../src/spec/errors.ts";
import { loadSpec, parseSpecText } from "../../src/spec/load.ts";
import { assertValidSpec, validateSpec } from "../../src/spec/validate.ts";

let work = "";

beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), "nk-spec-load-"));
});

afterEach(() => {
  rmSync(work, { recursive: true, force: true });
});

function makeBundle(name: string, config: string | object | undefined, withRootfs = true): string {
  const dir = join(work, name);
  mkdirSync(dir);
  if (withRootfs) mkdirSync(join(dir, "rootfs"));
  if (config !== undefined) {
    writeFileSync(join(dir, "config.json"), typeof config === "string" ? config : JSON.stringify(config));
  }
  return dir;
}

function thrown(fn: () => unknown): SpecError {
  try {
    fn();
  } catch (error) {
    if (error instanceof SpecError) return error;
    throw error;
  }
  throw new Error("expected a SpecError");
}

describe("loadSpec", () => {
  test("loads a bundle and returns its real absolute path", () => {
    const dir = makeBundle("b", defaultSpec({ rootless: false }));
    symlinkSync(dir, join(work, "link"));
    const { spec, bundle } = loadSpec(join(work, "link"));
    expect(bundle).toBe(realpathSync(dir));
    expect(spec.process?.args).toEqual(["sh"]);
    expect(validateSpec(spec, { bundle, forCreate: true })).toEqual([]);
  });

  test("a relative bundle path is resolved against the working directory", () => {
    const dir = makeBundle("rel", defaultSpec({ rootless: false }));
    const previous = process.cwd();
    process.chdir(work);
    try {
      expect(loadSpec("rel").bundle).toBe(realpathSync(dir));
    } finally {
      process.chdir(previous);
    }
  });

  test("a missing config.json is spec-not-found naming the file", () => {
    const dir = makeBundle("empty", undefined);
    const error = thrown(() => loadSpec(dir));
    expect(error.code).toBe("spec-not-found");
    expect(error.message).toContain(join(realpathSync(dir), "config.json"));
    expect(error.message).toContain("does not exist");
  });

  test("a missing bundle directory is spec-not-found naming it", () => {
    const error = thrown(() => loadSpec(join(work, "nowhere")));
    expect(error.code).toBe("spec-not-found");
    expect(error.message).toContain(join(work, "nowhere"));
  });

  test("config.json that is a directory is spec-not-found", () => {
    const dir = makeBundle("dirconfig", undefined);
    mkdirSync(join(dir, "config.json"));
    const error = thrown(() => loadSpec(dir));
    expect(error.code).toBe("spec-not-found");
    expect(error.message).toContain("is a directory");
  });

  test("bad JSON is spec-parse carrying the parser's message", () => {
    const dir = makeBundle("bad", '{"ociVersion": "1.2.0",, }');
    const error = thrown(() => loadSpec(dir));
    expect(error.code).toBe("spec-parse");
    expect(error.message).toContain("config.json: invalid JSON: ");
    expect(error.message.length).toBeGreaterThan("config.json: invalid JSON: ".length + 5);
  });

  test("truncated JSON is spec-parse", () => {
    const dir = makeBundle("trunc", '{"ociVersion": "1.2.0", "process": {');
    expect(thrown(() => loadSpec(dir)).code).toBe("spec-parse");
  });

  test("a UTF-8 byte order mark is tolerated", () => {
    const dir = makeBundle("bom", "\ufeff" + JSON.stringify(defaultSpec({ rootless: false })));
    expect(loadSpec(dir).spec.ociVersion).toBe("1.2.0");
  });

  test("type mismatches load, then validation names the JSON path", () => {
    const config: Record<string, unknown> = structuredClone(defaultSpec({ rootless: false })) as never;
    (config.process as Record<string, unknown>).args = "sh";
    const dir = makeBundle("types", config);
    const { spec, bundle } = loadSpec(dir);
    const error = thrown(() => assertValidSpec(spec, { bundle, forCreate: true }));
    expect(error.code).toBe("invalid-spec");
    expect(error.issues).toEqual([{ path: "process.args", message: "must be an array of strings, got string" }]);
  });

  test("a relative root.path is resolved against the bundle, not the working directory", () => {
    const dir = makeBundle("relroot", { ...defaultSpec({ rootless: false }), root: { path: "rootfs" } });
    const previous = process.cwd();
    process.chdir("/");
    try {
      const { spec, bundle } = loadSpec(dir);
      expect(validateSpec(spec, { bundle, forCreate: true })).toEqual([]);
    } finally {
      process.chdir(previous);
    }
  });

  test("a relative root.path that does not exist in the bundle is reported with the resolved path", () => {
    const dir = makeBundle("noroot", { ...defaultSpec({ rootless: false }), root: { path: "missing-rootfs" } }, false);
    const { spec, bundle } = loadSpec(dir);
    const issues = validateSpec(spec, { bundle, forCreate: true });
    expect(issues).toEqual([{ path: "root.path", message: `"${join(bundle, "missing-rootfs")}" does not exist` }]);
  });

  test("an absolute root.path is used as is", () => {
    const elsewhere = join(work, "elsewhere-rootfs");
    mkdirSync(elsewhere);
    const dir = makeBundle("absroot", { ...defaultSpec({ rootless: false }), root: { path: elsewhere } }, false);
    const { spec, bundle } = loadSpec(dir);
    expect(validateSpec(spec, { bundle, forCreate: true })).toEqual([]);
  });
});

describe("parseSpecText", () => {
  test("drops null object properties but keeps array elements", () => {
    const parsed = parseSpecText('{"a": null, "b": {"c": null, "d": 1}, "e": [null, 2]}');
    expect(parsed).toEqual({ b: { d: 1 }, e: [null, 2] });
    expect(Object.hasOwn(parsed as object, "a")).toBe(false);
  });

  test("a __proto__ key stays a plain property", () => {
    const parsed = parseSpecText('{"annotations": {"__proto__": {"polluted": "yes"}}}') as { annotations: Record<string, unknown> };
    expect(Object.getPrototypeOf(parsed.annotations)).toBe(Object.prototype);
    expect(Object.hasOwn(parsed.annotations, "__proto__")).toBe(true);
    expect((parsed.annotations as { polluted?: string }).polluted).toBeUndefined();
  });
});
