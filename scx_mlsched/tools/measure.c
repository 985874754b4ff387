// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlsched-measure - run a command, count what the scheduler did to it.
 *
 *   mlsched-measure [-o FILE] -- COMMAND [ARG...]
 *
 * 1. Loads and attaches measure.bpf.c (embedded: measure.skel.h), which counts
 *    the moves of one process tree from CPU to CPU.
 * 2. Forks; the child waits on a pipe until the counters exist.
 * 3. Puts the child into the BPF side's tree, and opens two software perf
 *    counters on it, CPU migrations and context switches, with inherit=1 (every
 *    thread and process the command starts is counted, the kernel folds their
 *    counts in as they exit) and enable_on_exec (counting starts when the
 *    command does, not during our fork).
 * 4. Releases the child, which execs COMMAND; waits for it; reads the counters.
 *
 * The two migration counts differ on purpose: perf's counter adds one when a
 * task runs again after it moved (two moves before it runs count once) and
 * starts at exec; the moves count every change of CPU, from the child's release
 * on.
 *
 * Prints one JSON object (on stdout, or into FILE with -o: the command's own
 * stdout stays its own): wall time from exec to exit, the two counts, the
 * moves as a matrix [from][to] over the possible CPUs, the tree's run-queue
 * delays (after a wake-up and after a preemption: count, mean, p50, p90, p99
 * and max in µs, from the BPF side's histogram: a percentile is its bucket's
 * middle, within 5 % of the value), what the moves and delays missed
 * (tasks beyond the tree map, CPUs beyond its matrix, runs of the BPF programs
 * the kernel skipped), the exit status (a signal is reported as 128 + its
 * number). Exits with the command's status, 2 for bad usage or when the
 * counters or the BPF side cannot be set up.
 */
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "measure.h"
#include "measure.skel.h"

#define PROG "mlsched-measure"
/* The child's exit status when exec itself fails (as the shell's "not found"). */
#define EXEC_FAILED 127

static void usage(FILE *f)
{
	fprintf(f, "Usage: " PROG " [-o FILE] -- COMMAND [ARG...]\n"
		"Runs COMMAND; prints wall time, CPU migrations, context switches and the\n"
		"CPU-to-CPU moves of its whole process tree and its exit status as one\n"
		"JSON object. Needs root (perf counters, BPF, BTF).\n");
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int sw_counter(pid_t pid, __u64 config)
{
	struct perf_event_attr a;

	memset(&a, 0, sizeof(a));
	a.type = PERF_TYPE_SOFTWARE;
	a.size = sizeof(a);
	a.config = config;
	a.inherit = 1;
	a.disabled = 1;
	a.enable_on_exec = 1;
	return syscall(SYS_perf_event_open, &a, pid, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

static long long read_counter(int fd)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) != sizeof(v))
		return -1;
	return (long long)v;
}

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return level == LIBBPF_DEBUG ? 0 : vfprintf(stderr, fmt, ap);
}

/* Runs of PROG the kernel skipped (it was already running on that CPU). */
static unsigned long long skipped(struct bpf_program *prog)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (bpf_prog_get_info_by_fd(bpf_program__fd(prog), &info, &len))
		return 0;
	return info.recursion_misses;
}

/* The moves matrix over the first NCPUS CPUs, and what the moves missed. */
static int print_moves(FILE *out, struct measure_bpf *skel, int ncpus)
{
	int fd = bpf_map__fd(skel->maps.moves), from, to;
	unsigned long long missed = 0;
	__u64 v;
	__u32 k;

	fputs("\"moves\": [", out);
	for (from = 0; from < ncpus; from++) {
		fputs(from ? ", [" : "[", out);
		for (to = 0; to < ncpus; to++) {
			k = from * MEASURE_MAX_CPUS + to;
			if (bpf_map_lookup_elem(fd, &k, &v))
				return -1;
			fprintf(out, "%s%llu", to ? ", " : "", (unsigned long long)v);
		}
		fputc(']', out);
	}
	fd = bpf_map__fd(skel->maps.lost);
	for (k = 0; k < MEASURE_NR_LOST; k++) {
		if (bpf_map_lookup_elem(fd, &k, &v))
			return -1;
		missed += v;
	}
	missed += skipped(skel->progs.on_fork) + skipped(skel->progs.on_migrate) +
		  skipped(skel->progs.on_wakeup) + skipped(skel->progs.on_wakeup_new) +
		  skipped(skel->progs.on_switch);
	fprintf(out, "], \"moves_missed\": %llu, ", missed);
	return 0;
}

/* The lowest delay (ns) bucket b of the histogram holds (measure.h). */
static double bucket_low(unsigned int b)
{
	unsigned int octave, sub;

	if (b < MEASURE_HIST_SUB)
		return b;
	octave = b / MEASURE_HIST_SUB - 1 + MEASURE_HIST_SUB_BITS;
	sub = b % MEASURE_HIST_SUB;
	return (double)(MEASURE_HIST_SUB + sub) * (double)(1ULL << (octave - MEASURE_HIST_SUB_BITS));
}

/* The middle of bucket b in µs: what a percentile falling in it reports. */
static double bucket_mid_us(unsigned int b)
{
	return (bucket_low(b) + bucket_low(b + 1)) / 2 / 1e3;
}

/* One kind's delays: {"n", "mean_us", "p50_us", "p90_us", "p99_us", "max_us"}. */
static int print_delay(FILE *out, struct measure_bpf *skel, __u32 kind)
{
	static const double q[] = { 0.50, 0.90, 0.99 };
	static const char *const qname[] = { "p50_us", "p90_us", "p99_us" };
	int fd = bpf_map__fd(skel->maps.delay_hist);
	__u64 hist[MEASURE_HIST_BUCKETS], n = 0, seen = 0, sum;
	unsigned int b, i = 0, top = 0;

	for (b = 0; b < MEASURE_HIST_BUCKETS; b++) {
		__u32 k = kind * MEASURE_HIST_BUCKETS + b;

		if (bpf_map_lookup_elem(fd, &k, &hist[b]))
			return -1;
		n += hist[b];
		if (hist[b])
			top = b;
	}
	if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.delay_sum), &kind, &sum))
		return -1;
	fprintf(out, "{\"n\": %llu", (unsigned long long)n);
	if (!n) {
		fputc('}', out);
		return 0;
	}
	fprintf(out, ", \"mean_us\": %.3f", sum / 1e3 / n);
	for (b = 0; b < MEASURE_HIST_BUCKETS && i < 3; b++) {
		seen += hist[b];
		while (i < 3 && seen >= q[i] * n)
			fprintf(out, ", \"%s\": %.3f", qname[i++], bucket_mid_us(b));
	}
	fprintf(out, ", \"max_us\": %.3f}", bucket_low(top + 1) / 1e3);
	return 0;
}

/* "delay": {"wake": {...}, "preempt": {...}}, what the BPF side saw of the waits. */
static int print_delays(FILE *out, struct measure_bpf *skel)
{
	fputs("\"delay\": {\"wake\": ", out);
	if (print_delay(out, skel, MEASURE_DELAY_WAKE) < 0)
		return -1;
	fputs(", \"preempt\": ", out);
	if (print_delay(out, skel, MEASURE_DELAY_PREEMPT) < 0)
		return -1;
	fputs("}, ", out);
	return 0;
}

/* What one measured run holds: where it reports, the BPF counter, the child and its gate. */
struct measure {
	const char *out_path;
	FILE *out;
	struct measure_bpf *skel;
	int ncpus, go[2], mig_fd, cs_fd;
	pid_t pid;
};

/* Exit 2 with one line, leaving no report file behind. */
static int give_up(struct measure *m, const char *what)
{
	fprintf(stderr, PROG ": %s: %s\n", what, strerror(errno));
	if (m->out_path) {
		if (m->out && m->out != stdout)
			fclose(m->out);
		unlink(m->out_path);
	}
	return 2;
}

/* The report's destination and the BPF move counter. */
static int prepare(struct measure *m)
{
	if (m->out_path && !(m->out = fopen(m->out_path, "w"))) {
		fprintf(stderr, PROG ": %s: %s\n", m->out_path, strerror(errno));
		return 2;
	}
	m->ncpus = libbpf_num_possible_cpus();
	if (m->ncpus < 1 || m->ncpus > MEASURE_MAX_CPUS) {
		fprintf(stderr, PROG ": %d possible CPUs: the moves matrix holds 1 to %d\n",
			m->ncpus, MEASURE_MAX_CPUS);
		return 2;
	}
	libbpf_set_print(libbpf_log);
	m->skel = measure_bpf__open_and_load();
	if (!m->skel || measure_bpf__attach(m->skel))
		return give_up(m, "loading the BPF move counter (needs root and "
				  "/sys/kernel/btf/vmlinux)");
	return 0;
}

/* Fork the command, held at a gate until its counters are in place. */
static int fork_gated(struct measure *m, char **cmd)
{
	char byte = 0;

	if (pipe2(m->go, O_CLOEXEC) < 0)
		return give_up(m, "pipe");
	m->pid = fork();
	if (m->pid < 0)
		return give_up(m, "fork");
	if (m->pid == 0) {
		close(m->go[1]);
		if (read(m->go[0], &byte, 1) != 1)
			_exit(EXEC_FAILED);	/* the parent gave up */
		execvp(cmd[0], cmd);
		fprintf(stderr, PROG ": %s: %s\n", cmd[0], strerror(errno));
		_exit(EXEC_FAILED);
	}
	close(m->go[0]);
	return 0;
}

/* The perf counters on the child and the child in the BPF tree, before it runs. */
static int count_child(struct measure *m)
{
	__u32 root = m->pid;
	__u8 one = 1;

	m->mig_fd = sw_counter(m->pid, PERF_COUNT_SW_CPU_MIGRATIONS);
	m->cs_fd = sw_counter(m->pid, PERF_COUNT_SW_CONTEXT_SWITCHES);
	if (bpf_map_update_elem(bpf_map__fd(m->skel->maps.tree), &root, &one, BPF_ANY) < 0 ||
	    m->mig_fd < 0 || m->cs_fd < 0) {
		int err = errno;

		kill(m->pid, SIGKILL);
		waitpid(m->pid, NULL, 0);
		errno = err;
		return give_up(m, m->mig_fd < 0 || m->cs_fd < 0 ? "perf_event_open" :
			       "adding the command to the BPF tree");
	}
	return 0;
}

/* Open the gate, wait for the command; its wall time and exit status. */
static int run_child(struct measure *m, double *wall, int *code)
{
	char byte = 0;
	double t0 = now_s();
	int status;

	if (write(m->go[1], &byte, 1) != 1)
		return give_up(m, "releasing the child");
	close(m->go[1]);
	while (waitpid(m->pid, &status, 0) < 0)
		if (errno != EINTR)
			return give_up(m, "waitpid");
	*wall = now_s() - t0;
	*code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	return 0;
}

/* One JSON line: wall time, the perf counts, the BPF move matrix, the status. */
static int report(struct measure *m, double wall, int code)
{
	char *moves = NULL;
	size_t moves_len = 0;
	FILE *mv = open_memstream(&moves, &moves_len);

	if (!mv || print_moves(mv, m->skel, m->ncpus) < 0 || print_delays(mv, m->skel) < 0 ||
	    fclose(mv) != 0)
		return give_up(m, "reading the BPF move counts");
	measure_bpf__destroy(m->skel);
	fprintf(m->out, "{\"wall_s\": %.4f, \"migrations\": %lld, \"context_switches\": %lld, "
		"%s\"status\": %d}\n", wall, read_counter(m->mig_fd), read_counter(m->cs_fd),
		moves, code);
	free(moves);
	if (fclose(m->out) != 0) {
		fprintf(stderr, PROG ": %s: %s\n", m->out_path ? m->out_path : "stdout",
			strerror(errno));
		return 2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct measure m = { .out = stdout, .go = { -1, -1 }, .mig_fd = -1, .cs_fd = -1 };
	double wall = 0;
	int c, code = 0, err;

	while ((c = getopt(argc, argv, "+o:h")) != -1) {
		switch (c) {
		case 'o': m.out_path = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, PROG ": no command given (" PROG " -h)\n");
		return 2;
	}
	if ((err = prepare(&m)) || (err = fork_gated(&m, argv + optind)) ||
	    (err = count_child(&m)) || (err = run_child(&m, &wall, &code)) ||
	    (err = report(&m, wall, code)))
		return err;
	return code;
}
