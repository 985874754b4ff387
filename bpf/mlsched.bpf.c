// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlsched.bpf.c - the kernel side of mlsched that production loads: the
 * decision maps (mlsched_decide.h) and the live collector.
 *
 *   on_sched_migrate tp_btf: CFS moved a fair task -> request, CFS action MIGRATE.
 *   on_sched_wakeup  tp_btf: CFS woke a task where it was -> request, CFS action
 *                    STAY (shadow mode: user space compares model and CFS).
 *
 * on_sched_switch keeps the collector's features: per-CPU idle/busy state,
 * host-wide idle/busy counts of the table's CPUs (cpu_index) and per-domain load (time-averaged busy fraction,
 * 1/1024).
 *
 * map_refs (iter/bpf_map, loaded only when needed) counts the references of every
 * map: a consumer reads it before it replaces pinned maps of another geometry.
 *
 * The injector and the decision reader (SEC("syscall"), for tests, replay and
 * the benchmark) are another object, mlsched_inject.bpf.c, loaded on first use
 * onto this object's maps.
 *
 * Future improvements: the wakeup candidate domain is found by a linear scan
 * (<= MLSCHED_MAX_DOMAINS); domain load updates race benignly when CPUs of
 * one domain change state at the same instant.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "mlsched_decide.h"

char LICENSE[] SEC("license") = "GPL";

/* Scheduling policies served by the fair class (include/uapi/linux/sched.h). */
#define SCHED_NORMAL	0
#define SCHED_BATCH	3
#define SCHED_IDLE	5
/* p->__state while try_to_wake_up() picks a CPU (include/linux/sched.h). */
#define TASK_WAKING	0x00000200

/* Per-CPU state as on_sched_switch last saw it. */
enum cpu_run_state { RUN_UNKNOWN = 0, RUN_IDLE = 1, RUN_BUSY = 2 };

/* cpu -> domain id (MLSCHED_DOMAIN_NONE: no domain), filled by user space before the
 * collector is attached. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MLSCHED_MAX_CPUS);
} cpu_domain SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct mlsched_domain);
	__uint(max_entries, MLSCHED_MAX_DOMAINS);
} domains SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);		/* enum cpu_run_state */
	__uint(max_entries, 1);
} cpu_state SEC(".maps");

/* Per task: the last request it caused, checked for an answer at its next event. */
struct task_info {
	__u64 last_seq;
	__u32 wake_migrated;		/* set by a migration inside try_to_wake_up() */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_info);
} task_info SEC(".maps");

/* ---- live collector ----------------------------------------------------------- */

static __always_inline __u32 task_cpu_of(const struct task_struct *p)
{
	return BPF_CORE_READ(p, thread_info.cpu);
}

static __always_inline bool is_fair(const struct task_struct *p)
{
	unsigned int policy = BPF_CORE_READ(p, policy);

	return policy == SCHED_NORMAL || policy == SCHED_BATCH || policy == SCHED_IDLE;
}

static __always_inline struct mlsched_domain *domain_of(__u32 cpu, __u32 *dom_id)
{
	__u32 *dom = bpf_map_lookup_elem(&cpu_domain, &cpu);

	if (!dom)
		return NULL;
	*dom_id = *dom;
	return bpf_map_lookup_elem(&domains, dom);
}

/*
 * Domain load at `now`: load_avg moves linearly toward the current busy
 * fraction, reaching it after MLSCHED_LOAD_TAU_NS (a cheap stand-in for PELT).
 */
static __always_inline __u32 domain_load(const struct mlsched_domain *d, __u64 now)
{
	__u32 ncpus = d->ncpus, busy = d->nr_busy, avg = d->load_avg;
	__u64 last = d->last_update_ns, dt;
	__u32 inst;

	if (ncpus == 0)
		return 0;
	if (busy > ncpus)
		busy = ncpus;
	inst = busy * MLSCHED_LOAD_ONE / ncpus;
	if (last == 0)
		return inst;
	if (now <= last)
		return avg;
	dt = now - last;
	if (dt >= MLSCHED_LOAD_TAU_NS)
		return inst;
	if (inst >= avg)
		return avg + (__u32)((__u64)(inst - avg) * dt / MLSCHED_LOAD_TAU_NS);
	return avg - (__u32)((__u64)(avg - inst) * dt / MLSCHED_LOAD_TAU_NS);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 zero = 0, cpu = bpf_get_smp_processor_id(), dom_id;
	__u32 *state = bpf_map_lookup_elem(&cpu_state, &zero);
	struct mlsched_host *h = mlsched_host_state();
	struct mlsched_domain *d;
	__u32 old, new;
	__u64 now;

	if (!state || !h)
		return 0;
	new = next->pid == 0 ? RUN_IDLE : RUN_BUSY;
	old = *state;
	if (old == new)
		return 0;
	*state = new;

	/* only the table's CPUs count idle or busy (idle + busy == N); counts never go
	 * below zero, whatever state a previous run left behind */
	if (mlsched_cpu_index(cpu) != MLSCHED_CPU_NONE) {
		if (old == RUN_IDLE && h->idle_cpus)
			__sync_fetch_and_add(&h->idle_cpus, -1);
		else if (old == RUN_BUSY && h->busy_cpus)
			__sync_fetch_and_add(&h->busy_cpus, -1);
		if (new == RUN_IDLE)
			__sync_fetch_and_add(&h->idle_cpus, 1);
		else
			__sync_fetch_and_add(&h->busy_cpus, 1);
	}
	__sync_fetch_and_add(&h->transitions, 1);

	d = domain_of(cpu, &dom_id);
	if (!d)
		return 0;
	now = bpf_ktime_get_ns();
	/* settle the average under the old busy count, then change the count */
	d->load_avg = domain_load(d, now);
	d->last_update_ns = now;
	if (old == RUN_BUSY && d->nr_busy)
		__sync_fetch_and_add(&d->nr_busy, -1);
	if (new == RUN_BUSY)
		__sync_fetch_and_add(&d->nr_busy, 1);
	return 0;
}

/* The task's previous request: did user space answer it before this event? */
static __always_inline void settle_previous(struct task_info *ti)
{
	__u8 decision;

	if (!ti->last_seq)
		return;
	if (mlsched_answer(ti->last_seq, &decision) == MLSCHED_ANS_ANSWERED)
		mlsched_count(MLSCHED_STAT_ANSWERED);
	else
		mlsched_count(MLSCHED_STAT_STALE);
	ti->last_seq = 0;
}

static __always_inline void fill_counts(struct mlsched_features *f)
{
	struct mlsched_host *h = mlsched_host_state();

	f->idle = h ? h->idle_cpus : 0;
	f->busy = h ? h->busy_cpus : 0;
}

static __always_inline __u32 collector_flags(void)
{
	struct mlsched_control *ctl = mlsched_ctl();

	return ctl && (ctl->flags & MLSCHED_CTL_REPORT_HITS) ? MLSCHED_DECIDE_REPORT_HITS : 0;
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(on_sched_migrate, struct task_struct *p, int dest_cpu)
{
	struct mlsched_features f = {};
	struct mlsched_domain *src, *dst;
	struct mlsched_outcome out;
	struct task_info *ti;
	__u32 src_id, dst_id;
	__u64 now;

	if (p->pid == 0 || !is_fair(p))
		return 0;
	now = bpf_ktime_get_ns();
	f.cpu = task_cpu_of(p);
	fill_counts(&f);
	src = domain_of(f.cpu, &src_id);
	dst = domain_of((__u32)dest_cpu, &dst_id);
	f.src_load = src ? domain_load(src, now) : 0;
	f.dst_load = dst ? domain_load(dst, now) : 0;

	ti = bpf_task_storage_get(&task_info, p, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (ti)
		settle_previous(ti);
	mlsched_decide_ex(&f, p->pid, MLSCHED_SRC_MIGRATE, MLSCHED_MIGRATE, (__u32)dest_cpu,
			  collector_flags(), &out);
	if (ti) {
		if (out.fate == MLSCHED_FATE_SENT)
			ti->last_seq = out.seq;
		/* the sched_wakeup that follows this migration is not a STAY */
		ti->wake_migrated = BPF_CORE_READ(p, __state) == TASK_WAKING;
	}
	return 0;
}

struct scan_state {
	__u64 now;
	__u32 skip, best, best_load;
};

static long scan_domain(__u32 i, struct scan_state *st)
{
	struct mlsched_domain *d;
	__u32 l;

	if (i == st->skip)
		return 0;
	d = bpf_map_lookup_elem(&domains, &i);
	if (!d || d->ncpus == 0)
		return 0;
	l = domain_load(d, st->now);
	if (l < st->best_load) {
		st->best = i;
		st->best_load = l;
	}
	return 0;
}

/* The least loaded domain other than `skip`; MLSCHED_MAX_DOMAINS if none. */
static __always_inline __u32 idlest_other_domain(__u32 skip, __u32 ndomains, __u64 now,
						 __u32 *load)
{
	struct scan_state st = {
		.now = now, .skip = skip,
		.best = MLSCHED_MAX_DOMAINS, .best_load = MLSCHED_LOAD_ONE + 1,
	};

	if (ndomains > MLSCHED_MAX_DOMAINS)
		ndomains = MLSCHED_MAX_DOMAINS;
	bpf_loop(ndomains, scan_domain, &st, 0);
	*load = st.best_load;
	return st.best;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_sched_wakeup, struct task_struct *p)
{
	struct mlsched_control *ctl = mlsched_ctl();
	struct mlsched_features f = {};
	struct mlsched_domain *src;
	struct mlsched_outcome out;
	struct task_info *ti;
	__u32 src_id = 0, dst_load;
	__u64 now;

	if (!ctl || p->pid == 0 || !is_fair(p) || BPF_CORE_READ(p, nr_cpus_allowed) < 2)
		return 0;
	ti = bpf_task_storage_get(&task_info, p, NULL, 0);
	if (ti && ti->wake_migrated) {
		ti->wake_migrated = 0;	/* reported by on_sched_migrate as MIGRATE */
		return 0;
	}
	now = bpf_ktime_get_ns();
	f.cpu = task_cpu_of(p);
	fill_counts(&f);
	src = domain_of(f.cpu, &src_id);
	if (!src)
		return 0;
	f.src_load = domain_load(src, now);
	if (idlest_other_domain(src_id, ctl->ndomains, now, &dst_load) >= MLSCHED_MAX_DOMAINS)
		return 0;	/* one domain: nowhere to migrate */
	f.dst_load = dst_load;

	if (!ti)
		ti = bpf_task_storage_get(&task_info, p, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (ti)
		settle_previous(ti);
	mlsched_decide_ex(&f, p->pid, MLSCHED_SRC_WAKEUP, MLSCHED_STAY, MLSCHED_CPU_NONE,
			  collector_flags(), &out);
	if (ti && out.fate == MLSCHED_FATE_SENT)
		ti->last_seq = out.seq;
	return 0;
}

/* ---- who holds a map ------------------------------------------------------------------ */

SEC("iter/bpf_map")
int map_refs(struct bpf_iter__bpf_map *ctx)
{
	struct bpf_map *map = ctx->map;
	struct mlsched_map_refs r = {};

	if (!map)
		return 0;
	r.id = BPF_CORE_READ(map, id);
	r.refs = BPF_CORE_READ(map, refcnt.counter);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}
