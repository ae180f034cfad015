/**
 * Publishing task events to containerd, strictly in the order they were
 * queued (containerd needs TaskStart before TaskExit, TaskExit before
 * TaskDelete, ...): one event is in flight at a time.
 *
 * Two transports:
 *   ttrpc   Events.Forward on containerd's ttrpc socket ($TTRPC_ADDRESS), one
 *           connection kept open; what containerd 1.6's own shims do.
 *   binary  `<publish-binary> --address <address> publish --topic T
 *           --namespace NS` with the event (an Any) on stdin: the original
 *           runtime v2 contract; costs a process per event.
 * $NK_SHIM_PUBLISH=binary|ttrpc chooses; default ttrpc when containerd gave a
 * ttrpc address, else binary.
 */
import { spawn } from "node:child_process";
import { encodeAny } from "./proto.ts";
import { encodeEvent, encodeForwardRequest, EVENTS_SERVICE, type TaskEvent } from "./messages.ts";
import { TtrpcClient } from "./ttrpc.ts";

export const NAMESPACE_HEADER = "containerd-namespace-ttrpc";

export interface PublisherOptions {
  namespace: string;
  /** containerd's grpc address (-address). */
  address: string;
  /** $TTRPC_ADDRESS */
  ttrpcAddress?: string;
  publishBinary?: string;
  mode?: "ttrpc" | "binary" | "none";
  log: (msg: string) => void;
}

export class Publisher {
  private chain: Promise<void> = Promise.resolve();
  private client: TtrpcClient | undefined;
  readonly mode: "ttrpc" | "binary" | "none";
  /** Every event published, in order (kept short; for debugging and tests). */
  readonly recent: string[] = [];

  constructor(private readonly opts: PublisherOptions) {
    const wanted = opts.mode ?? (process.env.NK_SHIM_PUBLISH as PublisherOptions["mode"] | undefined);
    if (wanted === "none") this.mode = "none";
    else if (wanted === "binary" && opts.publishBinary) this.mode = "binary";
    else if (opts.ttrpcAddress) this.mode = "ttrpc";
    else if (opts.publishBinary) this.mode = "binary";
    else this.mode = "none";
  }

  publish(event: TaskEvent): void {
    const at = new Date();
    this.chain = this.chain.then(async () => {
      this.recent.push(event.topic);
      if (this.recent.length > 64) this.recent.shift();
      try {
        if (this.mode === "ttrpc") await this.forward(event, at);
        else if (this.mode === "binary") await this.exec(event);
      } catch (e) {
        this.opts.log(`publish ${event.topic} for ${event.containerId}: ${(e as Error).message}`);
      }
    });
  }

  /** Resolves once everything queued so far has been sent (or has failed). */
  flush(): Promise<void> {
    return this.chain;
  }

  close(): void {
    this.client?.close();
    this.client = undefined;
  }

  private async forward(event: TaskEvent, at: Date): Promise<void> {
    const payload = encodeForwardRequest(at, this.opts.namespace, event.topic, encodeEvent(event));
    for (let attempt = 0; ; attempt++) {
      try {
        if (!this.client || this.client.closed) this.client = await TtrpcClient.connect(this.opts.ttrpcAddress!);
        await this.client.call(EVENTS_SERVICE, "Forward", payload, [[NAMESPACE_HEADER, this.opts.namespace]], 10_000);
        return;
      } catch (e) {
        this.client?.close();
        this.client = undefined;
        if (attempt >= 2) throw e;
        await Bun.sleep(50 * (attempt + 1));
      }
    }
  }

  private exec(event: TaskEvent): Promise<void> {
    const args = ["--address", this.opts.address, "publish", "--topic", event.topic, "--namespace", this.opts.namespace];
    return new Promise((resolve, reject) => {
      const child = spawn(this.opts.publishBinary!, args, { stdio: ["pipe", "ignore", "pipe"] });
      let stderr = "";
      child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
      child.on("error", reject);
      child.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`${this.opts.publishBinary} publish exited ${code}: ${stderr.trim()}`))));
      child.stdin!.on("error", () => {});
      child.stdin!.end(Buffer.from(encodeAny(encodeEvent(event))));
    });
  }
}
