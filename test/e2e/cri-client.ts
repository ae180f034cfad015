/**
 * A small CRI client (Kubernetes runtime.v1 RuntimeService and ImageService),
 * speaking to containerd's CRI plugin the way kubelet does: gRPC over HTTP/2
 * on a unix socket.
 *
 * gRPC, as far as a unary call needs it:
 *   - request: POST /<package>.<Service>/<Method>, `content-type:
 *     application/grpc`, `te: trailers`; the body is one message framed as
 *     1 byte "compressed" flag (0 here) + 4 bytes big-endian length + bytes;
 *   - response: HTTP status 200, the same framing for the reply, then
 *     trailers carrying `grpc-status` (0 = OK) and `grpc-message`
 *     (percent-encoded). An error may come "trailers-only": grpc-status in
 *     the response headers and no body.
 * The messages are protobuf, encoded with the shim's own codec
 * (src/shim/proto.ts); field numbers are those of the public CRI api.proto.
 * Only the fields this test sets or reads are modelled.
 */
import { connect as http2Connect, constants as h2, type ClientHttp2Session } from "node:http2";
import { connect as netConnect } from "node:net";
import { decodeFields, Writer, type Fields } from "../../src/shim/proto.ts";

export type CriErrorCode = "CRI_GRPC_STATUS" | "CRI_TRANSPORT" | "CRI_PROTOCOL" | "CRI_TIMEOUT";

export class CriError extends Error {
  readonly code: CriErrorCode;
  /** The gRPC status code, for CRI_GRPC_STATUS. */
  readonly grpcStatus?: number;
  constructor(code: CriErrorCode, message: string, grpcStatus?: number) {
    super(message);
    this.name = "CriError";
    this.code = code;
    this.grpcStatus = grpcStatus;
  }
}

// ------------------------------------------------------------ gRPC framing

/** One gRPC length-prefixed message: flag 0 (not compressed), u32 BE length, bytes. */
export function frameGrpcMessage(message: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length, false);
  out.set(message, 5);
  return out;
}

/** Collects HTTP/2 DATA chunks and splits them into gRPC messages, however the chunks fall. */
export class GrpcMessageReader {
  private pending = new Uint8Array(0);
  readonly messages: Uint8Array[] = [];

  constructor(private readonly maxMessageBytes = 16 * 1024 * 1024) {}

  push(chunk: Uint8Array): void {
    const joined = new Uint8Array(this.pending.length + chunk.length);
    joined.set(this.pending, 0);
    joined.set(chunk, this.pending.length);
    let at = 0;
    while (joined.length - at >= 5) {
      const flag = joined[at]!;
      const length = new DataView(joined.buffer, joined.byteOffset + at + 1, 4).getUint32(0, false);
      if (flag !== 0) throw new CriError("CRI_PROTOCOL", `compressed gRPC message (flag ${flag}) but no encoding was negotiated`);
      if (length > this.maxMessageBytes) throw new CriError("CRI_PROTOCOL", `gRPC message of ${length} bytes is over the ${this.maxMessageBytes} limit`);
      if (joined.length - at - 5 < length) break;
      this.messages.push(joined.slice(at + 5, at + 5 + length));
      at += 5 + length;
    }
    this.pending = joined.slice(at);
  }

  /** Bytes of an incomplete message still waiting for the rest. */
  get leftover(): number {
    return this.pending.length;
  }
}

/** grpc-message is percent-encoded (RFC 3986 style) by the server. */
function decodeGrpcMessage(value: string | undefined): string {
  if (!value) return "";
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function header(headers: Record<string, unknown>, name: string): string | undefined {
  const v = headers[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? String(v[0]) : String(v);
}

/** A gRPC client on one HTTP/2 connection to a unix socket: unary calls only. */
export class GrpcUnixClient {
  private constructor(private readonly session: ClientHttp2Session) {}

  static connect(socketPath: string, timeoutMs = 10_000): Promise<GrpcUnixClient> {
    return new Promise((resolve, reject) => {
      // The authority is not looked at by a unix-socket server; the socket is given by createConnection.
      const session = http2Connect("http://localhost", { createConnection: () => netConnect(socketPath) });
      const timer = setTimeout(() => {
        session.destroy();
        reject(new CriError("CRI_TIMEOUT", `no HTTP/2 connection to ${socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      session.once("connect", () => {
        clearTimeout(timer);
        resolve(new GrpcUnixClient(session));
      });
      session.once("error", (err: Error) => {
        clearTimeout(timer);
        reject(new CriError("CRI_TRANSPORT", `HTTP/2 connection to ${socketPath}: ${err.message}`));
      });
    });
  }

  /** One unary call: `path` is "/package.Service/Method". Resolves with the reply's bytes. */
  unary(path: string, request: Uint8Array, timeoutMs = 60_000): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      const stream = this.session.request({
        [h2.HTTP2_HEADER_METHOD]: "POST",
        [h2.HTTP2_HEADER_PATH]: path,
        [h2.HTTP2_HEADER_CONTENT_TYPE]: "application/grpc",
        te: "trailers",
        "grpc-timeout": `${timeoutMs}m`,
      });
      const reader = new GrpcMessageReader();
      let status: string | undefined;
      let message = "";
      let httpStatus = 0;
      let contentType = "";
      let failed: CriError | undefined;
      const timer = setTimeout(() => {
        failed = new CriError("CRI_TIMEOUT", `${path}: no answer within ${timeoutMs} ms`);
        stream.close(h2.NGHTTP2_CANCEL);
      }, timeoutMs);
      const takeStatus = (headers: Record<string, unknown>): void => {
        const s = header(headers, "grpc-status");
        if (s !== undefined) {
          status = s;
          message = decodeGrpcMessage(header(headers, "grpc-message"));
        }
      };
      stream.on("response", (headers) => {
        httpStatus = Number(header(headers, h2.HTTP2_HEADER_STATUS) ?? 0);
        contentType = header(headers, h2.HTTP2_HEADER_CONTENT_TYPE) ?? "";
        takeStatus(headers); // trailers-only responses put grpc-status here
      });
      stream.on("trailers", (trailers) => takeStatus(trailers));
      stream.on("data", (chunk: Buffer) => {
        try {
          reader.push(chunk);
        } catch (err) {
          failed = err as CriError;
          stream.close(h2.NGHTTP2_CANCEL);
        }
      });
      stream.on("error", (err: Error) => {
        failed ??= new CriError("CRI_TRANSPORT", `${path}: ${err.message}`);
      });
      stream.on("close", () => {
        clearTimeout(timer);
        if (failed) return reject(failed);
        if (httpStatus !== 200) return reject(new CriError("CRI_PROTOCOL", `${path}: HTTP status ${httpStatus}`));
        if (!contentType.startsWith("application/grpc")) return reject(new CriError("CRI_PROTOCOL", `${path}: content-type ${contentType}`));
        if (status === undefined) return reject(new CriError("CRI_PROTOCOL", `${path}: the stream ended without grpc-status`));
        if (status !== "0") return reject(new CriError("CRI_GRPC_STATUS", `${path}: grpc-status ${status}: ${message}`, Number(status)));
        if (reader.messages.length !== 1 || reader.leftover !== 0) {
          return reject(new CriError("CRI_PROTOCOL", `${path}: ${reader.messages.length} reply messages (+${reader.leftover} stray bytes), wanted 1`));
        }
        resolve(reader.messages[0]!);
      });
      stream.end(frameGrpcMessage(request));
    });
  }

  close(): void {
    this.session.close();
  }
}

// ------------------------------------------------------------ CRI messages (runtime.v1)

export const RUNTIME_SERVICE = "runtime.v1.RuntimeService";
export const IMAGE_SERVICE = "runtime.v1.ImageService";

/** NamespaceMode. */
export const NamespaceMode = { POD: 0, CONTAINER: 1, NODE: 2, TARGET: 3 } as const;

/** ContainerState. */
export const ContainerState = { CREATED: 0, RUNNING: 1, EXITED: 2, UNKNOWN: 3 } as const;

/** PodSandboxState. */
export const PodSandboxState = { READY: 0, NOTREADY: 1 } as const;

export interface NamespaceOption {
  network?: number; // 1
  pid?: number; // 2
  ipc?: number; // 3
}

export interface PodSandboxConfig {
  metadata: { name: string; uid: string; namespace: string; attempt?: number }; // 1: PodSandboxMetadata 1..4
  hostname?: string; // 2
  logDirectory?: string; // 3
  labels?: Record<string, string>; // 6
  annotations?: Record<string, string>; // 7
  linux?: {
    // 8: LinuxPodSandboxConfig
    cgroupParent?: string; // 1
    namespaces?: NamespaceOption; // 2: LinuxSandboxSecurityContext, its namespace_options = 1
  };
}

export interface ContainerConfig {
  metadata: { name: string; attempt?: number }; // 1: ContainerMetadata 1..2
  image: string; // 2: ImageSpec, image = 1
  command?: string[]; // 3
  args?: string[]; // 4
  workingDir?: string; // 5
  envs?: Record<string, string>; // 6: repeated KeyValue 1..2
  labels?: Record<string, string>; // 9
  annotations?: Record<string, string>; // 10
  logPath?: string; // 11
  linux?: { namespaces?: NamespaceOption }; // 15: LinuxContainerConfig, security_context = 2, its namespace_options = 3
}

export interface VersionInfo {
  version: string;
  runtimeName: string;
  runtimeVersion: string;
  runtimeApiVersion: string;
}

export interface ContainerStatus {
  id: string; // 1
  name: string; // 2: metadata.name
  state: number; // 3
  createdAt: bigint; // 4 (ns)
  startedAt: bigint; // 5
  finishedAt: bigint; // 6
  exitCode: number; // 7
  image: string; // 8: ImageSpec.image
  reason: string; // 10
  message: string; // 11
  logPath: string; // 15
}

export interface ContainerSummary {
  id: string; // 1
  podSandboxId: string; // 2
  name: string; // 3: metadata.name
  state: number; // 6
}

export interface PodSandboxStatus {
  id: string; // 1
  state: number; // 3
  runtimeHandler: string; // 9
}

export interface ImageInfo {
  id: string; // 1
  repoTags: string[]; // 2
  size: number; // 4
}

function map(w: Writer, field: number, entries: Record<string, string> | undefined): void {
  // A protobuf map is a repeated entry message: key = 1, value = 2.
  for (const [k, v] of Object.entries(entries ?? {})) w.message(field, new Writer().string(1, k).string(2, v).finish());
}

function namespaceOption(ns: NamespaceOption): Uint8Array {
  return new Writer().uint(1, ns.network).uint(2, ns.pid).uint(3, ns.ipc).finish();
}

export function encodePodSandboxConfig(c: PodSandboxConfig): Uint8Array {
  const w = new Writer();
  const m = c.metadata;
  w.message(1, new Writer().string(1, m.name).string(2, m.uid).string(3, m.namespace).uint(4, m.attempt).finish());
  w.string(2, c.hostname).string(3, c.logDirectory);
  map(w, 6, c.labels);
  map(w, 7, c.annotations);
  if (c.linux) {
    const linux = new Writer().string(1, c.linux.cgroupParent);
    if (c.linux.namespaces) linux.message(2, new Writer().message(1, namespaceOption(c.linux.namespaces)).finish());
    w.message(8, linux.finish());
  }
  return w.finish();
}

export function encodeContainerConfig(c: ContainerConfig): Uint8Array {
  const w = new Writer();
  w.message(1, new Writer().string(1, c.metadata.name).uint(2, c.metadata.attempt).finish());
  w.message(2, new Writer().string(1, c.image).finish());
  for (const s of c.command ?? []) w.string(3, s);
  for (const s of c.args ?? []) w.string(4, s);
  w.string(5, c.workingDir);
  for (const [k, v] of Object.entries(c.envs ?? {})) w.message(6, new Writer().string(1, k).string(2, v).finish());
  map(w, 9, c.labels);
  map(w, 10, c.annotations);
  w.string(11, c.logPath);
  if (c.linux?.namespaces) {
    const security = new Writer().message(3, namespaceOption(c.linux.namespaces)).finish();
    w.message(15, new Writer().message(2, security).finish());
  }
  return w.finish();
}

function idRequest(id: string): Uint8Array {
  // StartContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox, ContainerStatus, PodSandboxStatus: id = 1.
  return new Writer().string(1, id).finish();
}

export function decodeContainerStatus(f: Fields): ContainerStatus {
  return {
    id: f.string(1),
    name: f.message(2)?.string(1) ?? "",
    state: f.uint(3),
    createdAt: f.bigint(4),
    startedAt: f.bigint(5),
    finishedAt: f.bigint(6),
    exitCode: f.int(7),
    image: f.message(8)?.string(1) ?? "",
    reason: f.string(10),
    message: f.string(11),
    logPath: f.string(15),
  };
}

/** The RPCs of runtime.v1 that a pod with one container needs, over one connection. */
export class CriClient {
  private constructor(private readonly grpc: GrpcUnixClient) {}

  static async connect(socketPath: string): Promise<CriClient> {
    return new CriClient(await GrpcUnixClient.connect(socketPath));
  }

  close(): void {
    this.grpc.close();
  }

  private call(service: string, method: string, request: Uint8Array, timeoutMs?: number): Promise<Fields> {
    return this.grpc.unary(`/${service}/${method}`, request, timeoutMs).then(decodeFields);
  }

  async version(apiVersion = "v1"): Promise<VersionInfo> {
    const f = await this.call(RUNTIME_SERVICE, "Version", new Writer().string(1, apiVersion).finish());
    return { version: f.string(1), runtimeName: f.string(2), runtimeVersion: f.string(3), runtimeApiVersion: f.string(4) };
  }

  async runPodSandbox(config: PodSandboxConfig, runtimeHandler: string): Promise<string> {
    const req = new Writer().message(1, encodePodSandboxConfig(config)).string(2, runtimeHandler).finish();
    return (await this.call(RUNTIME_SERVICE, "RunPodSandbox", req, 120_000)).string(1);
  }

  async podSandboxStatus(podSandboxId: string): Promise<PodSandboxStatus> {
    const f = (await this.call(RUNTIME_SERVICE, "PodSandboxStatus", idRequest(podSandboxId))).message(1);
    if (!f) throw new CriError("CRI_PROTOCOL", "PodSandboxStatus: no status in the reply");
    return { id: f.string(1), state: f.uint(3), runtimeHandler: f.string(9) };
  }

  async stopPodSandbox(podSandboxId: string): Promise<void> {
    await this.call(RUNTIME_SERVICE, "StopPodSandbox", idRequest(podSandboxId), 120_000);
  }

  async removePodSandbox(podSandboxId: string): Promise<void> {
    await this.call(RUNTIME_SERVICE, "RemovePodSandbox", idRequest(podSandboxId), 120_000);
  }

  async createContainer(podSandboxId: string, config: ContainerConfig, sandboxConfig: PodSandboxConfig): Promise<string> {
    const req = new Writer()
      .string(1, podSandboxId)
      .message(2, encodeContainerConfig(config))
      .message(3, encodePodSandboxConfig(sandboxConfig))
      .finish();
    return (await this.call(RUNTIME_SERVICE, "CreateContainer", req, 120_000)).string(1);
  }

  async startContainer(containerId: string): Promise<void> {
    await this.call(RUNTIME_SERVICE, "StartContainer", idRequest(containerId), 120_000);
  }

  async containerStatus(containerId: string): Promise<ContainerStatus> {
    const f = (await this.call(RUNTIME_SERVICE, "ContainerStatus", idRequest(containerId))).message(1);
    if (!f) throw new CriError("CRI_PROTOCOL", "ContainerStatus: no status in the reply");
    return decodeContainerStatus(f);
  }

  /** timeoutSeconds: the grace period before SIGKILL (0 = kill at once). */
  async stopContainer(containerId: string, timeoutSeconds: number): Promise<void> {
    await this.call(RUNTIME_SERVICE, "StopContainer", new Writer().string(1, containerId).uint(2, timeoutSeconds).finish(), 120_000);
  }

  async removeContainer(containerId: string): Promise<void> {
    await this.call(RUNTIME_SERVICE, "RemoveContainer", idRequest(containerId), 120_000);
  }

  async listContainers(filter: { podSandboxId?: string } = {}): Promise<ContainerSummary[]> {
    const req = new Writer().message(1, new Writer().string(3, filter.podSandboxId).finish()).finish();
    const f = await this.call(RUNTIME_SERVICE, "ListContainers", req);
    return f.repeatedMessage(1).map((c) => ({ id: c.string(1), podSandboxId: c.string(2), name: c.message(3)?.string(1) ?? "", state: c.uint(6) }));
  }

  /** ImageStatus: undefined when the runtime does not have the image. */
  async imageStatus(image: string): Promise<ImageInfo | undefined> {
    const req = new Writer().message(1, new Writer().string(1, image).finish()).finish();
    const f = (await this.call(IMAGE_SERVICE, "ImageStatus", req)).message(1);
    if (!f) return undefined;
    return { id: f.string(1), repoTags: f.repeatedString(2), size: f.uint(4) };
  }
}
