/**
 * An in-memory stand-in for bpf(2) (src/cgroups/bpf-syscall.ts BpfSyscalls):
 * programs with ids and reference counts, fds, and per-directory attachment
 * lists. Loaded programs go through the eBPF interpreter's verifier-like
 * checks, and verdict() runs every program attached to a directory and its
 * ancestors, as the kernel does with BPF_F_ALLOW_MULTI (all must allow).
 */
import { existsSync } from "node:fs";
import { dirname } from "node:path";
import type { BpfProgramInfo, BpfSyscalls } from "../../src/cgroups/bpf-syscall.ts";
import { checkDeviceProgram, deviceProgramAllows, type DeviceAccessRequest } from "../../src/cgroups/ebpf-interpret.ts";
import { CgroupError } from "../../src/cgroups/errors.ts";

interface FakeProgram {
  id: number;
  type: number;
  name: string;
  bytecode: Uint8Array;
}

type FdEntry = { kind: "cgroup"; dir: string } | { kind: "prog"; id: number };

export interface FakeBpf extends BpfSyscalls {
  /** Program ids attached to dir itself, in attach order. */
  attached(dir: string): number[];
  program(id: number): FakeProgram | undefined;
  /** fds handed out and not closed yet. */
  openFds(): number;
  /** Attaches a program nano-kata did not make (another agent's), returning its id. */
  attachForeign(dir: string, name: string, bytecode: Uint8Array): number;
  /** The kernel's answer for a process in dir: every program of dir and its ancestors must allow. */
  verdict(dir: string, request: DeviceAccessRequest): boolean;
  /** Make the next call of this method fail with errno. */
  failNext(method: keyof BpfSyscalls, errno: string): void;
}

export function fakeBpf(): FakeBpf {
  const programs = new Map<number, FakeProgram>();
  const fds = new Map<number, FdEntry>();
  const attachments = new Map<string, number[]>();
  const failures = new Map<string, string>();
  let nextId = 1000;
  let nextFd = 100;

  const fail = (errno: string, what: string): CgroupError => new CgroupError("cgroup-bpf-failed", `bpf(${what}) failed: ${errno}`, errno);
  const maybeFail = (method: string): void => {
    const errno = failures.get(method);
    if (errno !== undefined) {
      failures.delete(method);
      throw fail(errno, method);
    }
  };
  const newFd = (entry: FdEntry): number => {
    fds.set(nextFd, entry);
    return nextFd++;
  };
  const cgroupOf = (fd: number): string => {
    const entry = fds.get(fd);
    if (entry?.kind !== "cgroup") throw fail("EBADF", "cgroup fd");
    return entry.dir;
  };
  const progOf = (fd: number): FakeProgram => {
    const entry = fds.get(fd);
    if (entry?.kind !== "prog") throw fail("EBADF", "prog fd");
    return programs.get(entry.id)!;
  };
  const load = (name: string, bytecode: Uint8Array, type: number): number => {
    checkDeviceProgram(bytecode);
    const id = nextId++;
    programs.set(id, { id, type, name, bytecode: bytecode.slice() });
    return id;
  };

  const fake: FakeBpf = {
    openCgroup(dir) {
      maybeFail("openCgroup");
      if (!existsSync(dir)) throw fail("ENOENT", `open ${dir}`);
      return newFd({ kind: "cgroup", dir });
    },
    close(fd) {
      if (!fds.delete(fd)) throw fail("EBADF", "close");
    },
    progLoad(opts) {
      maybeFail("progLoad");
      return newFd({ kind: "prog", id: load(opts.name, opts.bytecode, opts.type) });
    },
    progAttach(cgroupFd, progFd, _attachType, flags) {
      maybeFail("progAttach");
      if (flags !== 2) throw fail("EINVAL", "attach without BPF_F_ALLOW_MULTI");
      const dir = cgroupOf(cgroupFd);
      const list = attachments.get(dir) ?? [];
      const id = progOf(progFd).id;
      if (list.includes(id)) throw fail("EEXIST", "PROG_ATTACH");
      attachments.set(dir, [...list, id]);
    },
    progDetach(cgroupFd, progFd) {
      maybeFail("progDetach");
      const dir = cgroupOf(cgroupFd);
      const id = progOf(progFd).id;
      const list = attachments.get(dir) ?? [];
      if (!list.includes(id)) throw fail("ENOENT", "PROG_DETACH");
      attachments.set(
        dir,
        list.filter((x) => x !== id),
      );
    },
    progQuery(cgroupFd) {
      maybeFail("progQuery");
      return [...(attachments.get(cgroupOf(cgroupFd)) ?? [])];
    },
    progFdById(id) {
      maybeFail("progFdById");
      if (!programs.has(id)) throw fail("ENOENT", "PROG_GET_FD_BY_ID");
      return newFd({ kind: "prog", id });
    },
    progInfo(progFd): BpfProgramInfo {
      const p = progOf(progFd);
      return { type: p.type, id: p.id, name: p.name, xlatedBytes: p.bytecode.length, jitedBytes: 0 };
    },
    attached: (dir) => [...(attachments.get(dir) ?? [])],
    program: (id) => programs.get(id),
    openFds: () => fds.size,
    attachForeign(dir, name, bytecode) {
      const id = load(name, bytecode, 15);
      attachments.set(dir, [...(attachments.get(dir) ?? []), id]);
      return id;
    },
    verdict(dir, request) {
      for (let current = dir; ; current = dirname(current)) {
        for (const id of attachments.get(current) ?? []) {
          if (!deviceProgramAllows(programs.get(id)!.bytecode, request)) return false;
        }
        if (current === "/" || current === ".") return true;
      }
    },
    failNext(method, errno) {
      failures.set(method, errno);
    },
  };
  return fake;
}
