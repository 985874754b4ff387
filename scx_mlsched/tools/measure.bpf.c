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
