import { readFileSync } from "node:fs";
import type { Verb } from "../main.ts";
import { runtimeContext } from "../context.ts";
import { execInContainer } from "../../linux/exec.ts";
import { validateContainerId } from "../../state/store.ts";
import type { Process } from "../../spec/types.ts";
import { UsageError } from "../../util/errors.ts";
import { isKnownCapability } from "../../spec/capabilities.ts";

const FORWARDED = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCONT"] as const;

/** runc's exec: start from the container's process, then apply --process or the flags. */
function execProcess(base: Process | undefined, flags: Record<string, unknown>, args: string[]): Process {
  if (flags.process) {
    const path = flags.process as string;
    try {
      return JSON.parse(readFileSync(path, "utf8")) as Process;
    } catch (e) {
      throw new UsageError(`--process ${path}: ${(e as Error).message}`);
    }
  }
  if (args.length === 0) throw new UsageError(`"exec" requires a command (or --process)`);
  const p: Process = structuredClone(base ?? { user: { uid: 0, gid: 0 }, cwd: "/" });
  p.args = args;
  p.terminal = Boolean(flags.tty);
  if (flags.cwd) p.cwd = flags.cwd as string;
  for (const e of (flags.env as string[] | undefined) ?? []) {
    const key = e.split("=")[0];
    p.env = [...(p.env ?? []).filter((x) => x.split("=")[0] !== key), e];
  }
  if (flags.user) {
    const m = /^(\d+)(?::(\d+))?$/.exec(flags.user as string);
    if (!m) throw new UsageError(`--user ${JSON.stringify(flags.user)}: expected uid[:gid] as numbers`);
    p.user = { ...p.user, uid: Number(m[1]), gid: m[2] !== undefined ? Number(m[2]) : p.user.gid };
  }
  if (flags["additional-gids"]) p.user.additionalGids = (flags["additional-gids"] as string[]).map(Number);
  for (const cap of (flags.cap as string[] | undefined) ?? []) {
    const name = cap.toUpperCase().startsWith("CAP_") ? cap.toUpperCase() : `CAP_${cap.toUpperCase()}`;
    if (!isKnownCapability(name)) throw new UsageError(`--cap ${cap}: unknown capability`);
    const caps = (p.capabilities ??= {});
    // Never the inheritable set (CVE-2022-29162, as runc since 1.1.2); ambient
    // only when the spec already has inheritable bits, without which it cannot be raised.
    const sets = caps.inheritable?.length ? (["bounding", "effective", "permitted", "ambient"] as const) : (["bounding", "effective", "permitted"] as const);
    for (const set of sets) caps[set] = [...new Set([...(caps[set] ?? []), name])];
  }
  if (flags["no-new-privs"]) p.noNewPrivileges = true;
  if (flags.apparmor) p.apparmorProfile = flags.apparmor as string;
  if (flags["process-label"]) p.selinuxLabel = flags["process-label"] as string;
  return p;
}

const exec: Verb = {
  summary: "run a new process inside a running container",
  usage: "[options] <container-id> <command> [args...]",
  // `exec ID sh -c 'cmd'`: everything after the id belongs to the command.
  flagsBeforePositionals: true,
  flags: [
    { name: "process", short: "p", kind: "string", value: "FILE", help: "process.json (a config.json `process` object) instead of the command line" },
    { name: "tty", short: "t", kind: "bool", help: "allocate a pseudo-terminal" },
    { name: "console-socket", kind: "string", value: "PATH", help: "unix socket that receives the pty master" },
    { name: "detach", short: "d", kind: "bool", help: "do not wait for the process" },
    { name: "pid-file", kind: "string", value: "FILE", help: "write the process's pid to FILE" },
    { name: "cwd", kind: "string", value: "DIR", help: "working directory in the container" },
    { name: "env", short: "e", kind: "list", value: "K=V", help: "set an environment variable (repeatable)" },
    { name: "user", short: "u", kind: "string", value: "UID[:GID]", help: "run as this user" },
    { name: "additional-gids", short: "g", kind: "list", value: "GID", help: "additional group (repeatable)" },
    { name: "cap", short: "c", kind: "list", value: "CAP", help: "add a capability (repeatable)" },
    { name: "no-new-privs", kind: "bool", help: "set no_new_privs" },
    { name: "preserve-fds", kind: "number", value: "N", help: "pass N extra fds to the process" },
    { name: "apparmor", kind: "string", value: "PROFILE", help: "AppArmor profile" },
    { name: "process-label", kind: "string", value: "LABEL", help: "SELinux label" },
    { name: "ignore-paused", kind: "bool", help: "allow exec into a paused container" },
    { name: "trace", kind: "bool", help: "print each operation as it is carried out" },
  ],
  async run(global, flags, args) {
    if (args.length < 1) throw new UsageError(`"exec" requires a minimum of 1 argument(s)`);
    const [id, ...command] = args;
    const ctx = runtimeContext(global, Boolean(flags.trace));
    const record = ctx.store.read(validateContainerId(id));
    const detach = Boolean(flags.detach);
    if (record.mode === "vm") {
      // The process runs in the container's VM; this command (or, with -d, a detached stand-in) speaks for it.
      const { execInVmContainer } = await import("../../vm/exec.ts");
      return execInVmContainer(ctx, record, {
        process: execProcess(record.spec.process, flags, command),
        consoleSocket: flags["console-socket"] as string | undefined,
        pidFile: flags["pid-file"] as string | undefined,
        preserveFds: (flags["preserve-fds"] as number | undefined) ?? 0,
        detach,
        ignorePaused: Boolean(flags["ignore-paused"]),
      });
    }
    const run = await execInContainer(ctx, id!, {
      process: execProcess(record.spec.process, flags, command),
      consoleSocket: flags["console-socket"] as string | undefined,
      pidFile: flags["pid-file"] as string | undefined,
      preserveFds: (flags["preserve-fds"] as number | undefined) ?? 0,
      detach,
      ignorePaused: Boolean(flags["ignore-paused"]),
      blocking: true,
    });
    if (detach) {
      await run.exited;
      return 0;
    }
    const handlers = FORWARDED.map((signal) => {
      const handler = () => {
        try {
          process.kill(run.initPid, signal);
        } catch {}
      };
      process.on(signal, handler);
      return [signal, handler] as const;
    });
    try {
      return await run.exited;
    } finally {
      for (const [signal, handler] of handlers) process.off(signal, handler);
    }
  },
};
export default exec;
