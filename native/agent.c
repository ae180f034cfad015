/*
 * nk-agent: the guest side of VM mode, run by the kernel as the initramfs's
 * /init. It is the executor (nk-exec.c, the same ops as container mode) plus
 * a loop that speaks the channel protocol of agent.h with the host over a
 * virtio-serial port. It decides nothing: the host computed the plan, chose
 * the port, share and cgroup names (kernel command line: nk.port=, nk.share=,
 * nk.cgroup=; nk.vsock=<port> instead of nk.port= for Firecracker, whose
 * channel is a vsock stream), and the image builder chose the modules and
 * their order. A rootfs that comes as a block image (no nk.share=) is
 * mounted by the plan, not by the agent.
 *
 * Boot: mount /proc, /sys, /dev; load /modules/ *.ko in name order; move into
 * a tmpfs root (pivot_root refuses the initramfs itself, and the container's
 * pivot_root needs a real mount above it); mount cgroup2 and make the
 * container's cgroup (nk.cgroup=); mount the virtiofs share (4 MiB
 * readahead); open the port; say HELLO. Then, for each PLAN: fork an executor for the frame's session
 * with pipes for stdio and a socketpair for its sync socket, and relay frames
 * until it exits (EXIT with its status). Sessions are independent: the
 * container's init is session 0, exec processes get others. A session with a
 * terminal gets a console socket (CONSOLE) on which its init's
 * SETUP_TERMINAL sends the pty master, as runc's --console-socket does; the
 * agent then relays the pty and applies RESIZE frames to it. From a session's
 * "ready" the agent holds its process's namespaces, so that their teardown
 * comes after the EXIT frame, not before it. As PID 1 the agent reaps every
 * orphan.
 * When the host goes away (the port hangs up) or the agent fails, the guest
 * powers off, so no VM outlives its host process.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
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
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>

#include "agent.h"
#include "nk-exec.h"

#define SHARE_DIR "/run/nk/share"
#define STDIN_CHUNK 65536

static int port = -1;
static int sigfd = -1;
/* nk.debug=1: print each boot step, frame and session event with its time to
 * the console; nk.debug=2 also each line of the executors' sync output (the
 * time of every plan op: more console bytes, each an emulated UART write). */
static int debug;

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

/*
 * Sessions: each is one executor run (the container's init is session 0,
 * exec processes and later containers get other ids from the host) with its
 * own stdio pipes, sync socket, exec fifo, console socket and pty master.
 * A slot is free when id < 0; fds are -1 when absent.
 */
struct session {
	int id;
	pid_t pid;
	int sync, out, err, in;
	char *pending; /* stdin received from the host, not yet written */
	size_t pending_len, pending_cap;
	int in_eof;	/* the host's stdin ended: close ours once pending is written */
	int fifo;	/* the exec fifo being read after START */
	char fifo_path[256];
	int listen;	/* console socket (CONSOLE) until the pty master arrives */
	int conn;	/* the executor's connection to it */
	int master;	/* the pty master: the process's stdin and output */
	char console_path[108];
	struct winsize ws; /* RESIZE before the master arrived */
	int ws_pending;
	pid_t held_pid;	/* the process the executor reported ("pid <n>") */
	int ns[4];	/* its namespaces, held until EXIT is sent (see hold_namespaces) */
};

static struct session sessions[NK_SESSIONS_MAX];

static void session_reset(struct session *s)
{
	free(s->pending);
	*s = (struct session){.id = -1, .pid = -1, .sync = -1, .out = -1, .err = -1, .in = -1, .fifo = -1, .listen = -1, .conn = -1, .master = -1,
			      .ns = {-1, -1, -1, -1}};
}

/*
 * sync(2), but for one second at the most. sync reaches the virtiofs share
 * (FUSE_SYNCFS), and a FUSE request to a virtiofsd that has died is never
 * answered: a plain sync would keep this VM alive after its host has gone.
 * So a child syncs, and the agent waits for it with a deadline.
 */
static void sync_for_a_while(void)
{
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL); /* already blocked once the main loop runs; not yet on an early fatal() */
	pid_t pid = fork();
	if (pid == 0) {
		sync();
		_exit(0);
	}
	if (pid < 0)
		return; /* no process to spare: better no sync than a hang */
	struct timespec deadline, now;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += 1;
	for (;;) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long left_ns = (deadline.tv_sec - now.tv_sec) * 1000000000L + (deadline.tv_nsec - now.tv_nsec);
		if (left_ns <= 0)
			return;
		struct timespec wait = {left_ns / 1000000000L, left_ns % 1000000000L};
		sigtimedwait(&chld, NULL, &wait); /* any child's exit, or the deadline */
	}
}

static void __attribute__((noreturn)) power_off(void)
{
	sync_for_a_while();
	/* A reset, not a power-off: the VMM runs with -no-reboot, so a reset
	 * (reboot=t: an immediate triple fault) ends it. Powering off needs ACPI,
	 * which the minimal guest kernel lacks: there RB_POWER_OFF only halts
	 * the CPUs and the VM would live on. */
	reboot(RB_AUTOBOOT);
	_exit(1); /* PID 1 exiting panics the kernel; panic=-1 then reboots, which ends the VM too */
}

/* ------------------------------------------------------------------ frames */

static void send_frame(unsigned session, unsigned type, const void *payload, size_t len)
{
	unsigned char hdr[NK_FRAME_HEADER] = {len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff,
					      type, session & 0xff, (session >> 8) & 0xff, 0};
	if (port < 0)
		return;
	if (write_all(port, hdr, sizeof hdr) < 0 || (len && write_all(port, payload, len) < 0))
		power_off(); /* the host is gone */
}

static void send_u32(unsigned session, unsigned type, uint32_t v)
{
	unsigned char b[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24};
	send_frame(session, type, b, 4);
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
		send_frame(0, NK_F_LOG, line, (size_t)n);
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

/*
 * A larger readahead for the share: the kernel's default (128 KiB) turns a
 * cold exec into one FUSE round trip per 128 KiB window it faults on (16 for
 * busybox's 1.9 MiB: each a trip through QEMU and virtiofsd, the guest
 * waiting), with 4 MiB the first fault reads the binary in three requests
 * sent back to back. Page faults read around 4 MiB and sequential reads ramp
 * up to it; small random reads still read only what they ask for. The share's
 * bdi is named by its superblock's device number (its submounts share it).
 */
#define SHARE_READAHEAD_KB "4096"
static void share_readahead(void)
{
	struct stat st;
	char path[96];
	if (stat(SHARE_DIR, &st) < 0) {
		say("stat %s: %s (the default readahead stays)", SHARE_DIR, strerror(errno));
		return;
	}
	snprintf(path, sizeof path, "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev), minor(st.st_dev));
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, SHARE_READAHEAD_KB, strlen(SHARE_READAHEAD_KB)) < 0)
		say("set %s: %s (the default readahead stays)", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

static void boot(char *port_name, size_t port_size, char *vsock_port, size_t vsock_size)
{
	char share[128], flag[8], cgroup[64];
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	cmdline_value("nk.debug", flag, sizeof flag);
	debug = flag[0] >= '1' && flag[0] <= '9' ? flag[0] - '0' : 0;
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
	if (*cmdline_value("nk.share", share, sizeof share)) {
		mount_or_die(share, SHARE_DIR, "virtiofs", 0, NULL);
		share_readahead();
	}
	step("filesystems mounted");
	cmdline_value("nk.port", port_name, port_size);
	cmdline_value("nk.vsock", vsock_port, vsock_size);
}

/* A small (sysfs) file's contents, NUL-terminated; the byte count, or -1. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, size - 1) : -1;
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = 0;
	return n;
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
			if (read_small(path, got, sizeof got) <= 0)
				continue;
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

/*
 * The channel over vsock (Firecracker, nk.vsock=<port>): listen on the port
 * for any CID and take the one connection the host makes through
 * Firecracker's unix socket ("CONNECT <port>"); the same frames follow.
 * Only one connection is ever taken: the listening socket is closed at once.
 */
static int open_vsock(const char *port_text)
{
	char *end;
	unsigned long vport = strtoul(port_text, &end, 10);
	if (*end || vport == 0 || vport > 0xffffffffUL) {
		errno = EINVAL;
		fatal("nk.vsock: not a port number");
	}
	struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_port = (unsigned)vport, .svm_cid = VMADDR_CID_ANY};
	int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		fatal("vsock socket");
	if (bind(l, (struct sockaddr *)&addr, sizeof addr) < 0)
		fatal("bind the vsock port (nk.vsock)");
	if (listen(l, 1) < 0)
		fatal("listen on the vsock port");
	int c;
	while ((c = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0)
		if (errno != EINTR)
			fatal("accept the host's vsock connection");
	close(l);
	return c;
}

/* --------------------------------------------------------------- sessions */

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static struct session *find_session(unsigned id)
{
	for (int i = 0; i < NK_SESSIONS_MAX; i++)
		if (sessions[i].id == (int)id)
			return &sessions[i];
	return NULL;
}

/* The session with this id, made on first use; NULL when every slot is taken. */
static struct session *session_for(unsigned id)
{
	struct session *s = find_session(id);
	for (int i = 0; !s && i < NK_SESSIONS_MAX; i++)
		if (sessions[i].id < 0) {
			s = &sessions[i];
			session_reset(s);
			s->id = (int)id;
		}
	if (!s)
		say("session %u: more than %d sessions at once: refused", id, NK_SESSIONS_MAX);
	return s;
}

/*
 * Namespaces of ended sessions (see hold_namespaces), released LINGER_MS
 * later: after the container's EXIT the host usually stops the VM within
 * milliseconds, and a guest busy tearing the container down then (the vCPU,
 * FUSE forgets for virtiofsd) only slows QEMU's quit (~10 ms measured).
 */
#define LINGER_MS 500
static int lingering[NK_SESSIONS_MAX * 4];
static size_t lingering_count;
static long lingering_since;

static void linger(int *fd)
{
	if (*fd < 0)
		return;
	if (lingering_count == sizeof lingering / sizeof lingering[0]) {
		close_fd(fd);
		return;
	}
	if (!lingering_count)
		lingering_since = uptime_ms();
	lingering[lingering_count++] = *fd;
	*fd = -1;
}

/* The poll timeout until the lingering namespaces are due (-1: none). */
static int linger_timeout(void)
{
	if (!lingering_count)
		return -1;
	long left = lingering_since + LINGER_MS - uptime_ms();
	if (left <= 0) {
		while (lingering_count)
			close(lingering[--lingering_count]);
		return -1;
	}
	return (int)left;
}

static void session_free(struct session *s)
{
	close_fd(&s->sync);
	close_fd(&s->out);
	close_fd(&s->err);
	close_fd(&s->in);
	close_fd(&s->fifo);
	close_fd(&s->listen);
	close_fd(&s->conn);
	close_fd(&s->master);
	for (size_t i = 0; i < sizeof s->ns / sizeof s->ns[0]; i++)
		linger(&s->ns[i]);
	if (s->console_path[0])
		unlink(s->console_path);
	session_reset(s);
}

/* Where the host's stdin goes: the pty once the session has one, else the pipe. */
static int stdin_target(const struct session *s)
{
	return s->console_path[0] ? s->master : s->in;
}

static void start_executor(struct session *s, const unsigned char *plan, size_t len)
{
	int pair[2], in[2], out[2], err[2];
	if (s->pid > 0) {
		say("session %d: a plan arrived while another is running: ignored", s->id);
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
		if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0 || dup2(pair[1], 3) < 0)
			_exit(1);
		/* Every other fd of the agent must go now, not at execve: stage0
		 * never execs (it stays as the monitor), and a stdin write end --
		 * this session's or another's -- that it kept would keep a process
		 * from ever reading end-of-file. */
		if (syscall(SYS_close_range, 4, ~0u, 0) < 0)
			for (int fd = 4; fd < 1024; fd++)
				close(fd);
		_exit(nk_execute(3));
	}
	close(pair[1]);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	s->pid = pid;
	s->sync = pair[0];
	s->in = in[1];
	s->out = out[0];
	s->err = err[0];
	s->in_eof = 0;
	fcntl(s->in, F_SETFL, O_NONBLOCK);
	fcntl(s->out, F_SETFL, O_NONBLOCK);
	fcntl(s->err, F_SETFL, O_NONBLOCK);
	unsigned char hdr[4] = {len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, len >> 24};
	/* The executor reads the whole plan before it writes a line. */
	if (write_all(s->sync, hdr, 4) < 0 || write_all(s->sync, plan, len) < 0)
		say("session %d: send the plan to the executor: %s", s->id, strerror(errno));
}

/* Listen on the path the plan's CONNECT_CONSOLE will connect to. */
static void open_console(struct session *s, const unsigned char *p, size_t len)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (len == 0 || len >= sizeof addr.sun_path || len >= sizeof s->console_path || s->console_path[0]) {
		say("session %d: console socket path refused", s->id);
		return;
	}
	memcpy(s->console_path, p, len);
	s->console_path[len] = 0;
	memcpy(addr.sun_path, p, len);
	unlink(s->console_path);
	s->listen = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s->listen < 0 || bind(s->listen, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s->listen, 1) < 0) {
		say("session %d: listen on %s: %s", s->id, s->console_path, strerror(errno));
		close_fd(&s->listen);
	}
}

static void apply_winsize(struct session *s)
{
	if (s->master >= 0 && s->ws_pending) {
		if (ioctl(s->master, TIOCSWINSZ, &s->ws) < 0)
			say("session %d: resize the terminal: %s", s->id, strerror(errno));
		s->ws_pending = 0;
	}
}

static void accept_console(struct session *s)
{
	int c = accept4(s->listen, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return;
	close_fd(&s->listen);
	s->conn = c;
}

/* The pty master SETUP_TERMINAL sends (one fd, the pty's name as payload). */
static void receive_master(struct session *s)
{
	char name[256], cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {name, sizeof name};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
	ssize_t n = recvmsg(s->conn, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	for (struct cmsghdr *c = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(&s->master, CMSG_DATA(c), sizeof(int));
	close_fd(&s->conn);
	if (s->master < 0)
		return; /* the executor failed before SETUP_TERMINAL: its sync lines say why */
	fcntl(s->master, F_SETFL, O_NONBLOCK);
	apply_winsize(s);
}

/*
 * The container's namespaces outlive its init until its exit is reported.
 * When the last process in a mount namespace exits, the kernel tears the
 * namespace down -- every mount: proc, sysfs, tmpfs, devpts, mqueue, the
 * share's binds -- inside that exit, before the parent hears of it, and the
 * network namespace's cleanup follows in a kernel worker that competes for
 * the vCPU: under TCG ~35 ms of cold kernel code between the container's
 * exit and its EXIT frame. A reference held here moves that work after EXIT
 * (session_free hands them to linger()). The process is the one the executor
 * names on its sync socket ("pid <n>"); its namespaces are opened at the
 * session's "ready" -- init then waits for START and the vCPU is otherwise
 * idle -- so plans without REPORT_READY (exec) hold nothing. Nothing else
 * changes: the fds are the agent's own (close-on-exec, and every executor
 * closes all the agent's fds at fork), and a process already gone leaves
 * nothing to hold.
 */
static void hold_namespaces(struct session *s, const unsigned char *buf, size_t n)
{
	static const char *const kinds[] = {"mnt", "net", "ipc", "uts"};
	for (size_t at = 0; at < n; at++) {
		if (at > 0 && buf[at - 1] != '\n')
			continue;
		if (n - at > 4 && memcmp(buf + at, "pid ", 4) == 0) {
			long pid = 0;
			size_t i = at + 4;
			for (; i < n && buf[i] >= '0' && buf[i] <= '9' && pid < INT32_MAX; i++)
				pid = pid * 10 + (buf[i] - '0');
			if (i > at + 4 && i < n && buf[i] == '\n' && pid > 1 && pid <= INT32_MAX)
				s->held_pid = (pid_t)pid;
		} else if (n - at >= 6 && memcmp(buf + at, "ready\n", 6) == 0 && s->held_pid > 1 && s->ns[0] < 0) {
			for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
				char path[64];
				snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)s->held_pid, kinds[k]);
				s->ns[k] = open(path, O_RDONLY | O_CLOEXEC);
			}
			if (debug)
				dprintf(2, "nk-agent: %ld ms: session %d: holding the namespaces of pid %d%s\n", uptime_ms(), s->id,
					(int)s->held_pid, s->ns[0] < 0 ? " (gone)" : "");
		}
	}
}

/* Forward what fd has to the host as frames of `type`; returns 0 at EOF/error. */
static int forward(struct session *s, int fd, unsigned type)
{
	unsigned char buf[32768];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n > 0) {
		if (type == NK_F_SYNCOUT) {
			hold_namespaces(s, buf, (size_t)n);
			if (debug >= 2)
				dprintf(2, "nk-agent: %ld ms: session %d: %.*s", uptime_ms(), s->id, (int)n, (const char *)buf);
		}
		send_frame((unsigned)s->id, type, buf, (size_t)n);
		return 1;
	}
	return n < 0 && (errno == EAGAIN || errno == EINTR);
}

static void drain(const struct session *s, int *fd, unsigned type)
{
	if (*fd < 0)
		return;
	fcntl(*fd, F_SETFL, O_NONBLOCK);
	unsigned char buf[32768];
	ssize_t n;
	while ((n = read(*fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
		if (n > 0)
			send_frame((unsigned)s->id, type, buf, (size_t)n);
	close_fd(fd);
}

static void write_stdin(struct session *s)
{
	size_t done = 0;
	int fd = stdin_target(s);
	while (fd >= 0 && done < s->pending_len) {
		ssize_t n = write(fd, s->pending + done, s->pending_len - done);
		if (n > 0)
			done += (size_t)n;
		else if (n < 0 && errno == EINTR)
			continue;
		else if (n < 0 && errno == EAGAIN)
			break;
		else {
			done = s->pending_len; /* nobody reads stdin any more: drop it */
			if (fd == s->in)
				close_fd(&s->in);
			break;
		}
	}
	if (debug)
		dprintf(2, "nk-agent: %ld ms: session %d stdin: wrote %zu of %zu\n", uptime_ms(), s->id, done, s->pending_len);
	if (done) {
		memmove(s->pending, s->pending + done, s->pending_len - done);
		s->pending_len -= done;
		send_u32((unsigned)s->id, NK_F_STDIN_ACK, (uint32_t)done);
	}
	/* A pty has no end of input short of hanging up: only the pipe is closed. */
	if (s->in_eof && s->pending_len == 0)
		close_fd(&s->in);
}

static void executor_exited(struct session *s, int status)
{
	/* Everything the executor and the process wrote is in the pipes (or
	 * the pty) by now (the process exited before its monitor did): send
	 * it first. */
	drain(s, &s->sync, NK_F_SYNCOUT);
	drain(s, &s->out, NK_F_STDOUT);
	drain(s, &s->err, NK_F_STDERR);
	drain(s, &s->master, NK_F_STDOUT);
	if (debug)
		dprintf(2, "nk-agent: %ld ms: session %d exited\n", uptime_ms(), s->id);
	send_u32((unsigned)s->id, NK_F_EXIT, WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
	session_free(s);
}

static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		for (int i = 0; i < NK_SESSIONS_MAX; i++)
			if (sessions[i].id >= 0 && sessions[i].pid == pid)
				executor_exited(&sessions[i], status);
}

/* ------------------------------------------------------------ host frames */

/* READ: the file's contents (a cgroup file: small) as FILE, or the errno. */
static void read_file(unsigned session, const unsigned char *p, size_t len)
{
	char path[4096];
	static unsigned char buf[4 + NK_READ_MAX];
	size_t have = 0;
	uint32_t err = 0;
	if (len == 0 || len >= sizeof path) {
		err = ENAMETOOLONG;
	} else {
		memcpy(path, p, len);
		path[len] = 0;
		int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			err = (uint32_t)errno;
		while (fd >= 0 && have < NK_READ_MAX) {
			ssize_t n = read(fd, buf + 4 + have, NK_READ_MAX - have);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				err = (uint32_t)errno;
			if (n <= 0)
				break;
			have += (size_t)n;
		}
		if (fd >= 0)
			close(fd);
	}
	if (err)
		have = 0;
	buf[0] = err & 0xff, buf[1] = (err >> 8) & 0xff, buf[2] = (err >> 16) & 0xff, buf[3] = err >> 24;
	send_frame(session, NK_F_FILE, buf, 4 + have);
}

static void say_hello(const char *how)
{
	char hello[64];
	int n = snprintf(hello, sizeof hello, "%s %ld%s%s", NK_VERSION, uptime_ms(), *how ? " " : "", how);
	send_frame(0, NK_F_HELLO, hello, (size_t)n);
}

/*
 * WAKE: this guest was restored from a template (src/vm/template.ts), so it
 * shares its kernel state with every other clone of that template: the
 * random number generator's state above all (clones would hand out the same
 * "random" bytes: keys, ASLR offsets, UUIDs -- the hazard of VM snapshots
 * that Linux's vmgenid driver answers on ACPI machines, which this guest is
 * not), and a wall clock stopped at the moment the template was saved. Mix
 * the host's entropy in and reseed at once, set the clock, and drop the
 * page cache of the root disk: the template read its placeholder's first
 * blocks while probing it, and the container's image is another disk. Its
 * network cards still carry the template's MACs: each takes the container's
 * (the plan finds a card by its MAC; virtio-net tells QEMU the new one).
 */
static void set_mac(const unsigned char *from, const unsigned char *to)
{
	char want[18], path[300], got[32];
	snprintf(want, sizeof want, "%02x:%02x:%02x:%02x:%02x:%02x", from[0], from[1], from[2], from[3], from[4], from[5]);
	DIR *d = opendir("/sys/class/net");
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.' || strlen(e->d_name) >= IFNAMSIZ)
			continue;
		snprintf(path, sizeof path, "/sys/class/net/%s/address", e->d_name);
		if (read_small(path, got, sizeof got) < 17 || strncmp(got, want, 17) != 0)
			continue;
		struct ifreq ifr = {0};
		snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", e->d_name);
		ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
		memcpy(ifr.ifr_hwaddr.sa_data, to, 6);
		int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (s < 0 || ioctl(s, SIOCSIFHWADDR, &ifr) < 0)
			fatal("give a network card the container's MAC");
		close(s);
		closedir(d);
		return;
	}
	if (d)
		closedir(d);
	errno = ENODEV;
	fatal("find the template's network card by its MAC");
}

static void wake(const unsigned char *p, size_t len)
{
	if (len < 12 + NK_WAKE_ENTROPY) {
		say("wake frame of %zu bytes refused", len);
		return;
	}
	uint64_t sec = le32(p) | (uint64_t)le32(p + 4) << 32;
	struct timespec now = {(time_t)sec, (long)le32(p + 8)};
	if (clock_settime(CLOCK_REALTIME, &now) < 0)
		say("set the clock: %s", strerror(errno));
	struct {
		struct rand_pool_info info;
		unsigned char bytes[NK_WAKE_ENTROPY];
	} seed = {.info = {.entropy_count = NK_WAKE_ENTROPY * 8, .buf_size = NK_WAKE_ENTROPY}};
	memcpy(seed.bytes, p + 12, NK_WAKE_ENTROPY);
	int r = open("/dev/urandom", O_RDWR | O_CLOEXEC);
	if (r < 0 || ioctl(r, RNDADDENTROPY, &seed) < 0 || ioctl(r, RNDRESEEDCRNG) < 0)
		fatal("reseed the random number generator"); /* a clone must not run with its template's CRNG state */
	close(r);
	memset(&seed, 0, sizeof seed);
	size_t at = 12 + NK_WAKE_ENTROPY;
	size_t dev_len = at < len ? p[at++] : 0;
	if (at + dev_len > len || (len - at - dev_len) % 12 != 0) {
		errno = EPROTO;
		fatal("a wake frame out of shape");
	}
	if (dev_len) {
		char dev[64];
		snprintf(dev, sizeof dev, "%.*s", (int)(dev_len < sizeof dev ? dev_len : sizeof dev - 1), (const char *)p + at);
		int d = open(dev, O_RDONLY | O_CLOEXEC);
		if (d < 0 || ioctl(d, BLKFLSBUF) < 0)
			fatal("drop the root disk's cache");
		close(d);
	}
	for (at += dev_len; at < len; at += 12)
		set_mac(p + at, p + at + 6);
	step("woken from a template");
	say_hello("woken");
}

/*
 * WARM, while a template is made (template.ts): a clone's first container
 * would otherwise pay the guest kernel's first-time work -- the first new
 * pid, mount and network namespaces, proc's first mount, an exec --
 * in every clone (measured: ~50 ms of the plan under TCG). So the template
 * does it once, with the namespace flags the host names, in a child that
 * leaves nothing behind: its namespaces die with it.
 */
#define WARM_EXIT_ARG "--warm-exit"

static void warm(const unsigned char *p, size_t len)
{
	int status = -1;
	pid_t pid = len == 4 ? fork() : -1;
	if (pid == 0) {
		if (unshare((int)le32(p)) < 0)
			_exit(1);
		pid_t inner = fork(); /* the new pid namespace's first process */
		if (inner == 0) {
			if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 || mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
				_exit(2);
			/* A static binary's exec: this agent's own, which exits at once with that argument. */
			execl("/proc/self/exe", "nk-agent", WARM_EXIT_ARG, (char *)NULL);
			_exit(3);
		}
		int st = 0;
		if (inner < 0 || waitpid(inner, &st, 0) != inner)
			_exit(4);
		_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 5);
	}
	if (pid > 0 && waitpid(pid, &status, 0) == pid)
		status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	char how[24];
	snprintf(how, sizeof how, "warm %d", status);
	say_hello(how);
}

static void handle_frame(unsigned session, unsigned type, const unsigned char *p, size_t len)
{
	if (debug)
		dprintf(2, "nk-agent: %ld ms: session %u frame %u, %zu bytes\n", uptime_ms(), session, type, len);
	if (type == NK_F_SIGNAL) {
		/* One process only: never 0 or -1 (a group, everyone) and never the agent. */
		if (len != 8 || le32(p) <= 1 || le32(p) > INT32_MAX)
			say("signal frame for pid %u refused", len == 8 ? le32(p) : 0);
		else if (kill((pid_t)le32(p), (int)le32(p + 4)) < 0)
			say("kill %u %u: %s", le32(p), le32(p + 4), strerror(errno));
		return;
	}
	if (type == NK_F_READ) {
		read_file(session, p, len);
		return;
	}
	if (type == NK_F_WARM) {
		warm(p, len);
		return;
	}
	if (type == NK_F_WAKE) {
		wake(p, len);
		return;
	}
	/* Only these may open a session; the rest belong to one that exists. */
	struct session *s = type == NK_F_PLAN || type == NK_F_CONSOLE ? session_for(session) : find_session(session);
	if (!s) {
		if (type == NK_F_STDIN && len)
			send_u32(session, NK_F_STDIN_ACK, (uint32_t)len); /* keep the host's window honest */
		return;
	}
	switch (type) {
	case NK_F_PLAN:
		start_executor(s, p, len);
		break;
	case NK_F_CONSOLE:
		open_console(s, p, len);
		break;
	case NK_F_SYNC:
		if (s->sync >= 0 && write_all(s->sync, p, len) < 0)
			say("session %d: write to the executor's sync socket: %s", s->id, strerror(errno));
		break;
	case NK_F_STDIN:
		if (len == 0) {
			s->in_eof = 1;
		} else if (!s->console_path[0] && s->in < 0) {
			send_u32(session, NK_F_STDIN_ACK, (uint32_t)len); /* nobody reads it: dropped, but acknowledged */
		} else {
			if (s->pending_len + len > s->pending_cap) {
				size_t cap = s->pending_len + len + STDIN_CHUNK;
				char *grown = realloc(s->pending, cap);
				if (!grown)
					fatal("buffer stdin");
				s->pending = grown;
				s->pending_cap = cap;
			}
			memcpy(s->pending + s->pending_len, p, len);
			s->pending_len += len;
		}
		write_stdin(s);
		break;
	case NK_F_RESIZE:
		if (len != 8)
			break;
		s->ws = (struct winsize){.ws_row = (unsigned short)le32(p), .ws_col = (unsigned short)le32(p + 4)};
		s->ws_pending = 1;
		apply_winsize(s);
		break;
	case NK_F_START:
		snprintf(s->fifo_path, sizeof s->fifo_path, "%.*s", (int)len, (const char *)p);
		close_fd(&s->fifo);
		s->fifo = open(s->fifo_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (s->fifo < 0)
			say("open exec fifo %s: %s", s->fifo_path, strerror(errno));
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
		if (len > NK_FRAME_MAX || buf[at + 7] != 0) {
			errno = EPROTO;
			fatal("a frame the protocol does not allow (stream out of step)");
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
		handle_frame(buf[at + 5] | (unsigned)buf[at + 6] << 8, buf[at + 4], buf + at + NK_FRAME_HEADER, len);
		at += NK_FRAME_HEADER + len;
	}
	memmove(buf, buf + at, have - at);
	have -= at;
}

static void read_fifo(struct session *s)
{
	char c;
	ssize_t n = read(s->fifo, &c, 1);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	close_fd(&s->fifo);
	if (debug)
		dprintf(2, "nk-agent: %ld ms: session %d: exec fifo read (%zd)\n", uptime_ms(), s->id, n);
	if (n == 1)
		unlink(s->fifo_path);
}

/* One pollfd per open fd of every session; `what` says which fd it was. */
enum { W_SYNC, W_OUT, W_ERR, W_IN, W_FIFO, W_LISTEN, W_CONN, W_MASTER };
#define POLL_MAX (2 + NK_SESSIONS_MAX * 8)

int main(int argc, char **argv)
{
	char port_name[64], vsock_port[16];
	sigset_t set;

	if (argc == 2 && strcmp(argv[1], WARM_EXIT_ARG) == 0)
		return 0; /* WARM's exec */
	if (getpid() != 1) {
		fprintf(stderr, "nk-agent: runs as a VM guest's init (pid 1) only\n");
		return 2;
	}
	for (int i = 0; i < NK_SESSIONS_MAX; i++)
		session_reset(&sessions[i]);
	umask(022);
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sigfd < 0)
		fatal("signalfd");
	signal(SIGPIPE, SIG_IGN);

	boot(port_name, sizeof port_name, vsock_port, sizeof vsock_port);
	port = vsock_port[0] ? open_vsock(vsock_port) : open_port(port_name);
	step("channel open");

	say_hello("");

	static struct pollfd p[POLL_MAX];
	static struct {
		int slot, what;
	} owner[POLL_MAX];
	for (;;) {
		int count = 2;
		p[0] = (struct pollfd){port, POLLIN, 0};
		p[1] = (struct pollfd){sigfd, POLLIN, 0};
		for (int i = 0; i < NK_SESSIONS_MAX; i++) {
			struct session *s = &sessions[i];
			if (s->id < 0)
				continue;
			const struct {
				int fd, what;
				short events;
			} fds[] = {
				{s->sync, W_SYNC, POLLIN},
				{s->out, W_OUT, POLLIN},
				{s->err, W_ERR, POLLIN},
				{s->pending_len && !s->console_path[0] ? s->in : -1, W_IN, POLLOUT},
				{s->fifo, W_FIFO, POLLIN},
				{s->listen, W_LISTEN, POLLIN},
				{s->conn, W_CONN, POLLIN},
				{s->master, W_MASTER, (short)(POLLIN | (s->pending_len ? POLLOUT : 0))},
			};
			for (size_t k = 0; k < sizeof fds / sizeof fds[0]; k++)
				if (fds[k].fd >= 0) {
					p[count] = (struct pollfd){fds[k].fd, fds[k].events, 0};
					owner[count].slot = i;
					owner[count].what = fds[k].what;
					count++;
				}
		}
		int ready = poll(p, (nfds_t)count, linger_timeout());
		if (ready < 0) {
			if (errno == EINTR)
				continue;
			fatal("poll");
		}
		if (ready == 0)
			continue; /* the next linger_timeout() releases them */
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
			read_port();
		/* A frame may have ended or reset a session: skip fds that changed. */
		for (int k = 2; k < count; k++) {
			struct session *s = &sessions[owner[k].slot];
			if (!p[k].revents || s->id < 0)
				continue;
			switch (owner[k].what) {
			case W_SYNC:
				if (s->sync == p[k].fd && !forward(s, s->sync, NK_F_SYNCOUT))
					close_fd(&s->sync);
				break;
			case W_OUT:
				if (s->out == p[k].fd && !forward(s, s->out, NK_F_STDOUT))
					close_fd(&s->out);
				break;
			case W_ERR:
				if (s->err == p[k].fd && !forward(s, s->err, NK_F_STDERR))
					close_fd(&s->err);
				break;
			case W_IN:
				if (s->in == p[k].fd)
					write_stdin(s);
				break;
			case W_FIFO:
				if (s->fifo == p[k].fd)
					read_fifo(s);
				break;
			case W_LISTEN:
				if (s->listen == p[k].fd)
					accept_console(s);
				break;
			case W_CONN:
				if (s->conn == p[k].fd)
					receive_master(s);
				break;
			case W_MASTER:
				if (s->master != p[k].fd)
					break;
				if ((p[k].revents & POLLOUT) && s->pending_len)
					write_stdin(s);
				/* EIO: every slave fd is closed; the exit comes from the monitor. */
				if ((p[k].revents & (POLLIN | POLLHUP | POLLERR)) && !forward(s, s->master, NK_F_STDOUT))
					close_fd(&s->master);
				break;
			}
		}
		if (p[1].revents) {
			struct signalfd_siginfo si;
			while (read(sigfd, &si, sizeof si) == sizeof si)
				;
			reap();
		}
	}
}
