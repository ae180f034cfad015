/**
 * runc-style logging: `--log FILE` receives log lines, `--log-format json`
 * makes them {"level","msg","time"} objects (conmon and containerd's shim
 * read that file to show why a create failed), `--debug` adds debug lines.
 * Errors always also go to stderr, which is where a person looks first.
 */
import { appendFileSync } from "node:fs";
import { writeStderr } from "./output.ts";

export type LogFormat = "text" | "json";
export type LogLevel = "debug" | "info" | "warning" | "error";

export class Logger {
  constructor(
    readonly file: string | undefined,
    readonly format: LogFormat,
    readonly debugEnabled: boolean,
  ) {}

  debug(msg: string): void {
    if (this.debugEnabled) this.write("debug", msg);
  }
  info(msg: string): void {
    this.write("info", msg);
  }
  warn(msg: string): void {
    this.write("warning", msg);
  }
  /** Error lines go to the log file and to stderr. */
  error(msg: string): void {
    this.write("error", msg);
    if (this.file) writeStderr(`nk-runtime: ${msg}\n`);
  }

  private write(level: LogLevel, msg: string): void {
    const time = new Date().toISOString();
    const line =
      this.format === "json"
        ? JSON.stringify({ level, msg, time }) + "\n"
        : `time="${time}" level=${level} msg=${JSON.stringify(msg)}\n`;
    if (!this.file) {
      // Without --log, only warnings and errors reach stderr (debug too with --debug).
      if (level === "info") return;
      writeStderr(this.format === "json" ? line : `nk-runtime: ${level === "error" ? "" : level + ": "}${msg}\n`);
      return;
    }
    try {
      appendFileSync(this.file, line);
    } catch {
      writeStderr(`nk-runtime: ${msg}\n`);
    }
  }
}
