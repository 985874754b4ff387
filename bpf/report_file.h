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
#include <string.h>
#include <unistd.h>

typedef int (*report_fill_fn)(FILE *f, void *arg);

/* Write next to `path` and rename into place. Returns 0, or -1 with errno set. */
static inline int report_file_write(const char *path, report_fill_fn fill, void *arg)
{
	char tmp[PATH_MAX];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, getpid());
	f = fopen(tmp, "w");
	if (!f)
		return -1;
	if (fill(f, arg) || fflush(f) || fsync(fileno(f)) || fclose(f) || rename(tmp, path)) {
		int err = errno;

		unlink(tmp);
		errno = err;
		return -1;
	}
	return 0;
}

#endif /* MLSCHED_REPORT_FILE_H */
