/**
 * The host process's control socket (<vm run dir>/control.sock): the one way
 * into a VM whose channel the host process owns. It speaks the channel's
 * framing (src/vm/channel.ts):
 *
 * - a client's channel frames (an `exec` stand-in's CONSOLE, PLAN, SYNC,
 *   STDIN, SIGNAL, RESIZE; READ for `events`) go to the guest under a session
 *   id chosen here, and the guest's frames of that session come back as
 *   session 0: each connection is one executor run in the guest, and the
 *   client speaks to it as the host process speaks to init;
 * - Control frames (PAUSE, RESUME) are answered here with a REPLY.
 *
 * When a client goes away before its process ended, the process is killed:
 * nobody would relay its output or report its status.
 */
import { rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import type { Logger } from "../util/log.ts";
import { Control, encodeFrame, Frame, FrameReader, LineBuffer, SESSION_MAX, u32Payload, type FrameType } from "./channel.ts";
import { VmError, type RunningVm } from "./driver.ts";
import { pausedMarker } from "./launch.ts";

const SIGKILL = 9;

/**
 * Frames a client may send for its session: everything an executor run
 * takes. START releases a pod member's init (pod.ts) from its own guest
 * fifo; the agent opens the path the session names, a fifo in /run/nk.
 */
const CLIENT_FRAMES = new Set<number>([Frame.CONSOLE, Frame.PLAN, Frame.SYNC, Frame.STDIN, Frame.SIGNAL, Frame.RESIZE, Frame.READ, Frame.START]);

interface ClientSession {
  id: number;
  socket: Socket;
  /** The process's guest pid, once its executor said so (to kill it if the client goes away). */
  guestPid: number;
  syncLines: LineBuffer;
  planSent: boolean;
  exited: boolean;
  clientGone: boolean;
}

export interface ControlServerOptions {
  /** The container's id and its state directory (for the paused marker). */
  id: string;
  stateDir: string;
  socketPath: string;
  vm: RunningVm;
  log: Logger;
  /** Write a frame to the guest. */
  send: (type: FrameType, payload: Uint8Array | string | undefined, session: number) => void;
}

export class ControlServer {
  private readonly clients = new Map<number, ClientSession>();
  private nextSession = 1;
  private server: Server | undefined;

  constructor(private readonly o: ControlServerOptions) {}

  listen(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      rmSync(this.o.socketPath, { force: true });
      this.server = createServer((socket) => this.onClient(socket));
      this.server.on("error", reject);
      this.server.listen(this.o.socketPath, () => resolve());
    });
  }

  close(): void {
    this.server?.close();
    rmSync(this.o.socketPath, { force: true });
  }

  /** A guest frame of a session other than 0: to its client. */
  fromGuest(session: number, type: number, payload: Uint8Array): void {
    const c = this.clients.get(session);
    if (!c) {
      if (type === Frame.LOG) this.o.log.warn(`vm ${this.o.id}: agent: ${new TextDecoder().decode(payload)}`);
      return;
    }
    if (type === Frame.SYNCOUT) this.watchSyncLines(c, payload);
    if (type === Frame.EXIT) {
      c.exited = true;
      this.o.log.debug(`vm ${this.o.id}: session ${c.id} ended`);
    }
    if (!c.clientGone) c.socket.write(encodeFrame(type as FrameType, payload, 0));
    if (c.exited) {
      c.socket.end();
      this.release(c);
    }
  }

  private watchSyncLines(c: ClientSession, payload: Uint8Array): void {
    for (const line of c.syncLines.push(payload)) {
      if (!line.startsWith("pid ")) continue;
      c.guestPid = Number(line.slice(4));
      // Its client went away before the process was released: do not release it.
      if (c.clientGone) this.o.send(Frame.SYNC, "abort\n", c.id);
    }
  }

  private allocateSession(): number {
    for (let tries = 0; tries < SESSION_MAX; tries++) {
      const id = this.nextSession;
      this.nextSession = id >= SESSION_MAX ? 1 : id + 1;
      if (!this.clients.has(id)) return id;
    }
    throw new VmError("vm-sessions-exhausted", "no free channel session");
  }

  private release(c: ClientSession): void {
    if (c.exited && c.clientGone) this.clients.delete(c.id);
  }

  private onClient(socket: Socket): void {
    let session: ClientSession | undefined;
    const reader = new FrameReader((type, payload) => {
      if (type === Control.PAUSE || type === Control.RESUME) return void this.pauseOrResume(socket, type === Control.PAUSE ? "stop" : "cont");
      if (type === Control.RESIZE_INIT) {
        // A client with no terminal of ours (the shim's ResizePty): the init's pty is session 0's.
        if (payload.length !== 8) return void socket.destroy();
        this.o.send(Frame.RESIZE, payload, 0);
        return void socket.write(encodeFrame(Control.REPLY, JSON.stringify({ ok: true })));
      }
      if (!CLIENT_FRAMES.has(type)) return void socket.destroy();
      if (!session) {
        session = { id: this.allocateSession(), socket, guestPid: 0, syncLines: new LineBuffer(), planSent: false, exited: false, clientGone: false };
        this.clients.set(session.id, session);
        this.o.log.debug(`vm ${this.o.id}: session ${session.id} opened`);
      }
      if (type === Frame.PLAN) session.planSent = true;
      this.o.send(type as FrameType, payload, session.id);
    });
    socket.on("data", (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch {
        socket.destroy();
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      if (!session) return;
      session.clientGone = true;
      // Without a plan (READ only) there is no executor whose EXIT would end the session.
      if (!session.planSent) session.exited = true;
      // Nobody stands for the process any more: end it (its output has nowhere to go).
      if (!session.exited && session.guestPid) this.o.send(Frame.SIGNAL, u32Payload(session.guestPid, SIGKILL), 0);
      this.release(session);
    });
  }

  /** QMP stop/cont of the whole VM; the marker makes the container's status read "paused". */
  private async pauseOrResume(socket: Socket, command: "stop" | "cont"): Promise<void> {
    const reply = (body: object) => socket.write(encodeFrame(Control.REPLY, JSON.stringify(body)));
    try {
      if (!this.o.vm.control) throw new VmError("vm-unsupported", `this hypervisor driver cannot ${command === "stop" ? "pause" : "resume"} a VM`);
      await this.o.vm.control(command);
      if (command === "stop") writeFileSync(pausedMarker(this.o.stateDir), "");
      else rmSync(pausedMarker(this.o.stateDir), { force: true });
      this.o.log.debug(`vm ${this.o.id}: ${command === "stop" ? "paused" : "resumed"}`);
      reply({ ok: true });
    } catch (e) {
      reply({ error: (e as Error).message, code: (e as { code?: string }).code ?? "vm-control-failed" });
    }
  }
}
