// SPDX-License-Identifier: GPL-2.0-only
/*
 * Drives scx_mlsched/src/report_file.h for tests/kernel/test_report_file.py: prints its pid, waits
 * for a line on stdin (the test prepares the directory meanwhile), then writes
 * "{"ok": 1}" to argv[1] and exits 0, or prints the error and exits 1.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "report_file.h"

static int fill(FILE *f, void *arg)
{
	(void)arg;
	return fputs("{\"ok\": 1}\n", f) < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
	char line[16];

	if (argc != 2)
		return 2;
	printf("%d\n", (int)getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 2;
	if (report_file_write(argv[1], fill, NULL)) {
		fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	return 0;
}
