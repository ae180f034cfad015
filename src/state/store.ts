/**
 * Per-container state under the runtime root (default /run/nano-kata):
 *   <root>/<id>/state.json   the record below, replaced atomically (temp + rename)
 *   <root>/<id>/exec.fifo    exists from create until start: init blocks on it
 * The container directory itself is the lock: every command that changes a
 * container holds flock(LOCK_EX) on it, so concurrent commands serialise.
 */
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { ContainerError } from "../util/errors.ts";
import { flock, LOCK_EX } from "../util/libc.ts";
import { isSameLiveProcess } from "./proc.ts";
import type { Spec } from "../spec/types.ts";

export type ContainerStatus = "creating" | "created" | "running" | "paused" | "stopped";

export interface ContainerRecord {
  ociVersion: string;
  id: string;
  /** Host pid of the container's init (0 until known). */
  pid: number;
  /** Field 22 of /proc/<pid>/stat at create: a reused pid has another. */
  pidStartTime: string;
  bundle: string;
  rootfs: string;
  /** ISO 8601, like runc's `created`. */
  created: string;
  owner: string;
  annotations: Record<string, string>;
  /** Set while create runs; once created, the live status is derived from the process. */
  phase: "creating" | "created";
  mode: "container" | "vm";
  /** What the cgroup driver needs to find the cgroup again (opaque here). */
  cgroup?: unknown;
  /** The validated config.json, kept for exec, hooks and delete. */
  spec: Spec;
}

/** The record a create starts with (phase "creating", no pid yet). */
export function newContainerRecord(fields: { id: string; spec: Spec; bundle: string; rootfs: string; mode: ContainerRecord["mode"]; owner?: string }): ContainerRecord {
  return {
    ociVersion: fields.spec.ociVersion,
    id: fields.id,
    pid: 0,
    pidStartTime: "",
    bundle: fields.bundle,
    rootfs: fields.rootfs,
    created: new Date().toISOString(),
    owner: fields.owner ?? "",
    annotations: fields.spec.annotations ?? {},
    phase: "creating",
    mode: fields.mode,
    spec: fields.spec,
  };
}

const ID_PATTERN = /^[A-Za-z0-9_+.-]+$/;

/** Container ids as runc accepts them: no separators, no "." or "..", so an id can never name a path outside the root. */
export function validateContainerId(id: string | undefined): string {
  if (id === undefined || id === "") throw new ContainerError("invalid-id", "container id cannot be empty");
  if (!ID_PATTERN.test(id) || id === "." || id === "..") {
    throw new ContainerError("invalid-id", `invalid container id ${JSON.stringify(id)}: only [A-Za-z0-9_+.-] are allowed, and not "." or ".."`);
  }
  if (id.length > 1024) throw new ContainerError("invalid-id", `invalid container id: longer than 1024 characters`);
  return id;
}

export class ContainerLock {
  constructor(private fd: number | undefined) {}
  release(): void {
    if (this.fd !== undefined) {
      closeSync(this.fd);
      this.fd = undefined;
    }
  }
}

export class StateStore {
  constructor(readonly root: string) {}

  dir(id: string): string {
    return `${this.root}/${id}`;
  }
  fifoPath(id: string): string {
    return `${this.dir(id)}/exec.fifo`;
  }

  /** Make the container's directory (fails if the id is taken) and lock it. */
  claim(id: string): ContainerLock {
    mkdirSync(this.root, { recursive: true, mode: 0o711 });
    try {
      mkdirSync(this.dir(id), { mode: 0o711 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST") {
        throw new ContainerError("container-exists", `container with id exists: ${id}`);
      }
      throw e;
    }
    return this.lockDir(id);
  }

  /** Lock an existing container; errors as runc does when it does not exist. */
  lock(id: string): ContainerLock {
    if (!existsSync(this.dir(id))) throw notExist(id);
    return this.lockDir(id);
  }

  private lockDir(id: string): ContainerLock {
    let fd: number;
    try {
      fd = openSync(this.dir(id), "r");
    } catch {
      throw notExist(id);
    }
    const err = flock(fd, LOCK_EX);
    if (err !== 0) {
      closeSync(fd);
      throw new ContainerError("lock-failed", `container ${id}: cannot lock state (errno ${err})`);
    }
    // The holder before us may have deleted the container.
    if (!existsSync(this.dir(id))) {
      closeSync(fd);
      throw notExist(id);
    }
    return new ContainerLock(fd);
  }

  exists(id: string): boolean {
    return existsSync(`${this.dir(id)}/state.json`);
  }

  read(id: string): ContainerRecord {
    let text: string;
    try {
      text = readFileSync(`${this.dir(id)}/state.json`, "utf8");
    } catch {
      throw notExist(id);
    }
    return JSON.parse(text) as ContainerRecord;
  }

  write(record: ContainerRecord): void {
    const path = `${this.dir(record.id)}/state.json`;
    const temp = `${path}.${process.pid}.tmp`;
    writeFileSync(temp, JSON.stringify(record), { mode: 0o600 });
    renameSync(temp, path);
  }

  remove(id: string): void {
    rmSync(this.dir(id), { recursive: true, force: true });
  }

  ids(): string[] {
    try {
      return readdirSync(this.root, { withFileTypes: true })
        .filter((d) => d.isDirectory() && ID_PATTERN.test(d.name))
        .map((d) => d.name)
        .sort();
    } catch {
      return [];
    }
  }

  /** The live status: derived from the init process and the exec fifo, never trusted from the file. */
  status(record: ContainerRecord, isFrozen?: () => boolean): ContainerStatus {
    const alive = isSameLiveProcess(record.pid, record.pidStartTime);
    if (record.phase === "creating") return alive ? "creating" : "stopped";
    if (!alive) return "stopped";
    if (existsSync(this.fifoPath(record.id))) return "created";
    if (isFrozen?.()) return "paused";
    return "running";
  }
}

export function notExist(id: string): ContainerError {
  return new ContainerError("container-not-found", `container does not exist: ${id}`);
}
