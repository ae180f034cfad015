import { spawnSync } from "node:child_process";
import type { Verb } from "../main.ts";
import { minArgs, runtimeContext } from "../context.ts";
import { containerProcesses } from "../../linux/operations.ts";
import { UsageError } from "../../util/errors.ts";
import { writeStdout } from "../../util/output.ts";

const ps: Verb = {
  summary: "list the processes of a container (pids as JSON, or a ps(1) table)",
  usage: "[--format table|json] <container-id> [ps options]",
  flags: [{ name: "format", short: "f", kind: "string", value: "table|json", help: "output format (default table)" }],
  // Everything after the id is for ps(1) (`ps ID -o pid,comm`), as runc's SkipArgReorder.
  flagsBeforePositionals: true,
  run(global, flags, args) {
    minArgs("ps", args, 1);
    const format = (flags.format as string | undefined) ?? "table";
    const pids = containerProcesses(runtimeContext(global), args[0]!);
    if (format === "json") {
      writeStdout(JSON.stringify(pids) + "\n");
      return 0;
    }
    if (format !== "table") throw new UsageError(`invalid format option ${JSON.stringify(format)}: expected table or json`);
    // Like runc: run the host's ps with the given options and keep the header plus the container's rows.
    const psArgs = args.length > 1 ? args.slice(1) : ["-ef"];
    const out = spawnSync("ps", psArgs, { encoding: "utf8" });
    if (out.status !== 0) throw new UsageError(`ps ${psArgs.join(" ")} failed: ${out.stderr.trim()}`);
    const lines = out.stdout.trimEnd().split("\n");
    const header = lines[0] ?? "";
    const pidColumn = header.trim().split(/\s+/).indexOf("PID");
    if (pidColumn < 0) throw new UsageError(`ps output has no PID column (options: ${psArgs.join(" ")})`);
    const wanted = new Set(pids);
    writeStdout(header + "\n");
    for (const line of lines.slice(1)) {
      const pid = Number(line.trim().split(/\s+/)[pidColumn]);
      if (wanted.has(pid)) writeStdout(line + "\n");
    }
    return 0;
  },
};
export default ps;
