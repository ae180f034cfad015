import { UsageError } from "../util/errors.ts";

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, k: 1024, kb: 1024, m: 1024 ** 2, mb: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, t: 1024 ** 4, tb: 1024 ** 4 };

/** "512m", "1g", "1048576", "-1" (unlimited) -> bytes, as runc's update reads memory sizes. */
export function parseSize(text: string, flag: string): number {
  if (text === "-1") return -1;
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(text.trim());
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new UsageError(`invalid value ${JSON.stringify(text)} for ${flag}: expected bytes like 512m or 1g`);
  return Math.round(Number(m[1]) * unit);
}

/** "5s", "500ms", "1m" -> milliseconds (Go duration style, the subset people use). */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new UsageError(`invalid value ${JSON.stringify(text)} for ${flag}: expected a duration like 5s or 500ms`);
  const scale = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as "ms" | "s" | "m" | "h"];
  return Number(m[1]) * scale;
}

export function parseInteger(text: string, flag: string): number {
  if (!/^-?\d+$/.test(text.trim())) throw new UsageError(`invalid value ${JSON.stringify(text)} for ${flag}: expected an integer`);
  return Number(text);
}
