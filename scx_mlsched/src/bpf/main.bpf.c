// SPDX-License-Identifier: GPL-2.0-only
/*
 * main.bpf.c - scx_mlsched, a sched_ext scheduler whose load balancer asks the
 * mlsched model whether a task should move to another domain.
 *
 * Workflow:
 *
 *   1. Every task has a home domain (a group of CPUs, e.g. one socket); it
 *      starts in the domain of the CPU it was created on. Every CPU has a FIFO
 *      dispatch queue (DSQ id == CPU); a runnable task waits in the queue of
 *      the CPU it last ran on, one slice at a time, so it keeps its CPU.
 *   2. Wake-up (select_cpu): its previous CPU, when idle, runs it at once;
 *      else another idle CPU at home. If home has none but another domain has,
 *      the balancer asks "move it there?" (push). Otherwise it queues on its
 *      previous CPU.
 *   3. Dispatch: a CPU runs its own queue first. Idle, it takes the first task
 *      waiting on the busiest CPU of its domain (steal); with none waiting at
 *      home, it looks at the other domains' busiest queues and asks the
 *      balancer about the first task it could run (pull), but only once it has
 *      been idle for cfg.cold_ns: a CPU whose task just blocked keeps itself
 *      free for that task's wake-up (the kernel's migration-cost idea), and
 *      the queued task runs soon on its own CPU, cache warm. A CPU with tasks
 *      waiting kicks an idle CPU of its domain, else nudges one of another
 *      domain (tick, enqueue); after a refused pull that domain stays quiet for
 *      a few nudge intervals.
 *   4. The question goes to mlsched_decide() (mlsched_decide.h): a sure table
 *      cell answers at once; otherwise a request goes on the `requests` ring
 *      to mlsched-lite and the answer is STAY for now. The task remembers the
 *      request; the next time the same question comes up for it, mlsched-lite's
 *      answer (read from the mmapped `decisions` array) is used, if it came
 *      within answer_ttl_ns.
 *   5. Exploration (cfg.explore_permille): that share of answers is a fair
 *      coin instead. Each explored answer that was carried out is written to
 *      the `explore` ring when the task next starts running (ops.running), with
 *      the time it waited and the waiting tasks of both domains (struct
 *      scx_mlsched_explore); the loader writes them to a CSV file that
 *      `mlsched-train --labels outcome` reads. A task with a record pending
 *      gets no second one until it runs, so a STAY's record covers whatever
 *      happened to the task until then.
 *
 *      wake-up / dispatch          ask(p, src, dst)
 *          |                          | exploring: a coin (recorded)
 *          v                          | policy STAY / MIGRATE: fixed answer
 *     prev / home idle CPU? -> run    | earlier request answered: use it
 *          | no                       | else mlsched_decide(): table hit
 *     other domain idle? -- ask ------'      or request -> STAY for now
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
 * intf.h; the decision helper keeps its own in `stats`. How the
 * scheduler ended goes to the loader in `uei` (user_exit_info.h).
 *
 * Built against the guest kernel's vmlinux.h and the kernel source's sched_ext
 * headers (tools/sched_ext/include: kfuncs, BPF_STRUCT_OPS, UEI,
 * SCX_OPS_DEFINE): scx_mlsched/Makefile, called from guest/Makefile.
 *
 * Future improvements: weighted vtime instead of FIFO per CPU; the domain
 * scans are linear in the CPU count (fine for the <= 64 CPUs here).
 */
#include <scx/common.bpf.h>	/* the guest kernel's vmlinux.h, kfuncs, UEI, compat */
#include "mlsched_decide.h"
#include "intf.h"

char LICENSE[] SEC("license") = "GPL";

/* Tasks of another domain looked at per pull, at most. */
#define PULL_SCAN_MAX		4
/* After a pull the balancer refused, no nudges from that domain for this many intervals. */
#define NUDGE_QUIET_INTERVALS	10
/* Domain load average: new = old + (sample - old) >> LOAD_AVG_SHIFT. */
#define LOAD_AVG_SHIFT		2
/* The explore ring: records waiting for the loader. */
#define EXPLORE_RING_BYTES	(256 * 1024)

/* Written by the loader before load (intf.h). */
const volatile struct scx_mlsched_cfg cfg;

/* Per task: home domain, the question it is waiting on, an explored answer pending. */
struct task_ctx {
	u32 dom;
	u32 ask_src, ask_dst;		/* the question of the request in flight */
	u32 _pad;
	u64 ask_seq;			/* its seq; 0: none */
	u64 ask_ns;			/* when it was sent */
	struct scx_mlsched_explore x;	/* x.ts_ns != 0: an explored answer, not yet run */
	u32 x_src, x_dst;		/* its domains */
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

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EXPLORE_RING_BYTES);
} explore SEC(".maps");

UEI_DEFINE(uei);

static u32 dom_load_avg[SCX_MLSCHED_MAX_DOMS];	/* 1/1024 */
static u64 dom_last_nudge[SCX_MLSCHED_MAX_DOMS];
static u64 dom_quiet_until[SCX_MLSCHED_MAX_DOMS];	/* no nudges before (ns) */
static u64 cpu_idle_since[SCX_MLSCHED_MAX_CPUS];	/* ns; 0: busy */

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

/* Tasks waiting in the queue of `cpu`. */
static __always_inline u32 cpu_queued(u32 cpu)
{
	s32 n = scx_bpf_dsq_nr_queued(cpu);

	return n > 0 ? n : 0;
}

/* Tasks waiting in the queues of `dom`'s CPUs. */
static __always_inline u32 dom_queued(u32 dom)
{
	u32 cpu, n = 0;

	for (cpu = 0; cpu < SCX_MLSCHED_MAX_CPUS && cpu < cfg.nr_cpus; cpu++)
		if (cpu_dom(cpu) == dom)
			n += cpu_queued(cpu);
	return n;
}

/* The CPU of `dom` other than `self` with the most tasks waiting (at least one); -1 if none. */
static __always_inline s32 busiest_cpu(u32 dom, s32 self)
{
	u32 cpu, n, most = 0;
	s32 best = -1;

	for (cpu = 0; cpu < SCX_MLSCHED_MAX_CPUS && cpu < cfg.nr_cpus; cpu++) {
		if (cpu_dom(cpu) != dom || (s32)cpu == self)
			continue;
		n = cpu_queued(cpu);
		if (n > most) {
			most = n;
			best = cpu;
		}
	}
	return best;
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

/* The CPU of `dom` with the fewest tasks waiting that p may use; -1 if none. */
static __always_inline s32 quietest_cpu(const struct task_struct *p, u32 dom)
{
	u32 cpu, n, least = ~0u;
	s32 best = -1;

	for (cpu = 0; cpu < SCX_MLSCHED_MAX_CPUS && cpu < cfg.nr_cpus; cpu++) {
		if (cpu_dom(cpu) != dom || !bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
			continue;
		n = cpu_queued(cpu);
		if (n < least) {
			least = n;
			best = cpu;
		}
	}
	return best;
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
	u64 runnable = s->dom_busy[d] + dom_queued(d);
	s64 sample, avg;

	if (ncpus == 0)
		return MLSCHED_LOAD_ONE;
	sample = runnable * MLSCHED_LOAD_ONE / ncpus;
	avg = dom_load_avg[d];
	avg += (sample - avg) >> LOAD_AVG_SHIFT;	/* arithmetic shift: rounds down */
	dom_load_avg[d] = avg;
	return avg;
}

/* A fair coin for cfg.explore_permille of the answers: true and *d set when it was tossed. */
static __always_inline bool explore_answer(struct task_ctx *t, const struct mlsched_features *f,
					   u32 src, u32 dst, u8 kind, u32 pid, u64 now, u8 *d)
{
	if (!cfg.explore_permille || bpf_get_prandom_u32() % 1000 >= cfg.explore_permille)
		return false;
	*d = bpf_get_prandom_u32() & 1 ? MLSCHED_MIGRATE : MLSCHED_STAY;
	stat_inc(SCX_MLSCHED_STAT_EXPLORED);
	/* One record per task until it runs: later answers are part of this one's outcome. */
	if (t->x.ts_ns)
		return true;
	t->x.cpu = f->cpu;
	t->x.idle = f->idle;
	t->x.busy = f->busy;
	t->x.src_load = f->src_load;
	t->x.dst_load = f->dst_load;
	t->x.action = *d;
	t->x.kind = kind;
	t->x.propensity_permille = 500;
	t->x.src_queued = dom_queued(src);
	t->x.dst_queued = dom_queued(dst);
	t->x_src = src;
	t->x_dst = dst;
	t->x.pid = pid;
	t->x.wait_ns = 0;
	t->x.ts_ns = now;
	return true;
}

/*
 * Should p move from domain src to domain dst (whose CPU dst_cpu is idle)?
 * Returns MLSCHED_STAY or MLSCHED_MIGRATE; counts where the answer came from.
 */
static __always_inline u8 ask(struct task_struct *p, struct task_ctx *t,
			      const struct snapshot *s, u32 src, u32 dst, s32 dst_cpu, u8 kind)
{
	struct mlsched_features f = {};
	struct mlsched_outcome out;
	u64 now = bpf_ktime_get_ns();
	u8 d;

	if (cfg.explore_permille || cfg.policy == SCX_MLSCHED_POLICY_MODEL) {
		f.cpu = scx_bpf_task_cpu(p);
		f.idle = s->idle;
		f.busy = cfg.nr_cpus - s->idle;
		f.src_load = dom_load(s, src);
		f.dst_load = dom_load(s, dst);
	}
	if (explore_answer(t, &f, src, dst, kind, p->pid, now, &d))
		goto done;

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
	if (cfg.policy == SCX_MLSCHED_POLICY_STAY && !cfg.explore_permille)
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

/* Tasks wait on a CPU of `dom`: an idle CPU at home takes one, else one elsewhere may pull. */
static __always_inline void kick_for(u32 dom)
{
	struct snapshot s;
	s32 idle;

	take_snapshot(&s);
	idle = s.dom_idle_cpu[dom & (SCX_MLSCHED_MAX_DOMS - 1)];
	if (idle >= 0)
		scx_bpf_kick_cpu(idle, SCX_KICK_IDLE);
	else
		nudge_from(dom, &s);
}

s32 BPF_STRUCT_OPS(mls_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	struct task_ctx *t = task_ctx(p);
	struct snapshot s;
	s32 cpu;
	u32 o, dst;
	u64 since;

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
		since = t->x.ts_ns;
		if (ask(p, t, &s, t->dom, dst, s.dom_idle_cpu[dst], SCX_MLSCHED_KIND_PUSH) !=
		    MLSCHED_MIGRATE)
			break;
		cpu = claim_idle_cpu(p, dst);
		if (cpu < 0) {
			if (!since)	/* an explored MIGRATE that was not carried out */
				t->x.ts_ns = 0;
			break;
		}
		t->dom = dst;
		stat_inc(SCX_MLSCHED_STAT_MOVED_WAKE);
		goto direct;
	}
	/* It waits on its previous CPU when that is at home (enqueue). */
	return prev_cpu;

direct:
	stat_inc(SCX_MLSCHED_STAT_DIRECT);
	scx_bpf_dispatch(p, SCX_DSQ_LOCAL, cfg.slice_ns, 0);
	return cpu;
}

void BPF_STRUCT_OPS(mls_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *t = task_ctx(p);
	s32 cpu;

	cpu = scx_bpf_task_cpu(p);
	if (!t || restricted(p)) {
		/* Off the domains: the local queue of a CPU it may run on. */
		if (!bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
			cpu = scx_bpf_pick_any_cpu(p->cpus_ptr, 0);
		stat_inc(SCX_MLSCHED_STAT_PINNED);
		scx_bpf_dispatch(p, SCX_DSQ_LOCAL_ON | cpu, cfg.slice_ns, enq_flags);
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
		return;
	}

	/* The queue of the CPU it last ran on, when that is at home. */
	if (cpu_dom(cpu) != t->dom || !bpf_cpumask_test_cpu(cpu, p->cpus_ptr)) {
		cpu = quietest_cpu(p, t->dom);
		if (cpu < 0)
			cpu = scx_bpf_task_cpu(p);
	}
	stat_inc(SCX_MLSCHED_STAT_QUEUED);
	scx_bpf_dispatch(p, cpu, cfg.slice_ns, enq_flags);
	if (scx_bpf_test_and_clear_cpu_idle(cpu))
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	else if (cpu != bpf_get_smp_processor_id() || cpu_queued(cpu) > 1)
		/* it waits (not a task of this CPU going round again): help */
		kick_for(t->dom);
}

/*
 * Idle for at least cfg.cold_ns: free to take other CPUs' work. A CPU whose task
 * blocked a moment ago stays free for that task: it likely wakes soon, and runs where
 * its cache is (the kernel skips its new-idle balance for the same reason).
 */
static __always_inline bool settled_idle(s32 cpu)
{
	u64 since = cpu_idle_since[(u32)cpu & (SCX_MLSCHED_MAX_CPUS - 1)];

	return since && bpf_ktime_get_ns() - since >= cfg.cold_ns;
}

/* This CPU has nothing of its own: the first task waiting on the busiest CPU at home. */
static __always_inline bool steal(s32 cpu, u32 dom)
{
	s32 victim = busiest_cpu(dom, cpu);

	if (victim < 0 || !scx_bpf_consume(victim))
		return false;
	stat_inc(SCX_MLSCHED_STAT_STOLEN);
	return true;
}

/* Nothing waits at home: pull one task from another domain's busiest CPU, if the model agrees. */
static __always_inline bool pull(s32 cpu, u32 dom)
{
	struct bpf_iter_scx_dsq it;
	struct task_struct *p;
	struct task_ctx *t;
	struct snapshot s;
	bool moved = false;
	s32 victim;
	u32 o, src, seen;
	u64 since;

	take_snapshot(&s);
	for (o = 0; o < SCX_MLSCHED_MAX_DOMS && o < cfg.nr_doms; o++) {
		src = o & (SCX_MLSCHED_MAX_DOMS - 1);
		if (src == dom)
			continue;
		victim = busiest_cpu(src, -1);
		if (victim < 0)
			continue;
		seen = 0;
		bpf_iter_scx_dsq_new(&it, victim, 0);
		while ((p = bpf_iter_scx_dsq_next(&it))) {
			if (++seen > PULL_SCAN_MAX)
				break;
			if (!bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
				continue;
			t = task_ctx(p);
			if (!t)
				continue;
			stat_inc(SCX_MLSCHED_STAT_ASK_PULL);
			since = t->x.ts_ns;
			if (ask(p, t, &s, src, dom, cpu, SCX_MLSCHED_KIND_PULL) == MLSCHED_MIGRATE) {
				if (__COMPAT_scx_bpf_dispatch_from_dsq(&it, p, SCX_DSQ_LOCAL, 0)) {
					t->dom = dom;
					stat_inc(SCX_MLSCHED_STAT_MOVED_PULL);
					moved = true;
				} else if (!since) {
					t->x.ts_ns = 0;	/* not carried out */
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

void BPF_STRUCT_OPS(mls_dispatch, s32 cpu, struct task_struct *prev)
{
	u32 dom = cpu_dom(cpu);

	if (scx_bpf_consume(cpu) || !settled_idle(cpu) || steal(cpu, dom))
		return;
	pull(cpu, dom);
}

/* When each CPU went idle (0: busy), for settled_idle(). */
void BPF_STRUCT_OPS(mls_update_idle, s32 cpu, bool idle)
{
	cpu_idle_since[(u32)cpu & (SCX_MLSCHED_MAX_CPUS - 1)] = idle ? bpf_ktime_get_ns() : 0;
}

/* A busy CPU with tasks waiting on it: let an idle CPU at home or elsewhere take one. */
void BPF_STRUCT_OPS(mls_tick, struct task_struct *p)
{
	s32 cpu = bpf_get_smp_processor_id();

	if (cpu_queued(cpu) == 0)
		return;
	kick_for(cpu_dom(cpu));
}

/* p starts running: an explored answer about it has its outcome now. */
void BPF_STRUCT_OPS(mls_running, struct task_struct *p)
{
	struct scx_mlsched_explore *r;
	struct task_ctx *t;
	u64 now;

	if (!cfg.explore_permille || !(t = task_ctx(p)) || !t->x.ts_ns)
		return;
	now = bpf_ktime_get_ns();
	t->x.wait_ns = now - t->x.ts_ns;
	t->x.src_queued_after = dom_queued(t->x_src & (SCX_MLSCHED_MAX_DOMS - 1));
	t->x.dst_queued_after = dom_queued(t->x_dst & (SCX_MLSCHED_MAX_DOMS - 1));
	r = bpf_ringbuf_reserve(&explore, sizeof(*r), 0);
	if (r) {
		*r = t->x;
		bpf_ringbuf_submit(r, 0);
	} else {
		stat_inc(SCX_MLSCHED_STAT_EXPLORE_LOST);
	}
	t->x.ts_ns = 0;
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
		t->x.ts_ns = 0;
	}
}

/* Sleepable: creating DSQs may allocate. One FIFO per CPU, id == CPU. */
s32 BPF_STRUCT_OPS_SLEEPABLE(mls_init)
{
	u32 cpu;
	s32 err;

	for (cpu = 0; cpu < SCX_MLSCHED_MAX_CPUS && cpu < cfg.nr_cpus; cpu++) {
		err = scx_bpf_create_dsq(cpu, -1);
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
	       .update_idle	= (void *)mls_update_idle,
	       .running		= (void *)mls_running,
	       .init_task	= (void *)mls_init_task,
	       .enable		= (void *)mls_enable,
	       .init		= (void *)mls_init,
	       .exit		= (void *)mls_exit,
	       /* update_idle keeps the idle masks of claim_idle_cpu() and snapshots */
	       .flags		= SCX_OPS_KEEP_BUILTIN_IDLE,
	       .name		= "mlsched");
