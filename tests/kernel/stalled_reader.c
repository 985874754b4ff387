// SPDX-License-Identifier: GPL-2.0-only
/*
 * stalled_reader.c - run stalled_reader.bpf.o's lookup on the maps pinned under a
 * directory, held at one step of mlsched_lookup() while the caller changes the table.
 *
 *   stalled_reader OBJ PIN_DIR STEP CPU IDLE BUSY SRC_LOAD DST_LOAD
 *
 * Prints "held" once the reader is held at STEP (at once "done" if it never got there),
 * waits for a line on stdin, lets the reader go and prints "DECISION LEVEL". Exit 0, or
 * 1 with one line on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "mlsched.h"

#define HOLD_WAIT_NS	(20ll * 1000 * 1000 * 1000)

struct gate {
	__u32 step, paused, released, timed_out;
	__u64 deadline_ns;
};

struct stalled_args {
	struct mlsched_features f;
	__u8 decision;
	__u8 level;
	__u8 _pad[2];
};

static struct stalled_args args;
static int prog_fd, run_err;
static volatile int finished;

static void die(const char *what)
{
	fprintf(stderr, "stalled_reader: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void *run(void *unused)
{
	LIBBPF_OPTS(bpf_test_run_opts, o, .ctx_in = &args, .ctx_size_in = sizeof(args));

	(void)unused;
	run_err = bpf_prog_test_run_opts(prog_fd, &o) ? -errno : (int)o.retval;
	__atomic_store_n(&finished, 1, __ATOMIC_RELEASE);
	return NULL;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	const struct timespec nap = { .tv_nsec = 1000000 };
	struct bpf_object *obj;
	struct bpf_map *map;
	char path[PATH_MAX], line[16];
	volatile struct gate *g;
	pthread_t t;
	long long end;
	int fd;

	if (argc != 9) {
		fprintf(stderr, "usage: %s OBJ PIN_DIR STEP CPU IDLE BUSY SRC DST\n", argv[0]);
		return 1;
	}
	libbpf_set_print(NULL);		/* the reason is one line below; no verifier log */
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj)
		die("open");
	bpf_object__for_each_map(map, obj) {
		if (bpf_map__is_internal(map) || !strcmp(bpf_map__name(map), "gate"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", argv[2], bpf_map__name(map));
		fd = bpf_obj_get(path);
		if (fd < 0)
			die(path);
		if (bpf_map__reuse_fd(map, fd))
			die("reuse");
		close(fd);
	}
	if (bpf_object__load(obj))
		die("load");
	prog_fd = bpf_program__fd(bpf_object__find_program_by_name(obj, "lookup"));
	map = bpf_object__find_map_by_name(obj, "gate");
	g = mmap(NULL, sysconf(_SC_PAGESIZE), PROT_READ | PROT_WRITE, MAP_SHARED,
		 bpf_map__fd(map), 0);
	if (g == MAP_FAILED)
		die("mmap gate");
	g->step = atoi(argv[3]);
	args.f.cpu = atoi(argv[4]);
	args.f.idle = atoi(argv[5]);
	args.f.busy = atoi(argv[6]);
	args.f.src_load = atoi(argv[7]);
	args.f.dst_load = atoi(argv[8]);
	if (pthread_create(&t, NULL, run, NULL))
		die("thread");
	end = now_ns() + HOLD_WAIT_NS;
	while (!g->paused && !__atomic_load_n(&finished, __ATOMIC_ACQUIRE) && now_ns() < end)
		nanosleep(&nap, NULL);
	printf("%s\n", g->paused ? "held" : "done");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		line[0] = '\0';
	g->released = 1;
	pthread_join(t, NULL);
	if (run_err) {
		errno = run_err < 0 ? -run_err : run_err;
		die("lookup");
	}
	if (g->timed_out) {
		fprintf(stderr, "stalled_reader: nobody let the reader go\n");
		return 1;
	}
	printf("%u %u\n", args.decision, args.level);
	bpf_object__close(obj);
	return 0;
}
