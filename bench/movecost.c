// SPDX-License-Identifier: GPL-2.0-only
/*
 * movecost - what moving to another core costs a task, by the size of its working set,
 * measured on this host's own cores (where the caches are real).
 *
 * For every working set size W it maps W bytes and links its cache lines into one cycle
 * in a random order (Sattolo's shuffle): a pass follows the cycle once, reading each
 * line's link and writing a counter in it, so every line is fetched where the pass runs
 * and left modified there, in an order no prefetcher can guess. Each trial:
 *
 *   1. pin to the source CPU (sched_setaffinity) and warm the working set there
 *      (--warm full passes);
 *   2. pin to the source CPU again (stay) or to the other CPU (move), and check with
 *      sched_getcpu() that this is where it runs;
 *   3. time ONE pass (CLOCK_MONOTONIC), the affinity call outside the timed span, and
 *      count the times the thread was switched out during it (getrusage): a pass another
 *      task interrupted is marked, not hidden.
 *
 * Trials come in pairs, a stay and a move from the same source, in a random order within
 * the pair; the source CPU alternates from pair to pair. Every trial is one JSON line on
 * stdout after a first line that describes the run: statistics are the driver's
 * (bench/movecost.py, `make movecost`).
 *
 * Bad arguments, or fewer than two CPUs this process may run on: one line on stderr,
 * exit 2. A CPU it cannot be moved to, or memory it cannot map: one line, exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define PROG "movecost"
#define LINE_BYTES 64
/* Working sets from a page to 1 GiB, at most this many of them in one run. */
#define MIN_SIZE 4096ULL
#define MAX_SIZE (1ULL << 30)
#define MAX_SIZES 64
#define MAX_PAIRS 1000000
#define MAX_WARM 100
/* Default sizes: 16 KiB to 64 MiB, doubling. */
#define DEFAULT_FIRST (16ULL << 10)
#define DEFAULT_LAST (64ULL << 20)
#define DEFAULT_PAIRS 51
#define DEFAULT_WARM 3
#define DEFAULT_SEED 20261204ULL
/* Tries to land on a CPU after pinning to it before giving up. */
#define PIN_TRIES 100

enum { STAY, MOVE };

/* One cache line of the working set: the link of the cycle, and the counter a pass writes. */
struct line {
	uint64_t next;
	uint64_t visits;
	uint64_t pad[LINE_BYTES / 8 - 2];
};
_Static_assert(sizeof(struct line) == LINE_BYTES, "a struct line is one cache line");

static _Noreturn void die2(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static _Noreturn void die1(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* splitmix64: the shuffle's and the trial order's random numbers, reproducible. */
static uint64_t rng_state;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A whole number in lo..hi, or exit 2 naming the option. */
static long whole(const char *s, const char *what, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		die2("%s: expected a whole number in %ld..%ld, got '%s'", what, lo, hi, s);
	return v;
}

/* One size: digits with an optional K, M or G (KiB, MiB, GiB); whole lines, in range. */
static unsigned long long size_of(const char *s, size_t len)
{
	unsigned long long v = 0, unit = 1;
	size_t i = 0;

	for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
		if (v <= MAX_SIZE)		/* past it, the value only has to stay past it */
			v = v * 10 + (unsigned)(s[i] - '0');
	if (i == len - 1 && i > 0) {
		switch (s[i]) {
		case 'k': case 'K': unit = 1ULL << 10; i++; break;
		case 'm': case 'M': unit = 1ULL << 20; i++; break;
		case 'g': case 'G': unit = 1ULL << 30; i++; break;
		}
	}
	if (i == 0 || i != len)
		die2("--sizes: '%.*s' is not a size (bytes, or a number with K, M or G)", (int)len, s);
	if (v > MAX_SIZE / unit || v * unit < MIN_SIZE || v * unit > MAX_SIZE)
		die2("--sizes: '%.*s' is outside %llu..%llu bytes", (int)len, s, MIN_SIZE, MAX_SIZE);
	v *= unit;
	if (v % LINE_BYTES)
		die2("--sizes: '%.*s' is not a multiple of %d bytes (whole cache lines)", (int)len, s,
		     LINE_BYTES);
	return v;
}

static int parse_sizes(const char *s, unsigned long long *out)
{
	int n = 0;

	for (;;) {
		const char *comma = strchr(s, ',');
		size_t len = comma ? (size_t)(comma - s) : strlen(s);

		if (n == MAX_SIZES)
			die2("--sizes: more than %d sizes", MAX_SIZES);
		if (len == 0)
			die2("--sizes: an empty size in the list");
		out[n++] = size_of(s, len);
		if (!comma)
			return n;
		s = comma + 1;
	}
}

static void parse_cpus(const char *s, const cpu_set_t *usable, int cpus[2])
{
	char *end;
	long a, b;

	errno = 0;
	a = strtol(s, &end, 10);
	if (errno || end == s || *end != ',')
		die2("--cpus: expected two CPU numbers A,B, got '%s'", s);
	s = end + 1;
	b = strtol(s, &end, 10);
	if (errno || end == s || *end)
		die2("--cpus: expected two CPU numbers A,B, got '%s'", s);
	if (a == b)
		die2("--cpus: two different CPUs, got %ld twice", a);
	for (int i = 0; i < 2; i++) {
		long c = i ? b : a;

		if (c < 0 || c >= CPU_SETSIZE || !CPU_ISSET(c, usable))
			die2("--cpus: CPU %ld is not one this process may run on", c);
	}
	cpus[0] = (int)a;
	cpus[1] = (int)b;
}

/* Run on ``cpu`` from now on; exit 1 when the kernel does not put us there. */
static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die1("sched_setaffinity(CPU %d): %s", cpu, strerror(errno));
	for (int i = 0; sched_getcpu() != cpu; i++) {
		if (i == PIN_TRIES)
			die1("could not run on CPU %d (sched_getcpu says %d)", cpu, sched_getcpu());
		sched_yield();
	}
}

/* The working set's lines in one cycle of random order: Sattolo's shuffle of the links. */
static void link_cycle(struct line *l, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		l[i].next = i;
		l[i].visits = 0;
	}
	for (uint64_t i = n - 1; i > 0; i--) {
		uint64_t j = rnd() % i, t = l[i].next;

		l[i].next = l[j].next;
		l[j].next = t;
	}
}

/* One pass: every line once, each read for the next link and written. */
static uint64_t pass(struct line *l)
{
	uint64_t i = 0, steps = 0;

	do {
		l[i].visits++;
		i = l[i].next;
		steps++;
	} while (i);
	return steps;
}

/* Times this thread was switched out so far, for any reason. */
static long switches(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_THREAD, &ru))
		die1("getrusage: %s", strerror(errno));
	return ru.ru_nvcsw + ru.ru_nivcsw;
}

/* One trial's timed pass (ns); where it ran, and how often it was switched out meanwhile
 * (another task ran on the CPU during the pass: the time is not the pass's alone). */
static long long trial(struct line *l, uint64_t n, int src, int dst, int warm, int *ran_on,
		       long *switched)
{
	long long t0, t1;
	uint64_t steps;
	long before;

	pin(src);
	for (int w = 0; w < warm; w++)
		pass(l);
	pin(dst);
	*ran_on = sched_getcpu();
	before = switches();
	t0 = now_ns();
	steps = pass(l);
	t1 = now_ns();
	*switched = switches() - before;
	if (sched_getcpu() != *ran_on)
		die1("left CPU %d during a timed pass", *ran_on);
	if (steps != n)
		die1("a pass visited %llu lines of %llu", (unsigned long long)steps,
		     (unsigned long long)n);
	return t1 - t0;
}

static void usage(void)
{
	printf("Usage: " PROG " [--sizes LIST] [--pairs N] [--warm N] [--cpus A,B] [--seed N]\n"
	       "What a move to another core costs one pass over a working set, per size.\n"
	       "  --sizes LIST  working sets, bytes or with K/M/G (KiB...), comma-separated;\n"
	       "                whole %d-byte lines, %llu..%llu bytes (default 16K,32K,...,64M)\n"
	       "  --pairs N     stay/move pairs per size (default %d)\n"
	       "  --warm N      full passes on the source CPU before each timed one (default %d)\n"
	       "  --cpus A,B    the two CPUs (default: the first two this process may run on)\n"
	       "  --seed N      the random order of lines and trials (default %llu)\n"
	       "Prints a JSON line describing the run, then one per trial:\n"
	       "  {\"size\", \"pair\", \"mode\": \"stay\"|\"move\", \"src\", \"cpu\", \"ns\",\n"
	       "   \"switches\": times switched out during the timed pass}\n"
	       "exit status: 0 done, 1 failed while measuring, 2 bad arguments or one CPU.\n",
	       LINE_BYTES, MIN_SIZE, MAX_SIZE, DEFAULT_PAIRS, DEFAULT_WARM, DEFAULT_SEED);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "sizes", required_argument, NULL, 's' },
		{ "pairs", required_argument, NULL, 'p' },
		{ "warm", required_argument, NULL, 'w' },
		{ "cpus", required_argument, NULL, 'c' },
		{ "seed", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	unsigned long long sizes[MAX_SIZES];
	const char *cpus_arg = NULL;
	unsigned long long seed = DEFAULT_SEED;
	int nsizes = 0, pairs = DEFAULT_PAIRS, warm = DEFAULT_WARM, cpus[2] = { -1, -1 }, c;
	cpu_set_t usable;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 's': nsizes = parse_sizes(optarg, sizes); break;
		case 'p': pairs = (int)whole(optarg, "--pairs", 1, MAX_PAIRS); break;
		case 'w': warm = (int)whole(optarg, "--warm", 1, MAX_WARM); break;
		case 'c': cpus_arg = optarg; break;
		case 'r': seed = (unsigned long long)whole(optarg, "--seed", 0, LONG_MAX); break;
		case 'h': usage(); return 0;
		case ':': die2("%s needs a value (see --help)", argv[optind - 1]);
		default: die2("unknown option '%s' (see --help)", argv[optind - 1]);
		}
	}
	if (optind < argc)
		die2("unexpected argument '%s' (see --help)", argv[optind]);
	if (nsizes == 0)
		for (unsigned long long w = DEFAULT_FIRST; w <= DEFAULT_LAST; w *= 2)
			sizes[nsizes++] = w;

	if (sched_getaffinity(0, sizeof(usable), &usable))
		die2("sched_getaffinity: %s", strerror(errno));
	if (CPU_COUNT(&usable) < 2)
		die2("needs 2 usable CPUs to move between, this process may run on %d",
		     CPU_COUNT(&usable));
	if (cpus_arg) {
		parse_cpus(cpus_arg, &usable, cpus);
	} else {
		for (int i = 0, k = 0; i < CPU_SETSIZE && k < 2; i++)
			if (CPU_ISSET(i, &usable))
				cpus[k++] = i;
	}
	rng_state = seed;

	printf("{\"tool\": \"" PROG "\", \"line_bytes\": %d, \"warm_passes\": %d, \"pairs\": %d, "
	       "\"cpus\": [%d, %d], \"seed\": %llu, \"sizes\": [", LINE_BYTES, warm, pairs,
	       cpus[0], cpus[1], seed);
	for (int i = 0; i < nsizes; i++)
		printf("%s%llu", i ? ", " : "", sizes[i]);
	printf("]}\n");
	fflush(stdout);

	for (int s = 0; s < nsizes; s++) {
		uint64_t n = sizes[s] / LINE_BYTES;
		struct line *l = mmap(NULL, sizes[s], PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (l == MAP_FAILED)
			die1("mmap of %llu bytes: %s", sizes[s], strerror(errno));
		link_cycle(l, n);
		for (int p = 0; p < pairs; p++) {
			int src = cpus[p % 2], other = cpus[(p + 1) % 2];
			int first = (int)(rnd() & 1);

			for (int k = 0; k < 2; k++) {
				int mode = k ? !first : first, ran_on;
				long switched;
				long long ns = trial(l, n, src, mode == MOVE ? other : src, warm,
						     &ran_on, &switched);

				printf("{\"size\": %llu, \"pair\": %d, \"mode\": \"%s\", \"src\": %d, "
				       "\"cpu\": %d, \"ns\": %lld, \"switches\": %ld}\n", sizes[s], p,
				       mode == MOVE ? "move" : "stay", src, ran_on, ns, switched);
			}
		}
		fflush(stdout);
		munmap(l, sizes[s]);
	}
	return 0;
}
