/** Linux constants the planner computes with (values from <linux/mount.h> and <linux/sched.h>). */

export const MS = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  SYNCHRONOUS: 0x10,
  REMOUNT: 0x20,
  MANDLOCK: 0x40,
  DIRSYNC: 0x80,
  NOSYMFOLLOW: 0x100,
  NOATIME: 0x400,
  NODIRATIME: 0x800,
  BIND: 0x1000,
  MOVE: 0x2000,
  REC: 0x4000,
  UNBINDABLE: 0x20000,
  PRIVATE: 0x40000,
  SLAVE: 0x80000,
  SHARED: 0x100000,
  RELATIME: 0x200000,
  STRICTATIME: 0x1000000,
  LAZYTIME: 0x2000000,
} as const;

export const CLONE = {
  NEWTIME: 0x80,
  NEWNS: 0x20000,
  NEWCGROUP: 0x2000000,
  NEWUTS: 0x4000000,
  NEWIPC: 0x8000000,
  NEWUSER: 0x10000000,
  NEWPID: 0x20000000,
  NEWNET: 0x40000000,
} as const;

/** Namespace type (config.json) -> clone flag and /proc/<pid>/ns file name. */
export const NAMESPACES = {
  user: { flag: CLONE.NEWUSER, file: "user" },
  pid: { flag: CLONE.NEWPID, file: "pid" },
  network: { flag: CLONE.NEWNET, file: "net" },
  ipc: { flag: CLONE.NEWIPC, file: "ipc" },
  uts: { flag: CLONE.NEWUTS, file: "uts" },
  mount: { flag: CLONE.NEWNS, file: "mnt" },
  cgroup: { flag: CLONE.NEWCGROUP, file: "cgroup" },
  time: { flag: CLONE.NEWTIME, file: "time" },
} as const;
