// SPDX-License-Identifier: GPL-2.0-only
/*
 * scx_mlsched.bpf.c - a sched_ext scheduler whose load balancer asks the
 * mlsched model whether a task should move to another domain.
 *
 * Workflow:
 *
 *   1. Every task has a home domain (a group of CPUs, e.g. one socket); it
 *      starts in the domain of the CPU it was created on. Runnable tasks wait
 *      in their home domain's dispatch queue (DSQ id == domain id), one slice
 *      at a time; a CPU takes a task that last ran on it from the first few
 *      queued, else the oldest (FIFO).
 *   2. Wake-up (select_cpu): an idle CPU at home (its previous CPU first) runs
 *      the task at once. If home has none but another domain has, the balancer
 *      asks "move it there?" (push).
 *   3. Dispatch: a CPU whose domain queue is empty looks at the other domains'
 *      queues and asks the same question about the first task it could run
 *      (pull). Busy CPUs nudge an idle CPU of another domain from tick and
 *      enqueue so that pulls happen while work is queued; after a refused
 *      pull that domain stays quiet for a few nudge intervals.
 *   4. The question goes to mlsched_decide() (mlsched_decide.h): a sure table
 *      cell answers at once; otherwise a request goes on the `requests` ring
 *      to mlsched-lite and the answer is STAY for now. The task remembers the
 *      request; the next time the same question comes up for it, mlsched-lite's
 *      answer (read from the mmapped `decisions` array) is used, if it came
 *      within answer_ttl_ns.
 *
 *      wake-up / dispatch          ask(p, src, dst)
 *          |                          | policy STAY / MIGRATE: fixed answer
 *          v                          | earlier request answered: use it
 *     home idle CPU? -- yes --> run   | else mlsched_decide(): table hit
 *          | no                       |      or request -> STAY for now
 *     other domain idle? -- ask ------'
 *
 *   Tasks that may not run everywhere (per-CPU kthreads, pinned tasks) skip
 *   the domains: they go straight to the local queue of a CPU they may use.
 *
 * Features of a question: cpu = the task's CPU, idle/busy = CPUs idle/busy now
 * (scx idle mask), src/dst load = runnable tasks per CPU of the domain
 * (running + queued), a moving average over the balancer's samples, 1/1024;
 * above 1.0 the helper clamps.
 *
 * Statistics: per-CPU counters in `sched_stats`, enum scx_mlsched_stat in
 * scx_mlsched.h; the decision helper keeps its own in `stats`. How the
 * scheduler ended goes to the loader in `uei` (user_exit_info.h).
 *
 * Built against the guest kernel's vmlinux.h and the kernel source's sched_ext
 * headers (tools/sched_ext/include: kfuncs, BPF_STRUCT_OPS, UEI,
 * SCX_OPS_DEFINE): bpf/Makefile's `scx` target, called from guest/Makefile.
 *
 * Future improvements: weighted vtime instead of FIFO inside a domain; the
 * domain scan is linear in the CPU count (fine for the <= 64 CPUs here).
 */
#include <scx/common.bpf.h>	/* the guest kernel's vmlinux.h, kfuncs, UEI, compat */
#include "mlsched_decide.h"
#include "scx_mlsched.h"

char LICENSE[] SEC("license") = "GPL";

/* Tasks of another domain looked at per pull, at most. */
#define PULL_SCAN_MAX		4
/* Tasks of the own domain looked at for one that last ran on this CPU. */
#define WARM_SCAN_MAX		4
/* After a pull the balancer refused, no nudges from that domain for this many intervals. */
#define NUDGE_QUIET_INTERVALS	10
/* Domain load average: new = old + (sample - old) >> LOAD_AVG_SHIFT. */
#define LOAD_AVG_SHIFT		2

/* Written by the loader before load (scx_mlsched.h). */
const volatile struct scx_mlsched_cfg cfg;

/* Per task: home domain and the question it is waiting on, if any. */
struct task_ctx {
	u32 dom;
	u32 ask_src, ask_dst;		/* the question of the request in flight */
	u32 _pad;
	u64 ask_seq;			/* its seq; 0: none */
	u64 ask_ns;			/* when it was sent */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, u32);
	__type(value, struct scx_mlsched_stats);
	__uint(max_entries, 1);
} sched_stats SEC(".maps");

UEI_DEFINE(uei);

static u32 dom_load_avg[SCX_MLSCHED_MAX_DOMS];	/* 1/1024 */
static u64 dom_last_nudge[SCX_MLSCHED_MAX_DOMS];
static u64 dom_quiet_until[SCX_MLSCHED_MAX_DOMS];	/* no nudges before (ns) */

static __always_inline void stat_inc(enum scx_mlsched_stat which)
{
	u32 zero = 0;
	struct scx_mlsched_stats *s = bpf_map_lookup_elem(&sched_stats, &zero);

	if (s && which < SCX_MLSCHED_STAT_COUNT)
		s->v[which]++;
}

static __always_inline struct task_ctx *task_ctx(struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctxs, p, 0, 0);
}

static __always_inline u32 cpu_dom(s32 cpu)
{
	u32 c = cpu;

	if (c >= SCX_MLSCHED_MAX_CPUS)
		return 0;
	/* the mask keeps the index provably in bounds for the verifier */
	return cfg.cpu_dom[c & (SCX_MLSCHED_MAX_CPUS - 1)] & (SCX_MLSCHED_MAX_DOMS - 1);
}

static __always_inline bool restricted(const struct task_struct *p)
{
	return p->nr_cpus_allowed < cfg.nr_cpus;
}

/* An idle CPU of `dom` that p may use, claimed (idle bit cleared); -1 if none. */
static __always_inline s32 claim_idle_cpu(const struct task_struct *p, u32 dom)
{
	u32 cpu;

	for (cpu = 0; cpu < SCX_MLSCHED_MAX_CPUS && cpu < cfg.nr_cpus; cpu++) {
		if (cpu_dom(cpu) != dom || !bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
			continue;
		if (scx_bpf_test_and_clear_cpu_idle(cpu))
			return cpu;
	}
	return -1;
}

/* The host as the balancer sees it: idle CPUs, busy CPUs per domain, one idle CPU per domain. */
struct snapshot {
	u32 idle;
	u32 dom_busy[SCX_MLSCHED_MAX_DOMS];
	s32 dom_idle_cpu[SCX_MLSCHED_MAX_DOMS];
};

static __always_inline void take_snapshot(struct snapshot *s)
{
	const struct cpumask *idle = scx_bpf_get_idle_cpumask();
	u32 cpu, d;

	s->idle = 0;
	for (d = 0; d < SCX_MLSCHED_MAX_DOMS; d++) {
		s->dom_busy[d] = 0;
		s->dom_idle_cpu[d] = -1;
	}
	for (cpu = 0; cpu < SCX_MLSCHED_MAX_CPUS && cpu < cfg.nr_cpus; cpu++) {
		d = cpu_dom(cpu);
		if (bpf_cpumask_test_cpu(cpu, idle)) {
			s->idle++;
			if (s->dom_idle_cpu[d] < 0)
				s->dom_idle_cpu[d] = cpu;
		} else {
			s->dom_busy[d]++;
		}
	}
	scx_bpf_put_idle_cpumask(idle);
}

/* Runnable tasks per CPU of `dom`, 1/1024, folded into the domain's moving average. */
static __always_inline u32 dom_load(const struct snapshot *s, u32 dom)
{
	u32 d = dom & (SCX_MLSCHED_MAX_DOMS - 1);
	u32 ncpus = cfg.dom_ncpus[d];
	s32 queued = scx_bpf_dsq_nr_queued(d);
	u64 runnable = s->dom_busy[d] + (queued > 0 ? queued : 0);
	s64 sample, avg;

	if (ncpus == 0)
		return MLSCHED_LOAD_ONE;
	sample = runnable * MLSCHED_LOAD_ONE / ncpus;
	avg = dom_load_avg[d];
	avg += (sample - avg) >> LOAD_AVG_SHIFT;	/* arithmetic shift: rounds down */
	dom_load_avg[d] = avg;
	return avg;
}

/*
 * Should p move from domain src to domain dst (whose CPU dst_cpu is idle)?
 * Returns MLSCHED_STAY or MLSCHED_MIGRATE; counts where the answer came from.
 */
static __always_inline u8 ask(struct task_struct *p, struct task_ctx *t,
			      const struct snapshot *s, u32 src, u32 dst, s32 dst_cpu)
{
	struct mlsched_features f;
	struct mlsched_outcome out;
	u64 now = bpf_ktime_get_ns();
	u8 d;

	if (cfg.policy != SCX_MLSCHED_POLICY_MODEL) {
		stat_inc(SCX_MLSCHED_STAT_FIXED);
		d = cfg.policy == SCX_MLSCHED_POLICY_MIGRATE ? MLSCHED_MIGRATE : MLSCHED_STAY;
		goto done;
	}

	/* An earlier request about the same move: mlsched-lite's answer, if it came. */
	if (t->ask_seq && t->ask_src == src && t->ask_dst == dst) {
		u8 status = mlsched_answer(t->ask_seq, &d);

		if (status == MLSCHED_ANS_ANSWERED) {
			t->ask_seq = 0;
			mlsched_count(MLSCHED_STAT_ANSWERED);
			stat_inc(SCX_MLSCHED_STAT_FROM_DAEMON);
			goto done;
		}
		if (status == MLSCHED_ANS_MISSING && now - t->ask_ns < cfg.answer_ttl_ns) {
			stat_inc(SCX_MLSCHED_STAT_WAITING);
			return MLSCHED_STAY;
		}
		mlsched_count(MLSCHED_STAT_STALE);
		stat_inc(SCX_MLSCHED_STAT_UNANSWERED);
	}
	t->ask_seq = 0;

	f.cpu = scx_bpf_task_cpu(p);
	f.idle = s->idle;
	f.busy = cfg.nr_cpus - s->idle;
	f.src_load = dom_load(s, src);
	f.dst_load = dom_load(s, dst);
	d = mlsched_decide_ex(&f, p->pid, MLSCHED_SRC_BALANCER, MLSCHED_NONE,
			      dst_cpu, cfg.levels == 1 ? MLSCHED_DECIDE_LEVEL1_ONLY : 0, &out);
	switch (out.fate) {
	case MLSCHED_FATE_HIT:
		stat_inc(SCX_MLSCHED_STAT_FROM_TABLE);
		if (out.level == 2)
			stat_inc(SCX_MLSCHED_STAT_FROM_LEVEL2);
		break;
	case MLSCHED_FATE_SENT:
		t->ask_seq = out.seq;
		t->ask_ns = now;
		t->ask_src = src;
		t->ask_dst = dst;
		stat_inc(SCX_MLSCHED_STAT_SENT);
		return MLSCHED_STAY;
	default:
		stat_inc(SCX_MLSCHED_STAT_NO_ANSWER);
		return MLSCHED_STAY;
	}
done:
	if (d == MLSCHED_MIGRATE)
		stat_inc(SCX_MLSCHED_STAT_SAID_MIGRATE);
	return d;
}

/* Work is queued in `dom`: kick an idle CPU of another domain so its dispatch can pull. */
static __always_inline void nudge_from(u32 dom, const struct snapshot *s)
{
	u64 now = bpf_ktime_get_ns();
	u32 d, o;

	/* A pull the policy always refuses is not worth waking a CPU for. */
	if (cfg.policy == SCX_MLSCHED_POLICY_STAY)
		return;
	dom &= SCX_MLSCHED_MAX_DOMS - 1;
	if (now - dom_last_nudge[dom] < cfg.nudge_interval_ns || now < dom_quiet_until[dom])
		return;
	for (o = 0; o < SCX_MLSCHED_MAX_DOMS && o < cfg.nr_doms; o++) {
		d = o & (SCX_MLSCHED_MAX_DOMS - 1);
		if (d == dom || s->dom_idle_cpu[d] < 0)
			continue;
		dom_last_nudge[dom] = now;
		scx_bpf_kick_cpu(s->dom_idle_cpu[d], SCX_KICK_IDLE);
		stat_inc(SCX_MLSCHED_STAT_NUDGES);
		return;
	}
}

s32 BPF_STRUCT_OPS(mls_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	struct task_ctx *t = task_ctx(p);
	struct snapshot s;
	s32 cpu;
	u32 o, dst;

	if (!t || restricted(p))
		return prev_cpu;

	/* Its previous CPU first (warm cache), then any idle CPU at home. */
	if (cpu_dom(prev_cpu) == t->dom && scx_bpf_test_and_clear_cpu_idle(prev_cpu)) {
		cpu = prev_cpu;
		goto direct;
	}
	cpu = claim_idle_cpu(p, t->dom);
	if (cpu >= 0)
		goto direct;

	/* Home is full. Another domain with an idle CPU: ask whether to push. */
	take_snapshot(&s);
	for (o = 0; o < SCX_MLSCHED_MAX_DOMS && o < cfg.nr_doms; o++) {
		dst = o & (SCX_MLSCHED_MAX_DOMS - 1);
		if (dst == t->dom || s.dom_idle_cpu[dst] < 0)
			continue;
		stat_inc(SCX_MLSCHED_STAT_ASK_WAKE);
		if (ask(p, t, &s, t->dom, dst, s.dom_idle_cpu[dst]) != MLSCHED_MIGRATE)
			break;
		cpu = claim_idle_cpu(p, dst);
		if (cpu < 0)
			break;
		t->dom = dst;
		stat_inc(SCX_MLSCHED_STAT_MOVED_WAKE);
		goto direct;
	}
	return prev_cpu;

direct:
	stat_inc(SCX_MLSCHED_STAT_DIRECT);
	scx_bpf_dispatch(p, SCX_DSQ_LOCAL, cfg.slice_ns, 0);
	return cpu;
}

void BPF_STRUCT_OPS(mls_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *t = task_ctx(p);
	struct snapshot s;
	s32 cpu;

	if (!t || restricted(p)) {
		/* Off the domains: the local queue of a CPU it may run on. */
		cpu = scx_bpf_task_cpu(p);
		if (!bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
			cpu = scx_bpf_pick_any_cpu(p->cpus_ptr, 0);
		stat_inc(SCX_MLSCHED_STAT_PINNED);
		scx_bpf_dispatch(p, SCX_DSQ_LOCAL_ON | cpu, cfg.slice_ns, enq_flags);
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
		return;
	}

	stat_inc(SCX_MLSCHED_STAT_QUEUED);
	scx_bpf_dispatch(p, t->dom, cfg.slice_ns, enq_flags);

	take_snapshot(&s);
	if (s.dom_idle_cpu[t->dom & (SCX_MLSCHED_MAX_DOMS - 1)] >= 0)
		scx_bpf_kick_cpu(s.dom_idle_cpu[t->dom & (SCX_MLSCHED_MAX_DOMS - 1)], SCX_KICK_IDLE);
	else
		nudge_from(t->dom, &s);
}

/* This CPU's domain queue is empty: pull one task from another domain, if the model agrees. */
static __always_inline bool pull(s32 cpu, u32 dom)
{
	struct bpf_iter_scx_dsq it;
	struct task_struct *p;
	struct task_ctx *t;
	struct snapshot s;
	bool moved = false;
	u32 o, src, seen;

	take_snapshot(&s);
	for (o = 0; o < SCX_MLSCHED_MAX_DOMS && o < cfg.nr_doms; o++) {
		src = o & (SCX_MLSCHED_MAX_DOMS - 1);
		if (src == dom || scx_bpf_dsq_nr_queued(src) <= 0)
			continue;
		seen = 0;
		bpf_iter_scx_dsq_new(&it, src, 0);
		while ((p = bpf_iter_scx_dsq_next(&it))) {
			if (++seen > PULL_SCAN_MAX)
				break;
			if (!bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
				continue;
			t = task_ctx(p);
			if (!t)
				continue;
			stat_inc(SCX_MLSCHED_STAT_ASK_PULL);
			if (ask(p, t, &s, src, dom, cpu) == MLSCHED_MIGRATE) {
				if (__COMPAT_scx_bpf_dispatch_from_dsq(&it, p, SCX_DSQ_LOCAL, 0)) {
					t->dom = dom;
					stat_inc(SCX_MLSCHED_STAT_MOVED_PULL);
					moved = true;
				}
			} else if (!t->ask_seq) {
				/* a final STAY (no answer pending): stop waking CPUs for a while */
				dom_quiet_until[src] = bpf_ktime_get_ns() +
					NUDGE_QUIET_INTERVALS * cfg.nudge_interval_ns;
			}
			break;
		}
		bpf_iter_scx_dsq_destroy(&it);
		if (moved)
			return true;
	}
	return false;
}

/* Among the first tasks of the domain queue, one that last ran here (warm cache). */
static __always_inline bool consume_warm(s32 cpu, u32 dom)
{
	struct bpf_iter_scx_dsq it;
	struct task_struct *p;
	bool got = false;
	u32 seen = 0;

	bpf_iter_scx_dsq_new(&it, dom, 0);
	while ((p = bpf_iter_scx_dsq_next(&it))) {
		if (++seen > WARM_SCAN_MAX)
			break;
		if (scx_bpf_task_cpu(p) == cpu &&
		    __COMPAT_scx_bpf_dispatch_from_dsq(&it, p, SCX_DSQ_LOCAL, 0)) {
			got = true;
			break;
		}
	}
	bpf_iter_scx_dsq_destroy(&it);
	return got;
}

void BPF_STRUCT_OPS(mls_dispatch, s32 cpu, struct task_struct *prev)
{
	u32 dom = cpu_dom(cpu);

	if (consume_warm(cpu, dom) || scx_bpf_consume(dom))
		return;
	pull(cpu, dom);
}

/* A busy CPU with work queued at home: let an idle CPU elsewhere look at it. */
void BPF_STRUCT_OPS(mls_tick, struct task_struct *p)
{
	u32 dom = cpu_dom(bpf_get_smp_processor_id());
	struct snapshot s;

	if (scx_bpf_dsq_nr_queued(dom) <= 0)
		return;
	take_snapshot(&s);
	nudge_from(dom, &s);
}

s32 BPF_STRUCT_OPS(mls_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	if (!bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE))
		return -ENOMEM;
	return 0;
}

void BPF_STRUCT_OPS(mls_enable, struct task_struct *p)
{
	struct task_ctx *t = task_ctx(p);

	if (t) {
		t->dom = cpu_dom(scx_bpf_task_cpu(p));
		t->ask_seq = 0;
	}
}

/* Sleepable: creating DSQs may allocate. */
s32 BPF_STRUCT_OPS_SLEEPABLE(mls_init)
{
	u32 d;
	s32 err;

	for (d = 0; d < SCX_MLSCHED_MAX_DOMS && d < cfg.nr_doms; d++) {
		err = scx_bpf_create_dsq(d, -1);
		if (err)
			return err;
	}
	return 0;
}

void BPF_STRUCT_OPS(mls_exit, struct scx_exit_info *ei)
{
	UEI_RECORD(uei, ei);
}

SCX_OPS_DEFINE(mlsched_ops,
	       .select_cpu	= (void *)mls_select_cpu,
	       .enqueue		= (void *)mls_enqueue,
	       .dispatch	= (void *)mls_dispatch,
	       .tick		= (void *)mls_tick,
	       .init_task	= (void *)mls_init_task,
	       .enable		= (void *)mls_enable,
	       .init		= (void *)mls_init,
	       .exit		= (void *)mls_exit,
	       .name		= "mlsched");
