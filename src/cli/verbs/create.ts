import type { Verb } from "../main.ts";
import { CREATE_FLAGS, exactArgs, runtimeContext } from "../context.ts";
import { createContainer } from "../../linux/container.ts";

const create: Verb = {
  summary: "create a container (init waits for `start`)",
  usage: "[options] <container-id>",
  flags: CREATE_FLAGS,
  async run(global, flags, args) {
    exactArgs("create", args, 1);
    const ctx = runtimeContext(global, Boolean(flags.trace));
    const created = await createContainer(ctx, {
      id: args[0]!,
      bundle: (flags.bundle as string | undefined) ?? ".",
      pidFile: flags["pid-file"] as string | undefined,
      consoleSocket: flags["console-socket"] as string | undefined,
      noPivot: Boolean(flags["no-pivot"]),
      noNewKeyring: Boolean(flags["no-new-keyring"]),
      preserveFds: (flags["preserve-fds"] as number | undefined) ?? 0,
      // A CLI call has nothing else to do meanwhile: blocking reads are the fastest wait.
      blocking: true,
      foreground: false,
    });
    // The executor's stage0 exits once init is ready; wait so no child outlives us.
    await created.exited;
    return 0;
  },
};
export default create;
