// SPDX-License-Identifier: GPL-2.0-only
/*
 * Drives scx_mlsched/src/cpus.h for tests/kernel/test_scx_cpus.py:
 *
 *   cpus_driver FILE MAX
 *
 * reads FILE as a sysfs CPU list (as scx_mlsched reads /sys/devices/system/cpu/online)
 * and prints "count=N highest=N low=0x..." and then "nr_cpus=N", the CPU count a
 * scheduler handling at most MAX CPUs runs with. Exits 0, 1 when the list is refused
 * or the CPUs do not fit (the reason on stderr), 2 for bad usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpus.h"

int main(int argc, char **argv)
{
	char why[CPUS_WHY_MAX];
	struct cpulist l;
	int n;

	if (argc != 3)
		return 2;
	if (cpulist_read(argv[1], &l)) {
		fprintf(stderr, "cpus_driver: %s: %s\n", argv[1],
			errno == EINVAL ? "not a CPU list" : strerror(errno));
		return 1;
	}
	printf("count=%u highest=%u low=%#llx\n", l.count, l.highest, (unsigned long long)l.low);
	n = cpulist_numbered_from_0(&l, strtoul(argv[2], NULL, 10), why, sizeof(why));
	if (n < 0) {
		fprintf(stderr, "cpus_driver: %s\n", why);
		return 1;
	}
	printf("nr_cpus=%d\n", n);
	return 0;
}
