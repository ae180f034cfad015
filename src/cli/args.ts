/**
 * A small flag parser with runc's (urfave/cli + Go flag) conventions: flags
 * may use one or two dashes, values come as `--flag value` or `--flag=value`,
 * booleans take an optional `=true|false`, flags stop at the first positional
 * argument or `--`. Unknown flags are usage errors that name the flag.
 */
import { UsageError } from "../util/errors.ts";

export interface FlagSpec {
  /** Long name without dashes, e.g. "bundle". */
  name: string;
  /** One-letter alias, e.g. "b". */
  short?: string;
  kind: "bool" | "string" | "number" | "list";
  help: string;
  /** Placeholder shown in --help. */
  value?: string;
}

export type FlagValues = Record<string, string | boolean | number | string[] | undefined>;

export interface Parsed {
  flags: FlagValues;
  positionals: string[];
}

export function parseFlags(argv: readonly string[], specs: readonly FlagSpec[], opts: { stopAtPositional: boolean }): Parsed {
  const byName = new Map<string, FlagSpec>();
  for (const s of specs) {
    byName.set(s.name, s);
    if (s.short) byName.set(s.short, s);
  }
  const flags: FlagValues = {};
  const positionals: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      i++;
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      if (opts.stopAtPositional) break;
      positionals.push(arg);
      continue;
    }
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    const name = eq >= 0 ? body.slice(0, eq) : body;
    const spec = byName.get(name);
    if (!spec) throw new UsageError(`flag provided but not defined: -${name}`);
    let value: string | undefined = eq >= 0 ? body.slice(eq + 1) : undefined;
    if (spec.kind === "bool") {
      flags[spec.name] = value === undefined ? true : !["false", "0", "f", "F", "FALSE", "False"].includes(value);
      continue;
    }
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`flag needs an argument: -${name}`);
    }
    if (spec.kind === "number") {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) throw new UsageError(`invalid value ${JSON.stringify(value)} for flag -${name}: expected a non-negative integer`);
      flags[spec.name] = n;
    } else if (spec.kind === "list") {
      const list = (flags[spec.name] as string[] | undefined) ?? [];
      list.push(value);
      flags[spec.name] = list;
    } else flags[spec.name] = value;
  }
  positionals.push(...argv.slice(i));
  return { flags, positionals };
}

export function formatFlagHelp(specs: readonly FlagSpec[]): string {
  return specs
    .map((s) => {
      const names = `--${s.name}${s.short ? `, -${s.short}` : ""}${s.kind !== "bool" ? ` ${s.value ?? "value"}` : ""}`;
      return `   ${names.padEnd(30)} ${s.help}`;
    })
    .join("\n");
}
