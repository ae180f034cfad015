/*
 * The host <-> guest channel of VM mode: frame types and layout.
 * Mirrors src/vm/channel.ts (the protocol is documented there);
 * test/unit/vm-channel.test.ts checks that both files agree.
 *
 * A frame: u32 payload length (little-endian), u8 type, 3 zero bytes, payload.
 */
#ifndef NK_AGENT_H
#define NK_AGENT_H

#define NK_FRAME_HEADER 8
#define NK_FRAME_MAX (16u << 20)

/* host -> guest */
#define NK_F_PLAN 1   /* an ExecPlan ("NKP1..."): run it in a new executor */
#define NK_F_SYNC 2   /* bytes for the executor's sync socket ("go\n") */
#define NK_F_STDIN 3  /* bytes for the process's stdin; empty = end of input */
#define NK_F_SIGNAL 4 /* u32 pid, u32 signal: kill(pid, signal) */
#define NK_F_START 5  /* path of the exec fifo: open it and read init's byte */

/* guest -> host */
#define NK_F_HELLO 16  /* the agent is up: "<version> <uptime ms>" */
#define NK_F_SYNCOUT 17 /* bytes the executor wrote to its sync socket */
#define NK_F_STDOUT 18
#define NK_F_STDERR 19
#define NK_F_EXIT 20 /* u32: the executor's exit status (the container's: code or 128+signal) */
#define NK_F_LOG 21  /* a line about the agent itself (a failure it could not report otherwise) */
#define NK_F_STDIN_ACK 22 /* u32: this many stdin bytes were written to the process */

#endif
