// SPDX-License-Identifier: GPL-2.0-only
/*
 * scx_mlsched - load the mlsched sched_ext scheduler, run it, report.
 *
 *   open scx_mlsched.bpf.o -> reuse mlsched-lite's pinned maps (policy model)
 *   -> write the configuration into .rodata -> load (verifier) -> attach
 *   struct_ops (every normal task is now ours) -> wait for SIGINT/SIGTERM,
 *   --duration or a scheduler exit -> detach -> counters and exit reason.
 *
 * With --policy model the decision maps (requests, table, decisions, control,
 * host, stats) are the ones `mlsched-lite run --pin` pinned under --pin-dir:
 * the table mlsched-lite loaded answers in the kernel and mlsched-lite itself
 * answers the misses. The control policies (stay, migrate) need no daemon.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include "mlsched.h"
#include "scx_mlsched.h"

#define PROG "scx_mlsched"
#define DEFAULT_SLICE_US	5000
#define DEFAULT_TTL_MS		100
#define DEFAULT_NUDGE_US	2000

/* Names of enum scx_mlsched_stat, in order (the JSON keys of the report). */
static const char *const sched_stat_names[] = {
	"ask_wake", "ask_pull", "from_table", "from_daemon", "sent", "waiting",
	"unanswered", "no_answer", "fixed", "said_migrate", "moved_wake", "moved_pull",
	"nudges", "direct", "queued", "pinned",
};
_Static_assert(sizeof(sched_stat_names) / sizeof(sched_stat_names[0]) == SCX_MLSCHED_STAT_COUNT,
	       "one name per scheduler counter");

/* Names of enum mlsched_stat (bpf/mlsched.h), lower-cased as mlsched-lite prints them. */
static const char *const helper_stat_names[] = {
	"produced", "dropped", "kernel_hits", "misses_sent", "answered", "stale",
	"no_consumer", "clamped", "invalid",
};
_Static_assert(sizeof(helper_stat_names) / sizeof(helper_stat_names[0]) == MLSCHED_STAT_COUNT,
	       "one name per helper counter");

/* The maps mlsched_decide.h brings, shared with mlsched-lite under --pin-dir. */
static const char *const shared_maps[] = {
	"requests", "table", "decisions", "control", "host", "stats",
};

static const char *const policy_names[] = { "model", "stay", "migrate" };

static const char usage[] =
"Usage: " PROG " [OPTIONS]\n"
"Run the mlsched sched_ext scheduler until SIGINT/SIGTERM or --duration.\n"
"\n"
"  -p, --policy NAME     model (ask mlsched_decide(); needs --pin-dir), stay or\n"
"                        migrate (controls: fixed answers)            [model]\n"
"  -P, --pin-dir DIR     maps pinned by `mlsched-lite run --pin`      [none]\n"
"  -d, --domains SPEC    CPU domains, e.g. 0-1,2-3        [one per CPU package]\n"
"  -s, --slice-us N      time slice                                    [%d]\n"
"  -t, --ttl-ms N        wait this long for mlsched-lite's answer      [%d]\n"
"  -n, --nudge-us N      at most one pull nudge per domain this often  [%d]\n"
"  -D, --duration S      run S seconds (0: until a signal)             [0]\n"
"  -o, --stats-file PATH write counters and exit reason as JSON there at the end\n"
"  -O, --object PATH     BPF object    [scx_mlsched.bpf.o next to this program]\n"
"  -v, --verbose         libbpf debug output (verifier log)\n"
"  -h, --help            this help\n"
"\n"
"Examples:\n"
"  mlsched-lite run --bundle B --pin --no-collector &   # decisions from the model\n"
"  " PROG " --pin-dir /sys/fs/bpf/mlsched -o /tmp/scx.json\n"
"  " PROG " --policy stay --duration 30                 # control: no balancing\n";

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

/* "0-1,2-3" -> cpu_dom[], dom_ncpus[]; every CPU 0..ncpus-1 exactly once. */
static void parse_domains(const char *spec, struct scx_mlsched_cfg *cfg)
{
	char *copy = strdup(spec), *save = NULL, *tok;
	int seen[SCX_MLSCHED_MAX_CPUS] = {0};
	__u32 d = 0, cpu;

	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save), d++) {
		char *dash = strchr(tok, '-');
		long lo, hi;

		if (d >= SCX_MLSCHED_MAX_DOMS)
			die("--domains: at most %d domains", SCX_MLSCHED_MAX_DOMS);
		if (dash)
			*dash = '\0';
		lo = parse_num(tok, "--domains", 0, cfg->nr_cpus - 1);
		hi = dash ? parse_num(dash + 1, "--domains", lo, cfg->nr_cpus - 1) : lo;
		for (cpu = lo; cpu <= hi; cpu++) {
			if (seen[cpu]++)
				die("--domains: CPU %u appears twice in '%s'", cpu, spec);
			cfg->cpu_dom[cpu] = d;
			cfg->dom_ncpus[d]++;
		}
	}
	for (cpu = 0; cpu < cfg->nr_cpus; cpu++)
		if (!seen[cpu])
			die("--domains: CPU %u is in no domain ('%s')", cpu, spec);
	cfg->nr_doms = d;
	free(copy);
}

/* One domain per CPU package (sysfs topology), in order of first appearance. */
static void detect_domains(struct scx_mlsched_cfg *cfg)
{
	long pkg_of_dom[SCX_MLSCHED_MAX_DOMS];
	__u32 cpu, d;

	cfg->nr_doms = 0;
	for (cpu = 0; cpu < cfg->nr_cpus; cpu++) {
		char path[128];
		long pkg = 0;
		FILE *f;

		snprintf(path, sizeof(path),
			 "/sys/devices/system/cpu/cpu%u/topology/physical_package_id", cpu);
		f = fopen(path, "r");
		if (f) {
			if (fscanf(f, "%ld", &pkg) != 1)
				pkg = 0;
			fclose(f);
		}
		for (d = 0; d < cfg->nr_doms && pkg_of_dom[d] != pkg; d++)
			;
		if (d == cfg->nr_doms) {
			if (d >= SCX_MLSCHED_MAX_DOMS)
				die("more than %d CPU packages: pass --domains", SCX_MLSCHED_MAX_DOMS);
			pkg_of_dom[d] = pkg;
			cfg->nr_doms++;
		}
		cfg->cpu_dom[cpu] = d;
		cfg->dom_ncpus[d]++;
	}
}

/* Copy cfg into the `cfg` variable of .rodata (found through the object's BTF). */
static void set_rodata_cfg(struct bpf_object *obj, const struct scx_mlsched_cfg *cfg)
{
	struct btf *btf = bpf_object__btf(obj);
	const struct btf_var_secinfo *vs;
	const struct btf_type *sec;
	struct bpf_map *map;
	size_t size = 0;
	char *data;
	int id, i;

	bpf_object__for_each_map(map, obj) {
		const char *name = bpf_map__name(map);
		size_t len = strlen(name);

		if (len >= 7 && !strcmp(name + len - 7, ".rodata"))
			break;
	}
	id = btf ? btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC) : -1;
	if (!map || id < 0 || !(data = (char *)bpf_map__initial_value(map, &size)))
		die("the BPF object has no .rodata with `cfg`: rebuild scx_mlsched.bpf.o");
	sec = btf__type_by_id(btf, id);
	vs = btf_var_secinfos(sec);
	for (i = 0; i < btf_vlen(sec); i++, vs++) {
		const char *name = btf__name_by_offset(btf, btf__type_by_id(btf, vs->type)->name_off);

		if (!strcmp(name, "cfg")) {
			if (vs->size != sizeof(*cfg) || vs->offset + vs->size > size)
				die("`cfg` in the BPF object is %u bytes, this loader writes %zu:"
				    " rebuild both", vs->size, sizeof(*cfg));
			memcpy(data + vs->offset, cfg, sizeof(*cfg));
			return;
		}
	}
	die("no `cfg` in the BPF object's .rodata: rebuild scx_mlsched.bpf.o");
}

static void reuse_pinned_maps(struct bpf_object *obj, const char *dir)
{
	for (size_t i = 0; i < sizeof(shared_maps) / sizeof(shared_maps[0]); i++) {
		struct bpf_map *map = bpf_object__find_map_by_name(obj, shared_maps[i]);
		char path[PATH_MAX];
		int fd, err;

		snprintf(path, sizeof(path), "%s/%s", dir, shared_maps[i]);
		if (!map)
			die("map %s missing from the BPF object", shared_maps[i]);
		fd = bpf_obj_get(path);
		if (fd < 0)
			die("%s: %s (start `mlsched-lite run --pin --pin-dir %s` first)",
			    path, strerror(errno), dir);
		err = bpf_map__reuse_fd(map, fd);
		close(fd);
		if (err)
			die("reusing %s: %s", path, strerror(-err));
	}
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

/* Write the report next to `path` and rename it into place: never half a file. */
static int write_report(const char *path, const struct scx_mlsched_cfg *cfg, double seconds,
			const __u64 *sched, const __u64 *helper, const struct scx_mlsched_exit *ex)
{
	char tmp[PATH_MAX];
	FILE *f;
	int i;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, getpid());
	f = fopen(tmp, "w");
	if (!f) {
		fprintf(stderr, PROG ": %s: %s\n", tmp, strerror(errno));
		return -1;
	}
	fprintf(f, "{\n  \"policy\": \"%s\",\n  \"nr_cpus\": %u,\n  \"nr_doms\": %u,\n"
		"  \"seconds\": %.3f,\n  \"sched\": {", policy_names[cfg->policy], cfg->nr_cpus,
		cfg->nr_doms, seconds);
	for (i = 0; i < SCX_MLSCHED_STAT_COUNT; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", sched_stat_names[i],
			(unsigned long long)sched[i]);
	fprintf(f, "},\n  \"helper\": {");
	for (i = 0; i < MLSCHED_STAT_COUNT; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", helper_stat_names[i],
			(unsigned long long)helper[i]);
	fprintf(f, "},\n  \"exit\": {\"kind\": %d, \"exit_code\": %lld, \"reason\": ", ex->kind,
		(long long)ex->exit_code);
	json_string(f, ex->reason);
	fprintf(f, ", \"msg\": ");
	json_string(f, ex->msg);
	fprintf(f, "}\n}\n");
	if (fflush(f) || fsync(fileno(f)) || fclose(f) || rename(tmp, path)) {
		fprintf(stderr, PROG ": writing %s: %s\n", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "policy", required_argument, NULL, 'p' },
		{ "pin-dir", required_argument, NULL, 'P' },
		{ "domains", required_argument, NULL, 'd' },
		{ "slice-us", required_argument, NULL, 's' },
		{ "ttl-ms", required_argument, NULL, 't' },
		{ "nudge-us", required_argument, NULL, 'n' },
		{ "duration", required_argument, NULL, 'D' },
		{ "stats-file", required_argument, NULL, 'o' },
		{ "object", required_argument, NULL, 'O' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct scx_mlsched_cfg cfg = {
		.policy = SCX_MLSCHED_POLICY_MODEL,
		.slice_ns = DEFAULT_SLICE_US * 1000ULL,
		.answer_ttl_ns = DEFAULT_TTL_MS * 1000000ULL,
		.nudge_interval_ns = DEFAULT_NUDGE_US * 1000ULL,
	};
	const char *pin_dir = NULL, *domains = NULL, *stats_file = NULL, *object = NULL;
	__u64 sched[SCX_MLSCHED_STAT_COUNT], helper[MLSCHED_STAT_COUNT];
	__u64 helper_before[MLSCHED_STAT_COUNT];
	struct scx_mlsched_exit ex = { 0 };
	char default_object[PATH_MAX];
	struct bpf_program *init_prog;
	struct bpf_link *link;
	struct bpf_object *obj;
	long duration = 0, ncpus;
	double started;
	__u32 zero = 0;
	int c, err, i;

	while ((c = getopt_long(argc, argv, "p:P:d:s:t:n:D:o:O:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			for (i = 0; i < 3 && strcmp(optarg, policy_names[i]); i++)
				;
			if (i == 3)
				die("--policy: expected model, stay or migrate, got '%s'", optarg);
			cfg.policy = i;
			break;
		case 'P': pin_dir = optarg; break;
		case 'd': domains = optarg; break;
		case 's': cfg.slice_ns = parse_num(optarg, "--slice-us", 100, 1000000) * 1000ULL; break;
		case 't': cfg.answer_ttl_ns = parse_num(optarg, "--ttl-ms", 1, 60000) * 1000000ULL; break;
		case 'n': cfg.nudge_interval_ns = parse_num(optarg, "--nudge-us", 0, 1000000) * 1000ULL;
			break;
		case 'D': duration = parse_num(optarg, "--duration", 0, 86400 * 365); break;
		case 'o': stats_file = optarg; break;
		case 'O': object = optarg; break;
		case 'v': verbose = 1; break;
		case 'h': printf(usage, DEFAULT_SLICE_US, DEFAULT_TTL_MS, DEFAULT_NUDGE_US); return 0;
		default:
			fprintf(stderr, "Try '" PROG " --help'.\n");
			return 2;
		}
	}
	if (optind < argc)
		die("unexpected argument '%s'", argv[optind]);
	if (cfg.policy == SCX_MLSCHED_POLICY_MODEL && !pin_dir)
		die("--policy model needs --pin-dir (the maps of `mlsched-lite run --pin`)");
	if (geteuid() != 0)
		die("loading a sched_ext scheduler needs root (CAP_SYS_ADMIN and CAP_BPF)");
	if (access("/sys/kernel/sched_ext/state", R_OK))
		die("this kernel has no sched_ext (CONFIG_SCHED_CLASS_EXT)");

	ncpus = sysconf(_SC_NPROCESSORS_CONF);
	if (ncpus < 1 || ncpus > SCX_MLSCHED_MAX_CPUS)
		die("%ld CPUs: this scheduler handles 1..%d", ncpus, SCX_MLSCHED_MAX_CPUS);
	cfg.nr_cpus = ncpus;
	if (domains)
		parse_domains(domains, &cfg);
	else
		detect_domains(&cfg);

	if (!object) {
		char self[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

		if (n < 0)
			die("cannot find myself (/proc/self/exe): pass --object");
		self[n] = '\0';
		snprintf(default_object, sizeof(default_object), "%s/scx_mlsched.bpf.o",
			 dirname(self));
		object = default_object;
	}

	libbpf_set_print(libbpf_log);
	obj = bpf_object__open_file(object, NULL);
	if (!obj)
		die("%s: %s", object, strerror(errno));
	if (pin_dir)
		reuse_pinned_maps(obj, pin_dir);
	set_rodata_cfg(obj, &cfg);
	init_prog = bpf_object__find_program_by_name(obj, "mls_init");
	if (!init_prog)
		die("%s has no mls_init program", object);
	bpf_program__set_flags(init_prog, bpf_program__flags(init_prog) | BPF_F_SLEEPABLE);

	err = bpf_object__load(obj);
	if (err)
		die("loading %s failed: %s (run with -v for the verifier log)", object,
		    strerror(-err));
	/* The helper's counters live in maps that outlive us (pinned): report our share. */
	sum_percpu(bpf_object__find_map_by_name(obj, "stats"), MLSCHED_STAT_COUNT, helper_before);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	link = bpf_map__attach_struct_ops(bpf_object__find_map_by_name(obj, "mlsched_ops"));
	if (!link)
		die("attaching the scheduler failed: %s", strerror(errno));
	started = now_s();
	fprintf(stderr, PROG ": running, policy %s, %u CPUs in %u domains\n",
		policy_names[cfg.policy], cfg.nr_cpus, cfg.nr_doms);

	while (!stop_requested && (!duration || now_s() - started < duration)) {
		if (!bpf_map_lookup_elem(bpf_map__fd(bpf_object__find_map_by_name(obj, "sched_exit")),
					 &zero, &ex) && ex.kind)
			break;
		usleep(100000);
	}

	sum_percpu(bpf_object__find_map_by_name(obj, "sched_stats"), SCX_MLSCHED_STAT_COUNT, sched);
	sum_percpu(bpf_object__find_map_by_name(obj, "stats"), MLSCHED_STAT_COUNT, helper);
	for (i = 0; i < MLSCHED_STAT_COUNT; i++)
		helper[i] -= helper_before[i];
	bpf_link__destroy(link);
	/* ops.exit runs from a kernel worker after the unregistration: wait for it. */
	for (i = 0; i < 50; i++) {
		if (!bpf_map_lookup_elem(bpf_map__fd(bpf_object__find_map_by_name(obj, "sched_exit")),
					 &zero, &ex) && ex.kind)
			break;
		usleep(20000);
	}
	bpf_object__close(obj);

	fprintf(stderr, PROG ": stopped after %.1f s: %s%s%s\n", now_s() - started,
		ex.kind ? ex.reason : "exit not reported", ex.msg[0] ? ": " : "", ex.msg);
	for (i = 0; i < SCX_MLSCHED_STAT_COUNT; i++)
		fprintf(stderr, "%s%s=%llu", i ? " " : "  ", sched_stat_names[i],
			(unsigned long long)sched[i]);
	fputc('\n', stderr);
	if (stats_file && write_report(stats_file, &cfg, now_s() - started, sched, helper, &ex))
		return 1;
	return ex.kind >= SCX_MLSCHED_EXIT_ERROR ? 1 : 0;
}
