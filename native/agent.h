/*
 * The host <-> guest channel of VM mode: frame types and layout.
 * Mirrors src/vm/channel.ts (the protocol is documented there);
 * test/unit/vm.test.ts checks that both files agree.
 *
 * A frame: u32 payload length (little-endian), u8 type, u16 session
 * (little-endian), u8 reserved (0), payload. A session is one executor run
 * (session 0: the container's init; others: exec processes, further
 * containers), each with its own stdio, sync socket, terminal and exit.
 */
#ifndef NK_AGENT_H
#define NK_AGENT_H

#define NK_FRAME_HEADER 8
#define NK_FRAME_MAX (16u << 20)
#define NK_SESSIONS_MAX 64 /* sessions alive at once in one guest */

/* host -> guest */
#define NK_F_PLAN 1    /* an ExecPlan ("NKP1..."): run it in a new executor for this session */
#define NK_F_SYNC 2    /* bytes for the session executor's sync socket ("go\n") */
#define NK_F_STDIN 3   /* bytes for the process's stdin (or its pty); empty = end of input */
#define NK_F_SIGNAL 4  /* u32 pid, u32 signal: kill(pid, signal) */
#define NK_F_START 5   /* path of the exec fifo: open it and read init's byte */
#define NK_F_CONSOLE 6 /* path of a unix socket to listen on for the session's pty master */
#define NK_F_RESIZE 7  /* u32 rows, u32 cols: TIOCSWINSZ on the session's pty master */
#define NK_F_READ 8    /* a path: answer FILE with its contents (stats of the guest's cgroup) */
#define NK_F_WAKE 9    /* a VM restored from a template: u64 seconds, u32 nanoseconds (the host's wall clock),
			  NK_WAKE_ENTROPY bytes of host entropy, u8 length + a block device path (may be empty)
			  whose cache to drop, then for each network card 6 bytes of the template's MAC and 6 of
			  the container's; answered with HELLO */
#define NK_WAKE_ENTROPY 64
#define NK_F_WARM 10   /* a template being made: u32 clone flags; a child unshares them, mounts proc and execs
			  a trivial program in them, so the kernel's first-time work is in the template; answered
			  with HELLO "... warm <the child's exit status>" */

/* guest -> host */
#define NK_F_HELLO 16  /* the agent is up: "<version> <uptime ms>" */
#define NK_F_SYNCOUT 17 /* bytes the executor wrote to its sync socket */
#define NK_F_STDOUT 18 /* the process's stdout, or its pty's output */
#define NK_F_STDERR 19
#define NK_F_EXIT 20 /* u32: the executor's exit status (the process's: code or 128+signal) */
#define NK_F_LOG 21  /* a line about the agent itself (a failure it could not report otherwise) */
#define NK_F_STDIN_ACK 22 /* u32: this many stdin bytes were written to the process */
#define NK_F_FILE 23 /* answers READ: u32 errno (0: read), then the contents (at most NK_READ_MAX bytes) */
#define NK_READ_MAX (1u << 20)

#endif
