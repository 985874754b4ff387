/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * explore_file.h - the CSV file scx_mlsched's --explore-out appends rows to, so that
 * every row on disk is whole and under its own header.
 *
 * The file outlives a run: guest/run.sh appends run after run, and `mlsched-train
 * --labels outcome` refuses a file with a malformed line. Plain C with no BPF in it, so
 * a host test (tests/kernel/test_explore_file.py) compiles it on its own with
 * support/explore_file_driver.c.
 *
 *   explore_file_open()    created (mode 0644, the header written) when missing;
 *                          else appended to only when it is a regular file owned by
 *                          this user, with no other name, whose first line is the
 *                          header. Never through a symbolic link (root appending to
 *                          wherever a link in a shared directory points), never a
 *                          FIFO or device. A last row without its newline (a run
 *                          killed mid-row) is cut off first (`repaired` bytes).
 *   explore_file_append()  one row, one write; a write that fails or falls short is
 *                          cut back to the last whole row and counted (`lost`,
 *                          `errors`), never in `rows`. Serving goes on.
 *   explore_file_close()   close; explore_file_abandon() also removes a file this
 *                          process created and wrote no row to.
 */
#ifndef MLSCHED_EXPLORE_FILE_H
#define MLSCHED_EXPLORE_FILE_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Room for explore_file_open()'s one-line reason (it names the file). */
#define EXPLORE_FILE_WHY_MAX	(PATH_MAX + 256)
/* Bytes read per step back through the file when looking for its last newline. */
#define EXPLORE_FILE_SCAN	4096
/* Mode of a file explore_file_open() creates: readable as the training input it is. */
#define EXPLORE_FILE_MODE	0644

struct explore_file {
	int fd;
	bool created;			/* this process created the file */
	bool cut_pending;		/* a failed write's part may still be on disk */
	off_t size;			/* bytes on disk, whole lines only */
	off_t repaired;			/* bytes of a partial last row cut off at open */
	unsigned long long rows;	/* rows written by this process */
	unsigned long long lost;	/* rows a failed write could not store */
	unsigned long long errors;	/* failed writes */
	int first_errno;		/* errno of the first failed write; 0: none */
};

static inline int explore_file_fail(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return -1;
}

/* Write all of buf at the end, or cut the file back to x->size: -1 with errno then. */
static inline int explore_file_write(struct explore_file *x, const char *buf, size_t len)
{
	size_t done = 0;
	int err;

	if (x->cut_pending) {
		if (ftruncate(x->fd, x->size))
			return -1;
		x->cut_pending = false;
	}
	while (done < len) {
		ssize_t n = write(x->fd, buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? errno : ENOSPC;
			/* part of the row is on disk: cut it now, or before the next write */
			x->cut_pending = done > 0 && ftruncate(x->fd, x->size);
			errno = err;
			return -1;
		}
		done += n;
	}
	x->size += len;
	return 0;
}

/* The first line must be `header` (the whole header, newline included). */
static inline bool explore_file_has_header(int fd, const char *header)
{
	size_t hlen = strlen(header);
	char buf[EXPLORE_FILE_SCAN];

	if (hlen > sizeof(buf))
		return false;
	return pread(fd, buf, hlen, 0) == (ssize_t)hlen && !memcmp(buf, header, hlen);
}

/* Cut a last row that has no newline back to the end of the last whole line. */
static inline int explore_file_repair(struct explore_file *x)
{
	char buf[EXPLORE_FILE_SCAN];
	off_t keep = x->size;
	ssize_t n = pread(x->fd, buf, 1, x->size - 1);

	if (n != 1)
		goto io;
	if (buf[0] == '\n')
		return 0;
	while (keep > 0) {
		off_t start = keep > (off_t)sizeof(buf) ? keep - (off_t)sizeof(buf) : 0;
		n = pread(x->fd, buf, keep - start, start);
		if (n != keep - start)
			goto io;
		while (n > 0 && buf[n - 1] != '\n')
			n--;
		if (n > 0) {
			keep = start + n;
			break;
		}
		keep = start;
	}
	if (ftruncate(x->fd, keep))
		return -1;
	x->repaired = x->size - keep;
	x->size = keep;
	return 0;
io:
	if (n >= 0)
		errno = EIO;	/* shorter than fstat said */
	return -1;
}

/*
 * Open `path` for rows under `header` (its first line, newline included). 0, or -1 with
 * the reason in why[] as one line naming the path; nothing is left behind then.
 */
static inline int explore_file_open(struct explore_file *x, const char *path, const char *header,
				    char *why, size_t len)
{
	const int flags = O_RDWR | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
	struct stat st;
	int err, fl;

	memset(x, 0, sizeof(*x));
	x->fd = open(path, flags | O_CREAT | O_EXCL, EXPLORE_FILE_MODE);
	x->created = x->fd >= 0;
	if (x->fd < 0 && errno == EEXIST)
		x->fd = open(path, flags);
	if (x->fd < 0) {
		if (errno == ELOOP)
			return explore_file_fail(why, len, "%s: is a symbolic link", path);
		if (errno == EISDIR || errno == ENXIO)
			return explore_file_fail(why, len, "%s: not a regular file", path);
		return explore_file_fail(why, len, "%s: %s", path, strerror(errno));
	}
	if (fstat(x->fd, &st)) {
		explore_file_fail(why, len, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		explore_file_fail(why, len, "%s: not a regular file", path);
		goto fail;
	}
	if (!x->created && st.st_uid != geteuid()) {
		explore_file_fail(why, len, "%s: owned by uid %u, not by this user (uid %u); refusing"
				  " to append to it", path, (unsigned)st.st_uid, (unsigned)geteuid());
		goto fail;
	}
	if (!x->created && st.st_nlink > 1) {
		explore_file_fail(why, len, "%s: has %lu hard links; refusing to append to a file"
				  " that other names share", path, (unsigned long)st.st_nlink);
		goto fail;
	}
	if ((x->created && fchmod(x->fd, EXPLORE_FILE_MODE)) ||
	    (fl = fcntl(x->fd, F_GETFL)) < 0 || fcntl(x->fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
		explore_file_fail(why, len, "%s: %s", path, strerror(errno));
		goto fail;
	}
	x->size = st.st_size;
	if (x->size && !explore_file_has_header(x->fd, header)) {
		explore_file_fail(why, len, "%s: its header is not this version's (%.*s); write to"
				  " a new file", path, (int)strcspn(header, "\n"), header);
		goto fail;
	}
	if (x->size && explore_file_repair(x)) {
		explore_file_fail(why, len, "%s: cannot cut its partial last row: %s", path,
				  strerror(errno));
		goto fail;
	}
	if (!x->size && explore_file_write(x, header, strlen(header))) {
		explore_file_fail(why, len, "%s: cannot write the header: %s", path,
				  strerror(errno));
		goto fail;
	}
	return 0;
fail:
	err = errno;
	close(x->fd);
	if (x->created)
		unlink(path);
	x->fd = -1;
	errno = err;
	return -1;
}

/* One whole row (newline included). 0, or -1 (counted; errno set) when it is not on disk. */
static inline int explore_file_append(struct explore_file *x, const char *row, size_t len)
{
	if (explore_file_write(x, row, len)) {
		if (!x->errors++)
			x->first_errno = errno;
		x->lost++;
		return -1;
	}
	x->rows++;
	return 0;
}

/* Close: 0, or -1 with errno (a delayed write error). */
static inline int explore_file_close(struct explore_file *x)
{
	int rc = 0;

	if (x->cut_pending && ftruncate(x->fd, x->size))
		rc = -1;
	if (close(x->fd))
		rc = -1;
	x->fd = -1;
	return rc;
}

/* Close without a run: a file this process created and wrote no row to goes again. */
static inline void explore_file_abandon(struct explore_file *x, const char *path)
{
	close(x->fd);
	x->fd = -1;
	if (x->created && !x->rows)
		unlink(path);
}

#endif /* MLSCHED_EXPLORE_FILE_H */
