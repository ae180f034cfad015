/**
 * Small building blocks for walking untrusted JSON and recording problems with
 * the exact JSON path of the offending value ("process.args[2]").
 *
 * Each `is*` method both narrows the value's type for TypeScript and records an
 * issue when the value does not fit, so validators read as a list of rules.
 */
import type { SpecIssue } from "./errors.ts";

export type JsonObject = Record<string, unknown>;

/** An inclusive integer range and the words used to describe it in messages. */
export interface IntRange {
  min: number;
  max: number;
  description: string;
}

export const UINT16: IntRange = { min: 0, max: 0xffff, description: "an integer from 0 to 65535" };
export const UINT32: IntRange = { min: 0, max: 0xffff_ffff, description: "a non-negative integer below 2^32" };
// JSON numbers are IEEE doubles: 2^64-1 (RLIM_INFINITY and friends, as Go writes
// them) parses as exactly 2^64, so that value must be accepted as the top of uint64.
export const UINT64: IntRange = { min: 0, max: 2 ** 64, description: "a non-negative integer below 2^64" };
export const INT64: IntRange = { min: -(2 ** 63), max: 2 ** 63, description: "a 64-bit integer" };
export const INT32: IntRange = { min: -(2 ** 31), max: 2 ** 31 - 1, description: "a 32-bit integer" };

export function intRange(min: number, max: number): IntRange {
  return { min, max, description: `an integer from ${min} to ${max}` };
}

/** The JSON type name of a value, as used in "must be X, got Y". */
export function jsonTypeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Reads an optional property. `null` counts as absent, as it does for the Go
 * runtimes (encoding/json leaves a field unset on null), so configs written by
 * Go tools with explicit nulls are accepted.
 */
export function field(object: JsonObject, key: string): unknown {
  const value = Object.hasOwn(object, key) ? object[key] : undefined;
  return value === null ? undefined : value;
}

/** `process` + `cwd` -> `process.cwd`; the empty root path yields `cwd`. */
export function childPath(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

export function indexPath(path: string, index: number): string {
  return `${path}[${index}]`;
}

/** A map key: `linux.sysctl["net.ipv4.ip_forward"]`, plain `.key` when it is an identifier. */
export function mapKeyPath(path: string, key: string): string {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? childPath(path, key) : `${path}[${JSON.stringify(key)}]`;
}

/** Quotes a value for a message, cutting very long strings. */
export function quote(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

export class Checker {
  readonly issues: SpecIssue[] = [];

  report(path: string, message: string): void {
    this.issues.push({ path, message });
  }

  private wrongType(path: string, expected: string, value: unknown): false {
    this.report(path, `must be ${expected}, got ${jsonTypeName(value)}`);
    return false;
  }

  /** Reports `is required` when the value is absent; true when present. */
  required(path: string, value: unknown): boolean {
    if (value !== undefined) return true;
    this.report(path, "is required");
    return false;
  }

  isObject(path: string, value: unknown): value is JsonObject {
    return isJsonObject(value) || this.wrongType(path, "an object", value);
  }

  isArray(path: string, value: unknown): value is unknown[] {
    return Array.isArray(value) || this.wrongType(path, "an array", value);
  }

  isString(path: string, value: unknown): value is string {
    return typeof value === "string" || this.wrongType(path, "a string", value);
  }

  isBoolean(path: string, value: unknown): value is boolean {
    return typeof value === "boolean" || this.wrongType(path, "a boolean", value);
  }

  isInteger(path: string, value: unknown, range: IntRange): value is number {
    if (typeof value !== "number") return this.wrongType(path, range.description, value);
    if (!Number.isInteger(value) || value < range.min || value > range.max) {
      this.report(path, `must be ${range.description}, got ${value}`);
      return false;
    }
    return true;
  }

  /** An array whose every element is a string; each bad element is reported at its index. */
  isStringArray(path: string, value: unknown): value is string[] {
    if (!Array.isArray(value)) return this.wrongType(path, "an array of strings", value);
    let ok = true;
    value.forEach((element, i) => {
      if (!this.isString(indexPath(path, i), element)) ok = false;
    });
    return ok;
  }

  /** An object whose every value is a string (annotations, sysctl, unified). */
  isStringMap(path: string, value: unknown): value is Record<string, string> {
    if (!isJsonObject(value)) return this.wrongType(path, "an object of strings", value);
    let ok = true;
    for (const [key, element] of Object.entries(value)) {
      if (!this.isString(mapKeyPath(path, key), element)) ok = false;
    }
    return ok;
  }

  isAbsolutePath(path: string, value: unknown): value is string {
    if (!this.isString(path, value)) return false;
    if (!value.startsWith("/")) {
      this.report(path, `must be an absolute path, got ${quote(value)}`);
      return false;
    }
    return this.hasNoNul(path, value);
  }

  /** NUL cannot cross into a C string; a path or argument with one would be silently cut. */
  hasNoNul(path: string, value: string): boolean {
    if (!value.includes("\0")) return true;
    this.report(path, "must not contain a NUL byte");
    return false;
  }

  isOneOf<T extends string>(path: string, value: unknown, allowed: readonly T[]): value is T {
    if (!this.isString(path, value)) return false;
    if ((allowed as readonly string[]).includes(value)) return true;
    this.report(path, `must be one of ${allowed.join(", ")}, got ${quote(value)}`);
    return false;
  }

  /** Optional string property; reports a wrong type. */
  optionalString(object: JsonObject, path: string, key: string): string | undefined {
    const value = field(object, key);
    if (value === undefined) return undefined;
    return this.isString(childPath(path, key), value) ? value : undefined;
  }

  optionalBoolean(object: JsonObject, path: string, key: string): boolean | undefined {
    const value = field(object, key);
    if (value === undefined) return undefined;
    return this.isBoolean(childPath(path, key), value) ? value : undefined;
  }

  optionalInteger(object: JsonObject, path: string, key: string, range: IntRange): number | undefined {
    const value = field(object, key);
    if (value === undefined) return undefined;
    return this.isInteger(childPath(path, key), value, range) ? value : undefined;
  }

  requiredInteger(object: JsonObject, path: string, key: string, range: IntRange): number | undefined {
    const value = field(object, key);
    if (!this.required(childPath(path, key), value)) return undefined;
    return this.isInteger(childPath(path, key), value, range) ? value : undefined;
  }

  optionalStringArray(object: JsonObject, path: string, key: string): string[] | undefined {
    const value = field(object, key);
    if (value === undefined) return undefined;
    return this.isStringArray(childPath(path, key), value) ? value : undefined;
  }

  /** Optional array of objects: calls `each` for every element that is an object. */
  eachObject(
    object: JsonObject,
    path: string,
    key: string,
    each: (element: JsonObject, elementPath: string, index: number) => void,
  ): void {
    const value = field(object, key);
    const arrayPath = childPath(path, key);
    if (value === undefined || !this.isArray(arrayPath, value)) return;
    value.forEach((element, i) => {
      const elementPath = indexPath(arrayPath, i);
      if (this.isObject(elementPath, element)) each(element, elementPath, i);
    });
  }
}
