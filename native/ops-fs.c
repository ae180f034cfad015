/*
 * Ops that build the container's filesystem view: mounts, device nodes,
 * symlinks, pivot_root, masked and read-only paths.
 *
 * Paths inside the rootfs are never joined as host strings: a container
 * image controls every symlink in its rootfs and could point one at the
 * host. Instead each path is resolved with openat2(RESOLVE_IN_ROOT), which
 * treats the rootfs as "/" for absolute symlinks and "..", and the syscall
 * acts on the resulting fd through /proc/self/fd/N, so a symlink swapped in
 * after the check cannot redirect it (CVE-2021-30465).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "nk-exec.h"

#ifndef SYS_openat2
#define SYS_openat2 437 /* same number on x86_64 and aarch64 */
#endif

enum create_kind { CREATE_NONE, CREATE_DIR, CREATE_FILE };

static int openat2_path(int dirfd, const char *path, unsigned long long resolve)
{
	struct open_how how = {.flags = O_PATH | O_CLOEXEC, .mode = 0, .resolve = resolve};
	int fd, tries = 0;
	/* EAGAIN: a rename or mount raced a ".." lookup; the kernel asks us to retry. */
	do
		fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
	while (fd < 0 && errno == EAGAIN && ++tries < 32);
	return fd;
}

/*
 * Open path O_PATH inside the tree at rootfd. Missing components are
 * created one at a time with mkdirat on the fd of their (already resolved)
 * parent; the last one as create says. strict: no symlinks at all.
 * Returns the fd, or -1 with errno set.
 */
static int open_in_root(int rootfd, const char *path, enum create_kind create, int strict)
{
	unsigned long long resolve =
		RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | (strict ? RESOLVE_NO_SYMLINKS : 0);
	char prefix[PATH_MAX], name[NAME_MAX + 1];
	size_t plen = 0;

	int fd = openat2_path(rootfd, path, resolve);
	if (fd >= 0 || errno != ENOENT || create == CREATE_NONE)
		return fd;

	int parent = openat2_path(rootfd, "/", resolve);
	for (const char *p = path; parent >= 0;) {
		while (*p == '/')
			p++;
		if (!*p)
			return parent;
		size_t n = strcspn(p, "/");
		const char *next = p + n + strspn(p + n, "/");
		if (n > NAME_MAX || plen + n + 2 > sizeof prefix) {
			close(parent);
			errno = ENAMETOOLONG;
			return -1;
		}
		memcpy(name, p, n);
		name[n] = 0;
		prefix[plen++] = '/';
		memcpy(prefix + plen, p, n);
		plen += n;
		prefix[plen] = 0;

		fd = openat2_path(rootfd, prefix, resolve);
		if (fd < 0 && errno == ENOENT) {
			int r;
			if (*next || create == CREATE_DIR) {
				r = mkdirat(parent, name, 0755);
			} else {
				/* O_EXCL: never follow a dangling symlink out of the rootfs. */
				r = openat(parent, name, O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
				if (r >= 0)
					r = close(r);
			}
			/* EEXIST: someone else created it, or it is a dangling
			 * symlink; the lookup below tells which. */
			if (r < 0 && errno != EEXIST) {
				int err = errno;
				close(parent);
				errno = err;
				return -1;
			}
			fd = openat2_path(rootfd, prefix, resolve);
		}
		int err = errno;
		close(parent);
		errno = err;
		parent = fd;
		p = next;
	}
	return -1;
}

/* Resolve dest in rootfs; on failure record a message naming both. */
static int resolve_in_root(const char *rootfs, const char *dest, enum create_kind create, int strict,
			   const char *action)
{
	int rootfd = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		return fail(errno, "%s: open rootfs %s", action, rootfs);
	int fd = open_in_root(rootfd, dest, create, strict);
	int err = errno;
	close(rootfd);
	if (fd < 0)
		return fail(err, "%s: resolve %s inside rootfs %s%s", action, dest, rootfs,
			    strict && err == ELOOP ? " (symlinks are not allowed here)" : "");
	return fd;
}

/* The detail of an ok line: where the fd really is, for --trace. */
static void detail_fd_location(int fd)
{
	char link[32], where[PATH_MAX];
	ssize_t n = readlink(fd_path(fd, link), where, sizeof where - 1);
	if (n > 0) {
		where[n] = 0;
		set_detail("%s", where);
	}
}

/* Flags the kernel may have locked on a mount (a user namespace cannot clear
 * them); a bind remount must repeat them or fail with EPERM. */
static unsigned long locked_flags(int fd, unsigned long requested)
{
	struct statvfs sv;
	unsigned long keep = 0;
	if (fstatvfs(fd, &sv) < 0)
		return 0;
	if (sv.f_flag & ST_NOSUID)
		keep |= MS_NOSUID;
	if (sv.f_flag & ST_NODEV)
		keep |= MS_NODEV;
	if (sv.f_flag & ST_NOEXEC)
		keep |= MS_NOEXEC;
	if (!(requested & (MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME))) {
		if (sv.f_flag & ST_NOATIME)
			keep |= MS_NOATIME;
		if (sv.f_flag & ST_NODIRATIME)
			keep |= MS_NODIRATIME;
		if (sv.f_flag & ST_RELATIME)
			keep |= MS_RELATIME;
	}
	return keep;
}

static int parse_create(const char *s, enum create_kind *out)
{
	if (strcmp(s, "dir") == 0)
		*out = CREATE_DIR;
	else if (strcmp(s, "file") == 0)
		*out = CREATE_FILE;
	else if (strcmp(s, "none") == 0 || !*s)
		*out = CREATE_NONE;
	else
		return failx(EINVAL, "create must be dir, file or none, not \"%s\"", s);
	return 0;
}

static int mount_in_root(const char *rootfs, const char *dest, const char *source, const char *fstype,
			 unsigned long flags, const char *data, enum create_kind create, int strict)
{
	char what[PATH_MAX + 16], action[2 * PATH_MAX + 64], tbuf[32], sbuf[32];
	int src = -1, r, err;

	if (flags & MS_BIND)
		snprintf(what, sizeof what, "bind %s", *source ? source : "(none)");
	else
		snprintf(what, sizeof what, "%s", *fstype ? fstype : *source ? source : "(propagation)");
	snprintf(action, sizeof action, "mount %s on %s (%s%s)", what, dest, rootfs, dest);

	int target = resolve_in_root(rootfs, dest, create, strict, action);
	if (target < 0)
		return -1;
	if (strict) {
		/* proc and sysfs must land on a real directory, never on a
		 * file or symlink the image planted (CVE-2019-16884). */
		struct stat st;
		if (fstat(target, &st) < 0 || !S_ISDIR(st.st_mode)) {
			close(target);
			return failx(ENOTDIR, "%s: target is not a directory", action);
		}
	}
	/* A host bind source is pinned by fd too, so the mount gets exactly
	 * the file that was opened. */
	if ((flags & MS_BIND) && *source) {
		src = open(source, O_PATH | O_CLOEXEC);
		if (src < 0) {
			err = errno;
			close(target);
			return fail(err, "%s: open source", action);
		}
	}
	r = mount(src >= 0 ? fd_path(src, sbuf) : *source ? source : NULL, fd_path(target, tbuf),
		  *fstype ? fstype : NULL, flags, *data ? data : NULL);
	err = errno;
	if (r == 0)
		detail_fd_location(target);
	close(target);
	if (src >= 0)
		close(src);
	if (r < 0)
		return fail(err, "%s", action);
	return 0;
}

/* ------------------------------------------------------------------- ops */

int op_mount(const struct op *op)
{
	const char *source = op->arg[0], *target = op->arg[1], *fstype = op->arg[2], *data = op->arg[4];
	if (mount(*source ? source : NULL, target, *fstype ? fstype : NULL, (unsigned long)op->num[3],
		  *data ? data : NULL) < 0)
		return fail(errno, "mount %s on %s (flags %#llx)",
			    *fstype ? fstype : *source ? source : "(propagation)", target,
			    (unsigned long long)op->num[3]);
	return 0;
}

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

/* The detached tree between OPEN_TREE and MOVE_MOUNT (one at a time). */
static int held_tree = -1;

int op_open_tree(const struct op *op)
{
	if (held_tree >= 0)
		return failx(EBUSY, "open_tree %s: a detached tree is already held", op->arg[0]);
	held_tree = (int)syscall(SYS_open_tree, AT_FDCWD, op->arg[0],
				 OPEN_TREE_CLONE | AT_RECURSIVE | O_CLOEXEC);
	if (held_tree < 0)
		return fail(errno, "open_tree %s", op->arg[0]);
	return 0;
}

int op_move_mount(const struct op *op)
{
	if (held_tree < 0)
		return failx(EINVAL, "move_mount to %s: no tree held (OPEN_TREE first)", op->arg[0]);
	int r = (int)syscall(SYS_move_mount, held_tree, "", AT_FDCWD, op->arg[0], MOVE_MOUNT_F_EMPTY_PATH);
	int err = errno;
	close(held_tree);
	held_tree = -1;
	if (r < 0)
		return fail(err, "move_mount to %s", op->arg[0]);
	return 0;
}

int op_umount(const struct op *op)
{
	if (umount2(op->arg[0], MNT_DETACH | UMOUNT_NOFOLLOW) < 0)
		return fail(errno, "umount %s", op->arg[0]);
	return 0;
}

int op_mount_in_root(const struct op *op)
{
	enum create_kind create = CREATE_NONE;
	if (parse_create(op->arg[6], &create) < 0)
		return -1;
	return mount_in_root(op->arg[0], op->arg[1], op->arg[2], op->arg[3], (unsigned long)op->num[4],
			     op->arg[5], create, strcmp(op->arg[7], "1") == 0);
}

int op_remount_in_root(const struct op *op)
{
	char action[2 * PATH_MAX + 64], buf[32];
	unsigned long flags = (unsigned long)op->num[2];
	snprintf(action, sizeof action, "remount %s (%s%s) with flags %#lx", op->arg[1], op->arg[0],
		 op->arg[1], flags);
	int fd = resolve_in_root(op->arg[0], op->arg[1], CREATE_NONE, 0, action);
	if (fd < 0)
		return -1;
	flags |= MS_REMOUNT | MS_BIND | locked_flags(fd, flags);
	int r = mount(NULL, fd_path(fd, buf), NULL, flags, NULL);
	int err = errno;
	close(fd);
	if (r < 0)
		return fail(err, "%s", action);
	return 0;
}

/* Split "a/b/c" into its parent "a/b" (into dir) and last component "c". */
static const char *split_last(const char *path, char dir[PATH_MAX])
{
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	size_t dlen = slash ? (size_t)(slash - path) : 0;
	if (dlen >= PATH_MAX)
		dlen = PATH_MAX - 1;
	memcpy(dir, path, dlen);
	dir[dlen] = 0;
	if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
		return NULL;
	return base;
}

int op_mknod_in_root(const struct op *op)
{
	const char *rootfs = op->arg[0], *path = op->arg[1], *type = op->arg[2];
	char dir[PATH_MAX], action[2 * PATH_MAX + 64];
	dev_t dev = makedev((unsigned)op->num[3], (unsigned)op->num[4]);
	mode_t kind;
	struct stat st;

	if (strcmp(type, "c") == 0 || strcmp(type, "u") == 0)
		kind = S_IFCHR;
	else if (strcmp(type, "b") == 0)
		kind = S_IFBLK;
	else if (strcmp(type, "p") == 0)
		kind = S_IFIFO, dev = 0;
	else
		return failx(EINVAL, "mknod %s: device type must be c, u, b or p, not \"%s\"", path, type);
	snprintf(action, sizeof action, "mknod %s (%s %s:%s) in %s", path, type, op->arg[3], op->arg[4],
		 rootfs);
	const char *base = split_last(path, dir);
	if (!base)
		return failx(EINVAL, "%s: path has no file name", action);
	int parent = resolve_in_root(rootfs, *dir ? dir : "/", CREATE_DIR, 0, action);
	if (parent < 0)
		return -1;

	/* The mode is exact, not filtered by our umask. */
	mode_t old = umask(0);
	int r = mknodat(parent, base, kind | ((mode_t)op->num[5] & 07777), dev);
	int err = errno;
	umask(old);
	if (r < 0 && err == EEXIST) {
		if (fstatat(parent, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && (st.st_mode & S_IFMT) == kind &&
		    (kind == S_IFIFO || st.st_rdev == dev)) {
			set_detail("exists");
			r = 0;
		} else {
			close(parent);
			return failx(EEXIST, "%s: a different file already exists there", action);
		}
	}
	if (r == 0 && fchownat(parent, base, (uid_t)op->num[6], (gid_t)op->num[7], AT_SYMLINK_NOFOLLOW) < 0) {
		err = errno;
		r = -1;
		snprintf(action + strlen(action), sizeof action - strlen(action), ": chown %s:%s", op->arg[6],
			 op->arg[7]);
	}
	close(parent);
	if (r < 0)
		return fail(err, "%s", action);
	return 0;
}

/* Devices in a user namespace: mknod is not allowed there, a bind is. */
int op_bind_device_in_root(const struct op *op)
{
	return mount_in_root(op->arg[0], op->arg[1], op->arg[2], "", MS_BIND, "", CREATE_FILE, 0);
}

int op_symlink_in_root(const struct op *op)
{
	const char *rootfs = op->arg[0], *target = op->arg[1], *link = op->arg[2];
	char dir[PATH_MAX], action[2 * PATH_MAX + 64];
	snprintf(action, sizeof action, "symlink %s -> %s in %s", link, target, rootfs);
	const char *base = split_last(link, dir);
	if (!base)
		return failx(EINVAL, "%s: path has no file name", action);
	int parent = resolve_in_root(rootfs, *dir ? dir : "/", CREATE_DIR, 0, action);
	if (parent < 0)
		return -1;
	int r = symlinkat(target, parent, base);
	int err = errno;
	close(parent);
	if (r < 0 && err == EEXIST) {
		set_detail("exists");
		return 0;
	}
	if (r < 0)
		return fail(err, "%s", action);
	return 0;
}

/*
 * pivot_root(".", ".") stacks the old root on top of the new one; after
 * fchdir to the old root we detach it. MS_SLAVE first, so the detach does
 * not propagate into the host's mount namespace.
 */
int op_pivot_root(const struct op *op)
{
	const char *rootfs = op->arg[0];
	int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (oldroot < 0)
		return fail(errno, "pivot_root: open old root /");
	int newroot = open(rootfs, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (newroot < 0) {
		int err = errno;
		close(oldroot);
		return fail(err, "pivot_root: open rootfs %s", rootfs);
	}
	const char *step = "chdir to rootfs";
	if (fchdir(newroot) < 0)
		goto fail;
	step = "pivot_root";
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		goto fail;
	step = "chdir to the old root";
	if (fchdir(oldroot) < 0)
		goto fail;
	step = "make the old root a slave";
	if (mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL) < 0)
		goto fail;
	step = "detach the old root";
	if (umount2(".", MNT_DETACH) < 0)
		goto fail;
	step = "chdir /";
	if (chdir("/") < 0)
		goto fail;
	close(oldroot);
	close(newroot);
	return 0;
fail:;
	int err = errno;
	close(oldroot);
	close(newroot);
	return fail(err, "pivot_root into %s: %s", rootfs, step);
}

/* --no-pivot: move the rootfs mount over / and chroot into it. */
int op_chroot(const struct op *op)
{
	const char *rootfs = op->arg[0];
	if (chdir(rootfs) < 0)
		return fail(errno, "chroot: chdir %s", rootfs);
	if (mount(rootfs, "/", NULL, MS_MOVE, NULL) < 0)
		return fail(errno, "chroot: move mount %s to /", rootfs);
	if (chroot(".") < 0)
		return fail(errno, "chroot %s", rootfs);
	if (chdir("/") < 0)
		return fail(errno, "chroot: chdir /");
	return 0;
}

/* Open an existing path for a mask/readonly op; 1 = absent (not an error). */
static int open_existing(const char *path, int flags, int *fd, const char *action)
{
	*fd = open(path, O_PATH | O_CLOEXEC | flags);
	if (*fd >= 0)
		return 0;
	if (errno == ENOENT) {
		set_detail("absent");
		return 1;
	}
	return fail(errno, "%s %s: open", action, path);
}

int op_mask_path(const struct op *op)
{
	const char *path = op->arg[0];
	char tbuf[32], nbuf[32];
	struct stat st;
	int target, null = -1, r;

	if ((r = open_existing(path, O_NOFOLLOW, &target, "mask")) != 0)
		return r < 0 ? -1 : 0;
	if (fstat(target, &st) < 0) {
		r = errno;
		close(target);
		return fail(r, "mask %s: stat", path);
	}
	if (S_ISDIR(st.st_mode)) {
		r = mount("tmpfs", fd_path(target, tbuf), "tmpfs", MS_RDONLY, NULL);
	} else {
		/* The container could have replaced /dev/null with a link to
		 * a host file, turning the mask into a bind of that file
		 * (CVE-2025-31133): only the real null device will do. */
		struct stat ns;
		null = open("/dev/null", O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (null < 0 || fstat(null, &ns) < 0) {
			r = errno;
			close(target);
			if (null >= 0)
				close(null);
			return fail(r, "mask %s: open /dev/null", path);
		}
		if (!S_ISCHR(ns.st_mode) || ns.st_rdev != makedev(1, 3)) {
			close(target);
			close(null);
			return failx(EPERM, "mask %s: /dev/null is not the null device (char 1:3)", path);
		}
		r = mount(fd_path(null, nbuf), fd_path(target, tbuf), NULL, MS_BIND, NULL);
	}
	int err = errno;
	close(target);
	if (null >= 0)
		close(null);
	if (r < 0)
		return fail(err, "mask %s: mount %s", path, S_ISDIR(st.st_mode) ? "tmpfs" : "/dev/null");
	return 0;
}

/* Remount the mount on top of path read-only, keeping its locked flags. */
static int remount_ro(const char *path, const char *action)
{
	char buf[32];
	int fd, r;
	if ((r = open_existing(path, 0, &fd, action)) != 0)
		return r < 0 ? -1 : 0;
	r = mount(NULL, fd_path(fd, buf), NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | locked_flags(fd, MS_RDONLY),
		  NULL);
	int err = errno;
	close(fd);
	if (r < 0)
		return fail(err, "%s %s: remount read-only", action, path);
	return 0;
}

int op_readonly_path(const struct op *op)
{
	const char *path = op->arg[0];
	char buf[32];
	int fd, r;
	if ((r = open_existing(path, 0, &fd, "readonly")) != 0)
		return r < 0 ? -1 : 0;
	r = mount(fd_path(fd, buf), buf, NULL, MS_BIND | MS_REC, NULL);
	int err = errno;
	close(fd);
	if (r < 0)
		return fail(err, "readonly %s: bind onto itself", path);
	/* The old fd still names the mount below the new bind: reopen. */
	return remount_ro(path, "readonly");
}

int op_remount_ro(const struct op *op)
{
	return remount_ro(op->arg[0], "remount");
}
