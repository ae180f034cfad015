/**
 * The e2e CRI client's pieces that need no containerd: gRPC message framing
 * (every split of the byte stream, compressed and oversized messages), the
 * runtime.v1 field numbers it writes and reads, and a unary call against a
 * node:http2 server on a unix socket (reply + trailers, a trailers-only
 * error, a stream that ends without grpc-status).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer, type Http2Server, type ServerHttp2Stream } from "node:http2";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeFields, Writer } from "../../src/shim/proto.ts";
import {
  CriError,
  decodeContainerStatus,
  encodeContainerConfig,
  encodePodSandboxConfig,
  frameGrpcMessage,
  GrpcMessageReader,
  GrpcUnixClient,
  NamespaceMode,
} from "../e2e/cri-client.ts";

const bytes = (...xs: number[]) => Uint8Array.from(xs);

describe("gRPC framing", () => {
  test("a message is flag 0, a big-endian u32 length, then the bytes", () => {
    expect([...frameGrpcMessage(bytes(7, 8, 9))]).toEqual([0, 0, 0, 0, 3, 7, 8, 9]);
    expect([...frameGrpcMessage(new Uint8Array(0))]).toEqual([0, 0, 0, 0, 0]);
    const big = frameGrpcMessage(new Uint8Array(0x010203));
    expect([...big.subarray(0, 5)]).toEqual([0, 0, 0x01, 0x02, 0x03]);
  });

  test("the reader finds the same messages however the stream is split", () => {
    const a = bytes(1, 2, 3);
    const b = new Uint8Array(0);
    const c = Uint8Array.from({ length: 300 }, (_, i) => i & 0xff);
    const stream = new Uint8Array([...frameGrpcMessage(a), ...frameGrpcMessage(b), ...frameGrpcMessage(c)]);
    for (let cut1 = 0; cut1 <= stream.length; cut1 += 1) {
      for (const cut2 of [cut1, Math.min(stream.length, cut1 + 1), Math.min(stream.length, cut1 + 7)]) {
        const r = new GrpcMessageReader();
        r.push(stream.subarray(0, cut1));
        r.push(stream.subarray(cut1, cut2));
        r.push(stream.subarray(cut2));
        expect(r.messages.map((m) => [...m])).toEqual([[...a], [...b], [...c]]);
        expect(r.leftover).toBe(0);
      }
    }
  });

  test("an incomplete message stays pending", () => {
    const r = new GrpcMessageReader();
    r.push(frameGrpcMessage(bytes(1, 2, 3, 4)).subarray(0, 7));
    expect(r.messages).toEqual([]);
    expect(r.leftover).toBe(7);
  });

  test("a compressed or oversized message is a CRI_PROTOCOL error", () => {
    const compressed = frameGrpcMessage(bytes(1));
    compressed[0] = 1;
    expect(() => new GrpcMessageReader().push(compressed)).toThrow(CriError);
    const r = new GrpcMessageReader(16);
    let err: unknown;
    try {
      r.push(bytes(0, 0, 0, 0, 17));
    } catch (e) {
      err = e;
    }
    expect((err as CriError).code).toBe("CRI_PROTOCOL");
    expect((err as CriError).message).toContain("17 bytes");
  });
});

describe("runtime.v1 messages", () => {
  test("PodSandboxConfig: metadata, log_directory, labels, linux cgroup_parent and namespace options", () => {
    const f = decodeFields(
      encodePodSandboxConfig({
        metadata: { name: "p", uid: "u", namespace: "ns", attempt: 2 },
        hostname: "h",
        logDirectory: "/logs",
        labels: { a: "1" },
        annotations: { b: "2" },
        linux: { cgroupParent: "/nano-kata-test/x", namespaces: { network: NamespaceMode.NODE, pid: NamespaceMode.CONTAINER } },
      }),
    );
    const meta = f.message(1)!;
    expect([meta.string(1), meta.string(2), meta.string(3), meta.uint(4)]).toEqual(["p", "u", "ns", 2]);
    expect(f.string(2)).toBe("h");
    expect(f.string(3)).toBe("/logs");
    expect(f.repeatedMessage(6).map((e) => [e.string(1), e.string(2)])).toEqual([["a", "1"]]);
    expect(f.repeatedMessage(7).map((e) => [e.string(1), e.string(2)])).toEqual([["b", "2"]]);
    const linux = f.message(8)!;
    expect(linux.string(1)).toBe("/nano-kata-test/x");
    const ns = linux.message(2)!.message(1)!;
    expect([ns.uint(1), ns.uint(2), ns.uint(3)]).toEqual([2, 1, 0]);
  });

  test("ContainerConfig: image, command, args, envs, log_path, linux security context namespaces", () => {
    const f = decodeFields(
      encodeContainerConfig({
        metadata: { name: "c" },
        image: "img",
        command: ["sh", "-c"],
        args: ["echo hi"],
        workingDir: "/w",
        envs: { K: "V" },
        logPath: "c/0.log",
        linux: { namespaces: { network: NamespaceMode.NODE } },
      }),
    );
    expect(f.message(1)!.string(1)).toBe("c");
    expect(f.message(2)!.string(1)).toBe("img");
    expect(f.repeatedString(3)).toEqual(["sh", "-c"]);
    expect(f.repeatedString(4)).toEqual(["echo hi"]);
    expect(f.string(5)).toBe("/w");
    expect(f.repeatedMessage(6).map((e) => [e.string(1), e.string(2)])).toEqual([["K", "V"]]);
    expect(f.string(11)).toBe("c/0.log");
    expect(f.message(15)!.message(2)!.message(3)!.uint(1)).toBe(NamespaceMode.NODE);
  });

  test("ContainerStatus: state, times, exit code (int32, also negative), reason, log_path", () => {
    const status = new Writer()
      .string(1, "id1")
      .message(2, new Writer().string(1, "name1").finish())
      .uint(3, 2)
      .uint(4, 1_000_000_000_123n)
      .uint(6, 2_000_000_000_456n)
      .uint(7, -1)
      .message(8, new Writer().string(1, "img").finish())
      .string(10, "Error")
      .string(15, "/logs/x.log")
      .finish();
    const s = decodeContainerStatus(decodeFields(status));
    expect(s).toMatchObject({ id: "id1", name: "name1", state: 2, exitCode: -1, image: "img", reason: "Error", logPath: "/logs/x.log" });
    expect(s.createdAt).toBe(1_000_000_000_123n);
    expect(s.startedAt).toBe(0n);
    expect(s.finishedAt).toBe(2_000_000_000_456n);
  });
});

describe("a unary call over node:http2 on a unix socket", () => {
  let dir: string;
  let server: Http2Server;
  let socket: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "nk-grpc-unit-"));
    socket = join(dir, "grpc.sock");
    server = createServer();
    server.on("stream", (stream: ServerHttp2Stream, headers) => {
      const path = String(headers[":path"]);
      const chunks: Buffer[] = [];
      stream.on("data", (b: Buffer) => chunks.push(b));
      stream.on("end", () => {
        const request = new GrpcMessageReader();
        request.push(Buffer.concat(chunks));
        const ok = headers["content-type"] === "application/grpc" && headers.te === "trailers" && request.messages.length === 1;
        if (path === "/t.S/Echo" && ok) {
          stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
          stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
          stream.end(frameGrpcMessage(request.messages[0]!));
        } else if (path === "/t.S/NoStatus") {
          stream.respond({ ":status": 200, "content-type": "application/grpc" });
          stream.end(frameGrpcMessage(bytes(1)));
        } else {
          // Trailers-only: the status rides in the headers, percent-encoded message.
          stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": ok ? "12" : "3", "grpc-message": "no%20such%20method" }, { endStream: true });
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  test("the reply message comes back; grpc-status in trailers, trailers-only errors and a missing status are told apart", async () => {
    const client = await GrpcUnixClient.connect(socket);
    try {
      expect([...(await client.unary("/t.S/Echo", bytes(5, 6, 7)))]).toEqual([5, 6, 7]);
      const unimplemented = await client.unary("/t.S/Other", bytes(1)).catch((e: unknown) => e);
      expect(unimplemented).toMatchObject({ code: "CRI_GRPC_STATUS", grpcStatus: 12 });
      expect((unimplemented as CriError).message).toContain("no such method");
      const noStatus = await client.unary("/t.S/NoStatus", bytes(1)).catch((e: unknown) => e);
      expect(noStatus).toMatchObject({ code: "CRI_PROTOCOL" });
    } finally {
      client.close();
    }
  });

  test("connecting to a socket nobody serves is a CRI_TRANSPORT error", async () => {
    const err = await GrpcUnixClient.connect(join(dir, "absent.sock"), 2000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CriError);
    expect((err as CriError).code).toBe("CRI_TRANSPORT");
  });
});
