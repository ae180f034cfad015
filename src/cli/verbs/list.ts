import type { Verb } from "../main.ts";
import { runtimeContext } from "../context.ts";
import { stateJson } from "../../linux/container.ts";
import { UsageError } from "../../util/errors.ts";
import { writeStdout } from "../../util/output.ts";

interface Row {
  id: string;
  pid: number;
  status: string;
  bundle: string;
  rootfs: string;
  created: string;
  owner: string;
  annotations?: Record<string, string>;
}

const list: Verb = {
  summary: "list the containers under --root",
  usage: "[--format table|json] [-q]",
  flags: [
    { name: "format", short: "f", kind: "string", value: "table|json", help: "output format (default table)" },
    { name: "quiet", short: "q", kind: "bool", help: "print only the ids" },
  ],
  run(global, flags) {
    const ctx = runtimeContext(global);
    const format = (flags.format as string | undefined) ?? "table";
    if (format !== "table" && format !== "json") throw new UsageError(`invalid format option ${JSON.stringify(format)}: expected table or json`);
    const rows: Row[] = [];
    for (const id of ctx.store.ids()) {
      try {
        rows.push(stateJson(ctx, ctx.store.read(id)) as Row);
      } catch {
        // A create still in progress (or one that died early) has no state yet.
      }
    }
    if (flags.quiet) {
      for (const r of rows) writeStdout(`${r.id}\n`);
    } else if (format === "json") {
      writeStdout(JSON.stringify(rows) + "\n");
    } else {
      const table = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"], ...rows.map((r) => [r.id, String(r.pid), r.status, r.bundle, r.created, r.owner || "root"])];
      const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
      for (const row of table) writeStdout(row.map((cell, c) => (c === row.length - 1 ? cell : cell.padEnd(widths[c]! + 3))).join("") + "\n");
    }
    return 0;
  },
};
export default list;
