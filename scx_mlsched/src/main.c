// SPDX-License-Identifier: GPL-2.0-only
/*
 * main.c - scx_mlsched's loader: load the mlsched sched_ext scheduler, run it, report.
 *
 *   SCX_OPS_OPEN (the skeleton, scx_mlsched.skel.h, embeds bpf/main.bpf.c's object)
 *   -> reuse mlsched-lite's pinned maps (policy model) -> skel->rodata->cfg
 *   -> SCX_OPS_LOAD (verifier) -> SCX_OPS_ATTACH (every normal task is now
 *   ours) -> wait for SIGINT/SIGTERM, --duration or a scheduler exit (UEI)
 *   -> detach -> counters and exit reason.
 *
 * With --explore, that share of the balancer's answers is a coin toss; each one
 * carried out comes back on the `explore` ring when the task next runs and is
 * appended to --explore-out as a CSV row (explore_header below), the records
 * `mlsched-train --labels outcome` learns from.
 *
 * With --policy model the decision maps (requests, table, decisions, control,
 * host, stats) are the ones `mlsched-lite run --pin` pinned under --pin-dir:
 * the table mlsched-lite loaded answers in the kernel and mlsched-lite itself
 * answers the misses; the directory and every pin must be root's and writable by
 * nobody else (pin_check.h). The control policies (stay, migrate) need no daemon.
 *
 * The CPUs are the online ones (cpus.h), as mlsched-lite's table counts them.
 *
 * Built against the kernel source's sched_ext user-space headers
 * (tools/sched_ext/include/scx: common.h, compat.h, user_exit_info.h) and the
 * libbpf of the same tree; see this folder's Makefile.
 */
#define _GNU_SOURCE	/* O_PATH (pin_check.h) */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <scx/common.h>
#include "cpus.h"
#include "explore_file.h"
#include "mlsched.h"
#include "pin_check.h"
#include "report_file.h"
#include "intf.h"
#include "scx_mlsched.skel.h"

#define PROG "scx_mlsched"
#define DEFAULT_SLICE_US	5000
#define DEFAULT_TTL_MS		100
#define DEFAULT_NUDGE_US	2000
/* The kernel's default sched_migration_cost (kernel/sched/fair.c): younger is cache-hot. */
#define DEFAULT_COLD_US		500
/* The CPUs scheduled: the online ones. */
#define ONLINE_CPUS_PATH	"/sys/devices/system/cpu/online"
/* Room for one --explore-out row (struct scx_mlsched_explore as CSV). */
#define EXPLORE_ROW_MAX		320

/* Names of enum scx_mlsched_stat, in order (the JSON keys of the report). */
static const char *const sched_stat_names[] = {
	"ask_wake", "ask_pull", "from_table", "from_level2", "from_daemon", "sent", "waiting",
	"unanswered", "no_answer", "fixed", "said_migrate", "moved_wake", "moved_pull",
	"nudges", "direct", "queued", "pinned", "stolen", "explored", "explore_lost",
};
_Static_assert(sizeof(sched_stat_names) / sizeof(sched_stat_names[0]) == SCX_MLSCHED_STAT_COUNT,
	       "one name per scheduler counter");

/* Names of enum mlsched_stat (bpf/mlsched.h), lower-cased as mlsched-lite prints them. */
static const char *const helper_stat_names[] = {
	"produced", "dropped", "kernel_hits", "misses_sent", "answered", "stale",
	"no_consumer", "clamped", "invalid", "level2_hits",
};
_Static_assert(sizeof(helper_stat_names) / sizeof(helper_stat_names[0]) == MLSCHED_STAT_COUNT,
	       "one name per helper counter");

static const char *const policy_names[] = { "model", "stay", "migrate" };

static const char usage[] =
"Usage: " PROG " [OPTIONS]\n"
"Run the mlsched sched_ext scheduler until SIGINT/SIGTERM or --duration.\n"
"\n"
"  -p, --policy NAME     model (ask mlsched_decide(); needs --pin-dir), stay or\n"
"                        migrate (controls: fixed answers)            [model]\n"
"  -l, --levels N        table levels the kernel answers from: 2, or 1 (what level 2\n"
"                        would answer goes to mlsched-lite over the ring)  [2]\n"
"  -P, --pin-dir DIR     maps pinned by `mlsched-lite run --pin`      [none]\n"
"  -d, --domains SPEC    CPU domains: comma-separated CPU lists, '+' joins ranges\n"
"                        inside one (0-3,4-7 or 0-1+4-5,2-3+6-7); default: CPUs\n"
"                        sharing a last-level cache, one domain per CPU when\n"
"                        there is a single LLC\n"
"  -s, --slice-us N      time slice                                    [%d]\n"
"  -t, --ttl-ms N        wait this long for mlsched-lite's answer      [%d]\n"
"  -n, --nudge-us N      at most one pull nudge per domain this often  [%d]\n"
"  -c, --cold-us N       a CPU idle this long may take other CPUs' tasks [%d]\n"
"  -x, --explore N       answer N per thousand questions with a fair coin [0]\n"
"  -X, --explore-out F   append each explored answer and what followed to F\n"
"                        (CSV; needs --explore)\n"
"  -L, --list-domains    print the domains, in --domains syntax, and exit\n"
"  -D, --duration S      run S seconds (0: until a signal)             [0]\n"
"  -o, --stats-file PATH write counters and exit reason as JSON there at the end\n"
"  -v, --verbose         libbpf debug output (verifier log)\n"
"  -h, --help            this help\n"
"\n"
"Examples:\n"
"  mlsched-lite run --bundle B --pin --no-collector &   # decisions from the model\n"
"  " PROG " --pin-dir /sys/fs/bpf/mlsched -o /tmp/scx.json\n"
"  " PROG " --policy stay --duration 30                 # control: no balancing\n";

/* The CSV columns of --explore-out (what `mlsched-train --labels outcome` reads). */
static const char explore_header[] =
	"cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,action,propensity,wait_ns,"
	"src_queued,dst_queued,src_queued_after,dst_queued_after,kind,pid,ts_ns\n";

static volatile sig_atomic_t stop_requested;
static int verbose;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG && !verbose)
		return 0;
	return vfprintf(stderr, fmt, ap);
}

static int die(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static long parse_num(const char *s, const char *what, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		die("%s: expected an integer in %ld..%ld, got '%s'", what, lo, hi, s);
	return v;
}

/*
 * --domains, the syntax mlsched-lite's --domains takes (src/mlsched/runtime/topology.py): domains
 * separated by ',', each a CPU list whose ranges ("N" or "N-M") '+' joins, blanks
 * around a domain allowed. "0-1+4-5,2-3+6-7" -> cpu_dom[], dom_ncpus[].
 */
static void domains_error(const char *spec, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": --domains '%s': ", spec);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* "N" or "N-M" (N <= M) from [s, end); false when it is anything else. */
static bool parse_range(const char *s, const char *end, long *lo, long *hi)
{
	char *stop;

	if (s == end || *s < '0' || *s > '9')
		return false;
	*lo = strtol(s, &stop, 10);
	*hi = *lo;
	if (stop < end && *stop == '-') {
		if (stop + 1 == end || stop[1] < '0' || stop[1] > '9')
			return false;
		*hi = strtol(stop + 1, &stop, 10);
	}
	return stop == end && *lo <= *hi && *hi < INT32_MAX;
}

static void parse_domains(const char *spec, struct scx_mlsched_cfg *cfg)
{
	uint64_t seen = 0;
	const char *item = spec;
	__u32 d = 0;

	for (;; d++) {
		const char *end = item + strcspn(item, ","), *a = item, *b = end, *part, *stop;
		int len;

		while (a < b && (*a == ' ' || *a == '\t'))
			a++;
		while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
			b--;
		if (a == b)
			domains_error(spec, "empty domain");
		if (d >= SCX_MLSCHED_MAX_DOMS)
			domains_error(spec, "at most %d domains", SCX_MLSCHED_MAX_DOMS);
		len = (int)(b - a);
		for (part = a;; part = stop + 1) {
			long lo, hi, cpu;

			stop = part + strcspn(part, "+");
			if (stop > b)
				stop = b;
			if (!parse_range(part, stop, &lo, &hi))
				domains_error(spec, "'%.*s' is not a CPU range like 0-3", len, a);
			if (hi >= SCX_MLSCHED_MAX_CPUS)
				domains_error(spec, "CPU ids must be below %d", SCX_MLSCHED_MAX_CPUS);
			for (cpu = lo; cpu <= hi; cpu++) {
				if (seen >> cpu & 1)
					domains_error(spec, "CPU %ld in two domains", cpu);
				if (cpu >= cfg->nr_cpus)
					domains_error(spec, "CPU %ld: this host has CPUs 0-%u online",
						      cpu, cfg->nr_cpus - 1);
				seen |= 1ull << cpu;
				cfg->cpu_dom[cpu] = d;
				cfg->dom_ncpus[d]++;
			}
			if (stop == b)
				break;
		}
		if (!*end)
			break;
		item = end + 1;
	}
	cfg->nr_doms = d + 1;
	/* a scheduler has to place every CPU */
	for (__u32 cpu = 0; cpu < cfg->nr_cpus; cpu++)
		if (!(seen >> cpu & 1))
			domains_error(spec, "CPU %u is in no domain", cpu);
}

_Static_assert(SCX_MLSCHED_MAX_CPUS <= CPULIST_LOW_BITS, "a CPU list keeps a bit per CPU");

/* A sysfs cpulist ("0-3,8") as a mask of CPUs below SCX_MLSCHED_MAX_CPUS; 0 if unreadable. */
static uint64_t read_cpulist(const char *path)
{
	struct cpulist l;

	return cpulist_read(path, &l) ? 0 : l.low;
}

/* The online CPUs, which must be 0..n-1 with n <= SCX_MLSCHED_MAX_CPUS: n. */
static __u32 online_cpus(void)
{
	char why[CPUS_WHY_MAX];
	struct cpulist l;
	int n;

	if (cpulist_read(ONLINE_CPUS_PATH, &l))
		die("%s: %s", ONLINE_CPUS_PATH, errno == EINVAL ? "not a CPU list" : strerror(errno));
	n = cpulist_numbered_from_0(&l, SCX_MLSCHED_MAX_CPUS, why, sizeof(why));
	if (n < 0)
		die("%s", why);
	return n;
}

/* The CPUs sharing `cpu`'s last-level cache: its highest-level cache index; only itself
 * when sysfs says nothing. */
static uint64_t llc_of(__u32 cpu)
{
	uint64_t shared = 1ull << cpu;
	long best = -1;
	char path[160];

	for (int i = 0; i < 16; i++) {
		uint64_t cpus;
		long level;
		FILE *f;

		snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%u/cache/index%d/level",
			 cpu, i);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fscanf(f, "%ld", &level) != 1)
			level = -1;
		fclose(f);
		snprintf(path, sizeof(path),
			 "/sys/devices/system/cpu/cpu%u/cache/index%d/shared_cpu_list", cpu, i);
		cpus = read_cpulist(path);
		if (level > best && cpus) {
			best = level;
			shared = cpus;
		}
	}
	return shared;
}

/*
 * The default domains, as mlsched-lite's: CPUs grouped by last-level cache, in order of
 * their first CPU; a single LLC gives one domain per CPU; more groups than the scheduler
 * has domains are merged evenly (consecutive groups).
 */
static void detect_domains(struct scx_mlsched_cfg *cfg)
{
	uint64_t key[SCX_MLSCHED_MAX_CPUS];
	__u32 group[SCX_MLSCHED_MAX_CPUS], ngroups = 0, cpu, g, per;

	for (cpu = 0; cpu < cfg->nr_cpus; cpu++) {
		uint64_t k = llc_of(cpu);

		for (g = 0; g < ngroups && key[g] != k; g++)
			;
		if (g == ngroups)
			key[ngroups++] = k;
		group[cpu] = g;
	}
	if (ngroups <= 1) {
		ngroups = cfg->nr_cpus;
		for (cpu = 0; cpu < cfg->nr_cpus; cpu++)
			group[cpu] = cpu;
	}
	per = (ngroups + SCX_MLSCHED_MAX_DOMS - 1) / SCX_MLSCHED_MAX_DOMS;
	cfg->nr_doms = (ngroups + per - 1) / per;
	for (cpu = 0; cpu < cfg->nr_cpus; cpu++) {
		cfg->cpu_dom[cpu] = group[cpu] / per;
		cfg->dom_ncpus[group[cpu] / per]++;
	}
}

/* The domains in --domains syntax: "0-1+4-5,2-3+6-7". */
static void print_domains(const struct scx_mlsched_cfg *cfg)
{
	for (__u32 d = 0; d < cfg->nr_doms; d++) {
		bool first = true;

		for (__u32 cpu = 0; cpu < cfg->nr_cpus; cpu++) {
			__u32 last = cpu;

			if (cfg->cpu_dom[cpu] != d)
				continue;
			while (last + 1 < cfg->nr_cpus && cfg->cpu_dom[last + 1] == d)
				last++;
			printf("%s%u", first ? (d ? "," : "") : "+", cpu);
			if (last > cpu)
				printf("-%u", last);
			first = false;
			cpu = last;
		}
	}
	putchar('\n');
}

/*
 * `control` carries mlsched-lite's marker: a map of the right name that mlsched-lite did
 * not create (its shape checked first: the lookup writes a whole value) is not reused.
 */
static void check_marker(int fd, const char *dir)
{
	struct bpf_map_info info = {};
	struct mlsched_control ctl;
	__u32 len = sizeof(info), zero = 0;

	if (bpf_map_get_info_by_fd(fd, &info, &len))
		die("%s/control: %s", dir, strerror(errno));
	if (info.type != BPF_MAP_TYPE_ARRAY || info.key_size != sizeof(zero) ||
	    info.value_size != sizeof(ctl) || info.max_entries < 1 ||
	    bpf_map_lookup_elem(fd, &zero, &ctl) || ctl.magic != MLSCHED_CTL_MAGIC)
		die("%s/control: the pinned maps were not created by mlsched-lite (no marker in"
		    " `control`): remove %s and pin anew with `mlsched-lite run --pin --pin-dir %s`",
		    dir, dir, dir);
}

/*
 * With --policy model, the decision maps are the ones mlsched-lite pinned under `dir`,
 * taken only when the directory and each pin may be trusted (pin_check.h).
 */
static void reuse_pinned_maps(struct scx_mlsched *skel, const char *dir)
{
	struct bpf_map *shared[] = {	/* the maps mlsched_decide.h brings */
		skel->maps.requests, skel->maps.table, skel->maps.table2, skel->maps.cpu_index,
		skel->maps.decisions, skel->maps.control, skel->maps.host, skel->maps.stats,
	};
	char why[PIN_WHY_MAX], path[PIN_FD_PATH_MAX];
	int dirfd = pin_dir_open(dir, why, sizeof(why));

	if (dirfd < 0)
		die("--pin-dir: %s", why);
	for (size_t i = 0; i < sizeof(shared) / sizeof(shared[0]); i++) {
		const char *name = bpf_map__name(shared[i]);
		int pin = pin_open(dirfd, dir, name, why, sizeof(why)), fd, err;

		if (pin < 0)
			die("--pin-dir: %s", why);
		/* the object through the file just checked, not through its name again */
		fd = bpf_obj_get(pin_fd_path(pin, path, sizeof(path)));
		close(pin);
		if (fd < 0)
			die("%s/%s: %s (start `mlsched-lite run --pin --pin-dir %s` first)",
			    dir, name, strerror(errno), dir);
		if (shared[i] == skel->maps.control)
			check_marker(fd, dir);
		err = bpf_map__reuse_fd(shared[i], fd);
		close(fd);
		if (err)
			die("reusing %s/%s: %s", dir, name, strerror(-err));
	}
	close(dirfd);
}

/* Sum a per-CPU array entry of `n` __u64 counters. */
static int sum_percpu(struct bpf_map *map, int n, __u64 *out)
{
	int ncpus = libbpf_num_possible_cpus(), cpu, i;
	__u64 *vals;
	__u32 zero = 0;

	memset(out, 0, sizeof(*out) * n);
	if (ncpus <= 0 || !(vals = calloc((size_t)ncpus * n, sizeof(*vals))))
		return -ENOMEM;
	if (bpf_map_lookup_elem(bpf_map__fd(map), &zero, vals)) {
		free(vals);
		return -errno;
	}
	for (cpu = 0; cpu < ncpus; cpu++)
		for (i = 0; i < n; i++)
			out[i] += vals[(size_t)cpu * n + i];
	free(vals);
	return 0;
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

struct report {
	const struct scx_mlsched_cfg *cfg;
	double seconds;
	const __u64 *sched, *helper;
	const struct user_exit_info *ex;
};

static int fill_report(FILE *f, void *arg)
{
	const struct report *r = arg;
	int i;

	fprintf(f, "{\n  \"policy\": \"%s\",\n  \"levels\": %u,\n  \"explore_permille\": %u,\n"
		"  \"nr_cpus\": %u,\n  \"nr_doms\": %u,\n  \"seconds\": %.3f,\n  \"sched\": {",
		policy_names[r->cfg->policy], r->cfg->levels, r->cfg->explore_permille,
		r->cfg->nr_cpus, r->cfg->nr_doms, r->seconds);
	for (i = 0; i < SCX_MLSCHED_STAT_COUNT; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", sched_stat_names[i],
			(unsigned long long)r->sched[i]);
	fprintf(f, "},\n  \"helper\": {");
	for (i = 0; i < MLSCHED_STAT_COUNT; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", helper_stat_names[i],
			(unsigned long long)r->helper[i]);
	fprintf(f, "},\n  \"exit\": {\"kind\": %d, \"exit_code\": %lld, \"reason\": ", r->ex->kind,
		(long long)r->ex->exit_code);
	json_string(f, r->ex->reason);
	fprintf(f, ", \"msg\": ");
	json_string(f, r->ex->msg);
	fprintf(f, "}\n}\n");
	return ferror(f) ? -1 : 0;
}

/* The report as JSON at `path`, whole or not at all (report_file.h). */
static int write_report(const char *path, const struct scx_mlsched_cfg *cfg, double seconds,
			const __u64 *sched, const __u64 *helper, const struct user_exit_info *ex)
{
	struct report r = { cfg, seconds, sched, helper, ex };

	if (report_file_write(path, fill_report, &r)) {
		fprintf(stderr, PROG ": writing %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

struct explore_out {
	struct explore_file file;	/* rows written and lost: explore_file.h */
	const char *path;
	unsigned long long bad;		/* short records from the ring */
};

/* One explored answer from the ring: a CSV row, written whole or counted lost. */
static int on_explore(void *ctx, void *data, size_t size)
{
	struct explore_out *o = ctx;
	const struct scx_mlsched_explore *r = data;
	char row[EXPLORE_ROW_MAX];
	int len;

	if (size < sizeof(*r)) {
		o->bad++;
		return 0;
	}
	len = snprintf(row, sizeof(row), "%u,%u,%u,%.6f,%.6f,%u,%.3f,%llu,%u,%u,%u,%u,%s,%u,%llu\n",
		       r->cpu, r->idle, r->busy, r->src_load / (double)MLSCHED_LOAD_ONE,
		       r->dst_load / (double)MLSCHED_LOAD_ONE, r->action,
		       r->propensity_permille / 1000.0, (unsigned long long)r->wait_ns,
		       r->src_queued, r->dst_queued, r->src_queued_after, r->dst_queued_after,
		       r->kind == SCX_MLSCHED_KIND_PULL ? "pull" : "push", r->pid,
		       (unsigned long long)r->ts_ns);
	if (len < 0 || len >= (int)sizeof(row)) {
		o->bad++;
		return 0;
	}
	if (explore_file_append(&o->file, row, len) && o->file.errors == 1)
		fprintf(stderr, PROG ": --explore-out %s: %s; rows are counted as lost until writes"
			" succeed\n", o->path, strerror(o->file.first_errno));
	return 0;
}

/* --explore-out: checked, a cut last row removed, the header first when it is empty. */
static void open_explore_out(struct explore_out *o, const char *path)
{
	char why[EXPLORE_FILE_WHY_MAX];

	o->path = path;
	if (explore_file_open(&o->file, path, explore_header, why, sizeof(why)))
		die("--explore-out %s", why);
	if (o->file.repaired)
		fprintf(stderr, PROG ": --explore-out %s: cut a partial last row (%lld bytes)\n",
			path, (long long)o->file.repaired);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* What the command line asked for. */
struct args {
	struct scx_mlsched_cfg cfg;
	const char *pin_dir, *domains, *stats_file, *explore_path;
	long duration;
	bool list_domains;
};

/* One run: the loaded scheduler, its explore ring, the counters it is judged by. */
struct run {
	struct scx_mlsched *skel;
	struct bpf_link *link;
	struct explore_out xo;
	struct ring_buffer *xring;
	__u64 sched[SCX_MLSCHED_STAT_COUNT], helper[MLSCHED_STAT_COUNT];
	__u64 helper_before[MLSCHED_STAT_COUNT];
	struct user_exit_info ex;
	double started;
};

/* The flags into `a`; exits for -h (0) and for a flag it cannot take (2). */
static void parse_args(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {
		{ "policy", required_argument, NULL, 'p' },
		{ "levels", required_argument, NULL, 'l' },
		{ "pin-dir", required_argument, NULL, 'P' },
		{ "domains", required_argument, NULL, 'd' },
		{ "slice-us", required_argument, NULL, 's' },
		{ "ttl-ms", required_argument, NULL, 't' },
		{ "nudge-us", required_argument, NULL, 'n' },
		{ "cold-us", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'D' },
		{ "list-domains", no_argument, NULL, 'L' },
		{ "explore", required_argument, NULL, 'x' },
		{ "explore-out", required_argument, NULL, 'X' },
		{ "stats-file", required_argument, NULL, 'o' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct scx_mlsched_cfg *cfg = &a->cfg;
	int c, i;

	*a = (struct args){ .cfg = {
		.policy = SCX_MLSCHED_POLICY_MODEL,
		.levels = 2,
		.slice_ns = DEFAULT_SLICE_US * 1000ULL,
		.answer_ttl_ns = DEFAULT_TTL_MS * 1000000ULL,
		.nudge_interval_ns = DEFAULT_NUDGE_US * 1000ULL,
		.cold_ns = DEFAULT_COLD_US * 1000ULL,
	} };
	while ((c = getopt_long(argc, argv, "p:l:P:d:s:t:n:c:D:Lx:X:o:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			for (i = 0; i < 3 && strcmp(optarg, policy_names[i]); i++)
				;
			if (i == 3)
				die("--policy: expected model, stay or migrate, got '%s'", optarg);
			cfg->policy = i;
			break;
		case 'l': cfg->levels = parse_num(optarg, "--levels", 1, 2); break;
		case 'P': a->pin_dir = optarg; break;
		case 'd': a->domains = optarg; break;
		case 's': cfg->slice_ns = parse_num(optarg, "--slice-us", 100, 1000000) * 1000ULL; break;
		case 't': cfg->answer_ttl_ns = parse_num(optarg, "--ttl-ms", 1, 60000) * 1000000ULL;
			break;
		case 'n': cfg->nudge_interval_ns = parse_num(optarg, "--nudge-us", 0, 1000000) * 1000ULL;
			break;
		case 'c': cfg->cold_ns = parse_num(optarg, "--cold-us", 0, 1000000) * 1000ULL; break;
		case 'D': a->duration = parse_num(optarg, "--duration", 0, 86400 * 365); break;
		case 'L': a->list_domains = true; break;
		case 'x': cfg->explore_permille = parse_num(optarg, "--explore", 0, 1000); break;
		case 'X': a->explore_path = optarg; break;
		case 'o': a->stats_file = optarg; break;
		case 'v': verbose = 1; break;
		case 'h': printf(usage, DEFAULT_SLICE_US, DEFAULT_TTL_MS, DEFAULT_NUDGE_US,
					 DEFAULT_COLD_US); exit(0);
		default:
			fprintf(stderr, "Try '" PROG " --help'.\n");
			exit(2);
		}
	}
	if (optind < argc)
		die("unexpected argument '%s'", argv[optind]);
}

/* Flags that only make sense together, and what loading needs of this machine. */
static void check_can_run(const struct args *a)
{
	if (a->explore_path && !a->cfg.explore_permille)
		die("--explore-out needs --explore N (N > 0)");
	if (a->cfg.policy == SCX_MLSCHED_POLICY_MODEL && !a->pin_dir)
		die("--policy model needs --pin-dir (the maps of `mlsched-lite run --pin`)");
	if (geteuid() != 0)
		die("loading a sched_ext scheduler needs root (CAP_SYS_ADMIN and CAP_BPF)");
	if (access("/sys/kernel/sched_ext/state", R_OK))
		die("this kernel has no sched_ext (CONFIG_SCHED_CLASS_EXT)");
}

/* Open, take the pinned maps, load, open the explore file and ring, attach. */
static void start(struct run *r, const struct args *a)
{
	libbpf_set_print(libbpf_log);
	r->skel = SCX_OPS_OPEN(mlsched_ops, scx_mlsched);
	/* A CPU going on- or offline from here on ends the scheduler (the hotplug_seq
	 * SCX_OPS_OPEN took); one before it is caught here. */
	if (online_cpus() != a->cfg.nr_cpus)
		die("the online CPUs changed while starting: start again");
	if (a->pin_dir)
		reuse_pinned_maps(r->skel, a->pin_dir);
	r->skel->rodata->cfg = a->cfg;
	SCX_OPS_LOAD(r->skel, mlsched_ops, scx_mlsched, uei);
	if (a->explore_path) {
		open_explore_out(&r->xo, a->explore_path);
		r->xring = ring_buffer__new(bpf_map__fd(r->skel->maps.explore), on_explore, &r->xo,
					    NULL);
		if (!r->xring) {
			int err = errno;

			explore_file_abandon(&r->xo.file, a->explore_path);
			die("explore ring: %s", strerror(err));
		}
	}
	/* The helper's counters live in maps that outlive us (pinned): report our share. */
	sum_percpu(r->skel->maps.stats, MLSCHED_STAT_COUNT, r->helper_before);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	r->link = SCX_OPS_ATTACH(r->skel, mlsched_ops, scx_mlsched);
	r->started = now_s();
	fprintf(stderr, PROG ": running, policy %s, %u CPUs in %u domains\n",
		policy_names[a->cfg.policy], a->cfg.nr_cpus, a->cfg.nr_doms);
}

/* Until a signal, --duration or the scheduler's own exit; explore rows on the way. */
static void wait_until_done(struct run *r, long duration)
{
	while (!stop_requested && !UEI_EXITED(r->skel, uei) &&
	       (!duration || now_s() - r->started < duration)) {
		if (r->xring)
			ring_buffer__poll(r->xring, 100);
		else
			usleep(100000);
	}
}

/* The rest of the explore ring into the file, and what became of the rows. */
static void finish_explore(struct run *r, const char *path)
{
	/* what the scheduler wrote before it left */
	ring_buffer__consume(r->xring);
	ring_buffer__free(r->xring);
	if (explore_file_close(&r->xo.file))
		fprintf(stderr, PROG ": --explore-out %s: %s\n", path, strerror(errno));
	fprintf(stderr, PROG ": %llu explored answers written to %s\n", r->xo.file.rows, path);
	if (r->xo.file.lost)
		fprintf(stderr, PROG ": %llu explored answers lost to failed writes (%s)\n",
			r->xo.file.lost, strerror(r->xo.file.first_errno));
	if (r->xo.bad)
		fprintf(stderr, PROG ": %llu short explore records skipped\n", r->xo.bad);
}

/* Counters, detach, the explore file, the exit reason; the scheduler is gone after. */
static void stop(struct run *r, const struct args *a)
{
	int i;

	sum_percpu(r->skel->maps.sched_stats, SCX_MLSCHED_STAT_COUNT, r->sched);
	sum_percpu(r->skel->maps.stats, MLSCHED_STAT_COUNT, r->helper);
	for (i = 0; i < MLSCHED_STAT_COUNT; i++)
		r->helper[i] -= r->helper_before[i];
	bpf_link__destroy(r->link);
	if (r->xring)
		finish_explore(r, a->explore_path);
	/* ops.exit runs from a kernel worker after the unregistration: wait for it. */
	for (i = 0; i < 50 && !UEI_EXITED(r->skel, uei); i++)
		usleep(20000);
	r->ex = r->skel->data->uei;
	fprintf(stderr, PROG ": stopped after %.1f s\n", now_s() - r->started);
	if (r->ex.kind)
		UEI_REPORT(r->skel, uei);
	else
		fprintf(stderr, PROG ": exit not reported\n");
	scx_mlsched__destroy(r->skel);
	for (i = 0; i < SCX_MLSCHED_STAT_COUNT; i++)
		fprintf(stderr, "%s%s=%llu", i ? " " : "  ", sched_stat_names[i],
			(unsigned long long)r->sched[i]);
	fputc('\n', stderr);
}

/* 0 for a clean unregistration, 1 for a scheduler error or a report that failed. */
static int exit_status(const struct run *r, const struct args *a)
{
	/* enum scx_exit_kind: UNREG* below ERROR, errors from ERROR on (kernel BTF) */
	__u64 err_kind = __COMPAT_ENUM_OR_ZERO("scx_exit_kind", "SCX_EXIT_ERROR");

	if (a->stats_file && write_report(a->stats_file, &a->cfg, now_s() - r->started, r->sched,
					  r->helper, &r->ex))
		return 1;
	return err_kind && (__u64)r->ex.kind >= err_kind ? 1 : 0;
}

int main(int argc, char **argv)
{
	static struct args a;
	static struct run r;

	parse_args(argc, argv, &a);
	a.cfg.nr_cpus = online_cpus();
	if (a.domains)
		parse_domains(a.domains, &a.cfg);
	else
		detect_domains(&a.cfg);
	if (a.list_domains) {
		print_domains(&a.cfg);
		return 0;
	}
	check_can_run(&a);
	start(&r, &a);
	wait_until_done(&r, a.duration);
	stop(&r, &a);
	return exit_status(&r, &a);
}
