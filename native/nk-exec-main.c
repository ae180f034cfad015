/*
 * nk-exec: the executor command the runtime spawns in container mode.
 *
 * Usage: nk-exec <syncFd>     (or: nk-exec --version)
 *
 * The work is in nk-exec.c (nk_execute); the guest agent links the same code.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nk-exec.h"

int main(int argc, char **argv)
{
	char *end;

	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("nk-exec %s\n", NK_VERSION);
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: nk-exec <syncFd> | --version\n");
		return 2;
	}
	errno = 0;
	long fd = strtol(argv[1], &end, 10);
	if (errno || *end || end == argv[1] || fd < 0 || fd > INT_MAX || nk_execute((int)fd) == 2) {
		fprintf(stderr, "nk-exec: %s is not an open file descriptor\n", argv[1]);
		return 2;
	}
	return 1;
}
