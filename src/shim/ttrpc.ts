/**
 * ttrpc: containerd's small RPC protocol over a unix socket.
 *
 * Every message is a frame: a 10-byte header (u32 big-endian payload length,
 * u32 big-endian stream id, u8 type, u8 flags) and the payload. A client
 * sends a Request (type 1) on an odd stream id it has not used before; the
 * server answers with one Response (type 2) on the same stream id. Payloads
 * are protobuf:
 *
 *   Request  { service = 1, method = 2, payload = 3, timeout_nano = 4, metadata = 5 (KeyValue {key = 1, value = 2}) }
 *   Response { status = 1 (google.rpc.Status {code = 1, message = 2}), payload = 2 }
 *
 * Requests on one connection are served concurrently; responses go out in
 * the order they finish. A frame over 4 MiB is discarded unread and answered
 * with RESOURCE_EXHAUSTED, as the Go implementation does; a frame of another
 * type is answered with an error status; a connection that ends inside a
 * frame is simply closed. Nothing a peer sends can throw out of this module.
 */
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { existsSync, unlinkSync } from "node:fs";
import { decodeFields, ProtoError, Writer } from "./proto.ts";

export const HEADER_LENGTH = 10;
export const MESSAGE_LENGTH_MAX = 4 << 20;
export const MessageType = { REQUEST: 1, RESPONSE: 2, DATA: 3 } as const;

/** gRPC status codes, which ttrpc reuses and containerd maps onto its error kinds. */
export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

export class TtrpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = "TtrpcError";
  }
}

export interface Frame {
  length: number;
  streamId: number;
  type: number;
  flags: number;
  payload: Uint8Array;
}

export function encodeFrame(streamId: number, type: number, payload: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(HEADER_LENGTH + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, payload.length, false);
  view.setUint32(4, streamId >>> 0, false);
  view.setUint8(8, type);
  view.setUint8(9, flags);
  out.set(payload, HEADER_LENGTH);
  return out;
}

export type DecodedItem = { kind: "frame"; frame: Frame } | { kind: "oversized"; streamId: number; type: number; length: number };

/**
 * Splits a byte stream into frames. An oversized frame is reported once (so
 * the server can answer it) and its payload skipped as it arrives, never
 * buffered.
 */
export class FrameDecoder {
  private parts: Uint8Array[] = [];
  private total = 0;
  /** Bytes needed before the next frame can be looked at. */
  private need = HEADER_LENGTH;
  private skip = 0;

  constructor(private readonly maxLength = MESSAGE_LENGTH_MAX) {}

  /** Bytes held for an incomplete frame (0 at a frame boundary). */
  get pending(): number {
    return this.total + this.skip;
  }

  push(chunk: Uint8Array): DecodedItem[] {
    const items: DecodedItem[] = [];
    if (this.skip > 0) {
      const n = Math.min(this.skip, chunk.length);
      this.skip -= n;
      chunk = chunk.subarray(n);
    }
    if (chunk.length === 0) return items;
    this.parts.push(chunk);
    this.total += chunk.length;
    // A large frame arriving in many chunks is joined once, not once per chunk.
    if (this.total < this.need) return items;
    let buf: Uint8Array;
    if (this.parts.length === 1) buf = this.parts[0]!;
    else {
      buf = new Uint8Array(this.total);
      let off = 0;
      for (const p of this.parts) {
        buf.set(p, off);
        off += p.length;
      }
    }
    this.parts = [];
    this.total = 0;
    this.need = HEADER_LENGTH;
    let at = 0;
    while (buf.length - at >= HEADER_LENGTH) {
      const view = new DataView(buf.buffer, buf.byteOffset + at, HEADER_LENGTH);
      const length = view.getUint32(0, false);
      const streamId = view.getUint32(4, false);
      const type = view.getUint8(8);
      const flags = view.getUint8(9);
      if (length > this.maxLength) {
        items.push({ kind: "oversized", streamId, type, length });
        const available = buf.length - at - HEADER_LENGTH;
        if (available >= length) {
          at += HEADER_LENGTH + length;
          continue;
        }
        this.skip = length - available;
        at = buf.length;
        break;
      }
      if (buf.length - at - HEADER_LENGTH < length) {
        this.need = HEADER_LENGTH + length;
        break;
      }
      // Copy the payload out: the chunk's memory is not ours to keep.
      const payload = buf.slice(at + HEADER_LENGTH, at + HEADER_LENGTH + length);
      items.push({ kind: "frame", frame: { length, streamId, type, flags, payload } });
      at += HEADER_LENGTH + length;
    }
    if (at < buf.length) {
      const rest = buf.slice(at);
      this.parts = [rest];
      this.total = rest.length;
    }
    return items;
  }
}

export interface Request {
  service: string;
  method: string;
  payload: Uint8Array;
  timeoutNano: number;
  metadata: [string, string][];
}

export function encodeRequest(r: Partial<Request> & { service: string; method: string }): Uint8Array {
  const w = new Writer().string(1, r.service).string(2, r.method).bytes(3, r.payload).uint(4, r.timeoutNano);
  for (const [k, v] of r.metadata ?? []) w.message(5, new Writer().string(1, k).string(2, v).finish());
  return w.finish();
}

export function decodeRequest(buf: Uint8Array): Request {
  const f = decodeFields(buf);
  return {
    service: f.string(1),
    method: f.string(2),
    payload: f.bytes(3),
    timeoutNano: f.int(4),
    metadata: f.repeatedMessage(5).map((kv) => [kv.string(1), kv.string(2)] as [string, string]),
  };
}

export interface Response {
  code: number;
  message: string;
  payload: Uint8Array;
}

export function encodeResponse(r: Partial<Response>): Uint8Array {
  const w = new Writer();
  if (r.code) w.message(1, new Writer().uint(1, r.code).string(2, r.message).finish());
  return w.bytes(2, r.payload).finish();
}

export function decodeResponse(buf: Uint8Array): Response {
  const f = decodeFields(buf);
  const status = f.message(1);
  return { code: status ? status.int(1) : 0, message: status ? status.string(2) : "", payload: f.bytes(2) };
}

export interface CallContext {
  service: string;
  method: string;
  /** Request metadata (containerd sends its namespace as "containerd-namespace-ttrpc"). */
  metadata: Map<string, string>;
  timeoutNano: number;
}

export type Handler = (payload: Uint8Array, ctx: CallContext) => Uint8Array | Promise<Uint8Array>;

export interface ServerOptions {
  /** Called for every failed request (logging). */
  onError?: (ctx: CallContext | undefined, error: unknown) => void;
  /** Called when a request has been answered, with its duration (debug logging). */
  onCall?: (ctx: CallContext, ms: number) => void;
}

/** The status for an error a handler threw. */
export function statusOf(error: unknown): { code: number; message: string } {
  if (error instanceof TtrpcError) return { code: error.code, message: error.message };
  if (error instanceof ProtoError) return { code: Code.INVALID_ARGUMENT, message: `malformed request: ${error.message}` };
  const code = (error as { grpcCode?: number })?.grpcCode;
  const message = error instanceof Error ? error.message : String(error);
  return { code: typeof code === "number" ? code : Code.UNKNOWN, message };
}

export class TtrpcServer {
  private readonly services = new Map<string, Map<string, Handler>>();
  private readonly sockets = new Set<Socket>();
  private server: Server | undefined;
  private path: string | undefined;

  constructor(private readonly opts: ServerOptions = {}) {}

  register(service: string, methods: Record<string, Handler>): void {
    this.services.set(service, new Map(Object.entries(methods)));
  }

  get connections(): number {
    return this.sockets.size;
  }

  /** Listen on a unix socket path (an existing socket file there is replaced). */
  listen(path: string): Promise<void> {
    if (existsSync(path)) unlinkSync(path);
    this.path = path;
    const server = createServer((socket) => this.serve(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    if (this.path) {
      try {
        unlinkSync(this.path);
      } catch {}
    }
  }

  /** Serve one connection (exported for tests that bring their own socket). */
  serve(socket: Socket): void {
    this.sockets.add(socket);
    const decoder = new FrameDecoder();
    let open = true;
    const send = (streamId: number, r: Partial<Response>): void => {
      if (!open) return;
      try {
        socket.write(encodeFrame(streamId, MessageType.RESPONSE, encodeResponse(r)));
      } catch {}
    };
    socket.on("data", (chunk: Buffer) => {
      let items: DecodedItem[];
      try {
        items = decoder.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length));
      } catch (e) {
        this.opts.onError?.(undefined, e);
        socket.destroy();
        return;
      }
      for (const item of items) {
        if (item.kind === "oversized") {
          send(item.streamId, { code: Code.RESOURCE_EXHAUSTED, message: `message length ${item.length} exceeds maximum message size of ${MESSAGE_LENGTH_MAX}` });
          continue;
        }
        const { frame } = item;
        if (frame.type !== MessageType.REQUEST) {
          send(frame.streamId, { code: Code.INVALID_ARGUMENT, message: `unsupported message type ${frame.type}` });
          continue;
        }
        if (frame.streamId % 2 !== 1) {
          send(frame.streamId, { code: Code.INVALID_ARGUMENT, message: "StreamID must be odd for client initiated streams" });
          continue;
        }
        void this.dispatch(frame).then((r) => send(frame.streamId, r));
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      open = false;
      this.sockets.delete(socket);
    });
  }

  private async dispatch(frame: Frame): Promise<Partial<Response>> {
    let ctx: CallContext | undefined;
    try {
      const req = decodeRequest(frame.payload);
      ctx = { service: req.service, method: req.method, metadata: new Map(req.metadata), timeoutNano: req.timeoutNano };
      const service = this.services.get(req.service);
      if (!service) throw new TtrpcError(Code.UNIMPLEMENTED, `service ${req.service}`);
      const handler = service.get(req.method);
      if (!handler) throw new TtrpcError(Code.UNIMPLEMENTED, `method ${req.method}`);
      const started = this.opts.onCall ? performance.now() : 0;
      const payload = await handler(req.payload, ctx);
      this.opts.onCall?.(ctx, performance.now() - started);
      return { payload };
    } catch (error) {
      this.opts.onError?.(ctx, error);
      const { code, message } = statusOf(error);
      return { code: code || Code.UNKNOWN, message };
    }
  }
}

/** Strip containerd's "unix://" scheme from an address. */
export function socketPath(address: string): string {
  return address.startsWith("unix://") ? address.slice("unix://".length) : address;
}

export class TtrpcClient {
  private nextStream = 1;
  private readonly pending = new Map<number, { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }>();
  private readonly decoder = new FrameDecoder();
  private closedError: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      let items: DecodedItem[];
      try {
        items = this.decoder.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length));
      } catch (e) {
        this.fail(e as Error);
        return;
      }
      for (const item of items) {
        if (item.kind !== "frame" || item.frame.type !== MessageType.RESPONSE) continue;
        const waiter = this.pending.get(item.frame.streamId);
        if (!waiter) continue;
        this.pending.delete(item.frame.streamId);
        try {
          const r = decodeResponse(item.frame.payload);
          if (r.code !== 0) waiter.reject(new TtrpcError(r.code, r.message));
          else waiter.resolve(r.payload);
        } catch (e) {
          waiter.reject(e as Error);
        }
      }
    });
    socket.on("error", (e) => this.fail(e));
    socket.on("close", () => this.fail(new TtrpcError(Code.UNAVAILABLE, "ttrpc: closed")));
  }

  static connect(address: string, timeoutMs = 5000): Promise<TtrpcClient> {
    return new Promise((resolve, reject) => {
      const socket = createConnection(socketPath(address));
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new TtrpcError(Code.UNAVAILABLE, `ttrpc: connect to ${address} timed out`));
      }, timeoutMs);
      socket.once("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.removeAllListeners("error");
        resolve(new TtrpcClient(socket));
      });
    });
  }

  private fail(error: Error): void {
    this.closedError ??= error;
    for (const w of this.pending.values()) w.reject(error);
    this.pending.clear();
  }

  call(service: string, method: string, payload: Uint8Array, metadata: [string, string][] = [], timeoutMs = 0): Promise<Uint8Array> {
    if (this.closedError) return Promise.reject(this.closedError);
    const streamId = this.nextStream;
    this.nextStream += 2;
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          this.pending.delete(streamId);
          reject(new TtrpcError(Code.DEADLINE_EXCEEDED, `ttrpc: ${service}/${method} timed out`));
        }, timeoutMs);
      }
      this.pending.set(streamId, {
        resolve: (b) => {
          if (timer) clearTimeout(timer);
          resolve(b);
        },
        reject: (e) => {
          if (timer) clearTimeout(timer);
          reject(e);
        },
      });
      this.socket.write(encodeFrame(streamId, MessageType.REQUEST, encodeRequest({ service, method, payload, metadata, timeoutNano: timeoutMs * 1e6 })));
    });
  }

  /** Write raw bytes (tests send malformed frames with this). */
  writeRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  close(): void {
    this.socket.destroy();
  }
}
