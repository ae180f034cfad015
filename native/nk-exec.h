/*
 * Shared declarations of the nk-exec executor.
 *
 * nk-exec carries out an ExecPlan computed by TypeScript (src/plan/ops.ts
 * documents every op). It decides nothing: each op function performs one
 * step and reports what happened.
 */
#ifndef NK_EXEC_H
#define NK_EXEC_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ops.h"

#define NK_VERSION "0.1.0"

/* One decoded op. arg[i] is NUL-terminated (len[i] excludes the NUL);
 * num[i] holds the value of numeric arguments, parsed during validation. */
struct op {
	unsigned code;
	unsigned section;
	unsigned argc;
	char **arg;
	size_t *len;
	uint64_t *num;
};

/* Process-wide executor state (single-threaded: plain globals are fine). */
struct nk_state {
	int sync_fd;            /* -1 once closed */
	const char *sync_payload; /* text after "go " at the last WAIT_GO/SYNC */
	int peer_fd;            /* internal socketpair end shared by stage0 and init */
	pid_t child;            /* stage0: pid of init; 0 before CLONE and inside init */
	int fifo_dir_fd;        /* FIFO_PREPARE: O_PATH fd of the fifo's directory */
	char *fifo_name;
	int console_fd;         /* CONNECT_CONSOLE */
	int listener_fd;        /* CONNECT_LISTENER: the seccomp notify listener */
	int host_pid;           /* init: its pid as the host sees it (sent with the release) */
	int cap_last;           /* highest capability number the kernel knows */
	int have_exec_path;     /* EXEC_LOOKUP succeeded */
	char exec_path[PATH_MAX];
	char detail[PATH_MAX];  /* detail of the current op's "ok" line */
	long op_index;          /* plan position of the op being run */
	int err;                /* errno of the current op's failure */
	char msg[2 * PATH_MAX + 512];
};
extern struct nk_state nk;

/* An op function returns 0 (the run loop reports "ok" with nk.detail) or -1
 * after fail()/failx() (it reports "err" and the process exits 1). Ops that
 * never return (EXEC, MONITOR) write their own lines. */
typedef int (*op_fn)(const struct op *op);

int fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int failx(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void set_detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sync_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void report_ok(long index, const char *detail);
void close_sync(void);

/* nk-exec.c: read a plan from sync_fd and carry it out (see there). */
int nk_execute(int sync_fd);

/* "/proc/self/fd/N": lets mount(2) act on an fd we resolved safely. */
const char *fd_path(int fd, char buf[32]);
int write_all(int fd, const void *buf, size_t len);
/* Write content to an already-open fd and close it. */
int write_content_and_close(int fd, const char *what, const char *content, size_t len);

/* ops-sys.c: namespaces, files, credentials, capabilities, limits, exec */
int op_setns(const struct op *op);
int op_unshare(const struct op *op);
int op_write_file(const struct op *op);
int op_fifo_prepare(const struct op *op);
int op_write_child_proc(const struct op *op);
int op_sethostname(const struct op *op);
int op_setdomainname(const struct op *op);
int op_loopback_up(const struct op *op);
int op_write_proc(const struct op *op);
int op_setrlimit(const struct op *op);
int op_chdir(const struct op *op);
int op_setgroups(const struct op *op);
int op_setresgid(const struct op *op);
int op_setresuid(const struct op *op);
int op_cap_bounding(const struct op *op);
int op_keepcaps(const struct op *op);
int op_capset(const struct op *op);
int op_cap_ambient(const struct op *op);
int op_no_new_privs(const struct op *op);
int op_set_dumpable(const struct op *op);
int op_run_hook(const struct op *op);
int op_seccomp(const struct op *op);
int op_umask(const struct op *op);
int op_join_keyring(const struct op *op);
int op_close_fds(const struct op *op);
int op_wait_fifo(const struct op *op);
int op_exec_lookup(const struct op *op);
int op_exec(const struct op *op);
int read_cap_last(void);

/* ops-fs.c: mounts and the root filesystem */
int op_mount(const struct op *op);
int op_open_tree(const struct op *op);
int op_move_mount(const struct op *op);
int op_umount(const struct op *op);
int op_mount_in_root(const struct op *op);
int op_remount_in_root(const struct op *op);
int op_mknod_in_root(const struct op *op);
int op_bind_device_in_root(const struct op *op);
int op_symlink_in_root(const struct op *op);
int op_pivot_root(const struct op *op);
int op_chroot(const struct op *op);
int op_mask_path(const struct op *op);
int op_readonly_path(const struct op *op);
int op_remount_ro(const struct op *op);

/* ops-idmap.c: newuidmap/newgidmap for a rootless caller's id ranges */
int op_run_id_map_helper(const struct op *op);

/* ops-lsm.c: AppArmor/SELinux attributes through /proc/self/attr */
int op_write_proc_attr(const struct op *op);

/* ops-net.c: the VM guest's NIC (rtnetlink) */
int op_net_link_netns(const struct op *op);
int op_net_link_set(const struct op *op);
int op_net_link_up(const struct op *op);
int op_net_addr_add(const struct op *op);
int op_net_route_add(const struct op *op);

/* ops-tty.c: console socket, pty setup, the monitor role */
int op_connect_console(const struct op *op);
int op_connect_listener(const struct op *op);
int send_seccomp_listener(int listener, const char *template);
int op_setup_terminal(const struct op *op);
int op_monitor(const struct op *op);

#endif
