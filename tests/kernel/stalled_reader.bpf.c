// SPDX-License-Identifier: GPL-2.0-only
/*
 * stalled_reader.bpf.c - one table lookup through mlsched_decide.h, held at a step between
 * its reads until user space lets it go: the table can change under a reader on demand.
 *
 *   gate (array, mmap)   user space sets `step`; the reader sets `paused` when it is held
 *                        there and spins until `released` (or `timed_out`, after
 *                        STALL_MAX_NS: a hang never outlives the test)
 *   lookup (syscall)     ctx = struct stalled_args: features (f.cpu a table index) in,
 *                        mlsched_lookup()'s decision and level out
 *
 * The decision maps are the ones `mlsched-lite run --pin` (or a pinned KernelPath) keeps;
 * the driver (stalled_reader.c) hands them to this object before load.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* Longest hold: only catches a driver that never releases the reader. */
#define STALL_MAX_NS	(20ull * 1000 * 1000 * 1000)
#define SPIN_ROUNDS	(1u << 23)	/* bpf_loop's most iterations per call */
#define SPIN_CALLS	4096

struct gate {
	__u32 step;		/* in: MLSCHED_STEP_* to hold at (0: none) */
	__u32 paused;		/* out: the reader is held */
	__u32 released;		/* in: let it go */
	__u32 timed_out;	/* out: held for STALL_MAX_NS, let go by itself */
	__u64 deadline_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct gate);
	__uint(max_entries, 1);
} gate SEC(".maps");

static long spin(__u64 i, void *ctx)
{
	__u32 zero = 0;
	struct gate *g = bpf_map_lookup_elem(&gate, &zero);

	if (!g || *(volatile __u32 *)&g->released)
		return 1;
	if (bpf_ktime_get_ns() > g->deadline_ns) {
		g->timed_out = 1;
		return 1;
	}
	return 0;
}

static long spin_more(__u64 i, void *ctx)
{
	__u32 zero = 0;
	struct gate *g = bpf_map_lookup_elem(&gate, &zero);

	if (!g || *(volatile __u32 *)&g->released || g->timed_out)
		return 1;
	bpf_loop(SPIN_ROUNDS, spin, NULL, 0);
	return 0;
}

static __always_inline void hold_at(__u32 step)
{
	__u32 zero = 0;
	struct gate *g = bpf_map_lookup_elem(&gate, &zero);

	if (!g || g->step != step)
		return;
	g->deadline_ns = bpf_ktime_get_ns() + STALL_MAX_NS;
	__sync_fetch_and_add(&g->paused, 1);
	bpf_loop(SPIN_CALLS, spin_more, NULL, 0);
}

#define MLSCHED_LOOKUP_STEP(step) hold_at(step)
#include "mlsched_decide.h"

struct stalled_args {
	struct mlsched_features f;
	__u8 decision;
	__u8 level;
	__u8 _pad[2];
};

SEC("syscall")
int lookup(struct stalled_args *a)
{
	struct mlsched_control *ctl = mlsched_ctl();
	struct mlsched_features f = a->f;
	__u8 level = 0;

	if (!ctl)
		return -2;	/* -ENOENT */
	a->decision = mlsched_lookup(ctl, &f, 0, &level);
	a->level = level;
	return 0;
}
