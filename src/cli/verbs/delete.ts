import type { Verb } from "../main.ts";
import { minArgs, runtimeContext } from "../context.ts";
import { deleteContainer } from "../../linux/container.ts";

const del: Verb = {
  summary: "delete a stopped (or created) container; --force kills a running one first",
  usage: "[--force] <container-id>...",
  flags: [{ name: "force", short: "f", kind: "bool", help: "kill the container if it is still running (SIGKILL)" }],
  async run(global, flags, args) {
    minArgs("delete", args, 1);
    const ctx = runtimeContext(global);
    let failed = 0;
    for (const id of args) {
      try {
        await deleteContainer(ctx, id, { force: Boolean(flags.force) });
      } catch (e) {
        failed++;
        ctx.log.error((e as Error).message);
      }
    }
    return failed ? 1 : 0;
  },
};
export default del;
