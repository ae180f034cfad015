/**
 * nk-runtime: runc's command line. Global flags come before the verb; each
 * verb lives in its own module, imported only when it runs, so that `state`
 * does not pay for what `create` needs.
 */
import { parseFlags, formatFlagHelp, type FlagSpec, type FlagValues } from "./args.ts";
import { NanoKataError, UsageError } from "../util/errors.ts";
import { Logger, type LogFormat } from "../util/log.ts";
import { writeStdout } from "../util/output.ts";

export const VERSION = "0.1.0";
export const SPEC_VERSION = "1.2.0";

export const GLOBAL_FLAGS: FlagSpec[] = [
  { name: "root", kind: "string", value: "DIR", help: "state directory (default /run/nano-kata as root, $XDG_RUNTIME_DIR/nano-kata otherwise)" },
  { name: "log", kind: "string", value: "FILE", help: "write log lines to FILE (default: stderr)" },
  { name: "log-format", kind: "string", value: "text|json", help: "log line format (default text)" },
  { name: "debug", kind: "bool", help: "log debug lines" },
  { name: "systemd-cgroup", kind: "bool", help: "use systemd for cgroups (not supported yet: an error)" },
  { name: "rootless", kind: "string", value: "auto|true|false", help: "accepted for runc compatibility (detected automatically)" },
  { name: "criu", kind: "string", value: "PATH", help: "accepted for runc compatibility (checkpoint/restore is not supported)" },
  { name: "trace", kind: "bool", help: "print every planned operation as it is carried out, with the config.json field that caused it" },
  { name: "mode", kind: "string", value: "container|vm", help: "run containers in namespaces (default) or each in its own microVM; the annotation io.nanokata.mode overrides" },
  { name: "help", short: "h", kind: "bool", help: "show help" },
  { name: "version", short: "v", kind: "bool", help: "print the version" },
];

export interface Verb {
  summary: string;
  usage: string;
  flags: FlagSpec[];
  /**
   * Flags end at the first positional argument (runc's SkipArgReorder): for
   * `exec ID sh -c ...`, whose command has flags of its own. Otherwise flags
   * may also follow the positionals (`delete ID --force`), as in runc.
   */
  flagsBeforePositionals?: boolean;
  run(global: GlobalOptions, flags: FlagValues, args: string[]): Promise<number> | number;
}

export interface GlobalOptions {
  root: string;
  log: Logger;
  trace: boolean;
  systemdCgroup: boolean;
  /** --mode: the runtime-wide default; a container's io.nanokata.mode annotation wins. */
  mode: "container" | "vm";
}

type VerbLoader = () => Promise<{ default: Verb }>;

const VERBS: Record<string, VerbLoader> = {
  create: () => import("./verbs/create.ts"),
  start: () => import("./verbs/start.ts"),
  run: () => import("./verbs/run.ts"),
  state: () => import("./verbs/state.ts"),
  kill: () => import("./verbs/kill.ts"),
  delete: () => import("./verbs/delete.ts"),
  list: () => import("./verbs/list.ts"),
  spec: () => import("./verbs/spec.ts"),
  features: () => import("./verbs/features.ts"),
  pause: () => import("./verbs/pause.ts"),
  resume: () => import("./verbs/resume.ts"),
  ps: () => import("./verbs/ps.ts"),
  events: () => import("./verbs/events.ts"),
  update: () => import("./verbs/update.ts"),
  exec: () => import("./verbs/exec.ts"),
  vm: () => import("./verbs/vm.ts"),
};

function defaultRoot(): string {
  if (process.getuid?.() === 0) return "/run/nano-kata";
  const runtimeDir = process.env.XDG_RUNTIME_DIR;
  return runtimeDir ? `${runtimeDir}/nano-kata` : `/tmp/nano-kata-${process.getuid?.()}`;
}

async function mainHelp(): Promise<string> {
  const lines = [
    "nk-runtime: a small OCI container runtime (runc-compatible command line)",
    "",
    "usage: nk-runtime [global options] command [command options] [arguments...]",
    "",
    "commands:",
  ];
  for (const [name, load] of Object.entries(VERBS)) lines.push(`   ${name.padEnd(10)} ${(await load()).default.summary}`);
  lines.push("", "global options:", formatFlagHelp(GLOBAL_FLAGS), "");
  return lines.join("\n");
}

export async function main(argv: string[]): Promise<number> {
  let log = new Logger(undefined, "text", false);
  try {
    const { flags: g, positionals } = parseFlags(argv, GLOBAL_FLAGS, { stopAtPositional: true });
    const format = (g["log-format"] as string | undefined) ?? "text";
    if (format !== "text" && format !== "json") throw new UsageError(`invalid log format ${JSON.stringify(format)}: expected text or json`);
    log = new Logger(g.log as string | undefined, format as LogFormat, Boolean(g.debug));
    if (g.version) {
      writeStdout(`nk-runtime version ${VERSION}\nspec: ${SPEC_VERSION}\nbun: ${Bun.version}\n`);
      return 0;
    }
    const [verbName, ...rest] = positionals;
    if (!verbName || g.help) {
      writeStdout(await mainHelp());
      return verbName || g.help ? 0 : 1;
    }
    const load = VERBS[verbName];
    if (!load) throw new UsageError(`no such command: ${verbName} (see nk-runtime --help)`);
    const verb = (await load()).default;
    const { flags, positionals: args } = parseFlags(rest, [...verb.flags, { name: "help", short: "h", kind: "bool", help: "show help" }], {
      stopAtPositional: verb.flagsBeforePositionals ?? false,
    });
    if (flags.help) {
      writeStdout(`usage: nk-runtime ${verbName} ${verb.usage}\n\n${verb.summary}\n\noptions:\n${formatFlagHelp(verb.flags)}\n`);
      return 0;
    }
    if (g["systemd-cgroup"]) {
      throw new UsageError("--systemd-cgroup: the systemd cgroup driver is not supported yet; use cgroupfs paths (linux.cgroupsPath)");
    }
    const mode = (g.mode as string | undefined) ?? "container";
    if (mode !== "container" && mode !== "vm") throw new UsageError(`invalid --mode ${JSON.stringify(mode)}: expected container or vm`);
    const global: GlobalOptions = {
      root: (g.root as string | undefined) ?? defaultRoot(),
      log,
      trace: Boolean(g.trace),
      systemdCgroup: false,
      mode,
    };
    log.debug(`nk-runtime ${argv.join(" ")}`);
    return await verb.run(global, flags, args);
  } catch (error) {
    const message = error instanceof NanoKataError || error instanceof Error ? error.message : String(error);
    log.error(message);
    if (!(error instanceof NanoKataError) && log.debugEnabled && error instanceof Error) log.debug(error.stack ?? "");
    return 1;
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
