/**
 * The base of every nano-kata error. Each area defines its own subclass with a
 * stable `code` (see the README's error table); the CLI prints `message` and
 * exits 1, as runc does.
 */
export class NanoKataError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad command-line usage: unknown flag, missing argument. */
export class UsageError extends NanoKataError {
  constructor(message: string) {
    super("usage", message);
  }
}

/** Container state and lifecycle errors (unknown id, wrong status, ...). */
export class ContainerError extends NanoKataError {}

/** The executor reported a failed operation while setting up a container. */
export class ExecutorError extends NanoKataError {
  constructor(
    message: string,
    readonly errno: number,
    readonly source: string,
  ) {
    super("executor-op-failed", message);
  }
}
