/*
 * WRITE_PROC_ATTR: set an LSM attribute of this process (the AppArmor
 * profile or SELinux label its next execve takes, the SELinux label of new
 * keys) through /proc/self/attr.
 *
 * The write happens in the container's mount namespace, after pivot_root,
 * where the container's own mounts decide what /proc/self/attr/exec is. A
 * bind mount of another procfs file over it (a sysctl, say) would pass a
 * plain "is it procfs" check and receive our write (CVE-2025-52881). So the
 * file is opened beneath a verified procfs root with openat2: no magic
 * links, no escaping the root, and no crossing into any other mount.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nk-exec.h"

#ifndef SYS_openat2
#define SYS_openat2 437 /* same number on x86_64 and aarch64 */
#endif

static int is_procfs(int fd, const char *what)
{
	struct statfs sfs;
	if (fstatfs(fd, &sfs) < 0)
		return fail(errno, "fstatfs %s", what);
	if (sfs.f_type != PROC_SUPER_MAGIC)
		return failx(EXDEV, "refusing to write %s: not on procfs (filesystem magic %#lx)", what,
			     (unsigned long)sfs.f_type);
	return 0;
}

int op_write_proc_attr(const struct op *op)
{
	const char *attr = op->arg[0];
	char path[PATH_MAX];

	if (!attr[0] || attr[0] == '/' || strstr(attr, ".."))
		return failx(EINVAL, "WRITE_PROC_ATTR attribute \"%s\" must be a path below /proc/self/attr", attr);
	snprintf(path, sizeof path, "self/attr/%s", attr);

	int proc = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (proc < 0)
		return fail(errno, "open /proc");
	if (is_procfs(proc, "/proc") < 0) {
		close(proc);
		return -1;
	}
	/* "self" is an ordinary symlink to "<pid>" inside the same mount;
	 * anything mounted over self/attr/<attr> is another mount: EXDEV. */
	struct open_how how = {
		.flags = O_WRONLY | O_CLOEXEC | O_NOFOLLOW,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS,
	};
	int fd;
	do
		fd = (int)syscall(SYS_openat2, proc, path, &how, sizeof how);
	while (fd < 0 && errno == EAGAIN);
	int err = errno;
	close(proc);
	if (fd < 0)
		return fail(err, "open /proc/%s", path);
	if (is_procfs(fd, path) < 0) {
		close(fd);
		return -1;
	}
	set_detail("/proc/%s", path);
	return write_content_and_close(fd, path, op->arg[1], op->len[1]);
}
