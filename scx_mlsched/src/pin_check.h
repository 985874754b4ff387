/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * pin_check.h - whether scx_mlsched may reuse what is pinned under --pin-dir.
 *
 * The loader, as root, takes the maps pinned there as its decision maps (table,
 * decisions, control, ...): whoever could put a map there decides what the scheduler
 * does. A plain BPF filesystem's root is 1777, so anyone may create a directory in it
 * first. The pin directory and each pin are taken only when, as mlsched-lite checks
 * its own pin directory, they are:
 *
 *   on a BPF filesystem (statfs magic BPF_FS_MAGIC), not a symbolic link,
 *   owned by root or this process's user, writable by neither group nor others,
 *   a directory (the pin directory) or a pinned object (a regular file of the BPF fs).
 *
 * Each is opened without following a link (O_PATH | O_NOFOLLOW) and checked through
 * that descriptor; the loader then gets the object through /proc/self/fd/N, the very
 * file checked, so nothing renamed in between is taken instead.
 *
 * Plain C with no BPF in it, so a host test (tests/kernel/test_scx_pin_check.py)
 * compiles it on its own with support/pin_check_driver.c.
 */
#ifndef MLSCHED_PIN_CHECK_H
#define MLSCHED_PIN_CHECK_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#ifndef O_PATH
#error "pin_check.h needs O_PATH: define _GNU_SOURCE before the first #include"
#endif

/* Room for a one-line reason: two paths and the fix. */
#define PIN_WHY_MAX		(3 * PATH_MAX)
/* Room for "/proc/self/fd/N". */
#define PIN_FD_PATH_MAX		32
/* Where mlsched-lite pins by default: the fix named for a directory on no BPF fs. */
#define PIN_DIR_EXAMPLE		"/sys/fs/bpf/mlsched"
/* Mode bits that let someone other than the owner change a directory or a pin. */
#define PIN_WRITABLE_BY_OTHERS	(S_IWGRP | S_IWOTH)

static inline int pin_fail(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return -1;
}

/*
 * The checks on fd, opened O_PATH | O_NOFOLLOW at `path` (the directory itself when
 * is_dir). 0, or -1 with why[] naming `path` and the fix.
 */
static inline int pin_trusted(int fd, const char *path, const char *dir, bool is_dir, char *why,
			      size_t len)
{
	struct statfs fs;
	struct stat st;

	if (fstat(fd, &st) || fstatfs(fd, &fs))
		return pin_fail(why, len, "%s: %s", path, strerror(errno));
	if (S_ISLNK(st.st_mode))
		return pin_fail(why, len, "%s is a symbolic link: give the pin directory itself,"
				" as `mlsched-lite run --pin --pin-dir %s` made it", path, dir);
	if (fs.f_type != BPF_FS_MAGIC)
		return pin_fail(why, len, "%s is not on a BPF filesystem: mount one (mount -t bpf"
				" bpf /sys/fs/bpf) and pin there: `mlsched-lite run --pin --pin-dir"
				" " PIN_DIR_EXAMPLE "`", path);
	if (st.st_uid != 0 && st.st_uid != geteuid())
		return pin_fail(why, len, "%s is owned by uid %u, not by root or this user (uid %u):"
				" remove %s and pin anew with `mlsched-lite run --pin --pin-dir %s`",
				path, (unsigned)st.st_uid, (unsigned)geteuid(), dir, dir);
	if (st.st_mode & PIN_WRITABLE_BY_OTHERS)
		return pin_fail(why, len, "%s is writable by group or others (mode %04o): remove %s"
				" and pin anew with `mlsched-lite run --pin --pin-dir %s`", path,
				(unsigned)(st.st_mode & 07777), dir, dir);
	if (is_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))
		return pin_fail(why, len, "%s is not %s: remove it and pin anew with `mlsched-lite"
				" run --pin --pin-dir %s`", path,
				is_dir ? "a directory" : "a pinned map", dir);
	return 0;
}

/* The pin directory, if it may be trusted: a descriptor for pin_open(), or -1 with why[]. */
static inline int pin_dir_open(const char *dir, char *why, size_t len)
{
	int fd = open(dir, O_PATH | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0) {
		if (errno == ENOENT)
			return pin_fail(why, len, "%s: nothing pinned there: start `mlsched-lite run"
					" --pin --pin-dir %s` first", dir, dir);
		return pin_fail(why, len, "%s: %s", dir, strerror(errno));
	}
	if (pin_trusted(fd, dir, dir, true, why, len)) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * `name` in the pin directory (dirfd from pin_dir_open(), `dir` its path), if it may be
 * trusted: an O_PATH descriptor on it for pin_fd_path(), or -1 with why[].
 */
static inline int pin_open(int dirfd, const char *dir, const char *name, char *why, size_t len)
{
	char path[PATH_MAX];
	int fd;

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
		return pin_fail(why, len, "%s: %s", dir, strerror(ENAMETOOLONG));
	fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return pin_fail(why, len, "%s: nothing pinned there: start `mlsched-lite run"
					" --pin --pin-dir %s` first", path, dir);
		return pin_fail(why, len, "%s: %s", path, strerror(errno));
	}
	if (pin_trusted(fd, path, dir, false, why, len)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* "/proc/self/fd/N" for a descriptor of pin_open(): the file checked, for bpf_obj_get(). */
static inline const char *pin_fd_path(int fd, char *buf, size_t len)
{
	snprintf(buf, len, "/proc/self/fd/%d", fd);
	return buf;
}

#endif /* MLSCHED_PIN_CHECK_H */
