/*
 * The executor core: carries out an ExecPlan (src/plan/ops.ts) read from a
 * sync socket. nk-exec-main.c (the nk-exec command) and agent.c (the VM
 * guest agent) both call nk_execute().
 *
 * This file holds the plan decoder and validator, the run loop, the CLONE
 * split into stage0 (parent) and init (child), and the small ops of the
 * stage0 <-> init handshake. stdout/stderr belong to the container: all
 * reporting goes to the sync socket.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nk-exec.h"

struct nk_state nk = {
	.sync_fd = -1, .peer_fd = -1, .fifo_dir_fd = -1, .console_fd = -1, .listener_fd = -1, .cap_last = -1,
};

/* The plan is small (a seccomp program is the largest part); a bigger length
 * means the stream is not a plan at all. */
#define MAX_PLAN_BYTES (16u << 20)
#define MAX_OPS 65536u
#define MAX_ARGS 65536u

/* ---------------------------------------------------------------- reporting */

/* Keep each report on one line: a path may contain a newline. */
static void one_line(char *s)
{
	for (; *s; s++)
		if (*s == '\n' || *s == '\r')
			*s = ' ';
}

static int vfail(int err, int with_strerror, const char *fmt, va_list ap)
{
	int n = vsnprintf(nk.msg, sizeof nk.msg, fmt, ap);
	if (with_strerror && n >= 0 && (size_t)n < sizeof nk.msg)
		snprintf(nk.msg + n, sizeof nk.msg - n, ": %s", strerror(err));
	one_line(nk.msg);
	nk.err = err;
	return -1;
}

/* Record a failure "<message>: <strerror(err)>"; returns -1 for the op. */
int fail(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfail(err, 1, fmt, ap);
	va_end(ap);
	return -1;
}

/* Record a failure whose message already explains itself. */
int failx(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfail(err, 0, fmt, ap);
	va_end(ap);
	return -1;
}

void set_detail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(nk.detail, sizeof nk.detail, fmt, ap);
	va_end(ap);
	one_line(nk.detail);
}

/* One write per line, so lines from stage0 and init never interleave.
 * MSG_NOSIGNAL: a vanished reader must not kill us with SIGPIPE. */
void sync_line(const char *fmt, ...)
{
	char line[sizeof nk.msg + 64];
	va_list ap;
	if (nk.sync_fd < 0)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line) {
		n = sizeof line - 1;
		line[n - 1] = '\n';
	}
	if (send(nk.sync_fd, line, n, MSG_NOSIGNAL) < 0 && errno == ENOTSOCK)
		write_all(nk.sync_fd, line, n);
}

void report_ok(long index, const char *detail)
{
	sync_line("ok %ld %s\n", index, detail);
}

static void report_err(long index)
{
	if (nk.sync_fd >= 0) {
		sync_line("err %ld %d %s\n", index, nk.err, nk.msg);
		return;
	}
	/* After REPORT_READY the sync socket is gone; stderr is the only
	 * channel left that the runtime's log can capture. */
	dprintf(2, "nk-exec: %s\n", nk.msg);
}

void close_sync(void)
{
	if (nk.sync_fd >= 0)
		close(nk.sync_fd);
	nk.sync_fd = -1;
}

/* Any failure ends this process. stage0 must not leave a half-built
 * container behind, so it kills and reaps init first. */
static void __attribute__((noreturn)) die(void)
{
	if (nk.child > 0) {
		kill(nk.child, SIGKILL);
		while (waitpid(nk.child, NULL, 0) < 0 && errno == EINTR)
			;
	}
	_exit(1);
}

/* ------------------------------------------------------------------ helpers */

const char *fd_path(int fd, char buf[32])
{
	snprintf(buf, 32, "/proc/self/fd/%d", fd);
	return buf;
}

int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? (errno = EPIPE, -1) : -1;
		p += n;
		len -= n;
	}
	return 0;
}

/* ---------------------------------------------------- stage0 <-> init ops */

/* CLONE, EXIT and REPORT_READY change the process itself or its sync
 * socket, so the run loop carries them out (see do_clone and run_op). */
static int op_in_run_loop(const struct op *op)
{
	return failx(EINVAL, "op %u is handled by the run loop", op->code);
}

static int op_send_pid(const struct op *op)
{
	(void)op;
	sync_line("pid %d\n", (int)nk.child);
	set_detail("%d", (int)nk.child);
	return 0;
}

/* Read one line from the runtime: it answers "go" once it has done its part
 * (cgroups, hooks); anything else means abort. */
static int op_wait_go(const struct op *op)
{
	/* "go" or "go <payload>" (the payload: the state JSON for in-container hooks). */
	static char line[65536];
	size_t n = 0;
	(void)op;
	for (;;) {
		char c;
		ssize_t r = read(nk.sync_fd, &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail(errno, "wait for go from the runtime");
		if (r == 0)
			return failx(EPIPE, "wait for go from the runtime: sync socket closed");
		if (c == '\n')
			break;
		if (n < sizeof line - 1)
			line[n++] = c;
	}
	line[n] = 0;
	if (strncmp(line, "go ", 3) == 0) {
		nk.sync_payload = line + 3;
		return 0;
	}
	nk.sync_payload = NULL; /* it pointed into line, which now holds this answer */
	if (strcmp(line, "go") != 0)
		return failx(ECANCELED, "runtime answered \"%.60s\" instead of \"go\"", line);
	return 0;
}

/* SYNC(name): tell the runtime we reached a named point (it runs its
 * createRuntime/createContainer hooks there) and wait for its "go". */
static int op_sync(const struct op *op)
{
	sync_line("sync %s\n", op->arg[0]);
	return op_wait_go(op);
}

static int op_release_child(const struct op *op)
{
	(void)op;
	/* The release carries init's host pid: init cannot see it from inside its
	 * pid namespace, and the seccomp listener must be told it. */
	int32_t pid = (int32_t)nk.child;
	if (send(nk.peer_fd, &pid, sizeof pid, MSG_NOSIGNAL) != (ssize_t)sizeof pid)
		return fail(errno, "release init (pid %d)", (int)nk.child);
	return 0;
}

static int op_wait_release(const struct op *op)
{
	int32_t pid;
	size_t got = 0;
	(void)op;
	while (got < sizeof pid) {
		ssize_t r = read(nk.peer_fd, (char *)&pid + got, sizeof pid - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail(errno, "wait for release from stage0");
		if (r == 0)
			return failx(EPIPE, "wait for release: stage0 exited");
		got += (size_t)r;
	}
	nk.host_pid = pid;
	return 0;
}

/* ---------------------------------------------------------------- op table */

enum { PRE = 1 << SECTION_PRE, PARENT = 1 << SECTION_PARENT, INIT = 1 << SECTION_INIT };

/*
 * Argument kinds, one letter per argument; a trailing '*' repeats the kind
 * before it zero or more times:
 *   s string (no NUL byte)   b bytes (anything)
 *   d decimal u64            i decimal below 2^32-1 (ids, counts; -1 means "unchanged" to the kernel)
 *   o octal                  x hex u64 (capability masks)
 *   r rlimit: decimal or "unlimited"
 */
struct op_info {
	const char *name;
	unsigned sections;
	const char *kinds;
	op_fn fn;
};

#define ANY (PRE | PARENT | INIT)
static const struct op_info op_table[] = {
	[OP_SETNS] = {"SETNS", ANY, "ss", op_setns},
	[OP_UNSHARE] = {"UNSHARE", ANY, "d", op_unshare},
	[OP_WRITE_FILE] = {"WRITE_FILE", ANY, "sb", op_write_file},
	[OP_FIFO_PREPARE] = {"FIFO_PREPARE", PRE, "ss", op_fifo_prepare},
	[OP_CONNECT_CONSOLE] = {"CONNECT_CONSOLE", PRE, "s", op_connect_console},
	[OP_CLONE] = {"CLONE", PRE, "d", op_in_run_loop},
	[OP_WRITE_CHILD_PROC] = {"WRITE_CHILD_PROC", PARENT, "sb", op_write_child_proc},
	[OP_SEND_PID] = {"SEND_PID", PARENT, "", op_send_pid},
	[OP_WAIT_GO] = {"WAIT_GO", PARENT, "", op_wait_go},
	[OP_RELEASE_CHILD] = {"RELEASE_CHILD", PARENT, "", op_release_child},
	[OP_EXIT] = {"EXIT", PARENT, "", op_in_run_loop},
	[OP_MONITOR] = {"MONITOR", PARENT, "s", op_monitor},
	[OP_RUN_ID_MAP_HELPER] = {"RUN_ID_MAP_HELPER", PARENT, "sss*", op_run_id_map_helper},
	[OP_WAIT_RELEASE] = {"WAIT_RELEASE", INIT, "", op_wait_release},
	[OP_MOUNT] = {"MOUNT", INIT, "sssds", op_mount},
	[OP_MOUNT_IN_ROOT] = {"MOUNT_IN_ROOT", INIT, "ssssdsss", op_mount_in_root},
	[OP_REMOUNT_IN_ROOT] = {"REMOUNT_IN_ROOT", INIT, "ssd", op_remount_in_root},
	[OP_MKNOD_IN_ROOT] = {"MKNOD_IN_ROOT", INIT, "sssiioii", op_mknod_in_root},
	[OP_BIND_DEVICE_IN_ROOT] = {"BIND_DEVICE_IN_ROOT", INIT, "sss", op_bind_device_in_root},
	[OP_SYMLINK_IN_ROOT] = {"SYMLINK_IN_ROOT", INIT, "sss", op_symlink_in_root},
	[OP_PIVOT_ROOT] = {"PIVOT_ROOT", INIT, "s", op_pivot_root},
	[OP_CHROOT] = {"CHROOT", INIT, "s", op_chroot},
	[OP_MASK_PATH] = {"MASK_PATH", INIT, "s", op_mask_path},
	[OP_READONLY_PATH] = {"READONLY_PATH", INIT, "s", op_readonly_path},
	[OP_REMOUNT_RO] = {"REMOUNT_RO", INIT, "s", op_remount_ro},
	[OP_SETHOSTNAME] = {"SETHOSTNAME", INIT, "s", op_sethostname},
	[OP_SETDOMAINNAME] = {"SETDOMAINNAME", INIT, "s", op_setdomainname},
	[OP_LOOPBACK_UP] = {"LOOPBACK_UP", INIT, "", op_loopback_up},
	[OP_WRITE_PROC] = {"WRITE_PROC", INIT, "sb", op_write_proc},
	[OP_SETRLIMIT] = {"SETRLIMIT", INIT, "irr", op_setrlimit},
	[OP_CHDIR] = {"CHDIR", INIT, "s", op_chdir},
	[OP_SETGROUPS] = {"SETGROUPS", INIT, "i*", op_setgroups},
	[OP_SETRESGID] = {"SETRESGID", INIT, "i", op_setresgid},
	[OP_SETRESUID] = {"SETRESUID", INIT, "i", op_setresuid},
	[OP_CAP_BOUNDING] = {"CAP_BOUNDING", INIT, "x", op_cap_bounding},
	[OP_KEEPCAPS] = {"KEEPCAPS", INIT, "i", op_keepcaps},
	[OP_CAPSET] = {"CAPSET", INIT, "xxx", op_capset},
	[OP_CAP_AMBIENT] = {"CAP_AMBIENT", INIT, "x", op_cap_ambient},
	[OP_NO_NEW_PRIVS] = {"NO_NEW_PRIVS", INIT, "", op_no_new_privs},
	[OP_SECCOMP] = {"SECCOMP", INIT, "ibs*", op_seccomp},
	[OP_UMASK] = {"UMASK", INIT, "o", op_umask},
	[OP_SETUP_TERMINAL] = {"SETUP_TERMINAL", INIT, "sii", op_setup_terminal},
	[OP_JOIN_KEYRING] = {"JOIN_KEYRING", INIT, "s", op_join_keyring},
	[OP_CLOSE_FDS] = {"CLOSE_FDS", INIT, "i", op_close_fds},
	[OP_WAIT_FIFO] = {"WAIT_FIFO", INIT, "", op_wait_fifo},
	[OP_REPORT_READY] = {"REPORT_READY", INIT, "", op_in_run_loop},
	[OP_EXEC_LOOKUP] = {"EXEC_LOOKUP", INIT, "ss", op_exec_lookup},
	[OP_EXEC] = {"EXEC", INIT, "is*", op_exec},
	[OP_SET_DUMPABLE] = {"SET_DUMPABLE", ANY, "i", op_set_dumpable},
	[OP_SYNC] = {"SYNC", INIT, "s", op_sync},
	[OP_RUN_HOOK] = {"RUN_HOOK", INIT, "sibis*", op_run_hook},
	[OP_CONNECT_LISTENER] = {"CONNECT_LISTENER", PRE, "s", op_connect_listener},
	[OP_OPEN_TREE] = {"OPEN_TREE", ANY, "s", op_open_tree},
	[OP_MOVE_MOUNT] = {"MOVE_MOUNT", ANY, "s", op_move_mount},
	[OP_UMOUNT] = {"UMOUNT", ANY, "s", op_umount},
	[OP_WRITE_PROC_ATTR] = {"WRITE_PROC_ATTR", INIT, "ss", op_write_proc_attr},
	[OP_NET_LINK_NETNS] = {"NET_LINK_NETNS", PARENT, "si", op_net_link_netns},
	[OP_NET_LINK_SET] = {"NET_LINK_SET", INIT, "ssi", op_net_link_set},
	[OP_NET_LINK_UP] = {"NET_LINK_UP", INIT, "s", op_net_link_up},
	[OP_NET_ADDR_ADD] = {"NET_ADDR_ADD", INIT, "sisisii", op_net_addr_add},
	[OP_NET_ROUTE_ADD] = {"NET_ROUTE_ADD", INIT, "sisissiii", op_net_route_add},
};
#define OP_TABLE_SIZE (sizeof op_table / sizeof op_table[0])

/* ------------------------------------------------------------ plan decoding */

struct plan {
	unsigned count;
	struct op *ops;
};

static char plan_error[512];

static int malformed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int malformed(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(plan_error, sizeof plan_error, fmt, ap);
	va_end(ap);
	one_line(plan_error);
	return -1;
}

static int parse_number(const char *s, char kind, uint64_t *out)
{
	unsigned base = kind == 'o' ? 8 : kind == 'x' ? 16 : 10;
	uint64_t v = 0;
	if (kind == 'r' && strcmp(s, "unlimited") == 0) {
		*out = UINT64_MAX; /* RLIM_INFINITY */
		return 0;
	}
	if (*s == 0)
		return -1;
	for (; *s; s++) {
		unsigned d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			return -1;
		if (d >= base || v > (UINT64_MAX - d) / base)
			return -1;
		v = v * base + d;
	}
	if (kind == 'i' && v >= UINT32_MAX)
		return -1;
	*out = v;
	return 0;
}

/* The kind letter of argument i, or 0 when the op takes no such argument. */
static char kind_of(const char *kinds, unsigned i)
{
	size_t n = strlen(kinds);
	if (n > 0 && kinds[n - 1] == '*')
		return i < n - 2 ? kinds[i] : kinds[n - 2];
	return i < n ? kinds[i] : 0;
}

static int check_args(const struct op *op, unsigned index)
{
	const struct op_info *info = &op_table[op->code];
	size_t n = strlen(info->kinds);
	int variadic = n > 0 && info->kinds[n - 1] == '*';
	size_t fixed = variadic ? n - 2 : n;

	if (op->argc < fixed || (!variadic && op->argc != fixed))
		return malformed("op %u (%s) has %u arguments, expects %s%zu", index, info->name,
				 op->argc, variadic ? "at least " : "", fixed);
	for (unsigned i = 0; i < op->argc; i++) {
		char kind = kind_of(info->kinds, i);
		if (kind != 'b' && strlen(op->arg[i]) != op->len[i])
			return malformed("op %u (%s) argument %u contains a NUL byte", index, info->name, i);
		if (kind != 's' && kind != 'b' && parse_number(op->arg[i], kind, &op->num[i]) < 0)
			return malformed("op %u (%s) argument %u \"%.40s\" is not a valid %s number", index,
					 info->name, i, op->arg[i],
					 kind == 'o' ? "octal" : kind == 'x' ? "hex" : "decimal");
	}
	if (op->code == OP_EXEC && (op->num[0] < 1 || op->num[0] > op->argc - 1u))
		return malformed("op %u (EXEC) argv count %llu does not fit its %u arguments", index,
				 (unsigned long long)op->num[0], op->argc - 1);
	return 0;
}

static uint32_t le32(const unsigned char *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Decode and validate the whole plan before running any of it, so a bad plan
 * has no side effect at all. */
static int decode_plan(const unsigned char *buf, size_t size, struct plan *plan)
{
	size_t at = 8;
	int seen_clone = 0;

	if (size < 8 || memcmp(buf, "NKP1", 4) != 0)
		return malformed("bad magic (expected NKP1)");
	plan->count = le32(buf + 4);
	if (plan->count > MAX_OPS)
		return malformed("%u ops is too many", plan->count);
	plan->ops = calloc(plan->count ? plan->count : 1, sizeof *plan->ops);
	if (!plan->ops)
		return malformed("out of memory");

	for (unsigned i = 0; i < plan->count; i++) {
		struct op *op = &plan->ops[i];
		if (size - at < 8)
			return malformed("op %u header runs past the end of the plan", i);
		op->code = buf[at] | buf[at + 1] << 8;
		op->section = buf[at + 2];
		op->argc = le32(buf + at + 4);
		at += 8;
		if (op->code >= OP_TABLE_SIZE || !op_table[op->code].name)
			return malformed("op %u has unknown code %u", i, op->code);
		if (op->section > SECTION_INIT)
			return malformed("op %u (%s) has unknown section %u", i, op_table[op->code].name,
					 op->section);
		if (!(op_table[op->code].sections & (1u << op->section)))
			return malformed("op %u (%s) is not allowed in section %u", i,
					 op_table[op->code].name, op->section);
		if ((op->section == SECTION_PRE) == seen_clone)
			return malformed("op %u (%s): Pre ops must come before CLONE, Parent/Init ops after",
					 i, op_table[op->code].name);
		if (op->code == OP_CLONE)
			seen_clone = 1;
		if (op->argc > MAX_ARGS || op->argc > (size - at) / 4)
			return malformed("op %u (%s) argument count %u runs past the end of the plan", i,
					 op_table[op->code].name, op->argc);
		op->arg = calloc(op->argc + 1, sizeof *op->arg);
		op->len = calloc(op->argc + 1, sizeof *op->len);
		op->num = calloc(op->argc + 1, sizeof *op->num);
		if (!op->arg || !op->len || !op->num)
			return malformed("out of memory");
		for (unsigned a = 0; a < op->argc; a++) {
			if (size - at < 4)
				return malformed("op %u argument %u runs past the end of the plan", i, a);
			uint32_t len = le32(buf + at);
			at += 4;
			if (len > size - at)
				return malformed("op %u argument %u (%u bytes) runs past the end of the plan", i,
						 a, len);
			op->arg[a] = malloc((size_t)len + 1);
			if (!op->arg[a])
				return malformed("out of memory");
			memcpy(op->arg[a], buf + at, len);
			op->arg[a][len] = 0;
			op->len[a] = len;
			at += len;
		}
		if (check_args(op, i) < 0)
			return -1;
	}
	if (at != size)
		return malformed("%zu trailing bytes after the last op", size - at);
	return 0;
}

static int read_plan(unsigned char **buf, size_t *size)
{
	unsigned char hdr[4];
	if (read_full(nk.sync_fd, hdr, 4) < 0)
		return malformed("cannot read the plan length: %s", strerror(errno));
	*size = le32(hdr);
	if (*size > MAX_PLAN_BYTES)
		return malformed("plan length %zu exceeds %u bytes", *size, MAX_PLAN_BYTES);
	*buf = malloc(*size ? *size : 1);
	if (!*buf)
		return malformed("out of memory");
	if (read_full(nk.sync_fd, *buf, *size) < 0)
		return malformed("cannot read %zu plan bytes: %s", *size, strerror(errno));
	return 0;
}

/* ----------------------------------------------------------------- running */

static void run_op(const struct plan *plan, unsigned index)
{
	const struct op *op = &plan->ops[index];
	int r;

	nk.detail[0] = 0;
	nk.op_index = index;
	errno = 0;
	if (op->code == OP_EXIT || op->code == OP_REPORT_READY) {
		/* Both end this process's use of the sync socket, so the ok
		 * line goes out first. EXIT: a detached container's stage0
		 * leaves; init lives on, reparented. */
		report_ok(index, "");
		if (op->code == OP_REPORT_READY)
			sync_line("ready\n");
		close_sync();
		if (op->code == OP_EXIT)
			_exit(0);
		return;
	}
	r = op_table[op->code].fn(op);
	if (r == 0)
		report_ok(index, nk.detail);
	else {
		report_err(index);
		die();
	}
}

/*
 * CLONE: create init with the raw clone syscall, so that CLONE_NEW* flags
 * apply to the child (fork-like: it continues on a copy of our stack).
 * Note: after a raw clone glibc's cached thread id is stale in the child,
 * so init must not use raise()/abort()/pthread calls; it does not.
 * The socketpair made first carries the release byte stage0 -> init and
 * the pty master init -> stage0.
 */
static pid_t do_clone(const struct op *op, unsigned index)
{
	uint64_t flags = op->num[0];
	int pair[2];
	pid_t pid;

	if (flags & CSIGNAL) {
		failx(EINVAL, "clone flags %#llx overlap the exit-signal bits (CLONE_NEWTIME needs UNSHARE)",
		      (unsigned long long)flags);
		goto fail;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
		fail(errno, "socketpair for stage0/init");
		goto fail;
	}
	if (flags == 0)
		pid = fork();
	else
		pid = (pid_t)syscall(SYS_clone, (unsigned long)(flags | SIGCHLD), 0UL, NULL, NULL, 0UL);
	if (pid < 0) {
		fail(errno, "clone with flags %#llx", (unsigned long long)flags);
		goto fail;
	}
	if (pid == 0) {
		close(pair[0]);
		nk.peer_fd = pair[1];
		return 0;
	}
	close(pair[1]);
	nk.peer_fd = pair[0];
	nk.child = pid;
	set_detail("%d", (int)pid);
	report_ok(index, nk.detail);
	return pid;
fail:
	report_err(index);
	die();
}

static int run_plan(const struct plan *plan)
{
	unsigned i = 0;
	for (; i < plan->count && plan->ops[i].code != OP_CLONE; i++)
		run_op(plan, i);
	if (i == plan->count)
		return 0; /* a plan without CLONE has only Pre ops */

	unsigned section = do_clone(&plan->ops[i], i) == 0 ? SECTION_INIT : SECTION_PARENT;
	for (i++; i < plan->count; i++)
		if (plan->ops[i].section == section)
			run_op(plan, i);
	return 0;
}

/*
 * Carry out the plan read from sync_fd: the whole life of an executor
 * process (nk-exec's main, and the guest agent's executor child). Returns
 * only on a failure before the plan runs (its exit status); afterwards every
 * path ends in _exit or execve.
 */
int nk_execute(int sync_fd)
{
	unsigned char *buf = NULL;
	size_t size = 0;
	struct plan plan = {0, NULL};

	/* The sync socket must never reach the container (CVE-2024-21626). */
	if (fcntl(sync_fd, F_SETFD, FD_CLOEXEC) < 0)
		return 2;
	nk.sync_fd = sync_fd;
	/* Until execve, processes in the container must not be able to open
	 * /proc/<our pid>/exe and rewrite this binary on the host
	 * (CVE-2019-5736): a non-dumpable process's /proc files belong to root
	 * of the init user namespace and ptrace-style access is refused. The
	 * container's own program starts dumpable again after execve. */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
		sync_line("err -1 %d prctl PR_SET_DUMPABLE: %s\n", errno, strerror(errno));
		return 1;
	}

	if (read_plan(&buf, &size) < 0 || decode_plan(buf, size, &plan) < 0) {
		sync_line("err -1 %d malformed plan: %s\n", EINVAL, plan_error);
		return 1;
	}
	free(buf);
	nk.cap_last = read_cap_last();
	run_plan(&plan);
	_exit(0);
}
