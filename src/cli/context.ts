import type { GlobalOptions } from "./main.ts";
import type { RuntimeContext } from "../linux/container.ts";
import { StateStore } from "../state/store.ts";
import { Tracer } from "../linux/trace.ts";
import { UsageError } from "../util/errors.ts";
import type { FlagSpec } from "./args.ts";

export function runtimeContext(global: GlobalOptions, traceFlag = false): RuntimeContext {
  return { store: new StateStore(global.root), log: global.log, tracer: new Tracer(global.trace || traceFlag), mode: global.mode };
}

/** runc's wording: `"start" requires exactly 1 argument(s)`. */
export function exactArgs(verb: string, args: string[], n: number): void {
  if (args.length !== n) throw new UsageError(`"${verb}" requires exactly ${n} argument(s)`);
}

export function minArgs(verb: string, args: string[], n: number): void {
  if (args.length < n) throw new UsageError(`"${verb}" requires a minimum of ${n} argument(s)`);
}

export const CREATE_FLAGS: FlagSpec[] = [
  { name: "bundle", short: "b", kind: "string", value: "DIR", help: "path to the bundle directory (default: current directory)" },
  { name: "console-socket", kind: "string", value: "PATH", help: "unix socket that receives the pty master (process.terminal)" },
  { name: "pid-file", kind: "string", value: "FILE", help: "write the container's init pid to FILE" },
  { name: "no-pivot", kind: "bool", help: "use chroot instead of pivot_root (for ramdisk roots)" },
  { name: "no-new-keyring", kind: "bool", help: "do not create a new session keyring" },
  { name: "preserve-fds", kind: "number", value: "N", help: "pass N extra fds (3..3+N-1) to the container" },
  { name: "trace", kind: "bool", help: "print each operation as it is carried out, with the config.json field behind it" },
];
