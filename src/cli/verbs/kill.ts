import type { Verb } from "../main.ts";
import { runtimeContext } from "../context.ts";
import { killContainer } from "../../linux/container.ts";
import { parseSignal } from "../../util/signals.ts";
import { UsageError } from "../../util/errors.ts";

const kill: Verb = {
  summary: "send a signal (default SIGTERM) to a container's init",
  usage: "[--all] <container-id> [signal]",
  flags: [{ name: "all", short: "a", kind: "bool", help: "signal every process in the container's cgroup" }],
  run(global, flags, args) {
    if (args.length < 1 || args.length > 2) throw new UsageError(`"kill" requires a minimum of 1 and a maximum of 2 argument(s)`);
    const signal = parseSignal(args[1] ?? "SIGTERM");
    if (signal === undefined) throw new UsageError(`unknown signal ${JSON.stringify(args[1])}`);
    killContainer(runtimeContext(global), args[0]!, signal, Boolean(flags.all));
    return 0;
  },
};
export default kill;
