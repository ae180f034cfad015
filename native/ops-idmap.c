/*
 * RUN_ID_MAP_HELPER: stage0 runs newuidmap/newgidmap for the child.
 *
 * An unprivileged process may write only a one-line map of its own id into
 * /proc/<pid>/uid_map (user_namespaces(7)); ranges delegated in /etc/subuid
 * and /etc/subgid are written by these setuid helpers instead. The planner
 * chose the helper and its arguments; this op only puts the child's pid in
 * place of the placeholder, runs it and reports how it ended.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nk-exec.h"

/* What the helper said on stderr (the start of it), kept for the error
 * message; the rest is drained so the helper never blocks on a full pipe. */
static void read_message(int fd, char *buf, size_t size)
{
	size_t used = 0;
	char drain[256];
	for (;;) {
		int full = used >= size - 1;
		ssize_t n = full ? read(fd, drain, sizeof drain) : read(fd, buf + used, size - 1 - used);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (!full)
			used += (size_t)n;
	}
	buf[used] = 0;
	while (used > 0 && (buf[used - 1] == '\n' || buf[used - 1] == ' '))
		buf[--used] = 0;
}

int op_run_id_map_helper(const struct op *op)
{
	const char *path = op->arg[0];
	char pid_text[16];
	unsigned argc = op->argc - 1;
	char **argv = calloc(argc + 1, sizeof *argv);
	if (!argv)
		return fail(ENOMEM, "%s", path);
	snprintf(pid_text, sizeof pid_text, "%d", (int)nk.child);
	for (unsigned i = 0; i < argc; i++)
		argv[i] = strcmp(op->arg[1 + i], NK_CHILD_PID_PLACEHOLDER) == 0 ? pid_text : op->arg[1 + i];

	int err_pipe[2];
	if (pipe2(err_pipe, O_CLOEXEC) < 0) {
		free(argv);
		return fail(errno, "%s: pipe", path);
	}
	pid_t pid = fork();
	if (pid < 0) {
		int err = errno;
		close(err_pipe[0]);
		close(err_pipe[1]);
		free(argv);
		return fail(err, "%s: fork", path);
	}
	if (pid == 0) {
		/* stdout/stderr belong to the container: the helper gets /dev/null
		 * and the pipe, and a fixed environment (it runs setuid root). */
		char *envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
		int null_fd = open("/dev/null", O_RDWR);
		if (null_fd >= 0) {
			dup2(null_fd, 0);
			dup2(null_fd, 1);
		}
		dup2(err_pipe[1], 2);
		execve(path, argv, envp);
		dprintf(2, "exec: %s", strerror(errno));
		_exit(127);
	}
	close(err_pipe[1]);
	free(argv);
	char message[512];
	read_message(err_pipe[0], message, sizeof message);
	close(err_pipe[0]);

	int status;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return fail(errno, "%s: wait", path);
	}
	if (WIFSIGNALED(status))
		return failx(ECHILD, "%s for pid %d: killed by signal %d%s%s", path, (int)nk.child,
			     WTERMSIG(status), message[0] ? ": " : "", message);
	if (WEXITSTATUS(status) != 0)
		return failx(EPERM, "%s for pid %d: exit status %d%s%s", path, (int)nk.child,
			     WEXITSTATUS(status), message[0] ? ": " : "", message);
	set_detail("%s %d", path, (int)nk.child);
	return 0;
}
