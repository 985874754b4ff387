/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * report_file.h - write a small report file so that it appears whole or not at all.
 *
 * Used by scx_mlsched's report (-o FILE); plain C with no BPF in it, so a host test
 * (tests/kernel/test_report_file.py) compiles it on its own. The caller's `fill`
 * writes the content into the FILE it is handed and returns 0, or -1 on failure.
 */
#ifndef MLSCHED_REPORT_FILE_H
#define MLSCHED_REPORT_FILE_H

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

typedef int (*report_fill_fn)(FILE *f, void *arg);

/*
 * Write next to `path` and rename into place. The temporary file is made by mkstemp()
 * in the target's directory: a fresh name, created exclusively, never through a link
 * planted by another user (a fixed <path>.tmp.<pid> in /tmp could be one). Mode 0644.
 * Returns 0, or -1 with errno set; nothing is left behind on failure.
 */
static inline int report_file_write(const char *path, report_fill_fn fill, void *arg)
{
	char tmp[PATH_MAX];
	int fd, bad, err;
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= (int)sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = mkstemp(tmp);
	if (fd < 0)
		return -1;
	if (fchmod(fd, 0644) || !(f = fdopen(fd, "w"))) {
		int err = errno;

		close(fd);
		unlink(tmp);
		errno = err;
		return -1;
	}
	bad = fill(f, arg) || fflush(f) || fsync(fileno(f));
	err = errno;
	if (fclose(f) && !bad) {
		bad = 1;
		err = errno;
	}
	if (!bad && rename(tmp, path)) {
		bad = 1;
		err = errno;
	}
	if (bad) {
		unlink(tmp);
		errno = err;
		return -1;
	}
	return 0;
}

#endif /* MLSCHED_REPORT_FILE_H */
