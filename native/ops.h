/*
 * Op codes and sections of the ExecPlan wire format.
 * Mirrors src/plan/ops.ts (the contract and its documentation live there);
 * test/unit/ops-contract.test.ts checks that both files agree.
 */
#ifndef NK_OPS_H
#define NK_OPS_H

#define SECTION_PRE 0
#define SECTION_PARENT 1
#define SECTION_INIT 2

/* valid in any section */
#define OP_SETNS 1
#define OP_UNSHARE 2
#define OP_WRITE_FILE 3

/* Pre: stage0 before clone */
#define OP_FIFO_PREPARE 4
#define OP_CONNECT_CONSOLE 5
#define OP_CLONE 6

/* Parent: stage0 after clone */
#define OP_WRITE_CHILD_PROC 10
#define OP_SEND_PID 12
#define OP_WAIT_GO 13
#define OP_RELEASE_CHILD 14
#define OP_EXIT 15
#define OP_MONITOR 16
#define OP_RUN_ID_MAP_HELPER 17

/* Init: the container's first process */
#define OP_WAIT_RELEASE 20
#define OP_MOUNT 23
#define OP_MOUNT_IN_ROOT 24
#define OP_REMOUNT_IN_ROOT 25
#define OP_MKNOD_IN_ROOT 26
#define OP_BIND_DEVICE_IN_ROOT 27
#define OP_SYMLINK_IN_ROOT 28
#define OP_PIVOT_ROOT 29
#define OP_CHROOT 30
#define OP_MASK_PATH 31
#define OP_READONLY_PATH 32
#define OP_REMOUNT_RO 33
#define OP_SETHOSTNAME 34
#define OP_SETDOMAINNAME 35
#define OP_WRITE_PROC 36
#define OP_SETRLIMIT 37
#define OP_CHDIR 38
#define OP_SETGROUPS 39
#define OP_SETRESGID 40
#define OP_SETRESUID 41
#define OP_CAP_BOUNDING 42
#define OP_KEEPCAPS 43
#define OP_CAPSET 44
#define OP_CAP_AMBIENT 45
#define OP_NO_NEW_PRIVS 46
#define OP_SECCOMP 47
#define OP_UMASK 48
#define OP_SETUP_TERMINAL 49
#define OP_JOIN_KEYRING 50
#define OP_CLOSE_FDS 51
#define OP_WAIT_FIFO 52
#define OP_REPORT_READY 53
#define OP_EXEC_LOOKUP 54
#define OP_EXEC 55
#define OP_SET_DUMPABLE 56
#define OP_SYNC 57
#define OP_RUN_HOOK 58
#define OP_LOOPBACK_UP 59
#define OP_WRITE_PROC_ATTR 60

/* RUN_ID_MAP_HELPER: an argument exactly equal to this becomes the child's
 * pid (CHILD_PID_PLACEHOLDER in src/plan/ops.ts). */
#define NK_CHILD_PID_PLACEHOLDER "{pid}"

#define OP_CONNECT_LISTENER 61

/* VM guest network (ops-net.c) */
#define OP_NET_LINK_NETNS 62
#define OP_NET_LINK_SET 63
#define OP_NET_LINK_UP 64
#define OP_NET_ADDR_ADD 65
#define OP_NET_ROUTE_ADD 66
#define OP_OPEN_TREE 80
#define OP_MOVE_MOUNT 81
#define OP_UMOUNT 82

#endif
