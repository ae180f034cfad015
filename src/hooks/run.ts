/**
 * OCI hooks that run in the runtime's namespaces (prestart, createRuntime,
 * createContainer, poststart, poststop). Each gets the container state JSON on
 * stdin, its own args and env, and is killed at its timeout. What a failure
 * means is the caller's choice (runtime-spec config.md "POSIX-platform Hooks"):
 * before start it aborts the create; after, it is only logged.
 */
import { spawn } from "node:child_process";
import type { Hook } from "../spec/types.ts";
import { NanoKataError } from "../util/errors.ts";

export class HookError extends NanoKataError {}

export type HookKind = "prestart" | "createRuntime" | "createContainer" | "startContainer" | "poststart" | "poststop";

export async function runHook(kind: HookKind, index: number, hook: Hook, state: object): Promise<void> {
  const where = `hooks.${kind}[${index}]`;
  const argv = hook.args?.length ? hook.args : [hook.path];
  const child = spawn(hook.path, argv.slice(1), {
    argv0: argv[0],
    env: Object.fromEntries((hook.env ?? []).map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)])),
    stdio: ["pipe", "ignore", "pipe"],
  } as never);
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  child.stdin?.on("error", () => {});
  child.stdin?.end(JSON.stringify(state));
  const outcome = await new Promise<{ code: number | null; signal: string | null; error?: Error; timedOut?: boolean }>((resolve) => {
    const timer = hook.timeout
      ? setTimeout(() => {
          child.kill("SIGKILL");
          resolve({ code: null, signal: "SIGKILL", timedOut: true });
        }, hook.timeout * 1000)
      : undefined;
    child.on("error", (error) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, error });
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
  if (outcome.error) throw new HookError("hook-failed", `${where} ${hook.path}: ${outcome.error.message}`);
  if (outcome.timedOut) throw new HookError("hook-timeout", `${where} ${hook.path}: timed out after ${hook.timeout}s`);
  if (outcome.code !== 0) {
    // "exit" can come before the last of stderr: give it a moment (not "close": a daemon the hook left
    // running may hold stderr open for ever).
    if (child.stderr && !child.stderr.readableEnded) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        child.stderr!.once("end", () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const how = outcome.signal ? `killed by ${outcome.signal}` : `exit status ${outcome.code}`;
    throw new HookError("hook-failed", `${where} ${hook.path}: ${how}${stderr.trim() ? `: ${stderr.trim()}` : ""}`);
  }
}

/** Run every hook of one kind in order; the first failure stops the rest and is thrown. */
export async function runHooks(kind: HookKind, hooks: readonly Hook[] | undefined, state: object): Promise<void> {
  for (const [i, hook] of (hooks ?? []).entries()) await runHook(kind, i, hook, state);
}

/** Run every hook of one kind; failures are collected, not thrown (poststart, poststop). */
export async function runHooksLoggingFailures(kind: HookKind, hooks: readonly Hook[] | undefined, state: object, warn: (msg: string) => void): Promise<void> {
  for (const [i, hook] of (hooks ?? []).entries()) {
    try {
      await runHook(kind, i, hook, state);
    } catch (e) {
      warn((e as Error).message);
    }
  }
}
