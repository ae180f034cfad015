import type { Verb } from "../main.ts";
import { exactArgs, runtimeContext } from "../context.ts";
import { startContainer } from "../../linux/container.ts";

const start: Verb = {
  summary: "start a created container (its process execs)",
  usage: "<container-id>",
  flags: [],
  async run(global, _flags, args) {
    exactArgs("start", args, 1);
    await startContainer(runtimeContext(global), args[0]!);
    return 0;
  },
};
export default start;
