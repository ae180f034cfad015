import type { Verb } from "../main.ts";
import { exactArgs, runtimeContext } from "../context.ts";
import { containerStats, streamEvents } from "../../linux/operations.ts";
import { parseDuration } from "../units.ts";
import { writeStdout } from "../../util/output.ts";

const events: Verb = {
  summary: "print container events: resource stats (once with --stats) and OOM notices",
  usage: "[--stats] [--interval 5s] <container-id>",
  flags: [
    { name: "stats", kind: "bool", help: "print one stats event and exit" },
    { name: "interval", kind: "string", value: "DURATION", help: "time between stats events (default 5s)" },
  ],
  async run(global, flags, args) {
    exactArgs("events", args, 1);
    const ctx = runtimeContext(global);
    if (flags.stats) {
      writeStdout(JSON.stringify(await containerStats(ctx, args[0]!)) + "\n");
      return 0;
    }
    const interval = parseDuration((flags.interval as string | undefined) ?? "5s", "--interval");
    await streamEvents(ctx, args[0]!, interval, (e) => writeStdout(JSON.stringify(e) + "\n"));
    return 0;
  },
};
export default events;
