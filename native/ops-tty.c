/*
 * Terminals and the monitor role: the console socket, pty setup in init,
 * and stage0 staying on as a foreground container's parent (exit status,
 * pty copy). A JavaScript runtime can neither reap a grandchild nor pass an
 * fd over a unix socket, so this part has to live here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "nk-exec.h"

static int send_fd(int sock, int fd, const char *name);

/* Connect a unix stream socket at path (a host path: done before pivot_root). */
static int connect_unix(const struct op *op, const char *what, int *out)
{
	const char *path = op->arg[0];
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (op->len[0] >= sizeof addr.sun_path)
		return failx(ENAMETOOLONG, "connect %s %s: path longer than %zu bytes", what, path,
			     sizeof addr.sun_path - 1);
	memcpy(addr.sun_path, path, op->len[0] + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(errno, "connect %s %s: socket", what, path);
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		int err = errno;
		close(fd);
		return fail(err, "connect %s %s", what, path);
	}
	*out = fd;
	return 0;
}

int op_connect_console(const struct op *op)
{
	return connect_unix(op, "console socket", &nk.console_fd);
}

int op_connect_listener(const struct op *op)
{
	return connect_unix(op, "seccomp listener", &nk.listener_fd);
}

/* SECCOMP's third argument: send the notify fd with this payload, "{pid}"
 * replaced by our host pid (runtime-spec: containerProcessState). */
int send_seccomp_listener(int listener, const char *template)
{
	char payload[65536];
	size_t n = 0;
	for (const char *p = template; *p && n < sizeof payload - 16;) {
		if (strncmp(p, "{pid}", 5) == 0) {
			n += (size_t)snprintf(payload + n, sizeof payload - n, "%d", (int)nk.host_pid);
			p += 5;
		} else
			payload[n++] = *p++;
	}
	payload[n] = 0;
	if (nk.listener_fd < 0)
		return failx(EBADF, "seccomp listener: not connected");
	int r = send_fd(nk.listener_fd, listener, payload);
	int err = errno;
	close(listener);
	close(nk.listener_fd);
	nk.listener_fd = -1;
	if (r < 0)
		return fail(err, "send the seccomp notify fd to the listener");
	return 0;
}

/* One fd with the pty's name as payload, the way runc's console socket
 * protocol (and so containerd and podman) expect it. */
static int send_fd(int sock, int fd, const char *name)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {(void *)name, strlen(name)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
	memset(cbuf, 0, sizeof cbuf);
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof fd);
	return sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* Returns the received fd, or -1 (EOF: init ended without sending one). */
static int recv_fd(int sock)
{
	char name[256], cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {name, sizeof name};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
	ssize_t n;
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int fd;
			memcpy(&fd, CMSG_DATA(c), sizeof fd);
			return fd;
		}
	return -1;
}

int op_setup_terminal(const struct op *op)
{
	const char *mode = op->arg[0];
	char name[64];
	unsigned ptn;
	int unlock = 0, sock;

	if (strcmp(mode, "socket") == 0)
		sock = nk.console_fd;
	else if (strcmp(mode, "monitor") == 0)
		sock = nk.peer_fd;
	else
		return failx(EINVAL, "terminal mode must be socket or monitor, not \"%s\"", mode);
	if (sock < 0)
		return failx(EBADF, "terminal mode %s: no console socket connected", mode);

	int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0)
		return fail(errno, "open /dev/ptmx");
	if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &ptn) < 0) {
		int err = errno;
		close(master);
		return fail(err, "unlock pty /dev/ptmx");
	}
	snprintf(name, sizeof name, "/dev/pts/%u", ptn);
	/* TIOCGPTPEER opens the slave through the master, immune to a
	 * /dev/pts the container has tampered with; the path is a fallback
	 * for kernels before 4.13. */
	int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (slave < 0)
		slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (slave < 0) {
		int err = errno;
		close(master);
		return fail(err, "open pty slave %s", name);
	}
	const char *step = "chown";
	if (fchown(slave, (uid_t)op->num[1], (gid_t)op->num[2]) < 0)
		goto fail;
	step = "send the pty master";
	if (send_fd(sock, master, name) < 0)
		goto fail;
	close(master);
	master = -1;
	if (sock == nk.console_fd) {
		close(nk.console_fd);
		nk.console_fd = -1;
	}
	step = "setsid";
	if (setsid() < 0)
		goto fail;
	step = "make it the controlling terminal";
	if (ioctl(slave, TIOCSCTTY, 0) < 0)
		goto fail;
	step = "make it stdin/stdout/stderr";
	for (int fd = 0; fd < 3; fd++)
		if (dup2(slave, fd) < 0)
			goto fail;
	if (slave > 2)
		close(slave);
	set_detail("%s", name);
	return 0;
fail:;
	int err = errno;
	if (master >= 0)
		close(master);
	close(slave);
	return fail(err, "terminal %s: %s", name, step);
}

/* ------------------------------------------------------------- monitor */

static void copy_winsize(int master)
{
	struct winsize ws;
	if (ioctl(0, TIOCGWINSZ, &ws) == 0)
		ioctl(master, TIOCSWINSZ, &ws);
}

static int reap(int options, int *status)
{
	pid_t r;
	do
		r = waitpid(nk.child, status, options);
	while (r < 0 && errno == EINTR);
	return r == nk.child;
}

/* Copy what the pty has buffered; used once init has exited. */
static void drain(int master)
{
	char buf[8192];
	ssize_t n;
	while ((n = read(master, buf, sizeof buf)) > 0)
		write_all(1, buf, (size_t)n);
}

/*
 * Copy stdin -> master and master -> stdout until init has exited (then the
 * rest of its output is drained) or the pty is closed by every holder
 * (then just wait for init). The master is non-blocking and input is only
 * read when the previous chunk is written, so a container that is not
 * reading its input can never stall its output.
 */
static void copy_loop(int master, int *status)
{
	char in[4096], out[8192];
	size_t in_len = 0, in_off = 0;
	int stdin_open = 1, exited = 0;
	struct termios saved;
	int raw = 0;

	if (isatty(0) && tcgetattr(0, &saved) == 0) {
		struct termios t = saved;
		cfmakeraw(&t);
		raw = tcsetattr(0, TCSANOW, &t) == 0;
		copy_winsize(master);
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGWINCH);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);

	for (;;) {
		/* Checked every round: a SIGCHLD from before the signalfd
		 * existed is not queued anywhere. */
		if (reap(WNOHANG, status)) {
			exited = 1;
			drain(master);
			break;
		}
		if (master < 0)
			break;
		struct pollfd p[3] = {
			{sfd, POLLIN, 0},
			{master, (short)(POLLIN | (in_len ? POLLOUT : 0)), 0},
			{stdin_open && !in_len ? 0 : -1, POLLIN, 0},
		};
		if (poll(p, 3, -1) < 0)
			continue; /* EINTR */
		if (p[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == sizeof si)
				if (si.ssi_signo == SIGWINCH && raw)
					copy_winsize(master);
		}
		if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(master, out, sizeof out);
			if (n > 0)
				write_all(1, out, (size_t)n);
			else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
				close(master); /* EIO: every slave fd is closed */
				master = -1;
				continue;
			}
		}
		if ((p[1].revents & POLLOUT) && in_len) {
			ssize_t n = write(master, in + in_off, in_len);
			if (n > 0)
				in_off += (size_t)n, in_len -= (size_t)n;
			else if (n < 0 && errno != EAGAIN && errno != EINTR)
				in_len = 0; /* input nobody can take */
		}
		if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(0, in, sizeof in);
			if (n > 0)
				in_len = (size_t)n, in_off = 0;
			else if (n == 0 || (errno != EAGAIN && errno != EINTR))
				stdin_open = 0;
		}
	}
	if (!exited)
		reap(0, status);
	if (raw)
		tcsetattr(0, TCSANOW, &saved);
	if (master >= 0)
		close(master);
	if (sfd >= 0)
		close(sfd);
}

int op_monitor(const struct op *op)
{
	static const int ignored[] = {SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGTSTP,
				      SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGPIPE};
	const char *tty = op->arg[0];
	int copy = strcmp(tty, "copy") == 0;
	int status = 0;

	if (!copy && strcmp(tty, "none") != 0)
		return failx(EINVAL, "monitor tty must be none or copy, not \"%s\"", tty);
	/* The runtime forwards these to the container itself; stage0 must
	 * outlive them to report the container's exit status. */
	for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
		signal(ignored[i], SIG_IGN);
	report_ok(nk.op_index, "");
	close_sync();

	int master = copy ? recv_fd(nk.peer_fd) : -1;
	if (master >= 0)
		copy_loop(master, &status);
	else if (!reap(0, &status))
		_exit(1);
	if (WIFSIGNALED(status))
		_exit(128 + WTERMSIG(status));
	_exit(WEXITSTATUS(status));
}
