import type { Verb } from "../main.ts";
import { exactArgs, runtimeContext } from "../context.ts";
import { resumeContainer } from "../../linux/operations.ts";

const resume: Verb = {
  summary: "thaw a paused container",
  usage: "<container-id>",
  flags: [],
  async run(global, _flags, args) {
    exactArgs("resume", args, 1);
    await resumeContainer(runtimeContext(global), args[0]!);
    return 0;
  },
};
export default resume;
