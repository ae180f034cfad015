/**
 * The one-line report a stand-in process (`vm host`, `vm member`, `vm
 * exec-relay`) gives the command that started it: a JSON object on fd 3,
 * then fd 3 closed, so the reader sees the end. Once the report is made the
 * command returns (create, exec -d) and the stand-in lives on alone.
 */
import type { ChildProcess } from "node:child_process";
import { closeSync, writeSync } from "node:fs";

export const REPORT_FD = 3;

/** The stand-in's side: report once; later calls do nothing. */
export function reporter(): { report: (msg: object) => void; readonly open: boolean } {
  let open = true;
  return {
    report(msg: object) {
      if (!open) return;
      open = false;
      try {
        writeSync(REPORT_FD, JSON.stringify(msg) + "\n");
        closeSync(REPORT_FD);
      } catch {}
    },
    get open() {
      return open;
    },
  };
}

/** The starter's side: the child's first line on fd 3 as JSON ({} if it ended without one). */
export function readReport(child: ChildProcess): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    let text = "";
    const pipe = child.stdio[REPORT_FD] as NodeJS.ReadableStream;
    pipe.on("data", (b: Buffer) => (text += b.toString("utf8")));
    pipe.on("error", () => {});
    pipe.on("end", () => {
      try {
        resolve(JSON.parse(text.split("\n")[0] ?? ""));
      } catch {
        resolve({});
      }
    });
  });
}
