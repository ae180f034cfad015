/*
 * nk-agent: the guest side of VM mode, run by the kernel as the initramfs's
 * /init. It is the executor (nk-exec.c, the same ops as container mode) plus
 * a loop that speaks the channel protocol of agent.h with the host over a
 * virtio-serial port. It decides nothing: the host computed the plan, chose
 * the port, share and cgroup names (kernel command line: nk.port=, nk.share=,
 * nk.cgroup=), and the image builder chose the modules and their order.
 *
 * Boot: mount /proc, /sys, /dev; load /modules/ *.ko in name order; move into
 * a tmpfs root (pivot_root refuses the initramfs itself, and the container's
 * pivot_root needs a real mount above it); mount cgroup2 and make the
 * container's cgroup (nk.cgroup=); mount the virtiofs share; open the port;
 * say HELLO. Then, for each PLAN: fork an executor with
 * pipes for stdio and a socketpair for its sync socket, and relay frames until
 * it exits (EXIT with its status). As PID 1 the agent reaps every orphan.
 * When the host goes away (the port hangs up) or the agent fails, the guest
 * powers off, so no VM outlives its host process.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "nk-exec.h"

#define SHARE_DIR "/run/nk/share"
#define STDIN_CHUNK 65536

static int port = -1;
static int sigfd = -1;
static int debug; /* nk.debug=1: print each boot step with its time to the console */

static long uptime_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_BOOTTIME, &t);
	return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void step(const char *what)
{
	if (debug)
		dprintf(2, "nk-agent: %ld ms: %s\n", uptime_ms(), what);
}

/* The one executor at a time and its plumbing; -1 when absent. */
static struct {
	pid_t pid;
	int sync, out, err, in;
	char *pending; /* stdin received from the host, not yet written */
	size_t pending_len, pending_cap;
	int in_eof; /* the host's stdin ended: close ours once pending is written */
	int fifo;   /* the exec fifo being read after START */
	char fifo_path[256];
} ex = {.pid = -1, .sync = -1, .out = -1, .err = -1, .in = -1, .fifo = -1};

static void __attribute__((noreturn)) power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	_exit(1); /* PID 1 exiting panics the kernel; panic=-1 then reboots, which ends the VM too */
}

/* ------------------------------------------------------------------ frames */

static void send_frame(unsigned type, const void *payload, size_t len)
{
	unsigned char hdr[NK_FRAME_HEADER] = {len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff, type, 0, 0, 0};
	if (port < 0)
		return;
	if (write_all(port, hdr, sizeof hdr) < 0 || (len && write_all(port, payload, len) < 0))
		power_off(); /* the host is gone */
}

static void send_u32(unsigned type, uint32_t v)
{
	unsigned char b[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24};
	send_frame(type, b, 4);
}

/* Report a problem of the agent itself: to the host when connected, else the console. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line)
		n = sizeof line - 1;
	if (port >= 0)
		send_frame(NK_F_LOG, line, (size_t)n);
	else
		dprintf(2, "nk-agent: %s\n", line);
}

static void __attribute__((noreturn)) fatal(const char *what)
{
	say("%s: %s", what, strerror(errno));
	power_off();
}

static uint32_t le32(const unsigned char *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ------------------------------------------------------------------- boot */

static void mount_or_die(const char *src, const char *dst, const char *type, unsigned long flags, const char *data)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, data) < 0) {
		char what[128];
		snprintf(what, sizeof what, "mount %s on %s", type, dst);
		fatal(what);
	}
}

/* The value of "key=" on the kernel command line, or "" (copied into buf). */
static const char *cmdline_value(const char *key, char *buf, size_t size)
{
	static char cmdline[4096];
	static int loaded;
	if (!loaded) {
		int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
		ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof cmdline - 1) : -1;
		cmdline[n > 0 ? n : 0] = 0;
		if (fd >= 0)
			close(fd);
		loaded = 1;
	}
	size_t klen = strlen(key);
	buf[0] = 0;
	for (const char *p = cmdline; *p;) {
		while (*p == ' ' || *p == '\n')
			p++;
		const char *end = p + strcspn(p, " \n");
		if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
			snprintf(buf, size, "%.*s", (int)(end - p - klen - 1), p + klen + 1);
			break;
		}
		p = end;
	}
	return buf;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static void load_modules(void)
{
	struct dirent **list;
	int n = scandir("/modules", &list, NULL, by_name);
	for (int i = 0; i < n; i++) {
		const char *name = list[i]->d_name;
		size_t len = strlen(name);
		if (len > 3 && strcmp(name + len - 3, ".ko") == 0) {
			char path[300];
			snprintf(path, sizeof path, "/modules/%s", name);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST))
				say("load module %s: %s", path, strerror(errno));
			if (fd >= 0)
				close(fd);
		}
		free(list[i]);
	}
	if (n > 0)
		free(list);
}

/* Move / onto a tmpfs (switch_root's trick) and bring /proc, /sys, /dev along. */
static void leave_initramfs(void)
{
	mount_or_die("nk-root", "/newroot", "tmpfs", MS_NOSUID, "mode=0755");
	static const char *const carried[] = {"/proc", "/sys", "/dev"};
	for (size_t i = 0; i < sizeof carried / sizeof carried[0]; i++) {
		char to[32];
		snprintf(to, sizeof to, "/newroot%s", carried[i]);
		mkdir(to, 0755);
		if (mount(carried[i], to, NULL, MS_MOVE, NULL) < 0)
			fatal("move a mount into the new root");
	}
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0)
		fatal("switch to the tmpfs root");
}

static void boot(char *port_name, size_t port_size)
{
	char share[128], flag[8], cgroup[64];
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	debug = *cmdline_value("nk.debug", flag, sizeof flag) == '1';
	step("started");
	mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	load_modules();
	step("modules loaded");
	leave_initramfs();
	mount_or_die("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	/* The container's cgroup; the plan writes its limits and moves stage0 in. */
	if (*cmdline_value("nk.cgroup", cgroup, sizeof cgroup) && !strchr(cgroup, '/')) {
		char dir[160];
		snprintf(dir, sizeof dir, "/sys/fs/cgroup/%s", cgroup);
		if (mkdir(dir, 0755) < 0 && errno != EEXIST)
			fatal("make the container's cgroup");
	}
	mount_or_die("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666");
	mount_or_die("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	mount_or_die("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mkdir("/run/nk", 0755);
	if (*cmdline_value("nk.share", share, sizeof share))
		mount_or_die(share, SHARE_DIR, "virtiofs", 0, NULL);
	step("filesystems mounted");
	cmdline_value("nk.port", port_name, port_size);
}

/* Find /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name is `name`;
 * ports appear asynchronously once the host announces them. */
static int open_port(const char *name)
{
	for (int tries = 0; tries < 2000; tries++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			char path[300], got[128] = "";
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			ssize_t n = fd >= 0 ? read(fd, got, sizeof got - 1) : -1;
			if (fd >= 0)
				close(fd);
			if (n <= 0)
				continue;
			got[n] = 0;
			got[strcspn(got, "\n")] = 0;
			if (strcmp(got, name) != 0)
				continue;
			snprintf(path, sizeof path, "/dev/%s", e->d_name);
			closedir(d);
			int p = open(path, O_RDWR | O_CLOEXEC);
			if (p < 0)
				fatal("open the channel port");
			/* Until the host side is known to be connected, a read would
			 * return 0 (as if it had hung up): wait for it. */
			for (int wait = 0; wait < 5000; wait++) {
				struct pollfd pf = {p, POLLOUT, 0};
				if (poll(&pf, 1, 0) >= 0 && !(pf.revents & POLLHUP))
					return p;
				usleep(1000);
			}
			errno = ENOTCONN;
			fatal("wait for the host to connect to the channel port");
		}
		if (d)
			closedir(d);
		usleep(5000);
	}
	errno = ENOENT;
	fatal("find the virtio-serial port named on the command line (nk.port)");
}

/* --------------------------------------------------------------- executor */

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void start_executor(const unsigned char *plan, size_t len)
{
	int pair[2], in[2], out[2], err[2];
	if (ex.pid > 0) {
		say("a plan arrived while another is running: ignored");
		return;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0 || pipe2(in, O_CLOEXEC) < 0 ||
	    pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
		fatal("make the executor's pipes");
	pid_t pid = fork();
	if (pid < 0)
		fatal("fork the executor");
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL); /* an ignored signal would stay ignored across execve */
		close(port);
		close(sigfd);
		if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
			_exit(1);
		/* The agent's ends must go now, not at execve: stage0 never execs
		 * (it stays as the monitor), and a stdin write end it kept would
		 * keep the container from ever reading end-of-file. */
		close(pair[0]);
		close(in[1]);
		close(out[0]);
		close(err[0]);
		_exit(nk_execute(pair[1]));
	}
	close(pair[1]);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	ex.pid = pid;
	ex.sync = pair[0];
	ex.in = in[1];
	ex.out = out[0];
	ex.err = err[0];
	ex.in_eof = 0;
	ex.pending_len = 0;
	fcntl(ex.in, F_SETFL, O_NONBLOCK);
	fcntl(ex.out, F_SETFL, O_NONBLOCK);
	fcntl(ex.err, F_SETFL, O_NONBLOCK);
	unsigned char hdr[4] = {len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, len >> 24};
	/* The executor reads the whole plan before it writes a line. */
	if (write_all(ex.sync, hdr, 4) < 0 || write_all(ex.sync, plan, len) < 0)
		say("send the plan to the executor: %s", strerror(errno));
}

/* Forward what fd has to the host as frames of `type`; returns 0 at EOF/error. */
static int forward(int fd, unsigned type)
{
	unsigned char buf[32768];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n > 0) {
		send_frame(type, buf, (size_t)n);
		return 1;
	}
	return n < 0 && (errno == EAGAIN || errno == EINTR);
}

static void drain(int *fd, unsigned type)
{
	if (*fd < 0)
		return;
	fcntl(*fd, F_SETFL, O_NONBLOCK);
	unsigned char buf[32768];
	ssize_t n;
	while ((n = read(*fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
		if (n > 0)
			send_frame(type, buf, (size_t)n);
	close_fd(fd);
}

static void write_stdin(void)
{
	size_t done = 0;
	while (ex.in >= 0 && done < ex.pending_len) {
		ssize_t n = write(ex.in, ex.pending + done, ex.pending_len - done);
		if (n > 0)
			done += (size_t)n;
		else if (n < 0 && errno == EINTR)
			continue;
		else if (n < 0 && errno == EAGAIN)
			break;
		else {
			done = ex.pending_len; /* nobody reads stdin any more: drop it */
			close_fd(&ex.in);
		}
	}
	if (debug)
		dprintf(2, "nk-agent: %ld ms: stdin: wrote %zu of %zu\n", uptime_ms(), done, ex.pending_len);
	if (done) {
		memmove(ex.pending, ex.pending + done, ex.pending_len - done);
		ex.pending_len -= done;
		send_u32(NK_F_STDIN_ACK, (uint32_t)done);
	}
	if (ex.in_eof && ex.pending_len == 0)
		close_fd(&ex.in);
}

static void executor_exited(int status)
{
	/* Everything the executor and the container wrote is in the pipes by
	 * now (the container exited before its monitor did): send it first. */
	drain(&ex.sync, NK_F_SYNCOUT);
	drain(&ex.out, NK_F_STDOUT);
	drain(&ex.err, NK_F_STDERR);
	close_fd(&ex.in);
	close_fd(&ex.fifo);
	ex.pending_len = 0;
	ex.pid = -1;
	send_u32(NK_F_EXIT, WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
}

static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		if (pid == ex.pid)
			executor_exited(status);
}

/* ------------------------------------------------------------ host frames */

static void handle_frame(unsigned type, const unsigned char *p, size_t len)
{
	if (debug)
		dprintf(2, "nk-agent: %ld ms: frame %u, %zu bytes\n", uptime_ms(), type, len);
	switch (type) {
	case NK_F_PLAN:
		start_executor(p, len);
		break;
	case NK_F_SYNC:
		if (ex.sync >= 0 && write_all(ex.sync, p, len) < 0)
			say("write to the executor's sync socket: %s", strerror(errno));
		break;
	case NK_F_STDIN:
		if (len == 0) {
			ex.in_eof = 1;
		} else if (ex.in < 0) {
			send_u32(NK_F_STDIN_ACK, (uint32_t)len); /* nobody reads it: dropped, but acknowledged */
		} else {
			if (ex.pending_len + len > ex.pending_cap) {
				size_t cap = ex.pending_len + len + STDIN_CHUNK;
				char *grown = realloc(ex.pending, cap);
				if (!grown)
					fatal("buffer stdin");
				ex.pending = grown;
				ex.pending_cap = cap;
			}
			memcpy(ex.pending + ex.pending_len, p, len);
			ex.pending_len += len;
		}
		write_stdin();
		break;
	case NK_F_SIGNAL:
		/* One process only: never 0 or -1 (a group, everyone) and never the agent. */
		if (len != 8 || le32(p) <= 1 || le32(p) > INT32_MAX)
			say("signal frame for pid %u refused", len == 8 ? le32(p) : 0);
		else if (kill((pid_t)le32(p), (int)le32(p + 4)) < 0)
			say("kill %u %u: %s", le32(p), le32(p + 4), strerror(errno));
		break;
	case NK_F_START:
		snprintf(ex.fifo_path, sizeof ex.fifo_path, "%.*s", (int)len, (const char *)p);
		close_fd(&ex.fifo);
		ex.fifo = open(ex.fifo_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (ex.fifo < 0)
			say("open exec fifo %s: %s", ex.fifo_path, strerror(errno));
		break;
	default:
		say("unknown frame type %u (%zu bytes): ignored", type, len);
	}
}

/* Read what the port has and handle every complete frame. */
static void read_port(void)
{
	static unsigned char *buf;
	static size_t have, cap;
	if (cap - have < 65536) {
		cap = cap ? cap * 2 : 1 << 20;
		buf = realloc(buf, cap);
		if (!buf)
			fatal("grow the channel buffer");
	}
	ssize_t n = read(port, buf + have, cap - have);
	if (n == 0)
		power_off(); /* the host closed the channel: nothing will ever come */
	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN)
			return;
		fatal("read the channel");
	}
	have += (size_t)n;
	size_t at = 0;
	while (have - at >= NK_FRAME_HEADER) {
		uint32_t len = le32(buf + at);
		if (len > NK_FRAME_MAX) {
			errno = EPROTO;
			fatal("a frame longer than the protocol allows");
		}
		if (have - at < NK_FRAME_HEADER + len) {
			if (cap < NK_FRAME_HEADER + len) {
				cap = NK_FRAME_HEADER + len;
				memmove(buf, buf + at, have - at);
				have -= at;
				at = 0;
				buf = realloc(buf, cap);
				if (!buf)
					fatal("grow the channel buffer");
			}
			break;
		}
		handle_frame(buf[at + 4], buf + at + NK_FRAME_HEADER, len);
		at += NK_FRAME_HEADER + len;
	}
	memmove(buf, buf + at, have - at);
	have -= at;
}

static void read_fifo(void)
{
	char c;
	ssize_t n = read(ex.fifo, &c, 1);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	close_fd(&ex.fifo);
	if (n == 1)
		unlink(ex.fifo_path);
}

int main(void)
{
	char port_name[64];
	sigset_t set;

	if (getpid() != 1) {
		fprintf(stderr, "nk-agent: runs as a VM guest's init (pid 1) only\n");
		return 2;
	}
	umask(022);
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sigfd < 0)
		fatal("signalfd");
	signal(SIGPIPE, SIG_IGN);

	boot(port_name, sizeof port_name);
	port = open_port(port_name);
	step("channel open");

	char hello[64];
	int n = snprintf(hello, sizeof hello, "%s %ld", NK_VERSION, uptime_ms());
	send_frame(NK_F_HELLO, hello, (size_t)n);

	for (;;) {
		struct pollfd p[7] = {
			{port, POLLIN, 0},
			{sigfd, POLLIN, 0},
			{ex.sync, POLLIN, 0},
			{ex.out, POLLIN, 0},
			{ex.err, POLLIN, 0},
			{ex.pending_len ? ex.in : -1, POLLOUT, 0},
			{ex.fifo, POLLIN, 0},
		};
		if (poll(p, 7, -1) < 0) {
			if (errno == EINTR)
				continue;
			fatal("poll");
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
			read_port();
		if (p[2].revents && !forward(ex.sync, NK_F_SYNCOUT))
			close_fd(&ex.sync);
		if (p[3].revents && !forward(ex.out, NK_F_STDOUT))
			close_fd(&ex.out);
		if (p[4].revents && !forward(ex.err, NK_F_STDERR))
			close_fd(&ex.err);
		if (p[5].revents)
			write_stdin();
		if (p[6].revents)
			read_fifo();
		if (p[1].revents) {
			struct signalfd_siginfo si;
			while (read(sigfd, &si, sizeof si) == sizeof si)
				;
			reap();
		}
	}
}
