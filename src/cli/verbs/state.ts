import type { Verb } from "../main.ts";
import { exactArgs, runtimeContext } from "../context.ts";
import { stateJson } from "../../linux/container.ts";
import { validateContainerId } from "../../state/store.ts";
import { writeStdout } from "../../util/output.ts";

const state: Verb = {
  summary: "print a container's OCI state as JSON",
  usage: "<container-id>",
  flags: [],
  run(global, _flags, args) {
    exactArgs("state", args, 1);
    const ctx = runtimeContext(global);
    const record = ctx.store.read(validateContainerId(args[0]));
    writeStdout(JSON.stringify(stateJson(ctx, record), null, 2) + "\n");
    return 0;
  },
};
export default state;
