/**
 * The containerd messages the shim speaks, written from the protocol's field
 * numbers: the task service (containerd.task.v2), containerd's event types
 * (containerd.events), the events service's Forward request, and the cgroup
 * metrics returned by Stats.
 *
 * Requests are decoded, responses and events encoded; the unit tests also
 * need the reverse directions, so each message has both where cheap.
 */
import { decodeAny, decodeFields, decodeTimestamp, encodeAny, encodeTimestamp, Writer, type Any, type Fields } from "./proto.ts";

export const TASK_SERVICE = "containerd.task.v2.Task";
export const EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events";

/** containerd.v1.types.Status */
export const TaskStatus = { UNKNOWN: 0, CREATED: 1, RUNNING: 2, STOPPED: 3, PAUSED: 4, PAUSING: 5 } as const;
export type TaskStatus = (typeof TaskStatus)[keyof typeof TaskStatus];

/** containerd.types.Mount: type = 1, source = 2, target = 3, options = 4. */
export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export function decodeMount(f: Fields): Mount {
  return { type: f.string(1), source: f.string(2), target: f.string(3), options: f.repeatedString(4) };
}

export function encodeMount(m: Mount): Uint8Array {
  const w = new Writer().string(1, m.type).string(2, m.source).string(3, m.target);
  for (const o of m.options) w.bytes(4, new TextEncoder().encode(o));
  return w.finish();
}

// ---------------------------------------------------------------- requests

export interface CreateTaskRequest {
  id: string;
  bundle: string;
  rootfs: Mount[];
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  checkpoint: string;
  parentCheckpoint: string;
  options?: Any;
}

export function decodeCreateTaskRequest(buf: Uint8Array): CreateTaskRequest {
  const f = decodeFields(buf);
  return {
    id: f.string(1),
    bundle: f.string(2),
    rootfs: f.repeatedMessage(3).map(decodeMount),
    terminal: f.bool(4),
    stdin: f.string(5),
    stdout: f.string(6),
    stderr: f.string(7),
    checkpoint: f.string(8),
    parentCheckpoint: f.string(9),
    options: decodeAny(f.message(10)),
  };
}

export function encodeCreateTaskRequest(r: Partial<CreateTaskRequest> & { id: string }): Uint8Array {
  const w = new Writer().string(1, r.id).string(2, r.bundle);
  for (const m of r.rootfs ?? []) w.message(3, encodeMount(m));
  w.bool(4, r.terminal).string(5, r.stdin).string(6, r.stdout).string(7, r.stderr).string(8, r.checkpoint).string(9, r.parentCheckpoint);
  if (r.options) w.message(10, encodeAny(r.options));
  return w.finish();
}

/** StartRequest, DeleteRequest, StateRequest, WaitRequest: id = 1, exec_id = 2. */
export interface ProcessRef {
  id: string;
  execId: string;
}

export function decodeProcessRef(buf: Uint8Array): ProcessRef {
  const f = decodeFields(buf);
  return { id: f.string(1), execId: f.string(2) };
}

export function encodeProcessRef(r: { id: string; execId?: string }): Uint8Array {
  return new Writer().string(1, r.id).string(2, r.execId).finish();
}

/** PidsRequest, PauseRequest, ResumeRequest, StatsRequest, ConnectRequest: id = 1. */
export function decodeIdOnly(buf: Uint8Array): { id: string } {
  return { id: decodeFields(buf).string(1) };
}

export function encodeIdOnly(id: string): Uint8Array {
  return new Writer().string(1, id).finish();
}

export interface KillRequest extends ProcessRef {
  signal: number;
  all: boolean;
}

export function decodeKillRequest(buf: Uint8Array): KillRequest {
  const f = decodeFields(buf);
  return { id: f.string(1), execId: f.string(2), signal: f.uint(3), all: f.bool(4) };
}

export function encodeKillRequest(r: Partial<KillRequest> & { id: string }): Uint8Array {
  return new Writer().string(1, r.id).string(2, r.execId).uint(3, r.signal).bool(4, r.all).finish();
}

export interface ExecProcessRequest extends ProcessRef {
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  spec?: Any;
}

export function decodeExecProcessRequest(buf: Uint8Array): ExecProcessRequest {
  const f = decodeFields(buf);
  return {
    id: f.string(1),
    execId: f.string(2),
    terminal: f.bool(3),
    stdin: f.string(4),
    stdout: f.string(5),
    stderr: f.string(6),
    spec: decodeAny(f.message(7)),
  };
}

export function encodeExecProcessRequest(r: Partial<ExecProcessRequest> & { id: string }): Uint8Array {
  const w = new Writer().string(1, r.id).string(2, r.execId).bool(3, r.terminal).string(4, r.stdin).string(5, r.stdout).string(6, r.stderr);
  if (r.spec) w.message(7, encodeAny(r.spec));
  return w.finish();
}

export interface ResizePtyRequest extends ProcessRef {
  width: number;
  height: number;
}

export function decodeResizePtyRequest(buf: Uint8Array): ResizePtyRequest {
  const f = decodeFields(buf);
  return { id: f.string(1), execId: f.string(2), width: f.uint(3), height: f.uint(4) };
}

export function encodeResizePtyRequest(r: ResizePtyRequest): Uint8Array {
  return new Writer().string(1, r.id).string(2, r.execId).uint(3, r.width).uint(4, r.height).finish();
}

export interface CloseIORequest extends ProcessRef {
  stdin: boolean;
}

export function decodeCloseIORequest(buf: Uint8Array): CloseIORequest {
  const f = decodeFields(buf);
  return { id: f.string(1), execId: f.string(2), stdin: f.bool(3) };
}

export function encodeCloseIORequest(r: CloseIORequest): Uint8Array {
  return new Writer().string(1, r.id).string(2, r.execId).bool(3, r.stdin).finish();
}

export interface UpdateTaskRequest {
  id: string;
  resources?: Any;
  annotations: Record<string, string>;
}

export function decodeUpdateTaskRequest(buf: Uint8Array): UpdateTaskRequest {
  const f = decodeFields(buf);
  const annotations: Record<string, string> = {};
  // map<string,string> is a repeated entry message {key = 1, value = 2}.
  for (const e of f.repeatedMessage(3)) annotations[e.string(1)] = e.string(2);
  return { id: f.string(1), resources: decodeAny(f.message(2)), annotations };
}

export function encodeUpdateTaskRequest(r: { id: string; resources?: Any; annotations?: Record<string, string> }): Uint8Array {
  const w = new Writer().string(1, r.id);
  if (r.resources) w.message(2, encodeAny(r.resources));
  for (const [k, v] of Object.entries(r.annotations ?? {})) w.message(3, new Writer().string(1, k).string(2, v).finish());
  return w.finish();
}

export interface ShutdownRequest {
  id: string;
  now: boolean;
}

export function decodeShutdownRequest(buf: Uint8Array): ShutdownRequest {
  const f = decodeFields(buf);
  return { id: f.string(1), now: f.bool(2) };
}

export function encodeShutdownRequest(r: ShutdownRequest): Uint8Array {
  return new Writer().string(1, r.id).bool(2, r.now).finish();
}

// ---------------------------------------------------------------- responses

/** CreateTaskResponse and StartResponse: pid = 1. */
export function encodePidResponse(pid: number): Uint8Array {
  return new Writer().uint(1, pid).finish();
}

export function decodePidResponse(buf: Uint8Array): { pid: number } {
  return { pid: decodeFields(buf).uint(1) };
}

export interface DeleteResponse {
  pid: number;
  exitStatus: number;
  exitedAt?: Date;
}

export function encodeDeleteResponse(r: DeleteResponse): Uint8Array {
  return new Writer().uint(1, r.pid).uint(2, r.exitStatus).message(3, encodeTimestamp(r.exitedAt)).finish();
}

export function decodeDeleteResponse(buf: Uint8Array): DeleteResponse {
  const f = decodeFields(buf);
  return { pid: f.uint(1), exitStatus: f.uint(2), exitedAt: decodeTimestamp(f.message(3)) };
}

export interface StateResponse {
  id: string;
  bundle: string;
  pid: number;
  status: TaskStatus;
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  exitStatus: number;
  exitedAt?: Date;
  execId: string;
}

export function encodeStateResponse(r: StateResponse): Uint8Array {
  return new Writer()
    .string(1, r.id)
    .string(2, r.bundle)
    .uint(3, r.pid)
    .uint(4, r.status)
    .string(5, r.stdin)
    .string(6, r.stdout)
    .string(7, r.stderr)
    .bool(8, r.terminal)
    .uint(9, r.exitStatus)
    .message(10, encodeTimestamp(r.exitedAt))
    .string(11, r.execId)
    .finish();
}

export function decodeStateResponse(buf: Uint8Array): StateResponse {
  const f = decodeFields(buf);
  return {
    id: f.string(1),
    bundle: f.string(2),
    pid: f.uint(3),
    status: f.uint(4) as TaskStatus,
    stdin: f.string(5),
    stdout: f.string(6),
    stderr: f.string(7),
    terminal: f.bool(8),
    exitStatus: f.uint(9),
    exitedAt: decodeTimestamp(f.message(10)),
    execId: f.string(11),
  };
}

/** PidsResponse: processes = 1 (containerd.v1.types.ProcessInfo {pid = 1, info = 2}). */
export function encodePidsResponse(processes: { pid: number; info?: Any }[]): Uint8Array {
  const w = new Writer();
  for (const p of processes) {
    const e = new Writer().uint(1, p.pid);
    if (p.info) e.message(2, encodeAny(p.info));
    w.message(1, e.finish());
  }
  return w.finish();
}

export function decodePidsResponse(buf: Uint8Array): { pid: number; info?: Any }[] {
  return decodeFields(buf)
    .repeatedMessage(1)
    .map((p) => ({ pid: p.uint(1), info: decodeAny(p.message(2)) }));
}

export interface WaitResponse {
  exitStatus: number;
  exitedAt?: Date;
}

export function encodeWaitResponse(r: WaitResponse): Uint8Array {
  return new Writer().uint(1, r.exitStatus).message(2, encodeTimestamp(r.exitedAt)).finish();
}

export function decodeWaitResponse(buf: Uint8Array): WaitResponse {
  const f = decodeFields(buf);
  return { exitStatus: f.uint(1), exitedAt: decodeTimestamp(f.message(2)) };
}

export function encodeStatsResponse(stats: Any | undefined): Uint8Array {
  return stats ? new Writer().message(1, encodeAny(stats)).finish() : new Uint8Array(0);
}

export function decodeStatsResponse(buf: Uint8Array): Any | undefined {
  return decodeAny(decodeFields(buf).message(1));
}

export interface ConnectResponse {
  shimPid: number;
  taskPid: number;
  version: string;
}

export function encodeConnectResponse(r: ConnectResponse): Uint8Array {
  return new Writer().uint(1, r.shimPid).uint(2, r.taskPid).string(3, r.version).finish();
}

export function decodeConnectResponse(buf: Uint8Array): ConnectResponse {
  const f = decodeFields(buf);
  return { shimPid: f.uint(1), taskPid: f.uint(2), version: f.string(3) };
}

// ---------------------------------------------------------------- events

export interface TaskIO {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export type TaskEvent =
  | { topic: "/tasks/create"; containerId: string; bundle: string; rootfs: Mount[]; io: TaskIO; checkpoint: string; pid: number }
  | { topic: "/tasks/start"; containerId: string; pid: number }
  | { topic: "/tasks/delete"; containerId: string; pid: number; exitStatus: number; exitedAt?: Date; id: string }
  | { topic: "/tasks/exit"; containerId: string; id: string; pid: number; exitStatus: number; exitedAt?: Date }
  | { topic: "/tasks/oom"; containerId: string }
  | { topic: "/tasks/exec-added"; containerId: string; execId: string }
  | { topic: "/tasks/exec-started"; containerId: string; execId: string; pid: number }
  | { topic: "/tasks/paused"; containerId: string }
  | { topic: "/tasks/resumed"; containerId: string };

const EVENT_TYPES: Record<TaskEvent["topic"], string> = {
  "/tasks/create": "containerd.events.TaskCreate",
  "/tasks/start": "containerd.events.TaskStart",
  "/tasks/delete": "containerd.events.TaskDelete",
  "/tasks/exit": "containerd.events.TaskExit",
  "/tasks/oom": "containerd.events.TaskOOM",
  "/tasks/exec-added": "containerd.events.TaskExecAdded",
  "/tasks/exec-started": "containerd.events.TaskExecStarted",
  "/tasks/paused": "containerd.events.TaskPaused",
  "/tasks/resumed": "containerd.events.TaskResumed",
};

/** The event as containerd's publish command and Forward want it: an Any naming its type. */
export function encodeEvent(e: TaskEvent): Any {
  const w = new Writer().string(1, e.containerId);
  switch (e.topic) {
    case "/tasks/create": {
      w.string(2, e.bundle);
      for (const m of e.rootfs) w.message(3, encodeMount(m));
      const io = new Writer().string(1, e.io.stdin).string(2, e.io.stdout).string(3, e.io.stderr).bool(4, e.io.terminal).finish();
      w.message(4, io).string(5, e.checkpoint).uint(6, e.pid);
      break;
    }
    case "/tasks/start":
      w.uint(2, e.pid);
      break;
    case "/tasks/delete":
      w.uint(2, e.pid).uint(3, e.exitStatus).message(4, encodeTimestamp(e.exitedAt)).string(5, e.id);
      break;
    case "/tasks/exit":
      w.string(2, e.id).uint(3, e.pid).uint(4, e.exitStatus).message(5, encodeTimestamp(e.exitedAt));
      break;
    case "/tasks/exec-added":
      w.string(2, e.execId);
      break;
    case "/tasks/exec-started":
      w.string(2, e.execId).uint(3, e.pid);
      break;
    default:
      break;
  }
  return { typeUrl: EVENT_TYPES[e.topic], value: w.finish() };
}

/** containerd.types.Envelope {timestamp = 1, namespace = 2, topic = 3, event = 4} inside ForwardRequest {envelope = 1}. */
export function encodeForwardRequest(at: Date, namespace: string, topic: string, event: Any): Uint8Array {
  const envelope = new Writer().message(1, encodeTimestamp(at)).string(2, namespace).string(3, topic).message(4, encodeAny(event)).finish();
  return new Writer().message(1, envelope).finish();
}

export function decodeForwardRequest(buf: Uint8Array): { at?: Date; namespace: string; topic: string; event?: Any } {
  const env = decodeFields(buf).message(1);
  if (!env) return { namespace: "", topic: "" };
  return { at: decodeTimestamp(env.message(1)), namespace: env.string(2), topic: env.string(3), event: decodeAny(env.message(4)) };
}
