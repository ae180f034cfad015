/**
 * Reading and writing cgroup control files. Every write names the spec field
 * it carries out, so an error (and --trace) can point at the config.json line.
 */
import { closeSync, constants, existsSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { CgroupError, errnoCode } from "./errors.ts";

/** One control-file write, as reported to a tracer. */
export interface ControlWrite {
  /** Absolute path of the control file. */
  path: string;
  value: string;
  /** The spec field (or runtime step) the write carries out. */
  field: string;
}

export type ControlWriteTracer = (write: ControlWrite) => void;

export class ControlFiles {
  constructor(private readonly tracer?: ControlWriteTracer) {}

  has(dir: string, file: string): boolean {
    return existsSync(join(dir, file));
  }

  /** The file's text, or undefined if it does not exist. */
  read(dir: string, file: string): string | undefined {
    try {
      return readFileSync(join(dir, file), "utf8");
    } catch (error) {
      const code = errnoCode(error);
      if (code === "ENOENT" || code === "ENOTDIR") return undefined;
      throw error;
    }
  }

  /**
   * Writes value in a single write(2), as cgroupfs wants. Never creates the
   * file (O_CREAT is absent): a missing control file means this host cannot
   * apply the setting, reported as cgroup-resource-unsupported naming the
   * field. O_NOFOLLOW because control files are never symlinks.
   */
  write(dir: string, file: string, value: string, field: string): void {
    const path = join(dir, file);
    this.tracer?.({ path, value, field });
    let fd: number;
    try {
      fd = openSync(path, constants.O_WRONLY | constants.O_TRUNC | constants.O_NOFOLLOW);
    } catch (error) {
      if (errnoCode(error) === "ENOENT") {
        throw new CgroupError("cgroup-resource-unsupported", `${field}: not supported by this host (${file} missing)`);
      }
      throw writeFailed(field, path, value, error);
    }
    try {
      writeSync(fd, value);
    } catch (error) {
      throw writeFailed(field, path, value, error);
    } finally {
      closeSync(fd);
    }
  }

  /** Writes only if the file exists; says whether it did. For optional companions such as rsvd limits. */
  writeIfPresent(dir: string, file: string, value: string, field: string): boolean {
    if (!this.has(dir, file)) return false;
    this.write(dir, file, value, field);
    return true;
  }
}

function writeFailed(field: string, path: string, value: string, error: unknown): CgroupError {
  const errno = errnoCode(error);
  const reason = errno ?? (error as Error).message;
  return new CgroupError("cgroup-write-failed", `${field}: writing ${JSON.stringify(value)} to ${path} failed: ${reason}`, errno);
}

/** Decimal text of an integer, never exponent notation (String(1e21) is "1e+21"). */
export function formatInteger(value: number): string {
  return BigInt(Math.trunc(value)).toString();
}

/** Parses "key value" lines (memory.stat, cpu.stat, memory.events ...) into numbers. */
export function parseKeyValues(text: string | undefined): Record<string, number> {
  const result: Record<string, number> = {};
  for (const line of (text ?? "").split("\n")) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined) {
      const n = Number(value);
      if (Number.isFinite(n)) result[key] = n;
    }
  }
  return result;
}

/** A single-number control file; "max" (v2's unlimited) becomes `maxValue`. Missing or empty -> 0. */
export function parseIntegerFile(text: string | undefined, maxValue = 0): number {
  const trimmed = (text ?? "").trim();
  if (trimmed === "") return 0;
  if (trimmed === "max") return maxValue;
  const n = Number(trimmed);
  return Number.isFinite(n) ? n : 0;
}

/** Sleeps synchronously: the cgroup API is synchronous and callers poll briefly (freeze, destroy). */
export function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
