// SPDX-License-Identifier: GPL-2.0-only
/*
 * Drives scx_mlsched/src/pin_check.h for tests/kernel/test_scx_pin_check.py:
 *
 *   pin_check_driver DIR NAME...
 *
 * checks the pin directory DIR and each pinned NAME in it as scx_mlsched does before it
 * reuses the maps, then opens each one through the checked file itself (BPF_OBJ_GET on
 * /proc/self/fd/N, as the loader's bpf_obj_get() does) and prints "NAME: ok" for it.
 * Exits 0, 1 when something is refused (the reason on stderr), 2 for bad usage.
 */
#define _GNU_SOURCE	/* O_PATH */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/bpf.h>
#include "pin_check.h"

static int obj_get(const char *path)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (__u64)(unsigned long)path;
	return (int)syscall(SYS_bpf, BPF_OBJ_GET, &attr, sizeof(attr));
}

int main(int argc, char **argv)
{
	char why[PIN_WHY_MAX], path[PIN_FD_PATH_MAX];
	int dirfd, fd, obj;

	if (argc < 3)
		return 2;
	dirfd = pin_dir_open(argv[1], why, sizeof(why));
	if (dirfd < 0) {
		fprintf(stderr, "pin_check_driver: %s\n", why);
		return 1;
	}
	for (int i = 2; i < argc; i++) {
		fd = pin_open(dirfd, argv[1], argv[i], why, sizeof(why));
		if (fd < 0) {
			fprintf(stderr, "pin_check_driver: %s\n", why);
			return 1;
		}
		obj = obj_get(pin_fd_path(fd, path, sizeof(path)));
		close(fd);
		if (obj < 0) {
			fprintf(stderr, "pin_check_driver: %s/%s: %s\n", argv[1], argv[i],
				strerror(errno));
			return 1;
		}
		close(obj);
		printf("%s: ok\n", argv[i]);
	}
	close(dirfd);
	return 0;
}
