/**
 * ResizePty without the pty master: with a terminal, the executor's MONITOR
 * keeps the master and copies it to the fifos, and Bun cannot receive fds
 * over SCM_RIGHTS. But a window size can be set from either side of a pty,
 * and the container's process has the slave as its controlling terminal:
 * /proc/<pid>/stat names it (tty_nr), and /proc/<pid>/root/dev/pts/<n> opens
 * that very device inside the container's own devpts. The fd is checked to be
 * the right device before the ioctl; failing that, the process's fds 0-2 are
 * tried. The kernel then sends SIGWINCH to the terminal's foreground group,
 * just as a resize through the master would.
 */
import { closeSync, constants as fs, fstatSync, openSync, readFileSync } from "node:fs";
import { setWindowSize } from "./sys.ts";

/** The controlling terminal's device number from /proc/<pid>/stat (field 7), 0 if none. */
export function controllingTty(pid: number): number {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return 0;
  }
  // The command name (field 2) may hold spaces and parentheses: fields after the last ")".
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(rest[4] ?? 0); // state ppid pgrp session tty_nr
}

/** Linux dev_t encoding (new_encode_dev) -> major, minor. */
export function splitDev(dev: number): { major: number; minor: number } {
  return { major: (dev >>> 8) & 0xfff, minor: (dev & 0xff) | ((dev >>> 12) & 0xfff00) };
}

/** Unix98 pty slaves are major 136 (up to 143) and /dev/pts/N is minor N counted from major 136. */
function ptsIndex(dev: number): number | undefined {
  const { major, minor } = splitDev(dev);
  if (major < 136 || major > 143) return undefined;
  return (major - 136) * 1048576 + minor;
}

function tryResize(path: string, want: number, rows: number, cols: number): boolean {
  let fd = -1;
  try {
    fd = openSync(path, fs.O_RDWR | fs.O_NOCTTY | fs.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isCharacterDevice() || Number(st.rdev) !== want) return false;
    setWindowSize(fd, rows, cols);
    return true;
  } catch {
    return false;
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

/** Set the window size of pid's controlling terminal; false if it has none (any more). */
export function resizeProcessTty(pid: number, cols: number, rows: number): boolean {
  const dev = controllingTty(pid);
  if (!dev) return false;
  const index = ptsIndex(dev);
  if (index !== undefined && tryResize(`/proc/${pid}/root/dev/pts/${index}`, dev, rows, cols)) return true;
  for (const fd of [0, 1, 2]) if (tryResize(`/proc/${pid}/fd/${fd}`, dev, rows, cols)) return true;
  return false;
}
