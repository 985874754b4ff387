// SPDX-License-Identifier: GPL-2.0-only
/*
 * The kernel side of mlsched-measure: the CPU-to-CPU moves of one process tree.
 *
 * measure.c puts the tree's root into `tree` before the root execs. Every fork
 * (process or thread) whose parent is in the tree adds the child, at the
 * sched_process_fork tracepoint, before the child can run; every
 * sched_migrate_task of a task in the tree that changes its CPU counts in
 * moves[from][to]. Both run synchronously in the kernel, so no event is lost
 * to a full buffer or read out of order.
 *
 * Run-queue delay: a task of the tree that is woken (sched_wakeup, _new), or
 * switched out while still runnable (preempted), gets a time stamp in `queued`;
 * when it is switched in, the time since goes into that kind's histogram
 * (measure.h: log-linear buckets) and its sum.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "measure.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MEASURE_MAX_TASKS);
	__type(key, u32);		/* pid (thread id) */
	__type(value, u8);
} tree SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MEASURE_MAX_CPUS * MEASURE_MAX_CPUS);
	__type(key, u32);
	__type(value, u64);
} moves SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MEASURE_NR_LOST);
	__type(key, u32);
	__type(value, u64);
} lost SEC(".maps");

/* When a task of the tree became runnable, and why (enum measure_delay). */
struct queued_at {
	u64 ns;
	u32 kind;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MEASURE_MAX_TASKS);
	__type(key, u32);
	__type(value, struct queued_at);
} queued SEC(".maps");

/* [kind * MEASURE_HIST_BUCKETS + bucket]: delays counted per bucket. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MEASURE_NR_DELAYS * MEASURE_HIST_BUCKETS);
	__type(key, u32);
	__type(value, u64);
} delay_hist SEC(".maps");

/* [kind]: the delays' sum in ns. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MEASURE_NR_DELAYS);
	__type(key, u32);
	__type(value, u64);
} delay_sum SEC(".maps");

static void count(void *map, u32 key)
{
	u64 *v = bpf_map_lookup_elem(map, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	u32 ppid = parent->pid, cpid = child->pid;
	u8 one = 1;

	if (!bpf_map_lookup_elem(&tree, &ppid))
		return 0;
	if (bpf_map_update_elem(&tree, &cpid, &one, BPF_ANY))
		count(&lost, MEASURE_LOST_TASKS);
	return 0;
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(on_migrate, struct task_struct *p, int dest_cpu)
{
	u32 pid = p->pid, from = p->thread_info.cpu, to = dest_cpu;

	/* the tracepoint fires for a placement on the same CPU too */
	if (from == to || !bpf_map_lookup_elem(&tree, &pid))
		return 0;
	if (from >= MEASURE_MAX_CPUS || to >= MEASURE_MAX_CPUS) {
		count(&lost, MEASURE_LOST_CPUS);
		return 0;
	}
	count(&moves, from * MEASURE_MAX_CPUS + to);
	return 0;
}

/* Index of the highest set bit of v (v > 0), without a loop. */
static u32 msb(u64 v)
{
	u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r;
}

/* The histogram bucket of a delay of ns nanoseconds (measure.h). */
static u32 bucket(u64 ns)
{
	u32 k, b;

	if (ns < MEASURE_HIST_SUB)
		return ns;
	k = msb(ns);
	b = (k - MEASURE_HIST_SUB_BITS + 1) * MEASURE_HIST_SUB +
	    ((ns >> (k - MEASURE_HIST_SUB_BITS)) & (MEASURE_HIST_SUB - 1));
	return b < MEASURE_HIST_BUCKETS ? b : MEASURE_HIST_BUCKETS - 1;
}

static void became_runnable(struct task_struct *p, u32 kind)
{
	u32 pid = p->pid;
	struct queued_at q = { .ns = bpf_ktime_get_ns(), .kind = kind };

	if (!bpf_map_lookup_elem(&tree, &pid))
		return;
	if (bpf_map_update_elem(&queued, &pid, &q, BPF_ANY))
		count(&lost, MEASURE_LOST_WAITS);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_wakeup, struct task_struct *p)
{
	became_runnable(p, MEASURE_DELAY_WAKE);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_wakeup_new, struct task_struct *p)
{
	became_runnable(p, MEASURE_DELAY_WAKE);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	u32 pid = next->pid, key;
	struct queued_at *q;
	u64 *sum, delta;

	/* still runnable when switched out (state TASK_RUNNING): it waits again */
	if (prev_state == 0)
		became_runnable(prev, MEASURE_DELAY_PREEMPT);
	q = bpf_map_lookup_elem(&queued, &pid);
	if (!q)
		return 0;
	delta = bpf_ktime_get_ns() - q->ns;
	key = q->kind < MEASURE_NR_DELAYS ? q->kind : MEASURE_DELAY_WAKE;
	bpf_map_delete_elem(&queued, &pid);
	sum = bpf_map_lookup_elem(&delay_sum, &key);
	if (sum)
		__sync_fetch_and_add(sum, delta);
	count(&delay_hist, key * MEASURE_HIST_BUCKETS + bucket(delta));
	return 0;
}
