import type { Verb } from "../main.ts";
import { exactArgs, runtimeContext } from "../context.ts";
import { pauseContainer } from "../../linux/operations.ts";

const pause: Verb = {
  summary: "freeze every process of a running container (cgroup freezer)",
  usage: "<container-id>",
  flags: [],
  async run(global, _flags, args) {
    exactArgs("pause", args, 1);
    await pauseContainer(runtimeContext(global), args[0]!);
    return 0;
  },
};
export default pause;
