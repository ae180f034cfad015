/**
 * The shim's wire layer: protobuf codec round trips, ttrpc framing, and a
 * live ttrpc server fed well-formed, concurrent and malformed traffic. A bad
 * frame gets an error status or a closed connection, never a crash, and the
 * server goes on serving.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeFields, encodeAny, decodeAny, encodeTimestamp, decodeTimestamp, ProtoError, Writer } from "../../src/shim/proto.ts";
import * as m from "../../src/shim/messages.ts";
import {
  Code,
  decodeRequest,
  decodeResponse,
  encodeFrame,
  encodeRequest,
  encodeResponse,
  FrameDecoder,
  HEADER_LENGTH,
  MESSAGE_LENGTH_MAX,
  MessageType,
  TtrpcClient,
  TtrpcError,
  TtrpcServer,
} from "../../src/shim/ttrpc.ts";
import { parseMountOptions } from "../../src/shim/mount.ts";
import { parseShimFlags, shimSocketAddress } from "../../src/shim/main.ts";
import { splitDev } from "../../src/shim/tty.ts";
import { encodeMetricsV1 } from "../../src/shim/metrics.ts";
import { emptyStats } from "../../src/cgroups/stats.ts";

describe("protobuf codec", () => {
  test("varints: small, multi-byte, 64-bit and negative", () => {
    const w = new Writer().uint(1, 1).uint(2, 300).uint(3, 2 ** 40).uint(4, 18446744073709551615n).tag(5, 0).varint(-1);
    const bytes = w.finish();
    expect([...bytes.subarray(0, 2)]).toEqual([0x08, 0x01]);
    expect([...bytes.subarray(2, 5)]).toEqual([0x10, 0xac, 0x02]);
    const f = decodeFields(bytes);
    expect(f.uint(1)).toBe(1);
    expect(f.uint(2)).toBe(300);
    expect(f.uint(3)).toBe(2 ** 40);
    expect(f.bigint(4)).toBe(18446744073709551615n);
    expect(f.int(5)).toBe(-1);
  });

  test("a double at 2^64 saturates to UINT64_MAX", () => {
    const f = decodeFields(new Writer().uint(1, 2 ** 64 - 1).finish());
    expect(f.bigint(1)).toBe(18446744073709551615n);
  });

  test("proto3 defaults are not written; absent fields read as defaults", () => {
    expect(new Writer().uint(1, 0).string(2, "").bool(3, false).bytes(4, new Uint8Array()).finish().length).toBe(0);
    const f = decodeFields(new Uint8Array());
    expect(f.string(1)).toBe("");
    expect(f.uint(2)).toBe(0);
    expect(f.bool(3)).toBe(false);
    expect(f.message(4)).toBeUndefined();
  });

  test("fixed32/fixed64 and unknown fields are skipped by typed readers", () => {
    const bytes = new Writer().fixed32(7, 0xdeadbeef).fixed64(8, 123456789012345n).string(1, "x").finish();
    const f = decodeFields(bytes);
    expect(f.uint(7)).toBe(0xdeadbeef);
    expect(f.bigint(8)).toBe(123456789012345n);
    expect(f.string(1)).toBe("x");
  });

  test("packed and unpacked repeated numbers", () => {
    const packed = new Writer().bytes(1, new Writer().varint(1).varint(300).varint(5).finish()).finish();
    expect(decodeFields(packed).repeatedUint(1)).toEqual([1, 300, 5]);
    const unpacked = new Writer().uint(1, 4).uint(1, 9).finish();
    expect(decodeFields(unpacked).repeatedUint(1)).toEqual([4, 9]);
  });

  test("malformed messages throw ProtoError", () => {
    expect(() => decodeFields(Uint8Array.from([0x0a, 0x05, 0x61]))).toThrow(ProtoError); // length past the end
    expect(() => decodeFields(Uint8Array.from([0x08, 0x80]))).toThrow(ProtoError); // truncated varint
    expect(() => decodeFields(Uint8Array.from([0x0b]))).toThrow(ProtoError); // group wire type
    expect(() => decodeFields(Uint8Array.from([0x00, 0x01]))).toThrow(ProtoError); // field 0
    expect(() => decodeFields(Uint8Array.from(new Array(11).fill(0xff)))).toThrow(ProtoError); // varint too long
  });

  test("Any and Timestamp round trip", () => {
    const any = { typeUrl: "containerd.events.TaskStart", value: Uint8Array.from([1, 2, 3]) };
    expect(decodeAny(decodeFields(encodeAny(any)))).toEqual(any);
    const at = new Date("2024-05-06T07:08:09.123Z");
    expect(decodeTimestamp(decodeFields(encodeTimestamp(at)!))!.getTime()).toBe(at.getTime());
  });

  test("task messages round trip", () => {
    const create: m.CreateTaskRequest = {
      id: "c1",
      bundle: "/run/b",
      rootfs: [{ type: "overlay", source: "overlay", target: "", options: ["index=off", "lowerdir=/a", "upperdir=/u", "workdir=/w"] }],
      terminal: true,
      stdin: "/f/in",
      stdout: "/f/out",
      stderr: "",
      checkpoint: "",
      parentCheckpoint: "",
      options: { typeUrl: "x.Options", value: Uint8Array.from([8, 1]) },
    };
    expect(m.decodeCreateTaskRequest(m.encodeCreateTaskRequest(create))).toEqual(create);
    const exec = { id: "c1", execId: "e1", terminal: false, stdin: "", stdout: "/o", stderr: "/e", spec: { typeUrl: "p", value: new TextEncoder().encode('{"args":["ls"]}') } };
    expect(m.decodeExecProcessRequest(m.encodeExecProcessRequest(exec))).toEqual(exec);
    expect(m.decodeKillRequest(m.encodeKillRequest({ id: "c", execId: "", signal: 9, all: true }))).toEqual({ id: "c", execId: "", signal: 9, all: true });
    expect(m.decodeResizePtyRequest(m.encodeResizePtyRequest({ id: "c", execId: "e", width: 80, height: 24 }))).toEqual({ id: "c", execId: "e", width: 80, height: 24 });
    expect(m.decodeCloseIORequest(m.encodeCloseIORequest({ id: "c", execId: "", stdin: true }))).toEqual({ id: "c", execId: "", stdin: true });
    const upd = { id: "c", resources: { typeUrl: "r", value: Uint8Array.from([1]) }, annotations: { a: "1", b: "2" } };
    expect(m.decodeUpdateTaskRequest(m.encodeUpdateTaskRequest(upd))).toEqual(upd);
    expect(m.decodeShutdownRequest(m.encodeShutdownRequest({ id: "c", now: true }))).toEqual({ id: "c", now: true });
    const at = new Date(1_700_000_000_123);
    expect(m.decodeDeleteResponse(m.encodeDeleteResponse({ pid: 42, exitStatus: 137, exitedAt: at }))).toEqual({ pid: 42, exitStatus: 137, exitedAt: at });
    expect(m.decodeWaitResponse(m.encodeWaitResponse({ exitStatus: 3, exitedAt: at }))).toEqual({ exitStatus: 3, exitedAt: at });
    const state: m.StateResponse = { id: "c", bundle: "/b", pid: 7, status: m.TaskStatus.PAUSED, stdin: "i", stdout: "o", stderr: "e", terminal: true, exitStatus: 0, exitedAt: undefined, execId: "" };
    expect(m.decodeStateResponse(m.encodeStateResponse(state))).toEqual(state);
    expect(m.decodePidsResponse(m.encodePidsResponse([{ pid: 1 }, { pid: 99, info: { typeUrl: "t", value: Uint8Array.from([1]) } }]))).toEqual([
      { pid: 1, info: undefined },
      { pid: 99, info: { typeUrl: "t", value: Uint8Array.from([1]) } },
    ]);
    expect(m.decodeConnectResponse(m.encodeConnectResponse({ shimPid: 10, taskPid: 11, version: "v" }))).toEqual({ shimPid: 10, taskPid: 11, version: "v" });
    expect(m.decodePidResponse(m.encodePidResponse(1234))).toEqual({ pid: 1234 });
  });

  test("events are Any-wrapped with containerd's type names and field numbers", () => {
    const exit = m.encodeEvent({ topic: "/tasks/exit", containerId: "c", id: "e", pid: 5, exitStatus: 2, exitedAt: new Date(5000) });
    expect(exit.typeUrl).toBe("containerd.events.TaskExit");
    const f = decodeFields(exit.value);
    expect([f.string(1), f.string(2), f.uint(3), f.uint(4)]).toEqual(["c", "e", 5, 2]);
    expect(decodeTimestamp(f.message(5))!.getTime()).toBe(5000);
    const create = m.encodeEvent({
      topic: "/tasks/create",
      containerId: "c",
      bundle: "/b",
      rootfs: [],
      io: { stdin: "", stdout: "/o", stderr: "", terminal: true },
      checkpoint: "",
      pid: 9,
    });
    const cf = decodeFields(create.value);
    expect(cf.message(4)!.string(2)).toBe("/o");
    expect(cf.message(4)!.bool(4)).toBe(true);
    expect(cf.uint(6)).toBe(9);
    const fwd = m.decodeForwardRequest(m.encodeForwardRequest(new Date(1000), "ns", "/tasks/exit", exit));
    expect(fwd).toEqual({ at: new Date(1000), namespace: "ns", topic: "/tasks/exit", event: exit });
  });

  test("v1 metrics encode pids and memory usage where containerd reads them", () => {
    const s = emptyStats();
    s.pids.current = 3;
    s.memory.usage.usage = 4096;
    s.memory.usage.limit = 2 ** 64 - 1;
    const any = encodeMetricsV1(s);
    expect(any.typeUrl).toBe("io.containerd.cgroups.v1.Metrics");
    const f = decodeFields(any.value);
    expect(f.message(2)!.uint(1)).toBe(3);
    const usage = f.message(4)!.message(33)!;
    expect(usage.uint(2)).toBe(4096);
    expect(usage.bigint(1)).toBe(18446744073709551615n);
  });
});

describe("shim helpers", () => {
  test("Go-style flags as containerd passes them", () => {
    const f = parseShimFlags(["-namespace", "k8s.io", "-address", "/run/c.sock", "-publish-binary", "/usr/bin/containerd", "-id", "abc", "-debug", "start"]);
    expect(f).toMatchObject({ namespace: "k8s.io", address: "/run/c.sock", publishBinary: "/usr/bin/containerd", id: "abc", debug: true, action: "start" });
    expect(parseShimFlags(["--id=x", "-bundle=/b", "-unknown", "y", "delete"])).toMatchObject({ id: "x", bundle: "/b", action: "delete" });
    expect(parseShimFlags(["-v"]).version).toBe(true);
    expect(() => parseShimFlags(["-id"])).toThrow();
  });

  test("socket addresses are per containerd address, namespace and group", () => {
    const a = shimSocketAddress("/run/containerd/containerd.sock", "default", "c1");
    expect(a).toMatch(/^unix:\/\/\/run\/containerd\/s\/[0-9a-f]{64}$/);
    expect(shimSocketAddress("/run/containerd/containerd.sock", "default", "c2")).not.toBe(a);
    expect(shimSocketAddress("/other.sock", "default", "c1")).not.toBe(a);
  });

  test("mount options: flags, propagation and data", () => {
    expect(parseMountOptions(["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"])).toEqual({ flags: 0, propagation: 0, data: "index=off,workdir=/w,upperdir=/u,lowerdir=/l" });
    const bind = parseMountOptions(["rbind", "ro", "nosuid", "rprivate"]);
    expect(bind.flags).toBe(0x1000 | 0x4000 | 0x1 | 0x2);
    expect(bind.propagation).toBe((1 << 18) | 0x4000);
    expect(parseMountOptions(["ro", "rw"]).flags).toBe(0);
  });

  test("pty device numbers", () => {
    expect(splitDev((136 << 8) | 3)).toEqual({ major: 136, minor: 3 });
    expect(splitDev((136 << 8) | 0x2c | (0x100 << 12))).toEqual({ major: 136, minor: 0x12c });
  });
});

describe("ttrpc framing", () => {
  test("header layout: big-endian length and stream id, type, flags", () => {
    const frame = encodeFrame(0x01020304, MessageType.RESPONSE, Uint8Array.from([9, 9]), 0x4);
    expect([...frame]).toEqual([0, 0, 0, 2, 1, 2, 3, 4, 2, 4, 9, 9]);
  });

  test("frames split at any byte boundary reassemble", () => {
    const a = encodeFrame(1, 1, Uint8Array.from([1, 2, 3]));
    const b = encodeFrame(3, 1, new Uint8Array(0));
    const c = encodeFrame(5, 1, new Uint8Array(70_000).fill(7));
    const all = new Uint8Array(a.length + b.length + c.length);
    all.set(a, 0);
    all.set(b, a.length);
    all.set(c, a.length + b.length);
    for (const step of [1, 3, 10, 4096, all.length]) {
      const d = new FrameDecoder();
      const got: number[] = [];
      for (let i = 0; i < all.length; i += step) {
        for (const item of d.push(all.subarray(i, i + step))) if (item.kind === "frame") got.push(item.frame.streamId, item.frame.payload.length);
      }
      expect(got).toEqual([1, 3, 3, 0, 5, 70_000]);
      expect(d.pending).toBe(0);
    }
  });

  test("an oversized frame is reported once and skipped, the next one still decodes", () => {
    const d = new FrameDecoder(16);
    const header = new Uint8Array(HEADER_LENGTH);
    new DataView(header.buffer).setUint32(0, 40, false);
    new DataView(header.buffer).setUint32(4, 7, false);
    header[8] = 1;
    const items = [...d.push(header), ...d.push(new Uint8Array(25)), ...d.push(new Uint8Array(15)), ...d.push(encodeFrame(9, 1, Uint8Array.from([1])))];
    expect(items.map((i) => i.kind)).toEqual(["oversized", "frame"]);
    expect(items[0]).toMatchObject({ streamId: 7, length: 40 });
  });

  test("request and response envelopes round trip", () => {
    const req = { service: "s", method: "m", payload: Uint8Array.from([1]), timeoutNano: 5_000_000_000, metadata: [["containerd-namespace-ttrpc", "default"]] as [string, string][] };
    expect(decodeRequest(encodeRequest(req))).toEqual(req);
    expect(decodeResponse(encodeResponse({ code: Code.NOT_FOUND, message: "gone" }))).toEqual({ code: 5, message: "gone", payload: new Uint8Array(0) });
    expect(decodeResponse(encodeResponse({ payload: Uint8Array.from([4]) }))).toEqual({ code: 0, message: "", payload: Uint8Array.from([4]) });
  });
});

describe("ttrpc server", () => {
  let dir: string;
  let path: string;
  let server: TtrpcServer;
  const seenNamespaces: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "nk-ttrpc-"));
    path = join(dir, "s.sock");
    server = new TtrpcServer();
    server.register("test.Echo", {
      Echo: (p) => p,
      Slow: async (p) => {
        await Bun.sleep(Number(new TextDecoder().decode(p)));
        return p;
      },
      Fail: () => {
        throw new TtrpcError(Code.FAILED_PRECONDITION, "no");
      },
      Crash: () => {
        throw new Error("boom");
      },
      Ns: (_p, ctx) => {
        seenNamespaces.push(ctx.metadata.get("containerd-namespace-ttrpc") ?? "");
        return new Uint8Array(0);
      },
    });
    await server.listen(path);
  });

  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const enc = (s: string) => new TextEncoder().encode(s);
  const dec = (b: Uint8Array) => new TextDecoder().decode(b);

  /** A raw connection: send bytes, collect decoded response frames, see whether it closed. */
  async function raw(bytes: Uint8Array[], waitMs = 150): Promise<{ frames: { streamId: number; code: number; message: string }[]; closed: boolean }> {
    const sock: Socket = createConnection(path);
    await new Promise<void>((resolve, reject) => {
      sock.once("connect", () => resolve());
      sock.once("error", reject);
    });
    const decoder = new FrameDecoder();
    const frames: { streamId: number; code: number; message: string }[] = [];
    let closed = false;
    sock.on("data", (b: Buffer) => {
      for (const item of decoder.push(new Uint8Array(b))) {
        if (item.kind === "frame") {
          const r = decodeResponse(item.frame.payload);
          frames.push({ streamId: item.frame.streamId, code: r.code, message: r.message });
        }
      }
    });
    sock.on("close", () => (closed = true));
    sock.on("error", () => {});
    for (const b of bytes) sock.write(b);
    await Bun.sleep(waitMs);
    sock.destroy();
    return { frames, closed };
  }

  test("a call and its namespace metadata", async () => {
    const c = await TtrpcClient.connect(path);
    expect(dec(await c.call("test.Echo", "Echo", enc("hi")))).toBe("hi");
    await c.call("test.Echo", "Ns", new Uint8Array(0), [["containerd-namespace-ttrpc", "k8s.io"]]);
    expect(seenNamespaces).toContain("k8s.io");
    c.close();
  });

  test("concurrent requests on one connection answer out of order", async () => {
    const c = await TtrpcClient.connect(path);
    const order: string[] = [];
    const calls = ["120", "10", "60"].map((ms) => c.call("test.Echo", "Slow", enc(ms)).then((b) => order.push(dec(b))));
    await Promise.all(calls);
    expect(order).toEqual(["10", "60", "120"]);
    c.close();
  });

  test("errors carry their status; unknown services and methods are UNIMPLEMENTED", async () => {
    const c = await TtrpcClient.connect(path);
    await expect(c.call("test.Echo", "Fail", new Uint8Array(0))).rejects.toMatchObject({ code: Code.FAILED_PRECONDITION, message: "no" });
    await expect(c.call("test.Echo", "Crash", new Uint8Array(0))).rejects.toMatchObject({ code: Code.UNKNOWN, message: "boom" });
    await expect(c.call("test.Nope", "X", new Uint8Array(0))).rejects.toMatchObject({ code: Code.UNIMPLEMENTED });
    await expect(c.call("test.Echo", "Nope", new Uint8Array(0))).rejects.toMatchObject({ code: Code.UNIMPLEMENTED });
    // The connection is still good.
    expect(dec(await c.call("test.Echo", "Echo", enc("ok")))).toBe("ok");
    c.close();
  });

  test("an oversized length is answered RESOURCE_EXHAUSTED and its bytes skipped", async () => {
    const header = new Uint8Array(HEADER_LENGTH);
    const view = new DataView(header.buffer);
    view.setUint32(0, MESSAGE_LENGTH_MAX + 1, false);
    view.setUint32(4, 1, false);
    header[8] = MessageType.REQUEST;
    const r = await raw([header, new Uint8Array(MESSAGE_LENGTH_MAX + 1), encodeFrame(3, 1, encodeRequest({ service: "test.Echo", method: "Echo", payload: enc("after") }))], 400);
    expect(r.frames[0]).toMatchObject({ streamId: 1, code: Code.RESOURCE_EXHAUSTED });
    expect(r.frames[1]).toMatchObject({ streamId: 3, code: 0 });
  });

  test("a huge length that never arrives does not stop other connections", async () => {
    const header = new Uint8Array(HEADER_LENGTH);
    new DataView(header.buffer).setUint32(0, 0xffffffff, false);
    new DataView(header.buffer).setUint32(4, 1, false);
    header[8] = 1;
    const r = await raw([header]);
    expect(r.frames[0]).toMatchObject({ code: Code.RESOURCE_EXHAUSTED });
    const c = await TtrpcClient.connect(path);
    expect(dec(await c.call("test.Echo", "Echo", enc("still")))).toBe("still");
    c.close();
  });

  test("unknown message types and even stream ids get an error status", async () => {
    const r = await raw([encodeFrame(1, 0x7f, enc("x")), encodeFrame(2, 1, encodeRequest({ service: "test.Echo", method: "Echo" })), encodeFrame(5, MessageType.DATA, enc("d"))]);
    expect(r.frames.map((f) => [f.streamId, f.code])).toEqual([
      [1, Code.INVALID_ARGUMENT],
      [2, Code.INVALID_ARGUMENT],
      [5, Code.INVALID_ARGUMENT],
    ]);
  });

  test("a request whose protobuf is garbage is INVALID_ARGUMENT", async () => {
    const r = await raw([encodeFrame(1, 1, Uint8Array.from([0x0a, 0x7f, 0x01]))]);
    expect(r.frames[0]).toMatchObject({ streamId: 1, code: Code.INVALID_ARGUMENT });
  });

  test("a truncated payload (peer closes mid-frame) just closes; the server lives on", async () => {
    const frame = encodeFrame(1, 1, encodeRequest({ service: "test.Echo", method: "Echo", payload: enc("never") }));
    const r = await raw([frame.subarray(0, frame.length - 3)]);
    expect(r.frames).toEqual([]);
    const bad = await raw([Uint8Array.from([0, 0, 0])]);
    expect(bad.frames).toEqual([]);
    const c = await TtrpcClient.connect(path);
    expect(dec(await c.call("test.Echo", "Echo", enc("alive")))).toBe("alive");
    c.close();
    await Bun.sleep(20);
    expect(server.connections).toBe(0);
  });
});
