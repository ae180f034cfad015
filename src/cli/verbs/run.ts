import type { Verb } from "../main.ts";
import { CREATE_FLAGS, exactArgs, runtimeContext } from "../context.ts";
import { createContainer, deleteContainer, startContainer } from "../../linux/container.ts";

/** Signals `run` passes on to the container, as runc does in the foreground. */
const FORWARDED = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCONT"] as const;

const run: Verb = {
  summary: "create and start a container; in the foreground, exit with its status",
  usage: "[options] <container-id>",
  flags: [
    ...CREATE_FLAGS,
    { name: "detach", short: "d", kind: "bool", help: "start and return; the container runs on" },
    { name: "keep", kind: "bool", help: "do not delete the container after it exits" },
    { name: "no-subreaper", kind: "bool", help: "accepted for runc compatibility (nano-kata's executor is the parent)" },
  ],
  async run(global, flags, args) {
    exactArgs("run", args, 1);
    const id = args[0]!;
    const ctx = runtimeContext(global, Boolean(flags.trace));
    const detach = Boolean(flags.detach);
    const created = await createContainer(ctx, {
      id,
      bundle: (flags.bundle as string | undefined) ?? ".",
      pidFile: flags["pid-file"] as string | undefined,
      consoleSocket: flags["console-socket"] as string | undefined,
      noPivot: Boolean(flags["no-pivot"]),
      noNewKeyring: Boolean(flags["no-new-keyring"]),
      preserveFds: (flags["preserve-fds"] as number | undefined) ?? 0,
      // A CLI call has nothing else to do meanwhile: blocking reads are the fastest wait.
      blocking: true,
      foreground: !detach,
    });
    const handlers = FORWARDED.map((signal) => {
      const handler = () => {
        try {
          process.kill(created.initPid, signal);
        } catch {}
      };
      process.on(signal, handler);
      return [signal, handler] as const;
    });
    try {
      try {
        await startContainer(ctx, id);
      } catch (error) {
        await deleteContainer(ctx, id, { force: true });
        throw error;
      }
      if (detach) {
        await created.exited;
        return 0;
      }
      const status = await created.exited;
      if (!flags.keep) await deleteContainer(ctx, id, { force: true });
      return status;
    } finally {
      for (const [signal, handler] of handlers) process.off(signal, handler);
    }
  },
};
export default run;
