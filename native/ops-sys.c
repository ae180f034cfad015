/*
 * Ops on the process itself: namespaces, files, credentials, capabilities,
 * limits, seccomp, the exec fifo and the final execve.
 * Credential and capability changes use raw syscalls: init was made by a raw
 * clone, and raw syscalls keep glibc's per-thread bookkeeping out of it.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/keyctl.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nk-exec.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

int write_content_and_close(int fd, const char *what, const char *content, size_t len)
{
	int r = write_all(fd, content, len);
	int err = errno;
	close(fd);
	if (r < 0)
		return fail(err, "write %s", what);
	return 0;
}

/* ------------------------------------------------------------- namespaces */

int op_setns(const struct op *op)
{
	int fd = open(op->arg[0], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(errno, "open %s namespace %s", op->arg[1], op->arg[0]);
	int r = setns(fd, 0);
	int err = errno;
	close(fd);
	if (r < 0)
		return fail(err, "setns into %s namespace %s", op->arg[1], op->arg[0]);
	return 0;
}

int op_unshare(const struct op *op)
{
	if (unshare((int)op->num[0]) < 0)
		return fail(errno, "unshare %#llx", (unsigned long long)op->num[0]);
	return 0;
}

/* ------------------------------------------------------------------ files */

int op_write_file(const struct op *op)
{
	int fd = open(op->arg[0], O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return fail(errno, "open %s", op->arg[0]);
	return write_content_and_close(fd, op->arg[0], op->arg[1], op->len[1]);
}

/* Open for writing and refuse anything that is not procfs: a container
 * could otherwise bind a file of its choosing over a /proc path and have
 * the runtime write into it (CVE-2025-52881). */
static int write_procfs(const char *path, const char *content, size_t len)
{
	struct statfs sfs;
	int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return fail(errno, "open %s", path);
	if (fstatfs(fd, &sfs) < 0) {
		int err = errno;
		close(fd);
		return fail(err, "fstatfs %s", path);
	}
	if (sfs.f_type != PROC_SUPER_MAGIC) {
		close(fd);
		return failx(EXDEV, "refusing to write %s: not on procfs (filesystem magic %#lx)", path,
			     (unsigned long)sfs.f_type);
	}
	return write_content_and_close(fd, path, content, len);
}

int op_write_proc(const struct op *op)
{
	return write_procfs(op->arg[0], op->arg[1], op->len[1]);
}

int op_write_child_proc(const struct op *op)
{
	char path[PATH_MAX];
	if (op->arg[0][0] == '/' || strstr(op->arg[0], ".."))
		return failx(EINVAL, "WRITE_CHILD_PROC path \"%s\" must stay below /proc/<pid>", op->arg[0]);
	snprintf(path, sizeof path, "/proc/%d/%s", (int)nk.child, op->arg[0]);
	return write_procfs(path, op->arg[1], op->len[1]);
}

/* The fifo is created now, in the runtime's mount namespace; init keeps the
 * directory fd so it can open the fifo after pivot_root hid the path. */
int op_fifo_prepare(const struct op *op)
{
	if (strchr(op->arg[1], '/') || !op->arg[1][0])
		return failx(EINVAL, "fifo name \"%s\" must be a single path component", op->arg[1]);
	int dirfd = open(op->arg[0], O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return fail(errno, "open fifo directory %s", op->arg[0]);
	/* Exactly 0622, not filtered by umask: init may run as a non-root or
	 * user-namespaced uid and must still be able to open it for writing. */
	mode_t old = umask(0);
	int r = mkfifoat(dirfd, op->arg[1], 0622);
	int err = errno;
	umask(old);
	if (r < 0) {
		close(dirfd);
		return fail(err, "mkfifo %s/%s", op->arg[0], op->arg[1]);
	}
	nk.fifo_dir_fd = dirfd;
	nk.fifo_name = op->arg[1];
	return 0;
}

/* Blocks until `start` opens the fifo for reading. */
int op_wait_fifo(const struct op *op)
{
	(void)op;
	if (nk.fifo_dir_fd < 0)
		return failx(EINVAL, "WAIT_FIFO without FIFO_PREPARE");
	int fd;
	do
		fd = openat(nk.fifo_dir_fd, nk.fifo_name, O_WRONLY | O_CLOEXEC);
	while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return fail(errno, "open exec fifo %s", nk.fifo_name);
	close(nk.fifo_dir_fd);
	nk.fifo_dir_fd = -1;
	return write_content_and_close(fd, "exec fifo", "0", 1);
}

/* ------------------------------------------------------ identity, limits */

int op_sethostname(const struct op *op)
{
	if (sethostname(op->arg[0], op->len[0]) < 0)
		return fail(errno, "sethostname \"%s\"", op->arg[0]);
	return 0;
}

int op_setdomainname(const struct op *op)
{
	if (setdomainname(op->arg[0], op->len[0]) < 0)
		return fail(errno, "setdomainname \"%s\"", op->arg[0]);
	return 0;
}

/* runc's "loopback" network: a new network namespace gets lo up, nothing else. */
int op_loopback_up(const struct op *op)
{
	(void)op;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(errno, "socket for lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
		int err = errno;
		close(fd);
		return fail(err, "get flags of lo");
	}
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) {
		int err = errno;
		close(fd);
		return fail(err, "bring lo up");
	}
	close(fd);
	return 0;
}

static const char *const rlimit_names[] = {
	"RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
	"RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS",
	"RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO",
	"RLIMIT_RTTIME",
};

int op_setrlimit(const struct op *op)
{
	unsigned resource = (unsigned)op->num[0];
	struct rlimit lim = {(rlim_t)op->num[1], (rlim_t)op->num[2]};
	if (setrlimit((int)resource, &lim) < 0) {
		char name[32];
		if (resource < sizeof rlimit_names / sizeof rlimit_names[0])
			snprintf(name, sizeof name, "%s", rlimit_names[resource]);
		else
			snprintf(name, sizeof name, "resource %u", resource);
		return fail(errno, "setrlimit %s %s:%s", name, op->arg[1], op->arg[2]);
	}
	return 0;
}

int op_chdir(const struct op *op)
{
	char cwd[PATH_MAX];
	if (chdir(op->arg[0]) < 0)
		return fail(errno, "chdir %s", op->arg[0]);
	/* A cwd of /proc/self/fd/N through a runtime fd still open here lands
	 * outside the container's root (CVE-2024-21626); the kernel then
	 * reports it as "(unreachable)/..." instead of an absolute path. */
	if (syscall(SYS_getcwd, cwd, sizeof cwd) < 0)
		return fail(errno, "chdir %s: getcwd", op->arg[0]);
	if (cwd[0] != '/')
		return failx(EPERM, "chdir %s: the working directory %s is outside the container's root",
			     op->arg[0], cwd);
	return 0;
}

int op_umask(const struct op *op)
{
	umask((mode_t)(op->num[0] & 07777));
	return 0;
}

int op_join_keyring(const struct op *op)
{
	const char *name = op->arg[0][0] ? op->arg[0] : NULL;
	if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name) < 0) {
		/* Keyrings are often unavailable (old kernels, seccomp'd hosts,
		 * user namespaces): the contract reports that as ok. */
		if (errno == ENOSYS || errno == EPERM || errno == EACCES) {
			set_detail("unsupported");
			return 0;
		}
		return fail(errno, "join session keyring \"%s\"", op->arg[0]);
	}
	return 0;
}

/* ------------------------------------------------------------ credentials */

int op_setgroups(const struct op *op)
{
	gid_t *gids = calloc(op->argc ? op->argc : 1, sizeof *gids);
	if (!gids)
		return fail(ENOMEM, "setgroups");
	for (unsigned i = 0; i < op->argc; i++)
		gids[i] = (gid_t)op->num[i];
	long r = syscall(SYS_setgroups, (size_t)op->argc, gids);
	int err = errno;
	free(gids);
	if (r < 0)
		return fail(err, "setgroups (%u groups)", op->argc);
	return 0;
}

int op_setresgid(const struct op *op)
{
	gid_t g = (gid_t)op->num[0];
	if (syscall(SYS_setresgid, g, g, g) < 0)
		return fail(errno, "setresgid %u", (unsigned)g);
	return 0;
}

int op_setresuid(const struct op *op)
{
	uid_t u = (uid_t)op->num[0];
	if (syscall(SYS_setresuid, u, u, u) < 0)
		return fail(errno, "setresuid %u", (unsigned)u);
	return 0;
}

/* ----------------------------------------------------------- capabilities */

static const char *const cap_names[] = {
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
	"CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
};

static const char *cap_name(int cap)
{
	static char buf[16];
	if (cap >= 0 && (size_t)cap < sizeof cap_names / sizeof cap_names[0])
		return cap_names[cap];
	snprintf(buf, sizeof buf, "cap %d", cap);
	return buf;
}

/* Read once at startup, while the host's /proc is still visible. -1 when
 * unknown: the cap loops then try up to 63 and stop at the first EINVAL. */
int read_cap_last(void)
{
	char buf[16] = {0};
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	int v = atoi(buf);
	return v > 0 && v < 64 ? v : -1;
}

static int last_cap(void)
{
	return nk.cap_last >= 0 ? nk.cap_last : 63;
}

int op_cap_bounding(const struct op *op)
{
	uint64_t keep = op->num[0];
	int dropped = 0;
	for (int cap = 0; cap <= last_cap(); cap++) {
		if (keep & (1ULL << cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
			if (errno == EINVAL && nk.cap_last < 0)
				break; /* past the kernel's last capability */
			return fail(errno, "drop %s from the bounding set", cap_name(cap));
		}
		dropped++;
	}
	set_detail("dropped %d", dropped);
	return 0;
}

int op_keepcaps(const struct op *op)
{
	if (prctl(PR_SET_KEEPCAPS, (unsigned long)op->num[0], 0, 0, 0) < 0)
		return fail(errno, "prctl PR_SET_KEEPCAPS %s", op->arg[0]);
	return 0;
}

int op_capset(const struct op *op)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	for (int i = 0; i < 2; i++) {
		data[i].effective = (uint32_t)(op->num[0] >> (32 * i));
		data[i].permitted = (uint32_t)(op->num[1] >> (32 * i));
		data[i].inheritable = (uint32_t)(op->num[2] >> (32 * i));
	}
	if (syscall(SYS_capset, &hdr, data) < 0)
		return fail(errno, "capset effective %s permitted %s inheritable %s", op->arg[0],
			    op->arg[1], op->arg[2]);
	return 0;
}

int op_cap_ambient(const struct op *op)
{
	uint64_t mask = op->num[0];
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		return fail(errno, "clear the ambient capability set");
	/* The kernel raises an ambient capability only if it is also permitted
	 * and inheritable. runc's default spec lists ambient capabilities that
	 * are not inheritable and runc skips them; so do we, and say so. */
	int skipped = 0;
	for (int cap = 0; cap < 64; cap++) {
		if (!(mask & (1ULL << cap)))
			continue;
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0) {
			if (errno != EPERM)
				return fail(errno, "raise ambient capability %s", cap_name(cap));
			skipped++;
		}
	}
	if (skipped)
		set_detail("%d not raised (not permitted+inheritable)", skipped);
	return 0;
}

int op_no_new_privs(const struct op *op)
{
	(void)op;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return fail(errno, "prctl PR_SET_NO_NEW_PRIVS");
	return 0;
}

int op_seccomp(const struct op *op)
{
	size_t len = op->len[1];
	if (len == 0 || len % sizeof(struct sock_filter) || len / sizeof(struct sock_filter) > BPF_MAXINSNS)
		return failx(EINVAL, "seccomp program of %zu bytes is not 1..%d struct sock_filter", len,
			     BPF_MAXINSNS);
	/* Copy: the argument buffer carries no alignment guarantee. */
	struct sock_filter *insns = malloc(len);
	if (!insns)
		return fail(ENOMEM, "load seccomp filter");
	memcpy(insns, op->arg[1], len);
	struct sock_fprog prog = {(unsigned short)(len / sizeof *insns), insns};
	long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, (unsigned)op->num[0], &prog);
	int err = errno;
	free(insns);
	if (r < 0)
		return fail(err, "load seccomp filter (%zu instructions, flags %s)", len / sizeof *insns,
			    op->arg[0]);
	if (r > 0) { /* SECCOMP_FILTER_FLAG_NEW_LISTENER: r is the notify fd */
		if (op->argc < 3) {
			close((int)r);
			return failx(EINVAL, "seccomp filter returned a listener but the plan names no listener");
		}
		if (send_seccomp_listener((int)r, op->arg[2]) < 0)
			return -1;
		set_detail("listener fd sent");
	}
	return 0;
}

/* -------------------------------------------------------- fds and execve */

/* Fallback for kernels without close_range CLOEXEC (< 5.11). */
static int cloexec_from(int first)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	if (!dir)
		return -1;
	while ((e = readdir(dir))) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] != '.' && fd >= first && fd != dirfd(dir))
			fcntl(fd, F_SETFD, FD_CLOEXEC);
	}
	closedir(dir);
	return 0;
}

/* Everything above the preserved fds is closed by execve, so no runtime fd
 * (a host directory, the sync socket) reaches the container
 * (CVE-2024-21626). CLOEXEC rather than close: init still needs its own. */
int op_close_fds(const struct op *op)
{
	unsigned first = 3 + (unsigned)op->num[0];
	if (syscall(SYS_close_range, first, ~0U, CLOSE_RANGE_CLOEXEC) < 0 && cloexec_from((int)first) < 0)
		return fail(errno, "mark fds >= %u close-on-exec", first);
	return 0;
}

/* A regular file with some execute bit, as execvp and Go's LookPath want. */
static int check_executable(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return -1;
	if (S_ISDIR(st.st_mode))
		return errno = EISDIR, -1;
	if (!S_ISREG(st.st_mode) || !(st.st_mode & 0111))
		return errno = EACCES, -1;
	return 0;
}

int op_exec_lookup(const struct op *op)
{
	const char *file = op->arg[0];
	const char *path_env = op->arg[1][0] ? op->arg[1]
					      : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	if (!file[0])
		return failx(ENOENT, "exec: \"\": executable file not found in $PATH");
	if (strchr(file, '/')) {
		if (check_executable(file) < 0) {
			/* Go's wording, as runc prints it: a directory is "permission
			 * denied", and lower case ("permission denied", "no such file or
			 * directory"), which docker's CLI matches exactly to pick exit
			 * code 126 or 127. */
			int err = errno == EISDIR ? EACCES : errno;
			char why[128];
			snprintf(why, sizeof why, "%s", strerror(err));
			why[0] = (char)tolower((unsigned char)why[0]);
			return failx(err, "exec: \"%s\": %s", file, why);
		}
		snprintf(nk.exec_path, sizeof nk.exec_path, "%s", file);
	} else {
		const char *dir = path_env;
		for (;;) {
			size_t dirlen = strcspn(dir, ":");
			/* An empty PATH entry means the working directory. */
			int n = dirlen ? snprintf(nk.exec_path, sizeof nk.exec_path, "%.*s/%s", (int)dirlen, dir, file)
				       : snprintf(nk.exec_path, sizeof nk.exec_path, "./%s", file);
			if (n > 0 && (size_t)n < sizeof nk.exec_path && check_executable(nk.exec_path) == 0)
				break;
			if (!dir[dirlen])
				return failx(ENOENT, "exec: \"%s\": executable file not found in $PATH", file);
			dir += dirlen + 1;
		}
	}
	nk.have_exec_path = 1;
	set_detail("%s", nk.exec_path);
	return 0;
}

int op_exec(const struct op *op)
{
	unsigned argc = (unsigned)op->num[0];
	char **argv = &op->arg[1];
	char **envp = calloc(op->argc - argc, sizeof *envp);
	if (!envp)
		return fail(ENOMEM, "exec");
	for (unsigned i = 1 + argc; i < op->argc; i++)
		envp[i - 1 - argc] = op->arg[i];

	/* execve needs argv NULL-terminated: copy it. */
	char **args = calloc(argc + 1, sizeof *args);
	if (!args)
		return fail(ENOMEM, "exec");
	memcpy(args, argv, argc * sizeof *args);

	const char *path = nk.have_exec_path ? nk.exec_path : args[0];
	execve(path, args, envp);
	/* Still here: the container's stderr is the place runc prints this. */
	int err = errno;
	dprintf(2, "nk-exec: exec %s: %s\n", path, strerror(err));
	fail(err, "exec %s", path);
	sync_line("err %ld %d %s\n", nk.op_index, nk.err, nk.msg);
	_exit(127);
}
