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
 * --working-set BYTES gives each worker a buffer of its own that every compute
 * burst writes once a cache line, so a worker has a cache footprint to lose when
 * it moves; the work stays fixed (one pass a unit). --move-cost-ns NS charges a
 * move where the CPUs have no caches to lose (an emulated guest): a worker that
 * starts a unit on another CPU than its previous unit spins NS ns of
 * CLOCK_MONOTONIC first, and counts it. Both default to 0: neither happens.
 *
 * CPU migrations and context switches come from software perf counters
 * opened on the parent with inherit=1: the kernel folds every worker's
 * counts into them when it exits, whatever scheduling class ran it.
 *
 * Prints one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROG "mlsched-workload"
#define MAX_WORKERS 256
/* Compute-heavy workers block once per this many units. */
#define HEAVY_BLOCK_EVERY 8
/* A working set is written once per this many bytes: a cache line. */
#define LINE_BYTES 64
#define MAX_WORKING_SET (1L << 30)
#define MAX_MOVE_COST_NS 1000000000L

/* What a worker did, written once when it ends, into memory the parent shares; one cache
 * line each. */
struct tally {
	long long units_done;
	long long lines_touched;
	long long moves_charged;
	long long charged_ns;
	char pad[LINE_BYTES - 4 * sizeof(long long)];
};

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

/* Busy for ns nanoseconds of CLOCK_MONOTONIC: the time a move is charged. */
static void spin_ns(long ns)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do
		clock_gettime(CLOCK_MONOTONIC, &t);
	while ((t.tv_sec - t0.tv_sec) * 1000000000LL + (t.tv_nsec - t0.tv_nsec) < ns);
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

static void worker(int idx, long units, long spin, long sleep_us, long working_set,
		   long move_cost_ns, struct tally *tally)
{
	struct timespec pause = { sleep_us / 1000000, (sleep_us % 1000000) * 1000 };
	volatile uint64_t x = idx + 1;
	volatile unsigned char *buf = NULL;
	struct tally t = { 0 };
	int cpu = -1;

	if (working_set && !(buf = calloc(1, working_set))) {
		fprintf(stderr, PROG ": worker %d: no memory for its %ld-byte working set\n", idx,
			working_set);
		_exit(1);
	}
	for (long u = 0; u < units; u++) {
		if (move_cost_ns) {
			int now = sched_getcpu();

			if (u && now >= 0 && cpu >= 0 && now != cpu) {
				spin_ns(move_cost_ns);
				t.moves_charged++;
				t.charged_ns += move_cost_ns;
			}
			cpu = now;
		}
		for (long i = 0; i < working_set; i += LINE_BYTES) {
			buf[i]++;
			t.lines_touched++;
		}
		for (long i = 0; i < spin; i++)
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		if (sleep_us && (idx % 2 || u % HEAVY_BLOCK_EVERY == HEAVY_BLOCK_EVERY - 1))
			nanosleep(&pause, NULL);
		t.units_done++;
	}
	*tally = t;
	_exit(0);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "workers", required_argument, NULL, 'w' },
		{ "units", required_argument, NULL, 'u' },
		{ "spin", required_argument, NULL, 'c' },
		{ "sleep-us", required_argument, NULL, 's' },
		{ "working-set", required_argument, NULL, 'W' },
		{ "move-cost-ns", required_argument, NULL, 'M' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	long workers = 8, units = 200, spin = 200000, sleep_us = 500;
	long working_set = 0, move_cost_ns = 0;
	double t0, t1, worker_s[MAX_WORKERS];
	struct tally *tallies, sum = { 0 };
	pid_t pids[MAX_WORKERS];
	int c, mig_fd, cs_fd, failed = 0;

	while ((c = getopt_long(argc, argv, "w:u:c:s:W:M:h", opts, NULL)) != -1) {
		switch (c) {
		case 'w': workers = num(optarg, "--workers", 1, MAX_WORKERS); break;
		case 'u': units = num(optarg, "--units", 1, 1000000); break;
		case 'c': spin = num(optarg, "--spin", 0, 1000000000); break;
		case 's': sleep_us = num(optarg, "--sleep-us", 0, 1000000); break;
		case 'W': working_set = num(optarg, "--working-set", 0, MAX_WORKING_SET); break;
		case 'M': move_cost_ns = num(optarg, "--move-cost-ns", 0, MAX_MOVE_COST_NS); break;
		case 'h':
			printf("Usage: " PROG " [-w WORKERS] [-u UNITS] [-c SPIN] [-s SLEEP_US]"
			       " [-W BYTES] [-M NS]\n"
			       "Fixed parallel CPU/IO work; prints makespan, migrations, context\n"
			       "switches as JSON. Defaults: -w 8 -u 200 -c 200000 -s 500 -W 0 -M 0.\n"
			       "  -W BYTES  each worker writes a buffer of its own once a cache line\n"
			       "            every unit (its working set)\n"
			       "  -M NS     a worker that starts a unit on another CPU than the unit\n"
			       "            before spins NS ns first (a modelled move cost), counted\n");
			return 0;
		default:
			return 2;
		}
	}
	if (optind < argc)
		die("unexpected argument", argv[optind]);

	tallies = mmap(NULL, workers * sizeof(*tallies), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (tallies == MAP_FAILED)
		die("mmap of the workers' tallies failed", strerror(errno));
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
			worker(i, units, spin, sleep_us, working_set, move_cost_ns, &tallies[i]);
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
	for (int i = 0; i < workers; i++) {
		sum.units_done += tallies[i].units_done;
		sum.lines_touched += tallies[i].lines_touched;
		sum.moves_charged += tallies[i].moves_charged;
		sum.charged_ns += tallies[i].charged_ns;
	}

	printf("{\"makespan_s\": %.4f, \"migrations\": %lld, \"context_switches\": %lld, "
	       "\"workers\": %ld, \"units\": %ld, \"spin\": %ld, \"sleep_us\": %ld, "
	       "\"working_set\": %ld, \"move_cost_ns\": %ld, \"units_done\": %lld, "
	       "\"lines_touched\": %lld, \"moves_charged\": %lld, \"charged_ns\": %lld, "
	       "\"failed\": %d, \"worker_s\": [", t1 - t0, read_counter(mig_fd),
	       read_counter(cs_fd), workers, units, spin, sleep_us, working_set, move_cost_ns,
	       sum.units_done, sum.lines_touched, sum.moves_charged, sum.charged_ns, failed);
	for (int i = 0; i < workers; i++)
		printf("%s%.3f", i ? ", " : "", worker_s[i]);
	printf("]}\n");
	return failed ? 1 : 0;
}
