/*
 * Ops for OCI hooks that must run inside the container (startContainer), the
 * sync point where the runtime runs its own hooks, and the dumpable flag.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nk-exec.h"

int op_set_dumpable(const struct op *op)
{
	if (prctl(PR_SET_DUMPABLE, (unsigned long)op->num[0], 0, 0, 0) < 0)
		return fail(errno, "prctl PR_SET_DUMPABLE %s", op->arg[0]);
	return 0;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* RUN_HOOK(path, timeoutSecs, stdin, argc, argv..., env...): run one hook
 * to completion with the state JSON on its stdin; 0 seconds = no timeout. */
int op_run_hook(const struct op *op)
{
	const char *path = op->arg[0];
	unsigned timeout = (unsigned)op->num[1];
	unsigned argc = (unsigned)op->num[3];
	if (argc > op->argc - 4)
		return failx(EINVAL, "hook %s: argv count %u does not fit its arguments", path, argc);

	char **argv = calloc(argc + 2, sizeof *argv);
	char **envp = calloc(op->argc - 4 - argc + 1, sizeof *envp);
	if (!argv || !envp)
		return fail(ENOMEM, "hook %s", path);
	if (argc == 0)
		argv[0] = op->arg[0];
	for (unsigned i = 0; i < argc; i++)
		argv[i] = op->arg[4 + i];
	for (unsigned i = 4 + argc; i < op->argc; i++)
		envp[i - 4 - argc] = op->arg[i];

	int in[2];
	if (pipe2(in, O_CLOEXEC) < 0)
		return fail(errno, "hook %s: pipe", path);
	pid_t pid = fork();
	if (pid < 0)
		return fail(errno, "hook %s: fork", path);
	if (pid == 0) {
		dup2(in[0], 0);
		execve(path, argv, envp);
		dprintf(2, "nk-exec: hook %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	close(in[0]);
	/* An empty stdin argument means: the state the runtime sent at the last sync point. */
	const char *input = op->arg[2];
	size_t input_len = op->len[2];
	if (input_len == 0 && nk.sync_payload) {
		input = nk.sync_payload;
		input_len = strlen(input);
	}
	/* A hook that does not read its stdin must not block us: ignore EPIPE. */
	signal(SIGPIPE, SIG_IGN);
	for (size_t done = 0; done < input_len;) {
		ssize_t n = write(in[1], input + done, input_len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	close(in[1]);
	signal(SIGPIPE, SIG_DFL);

	long long deadline = timeout ? now_ms() + timeout * 1000LL : 0;
	int status;
	for (;;) {
		pid_t r = waitpid(pid, &status, timeout ? WNOHANG : 0);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return fail(errno, "hook %s: wait", path);
		if (timeout && now_ms() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return failx(ETIMEDOUT, "hook %s: timed out after %us", path, timeout);
		}
		if (timeout)
			poll(NULL, 0, 5);
	}
	if (WIFSIGNALED(status))
		return failx(ECHILD, "hook %s: killed by signal %d", path, WTERMSIG(status));
	if (WEXITSTATUS(status) != 0)
		return failx(ECHILD, "hook %s: exit status %d", path, WEXITSTATUS(status));
	return 0;
}
