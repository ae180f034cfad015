/**
 * Reading <bundle>/config.json. Loading only parses: whether the content is a
 * valid spec depends on what the caller does with it, so callers follow with
 * `assertValidSpec(spec, { bundle, forCreate })` from validate.ts.
 */
import { readFileSync, realpathSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

import { SpecError } from "./errors.ts";
import type { Spec } from "./types.ts";

export const CONFIG_FILE_NAME = "config.json";

export interface LoadedSpec {
  /** Parsed config.json; NOT validated yet (see module comment). */
  spec: Spec;
  /** Absolute, symlink-free bundle directory, as recorded in the state's `bundle`. */
  bundle: string;
}

export function loadSpec(bundleDir: string): LoadedSpec {
  const bundle = resolveBundle(bundleDir);
  const configPath = join(bundle, CONFIG_FILE_NAME);
  const text = readConfig(configPath);
  return { spec: parseSpecText(text, configPath) as Spec, bundle };
}

function resolveBundle(bundleDir: string): string {
  const absolute = resolve(bundleDir);
  try {
    const real = realpathSync(absolute);
    if (!statSync(real).isDirectory()) {
      throw new SpecError("spec-not-found", `bundle ${absolute} is not a directory`);
    }
    return real;
  } catch (error) {
    if (error instanceof SpecError) throw error;
    throw new SpecError("spec-not-found", `bundle directory ${absolute} does not exist`, [], { cause: error });
  }
}

function readConfig(configPath: string): string {
  try {
    return readFileSync(configPath, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === "ENOENT" ? "does not exist" : code === "EISDIR" ? "is a directory" : `cannot be read (${code ?? String(error)})`;
    throw new SpecError("spec-not-found", `${configPath} ${reason}`, [], { cause: error });
  }
}

/**
 * Parses config.json text. Object properties that are `null` are dropped, as
 * Go's encoding/json leaves such fields unset: the rest of nano-kata can then
 * rely on "absent" meaning `undefined` only.
 */
export function parseSpecText(text: string, sourceName = CONFIG_FILE_NAME): unknown {
  let value: unknown;
  try {
    value = JSON.parse(stripByteOrderMark(text));
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new SpecError("spec-parse", `${sourceName}: invalid JSON: ${message}`, [], { cause: error });
  }
  return withoutNullProperties(value);
}

function stripByteOrderMark(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** Copies `value` with every object property whose value is null removed (array elements are kept). */
export function withoutNullProperties(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutNullProperties);
  if (typeof value !== "object" || value === null) return value;
  const result: Record<string, unknown> = {};
  for (const [key, element] of Object.entries(value)) {
    // defineProperty, not assignment: a "__proto__" key must stay a plain
    // property instead of replacing the copy's prototype.
    if (element !== null) {
      Object.defineProperty(result, key, { value: withoutNullProperties(element), enumerable: true, writable: true, configurable: true });
    }
  }
  return result;
}
