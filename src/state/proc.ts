/** Reading process facts from /proc, used to tell a live init from a reused pid. */
import { readFileSync } from "node:fs";

export interface ProcStat {
  state: string;
  ppid: number;
  startTime: string;
}

/** Parse /proc/<pid>/stat; undefined when the process does not exist. */
export function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "latin1");
  } catch {
    return undefined;
  }
  // comm (field 2) may contain spaces and parentheses: split after the last ')'.
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { state: rest[0] ?? "?", ppid: Number(rest[1]), startTime: rest[19] ?? "" };
}

/**
 * True when `pid` is still the process we recorded (same start time) and has
 * not exited. A zombie has exited: its parent just has not reaped it yet.
 */
export function isSameLiveProcess(pid: number, startTime: string): boolean {
  if (pid <= 0) return false;
  const stat = readProcStat(pid);
  if (!stat || stat.startTime !== startTime) return false;
  return stat.state !== "Z" && stat.state !== "X";
}
