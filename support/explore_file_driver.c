// SPDX-License-Identifier: GPL-2.0-only
/*
 * Drives scx_mlsched/src/explore_file.h for tests/kernel/test_explore_file.py:
 *
 *   explore_file_driver FILE HEADER [FSIZE]
 *
 * opens FILE for rows under the first line HEADER (given without its newline), as
 * scx_mlsched's --explore-out does, appends every line read from stdin as one row, and
 * prints "rows=N lost=N repaired=N created=0|1" on stdout. FSIZE caps the size of any
 * file this process writes (RLIMIT_FSIZE), so writes past it fail as on a full disk.
 * Exits 0, 1 when the file is refused (the reason on stderr), 2 for bad usage.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "explore_file.h"

#define ROW_MAX 4096

int main(int argc, char **argv)
{
	char header[ROW_MAX], row[ROW_MAX], why[EXPLORE_FILE_WHY_MAX];
	struct explore_file x;

	if (argc < 3 || argc > 4 ||
	    snprintf(header, sizeof(header), "%s\n", argv[2]) >= (int)sizeof(header))
		return 2;
	if (argc == 4) {
		struct rlimit lim = { strtoul(argv[3], NULL, 10), RLIM_INFINITY };

		lim.rlim_max = lim.rlim_cur;
		signal(SIGXFSZ, SIG_IGN);	/* a write past the limit fails with EFBIG */
		if (setrlimit(RLIMIT_FSIZE, &lim))
			return 2;
	}
	if (explore_file_open(&x, argv[1], header, why, sizeof(why))) {
		fprintf(stderr, "explore_file_driver: %s\n", why);
		return 1;
	}
	if (x.repaired)
		fprintf(stderr, "explore_file_driver: %s: cut a partial last row (%lld bytes)\n",
			argv[1], (long long)x.repaired);
	while (fgets(row, sizeof(row), stdin))
		if (explore_file_append(&x, row, strlen(row)) && x.errors == 1)
			fprintf(stderr, "explore_file_driver: %s: %s\n", argv[1],
				strerror(x.first_errno));
	printf("rows=%llu lost=%llu repaired=%lld created=%d\n", x.rows, x.lost,
	       (long long)x.repaired, x.created);
	return explore_file_close(&x) ? 1 : 0;
}
