// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlsched-workload - a parallel CPU/IO mix with a fixed amount of work.
 *
 * Forks --workers processes. Each does --units units of work: a compute burst
 * of --spin iterations, then a short block (--sleep-us, standing in for I/O).
 * Even workers are compute-heavy (they block after every 8th unit), odd
 * workers block after every unit. The work is fixed, so the makespan (first
 * fork to last exit) measures how well the scheduler keeps the CPUs busy.
 *
 * CPU migrations and context switches come from software perf counters
 * opened on the parent with inherit=1: the kernel folds every worker's
 * counts into them when it exits, whatever scheduling class ran it.
 *
 * Prints one JSON object on stdout.
 */
#include <errno.h>
#include <getopt.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROG "mlsched-workload"
#define MAX_WORKERS 256
/* Compute-heavy workers block once per this many units. */
#define HEAVY_BLOCK_EVERY 8

static int die(const char *msg, const char *arg)
{
	fprintf(stderr, PROG ": %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
	exit(2);
}

static long num(const char *s, const char *what, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, PROG ": %s: expected an integer in %ld..%ld, got '%s'\n",
			what, lo, hi, s);
		exit(2);
	}
	return v;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int sw_counter(__u64 config)
{
	struct perf_event_attr a;

	memset(&a, 0, sizeof(a));
	a.type = PERF_TYPE_SOFTWARE;
	a.size = sizeof(a);
	a.config = config;
	a.inherit = 1;
	a.disabled = 0;
	return syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
}

static long long read_counter(int fd)
{
	uint64_t v;

	if (fd < 0 || read(fd, &v, sizeof(v)) != sizeof(v))
		return -1;
	return (long long)v;
}

static void worker(int idx, long units, long spin, long sleep_us)
{
	struct timespec pause = { sleep_us / 1000000, (sleep_us % 1000000) * 1000 };
	volatile uint64_t x = idx + 1;

	for (long u = 0; u < units; u++) {
		for (long i = 0; i < spin; i++)
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		if (sleep_us && (idx % 2 || u % HEAVY_BLOCK_EVERY == HEAVY_BLOCK_EVERY - 1))
			nanosleep(&pause, NULL);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "workers", required_argument, NULL, 'w' },
		{ "units", required_argument, NULL, 'u' },
		{ "spin", required_argument, NULL, 'c' },
		{ "sleep-us", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	long workers = 8, units = 200, spin = 200000, sleep_us = 500;
	double t0, t1, worker_s[MAX_WORKERS];
	pid_t pids[MAX_WORKERS];
	int c, mig_fd, cs_fd, failed = 0;

	while ((c = getopt_long(argc, argv, "w:u:c:s:h", opts, NULL)) != -1) {
		switch (c) {
		case 'w': workers = num(optarg, "--workers", 1, MAX_WORKERS); break;
		case 'u': units = num(optarg, "--units", 1, 1000000); break;
		case 'c': spin = num(optarg, "--spin", 0, 1000000000); break;
		case 's': sleep_us = num(optarg, "--sleep-us", 0, 1000000); break;
		case 'h':
			printf("Usage: " PROG " [-w WORKERS] [-u UNITS] [-c SPIN] [-s SLEEP_US]\n"
			       "Fixed parallel CPU/IO work; prints makespan, migrations, context\n"
			       "switches as JSON. Defaults: -w 8 -u 200 -c 200000 -s 500.\n");
			return 0;
		default:
			return 2;
		}
	}
	if (optind < argc)
		die("unexpected argument", argv[optind]);

	mig_fd = sw_counter(PERF_COUNT_SW_CPU_MIGRATIONS);
	cs_fd = sw_counter(PERF_COUNT_SW_CONTEXT_SWITCHES);
	if (mig_fd < 0)
		die("perf_event_open(CPU_MIGRATIONS) failed", strerror(errno));

	t0 = now_s();
	for (int i = 0; i < workers; i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork failed", strerror(errno));
		if (pids[i] == 0)
			worker(i, units, spin, sleep_us);
	}
	for (int done = 0; done < workers; done++) {
		int status;
		pid_t pid = wait(&status);

		if (pid < 0)
			die("wait failed", strerror(errno));
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			failed++;
		for (int i = 0; i < workers; i++)
			if (pids[i] == pid)
				worker_s[i] = now_s() - t0;
	}
	t1 = now_s();

	printf("{\"makespan_s\": %.4f, \"migrations\": %lld, \"context_switches\": %lld, "
	       "\"workers\": %ld, \"units\": %ld, \"spin\": %ld, \"sleep_us\": %ld, "
	       "\"failed\": %d, \"worker_s\": [", t1 - t0, read_counter(mig_fd),
	       read_counter(cs_fd), workers, units, spin, sleep_us, failed);
	for (int i = 0; i < workers; i++)
		printf("%s%.3f", i ? ", " : "", worker_s[i]);
	printf("]}\n");
	return failed ? 1 : 0;
}
