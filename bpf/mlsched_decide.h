/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * mlsched_decide.h - the decision helper any BPF program can call.
 *
 * Include it (after vmlinux.h and bpf_helpers.h) in a BPF object; it brings
 * the maps the helper needs, which every object that includes it shares
 * (mlsched.bpf.c creates them; mlsched_inject.bpf.c and a scheduler reuse them
 * through their generated skeletons, bpf_map__reuse_fd before load):
 *
 *   requests   ringbuf      misses go here (size set at load)
 *   table      array        one struct mlsched_row per (cpu index, idle)
 *   table2     array        level-2 line bytes, 8 per __u64 word (size set at load)
 *   cpu_index  array        CPU id -> index among the table's CPUs, or MLSCHED_CPU_NONE
 *   decisions  array, mmap  answers written by user space, one __u64 per slot
 *   control    array, mmap  user space -> kernel settings and heartbeat
 *   host       array, mmap  kernel -> user space: seq counter, idle/busy CPUs
 *   stats      percpu array counters, enum mlsched_stat
 *
 * Workflow of mlsched_decide():
 *
 *   0. i = cpu_index[cpu]: the request carries i in f.cpu and the id in raw_cpu
 *   1. clamp both loads to [0, 1024] (count `clamped`), q = (10 L + 512) >> 10
 *   2. i < N and idle + busy == N ?  row = table[base + i * (N + 1) + idle]
 *        cell sure            -> count kernel_hits, return it (level 1)
 *        cell refined         -> its line set in table2's index, then the line
 *                                byte at the loads' input levels:
 *                                threshold -> count kernel_hits, level2_hits,
 *                                return it (level 2); RING line -> miss
 *        cell UNSURE          -> miss
 *      else                   -> count invalid, miss
 *      the table changed during these reads (control.table_seq) -> miss
 *   3. miss: consumer heartbeat too old -> count no_consumer, return STAY
 *            ring full                  -> count dropped, return STAY
 *            else commit a request (count produced, misses_sent), return STAY
 *
 * The caller learns the request's seq through *seq_out and may later ask
 * mlsched_answer() whether user space answered it.
 */
#ifndef MLSCHED_DECIDE_H
#define MLSCHED_DECIDE_H

#include "mlsched.h"

/* mlsched_decide() flags */
#define MLSCHED_DECIDE_BYPASS_TABLE	1	/* skip the table: always a request */
#define MLSCHED_DECIDE_REPORT_HITS	2	/* also emit an informational record on hits */
#define MLSCHED_DECIDE_NO_CONSUMER_CHECK 4	/* send even without a consumer heartbeat */
#define MLSCHED_DECIDE_LEVEL1_ONLY	8	/* skip table level 2: its cells go to the ring */

/* Placeholder sizes; the loader sets the real ones before load. */
#define MLSCHED_DEFAULT_RING_BYTES	(1 << 20)
#define MLSCHED_DEFAULT_SLOTS		(1 << 16)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MLSCHED_DEFAULT_RING_BYTES);
} requests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct mlsched_row);
	__uint(max_entries, 1);
} table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} table2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MLSCHED_MAX_CPUS);
} cpu_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, MLSCHED_DEFAULT_SLOTS);
} decisions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct mlsched_control);
	__uint(max_entries, 1);
} control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct mlsched_host);
	__uint(max_entries, 1);
} host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct mlsched_stats);
	__uint(max_entries, 1);
} stats SEC(".maps");

static __always_inline struct mlsched_control *mlsched_ctl(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&control, &zero);
}

static __always_inline struct mlsched_host *mlsched_host_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&host, &zero);
}

/*
 * Per-CPU counters, added atomically: each CPU owns its copy, but programs interleave on
 * one CPU (a preemptible SEC("syscall") program, a tracepoint program run from an
 * interrupt in the middle of another), and a plain load-add-store loses the count of
 * whichever ran in between.
 */
static __always_inline void mlsched_count(enum mlsched_stat which)
{
	__u32 zero = 0;
	struct mlsched_stats *s = bpf_map_lookup_elem(&stats, &zero);

	if (s && which < MLSCHED_STAT_COUNT)
		__sync_fetch_and_add(&s->v[which], 1);
}

/* A CPU id's index among the table's CPUs; MLSCHED_CPU_NONE outside the table. */
static __always_inline __u32 mlsched_cpu_index(__u32 cpu)
{
	__u32 *i = bpf_map_lookup_elem(&cpu_index, &cpu);

	return i ? *i : MLSCHED_CPU_NONE;
}

/* Quantize a fixed-point load (<= LOAD_ONE) to a level-1 band; must equal wire.load_level(). */
static __always_inline __u32 mlsched_quantize(__u32 load)
{
	return (MLSCHED_LOAD_STEPS * load + MLSCHED_LOAD_ONE / 2) >> MLSCHED_LOAD_SHIFT;
}

/* A load's input level for the model (see "table level 2" in mlsched.h); load <= LOAD_ONE. */
static __always_inline __u32 mlsched_input_level(const struct mlsched_load_quant *lq, __u32 load)
{
	__s64 v = ((__s64)load * lq->mul + lq->add) >> MLSCHED_L2_SHIFT;

	if (v < 0)
		return 0;
	return v >= MLSCHED_L2_INPUT_LEVELS ? MLSCHED_L2_INPUT_LEVELS - 1 : (__u32)v;
}

/*
 * Level 2 under a refined cell: STAY/MIGRATE, or UNSURE for a line left to user space
 * (or a table2 the loader sized too small). ord: the cell's number in table2.
 */
static __always_inline __u8 mlsched_level2(const struct mlsched_level2 *g, __u32 ord,
					   __u32 qs, __u32 qd, __u32 src, __u32 dst)
{
	__u32 lines = g->lines, s, d, t, key, set;
	__u64 byte, *word;
	__u8 line;

	if (lines == 0 || lines > MLSCHED_L2_MAX_LINES || qs >= MLSCHED_LOAD_LEVELS ||
	    qd >= MLSCHED_LOAD_LEVELS)
		return MLSCHED_UNSURE;
	/* the masks keep the index inside band_start + _pad where the verifier can see it */
	barrier_var(qs);
	barrier_var(qd);
	s = mlsched_input_level(&g->src, src) - g->src.band_start[qs & 15];
	d = mlsched_input_level(&g->dst, dst) - g->dst.band_start[qd & 15];
	if (s >= lines || d >= MLSCHED_L2_MAX_LINES)	/* unsigned: also catches s < 0 */
		return MLSCHED_UNSURE;
	if (ord >= g->cells)
		return MLSCHED_UNSURE;
	key = g->index_base + (ord >> 1);
	word = bpf_map_lookup_elem(&table2, &key);
	if (!word)
		return MLSCHED_UNSURE;
	set = (__u32)(*word >> ((ord & 1) * 32));
	byte = (__u64)set * lines + s;
	key = g->word_base + (__u32)(byte >> 3);
	word = bpf_map_lookup_elem(&table2, &key);
	if (!word)
		return MLSCHED_UNSURE;
	line = *word >> ((byte & 7) * 8);
	t = line & MLSCHED_L2_THRESHOLD_MASK;
	if (t == MLSCHED_L2_RING)
		return MLSCHED_UNSURE;
	return (d < t) == !!(line & MLSCHED_L2_FIRST_MIGRATE) ? MLSCHED_MIGRATE : MLSCHED_STAY;
}

/*
 * Points between the reads of one lookup. An object that includes this file may define
 * MLSCHED_LOOKUP_STEP(step) before it to run code there (tests hold a reader at a step
 * while the table changes under it); left undefined, it is nothing.
 */
#define MLSCHED_STEP_SELECTED	1	/* table_sel read: geometry and half chosen */
#define MLSCHED_STEP_ROW	2	/* level-1 cell read from its row */
#ifndef MLSCHED_LOOKUP_STEP
#define MLSCHED_LOOKUP_STEP(step) do { } while (0)
#endif

/* The table's answer as mlsched_lookup() gives it, without the check of table_seq. */
static __always_inline __u8 mlsched_lookup_table(const struct mlsched_control *ctl,
						 const struct mlsched_features *f, __u32 flags,
						 __u8 *level)
{
	/* one read: geometry and half come from the same published table */
	__u32 sel = *(volatile __u32 *)&ctl->table_sel;
	__u32 n = sel & MLSCHED_TABLE_NCPUS_MASK;
	__u32 half = (sel & MLSCHED_TABLE_SECOND) ? 1 : 0;
	__u32 base = half ? ctl->table_half_rows : 0;
	__u32 src = f->src_load, dst = f->dst_load;
	struct mlsched_row *row;
	__u32 key, cell, qs, qd;
	__u8 c;

	MLSCHED_LOOKUP_STEP(MLSCHED_STEP_SELECTED);
	*level = 0;
	if (src > MLSCHED_LOAD_ONE) {
		mlsched_count(MLSCHED_STAT_CLAMPED);
		src = MLSCHED_LOAD_ONE;
	}
	if (dst > MLSCHED_LOAD_ONE) {
		mlsched_count(MLSCHED_STAT_CLAMPED);
		dst = MLSCHED_LOAD_ONE;
	}
	qs = mlsched_quantize(src);
	qd = mlsched_quantize(dst);
	if (n == 0 || f->cpu >= n || f->idle > n || f->busy != n - f->idle)
		return MLSCHED_NONE;
	key = base + f->cpu * (n + 1) + f->idle;
	row = bpf_map_lookup_elem(&table, &key);
	if (!row)
		return MLSCHED_NONE;
	cell = qs * MLSCHED_LOAD_LEVELS + qd;
	barrier_var(cell);		/* keep the bound check below for the verifier */
	if (cell >= MLSCHED_ROW_CELLS)
		return MLSCHED_UNSURE;
	c = row->cell[cell];
	MLSCHED_LOOKUP_STEP(MLSCHED_STEP_ROW);
	if (c <= MLSCHED_MIGRATE) {
		*level = 1;
		return c;
	}
	if (c < MLSCHED_CELL_LEVEL2 || (flags & MLSCHED_DECIDE_LEVEL1_ONLY))
		return MLSCHED_UNSURE;
	c = mlsched_level2(&ctl->level2[half], row->level2_base + (c - MLSCHED_CELL_LEVEL2),
			   qs, qd, src, dst);
	if (c <= MLSCHED_MIGRATE)
		*level = 2;
	return c;
}

/* control.table_seq, read in its place among the lookup's reads (see table in mlsched.h). */
static __always_inline __u32 mlsched_table_seq(const struct mlsched_control *ctl)
{
	__u32 seq;

	barrier();
	seq = *(volatile const __u32 *)&ctl->table_seq;
	barrier();
	return seq;
}

/*
 * Table answer for the features: STAY/MIGRATE (*level 1 or 2), UNSURE, or MLSCHED_NONE
 * when off-grid (*level 0 for both). An answer read while the table changed is dropped
 * for UNSURE: every read it took may not have come from one table.
 */
static __always_inline __u8 mlsched_lookup(const struct mlsched_control *ctl,
					   const struct mlsched_features *f, __u32 flags,
					   __u8 *level)
{
	__u32 seq = mlsched_table_seq(ctl);
	__u8 d = mlsched_lookup_table(ctl, f, flags, level);

	if (d <= MLSCHED_MIGRATE && ((seq & 1) || mlsched_table_seq(ctl) != seq)) {
		*level = 0;
		return MLSCHED_UNSURE;
	}
	return d;
}

static __always_inline bool mlsched_consumer_alive(const struct mlsched_control *ctl, __u64 now)
{
	__u64 beat = ctl->heartbeat_ns;

	if (ctl->consumer_timeout_ns == 0)
		return true;
	/* a beat written after `now` was read is alive, not 2^64 ns old */
	return beat != 0 && (beat >= now || now - beat <= ctl->consumer_timeout_ns);
}

/*
 * Commit one record to `requests`. Returns its seq, 0 when the ring was full.
 * source/cfs_action/dst_cpu describe the event; kernel_decision is MLSCHED_NONE
 * unless the record only reports a kernel hit.
 */
static __always_inline __u64 mlsched_emit(const struct mlsched_features *f, __u32 raw_cpu,
					  __u32 pid, __u8 source, __u8 reason, __u8 cfs_action,
					  __u8 kernel_decision, __u32 dst_cpu, __u64 now)
{
	struct mlsched_host *h = mlsched_host_state();
	struct mlsched_request *r;
	__u64 seq;

	if (!h)
		return 0;
	r = bpf_ringbuf_reserve(&requests, sizeof(*r), 0);
	if (!r) {
		mlsched_count(MLSCHED_STAT_DROPPED);
		return 0;
	}
	seq = __sync_fetch_and_add(&h->seq, 1) + 1;
	r->version = MLSCHED_ABI_VERSION;
	r->size = sizeof(*r);
	r->source = source;
	r->reason = reason;
	r->cfs_action = cfs_action;
	r->kernel_decision = kernel_decision;
	r->seq = seq;
	r->ts_ns = now;
	r->pid = pid;
	r->dst_cpu = dst_cpu;
	r->f = *f;
	r->raw_cpu = raw_cpu;
	bpf_ringbuf_submit(r, 0);
	mlsched_count(MLSCHED_STAT_PRODUCED);
	if (reason != MLSCHED_REASON_HIT)
		mlsched_count(MLSCHED_STAT_MISSES_SENT);
	return seq;
}

/* What mlsched_decide_ex() did besides returning a decision. */
struct mlsched_outcome {
	__u64 seq;	/* seq of the record committed, 0 if none */
	__u8 reason;	/* enum mlsched_reason (HIT for a table hit) */
	__u8 fate;	/* enum mlsched_fate */
	__u8 level;	/* table level that answered (1, 2), 0: none */
};

/*
 * Decide for one request; f->cpu is a CPU id. Returns STAY or MIGRATE; STAY whenever
 * the answer has to come from user space. source/cfs_action/dst_cpu go into the record.
 */
static __always_inline __u8 mlsched_decide_ex(const struct mlsched_features *raw, __u32 pid,
					      __u8 source, __u8 cfs_action, __u32 dst_cpu,
					      __u32 flags, struct mlsched_outcome *out)
{
	struct mlsched_control *ctl = mlsched_ctl();
	__u8 reason = MLSCHED_REASON_BYPASS;
	struct mlsched_features q = *raw;
	const struct mlsched_features *f = &q;
	__u8 d, level;
	__u64 now;

	q.cpu = mlsched_cpu_index(raw->cpu);

	out->seq = 0;
	out->reason = MLSCHED_REASON_BYPASS;
	out->fate = MLSCHED_FATE_NO_CONSUMER;
	out->level = 0;
	if (!ctl)
		return MLSCHED_STAY;
	if (!(flags & MLSCHED_DECIDE_BYPASS_TABLE) && !(ctl->flags & MLSCHED_CTL_BYPASS_TABLE)) {
		d = mlsched_lookup(ctl, f, flags, &level);
		if (d <= MLSCHED_MIGRATE) {
			mlsched_count(MLSCHED_STAT_KERNEL_HITS);
			if (level == 2)
				mlsched_count(MLSCHED_STAT_LEVEL2_HITS);
			out->level = level;
			out->reason = MLSCHED_REASON_HIT;
			out->fate = MLSCHED_FATE_HIT;
			if (flags & MLSCHED_DECIDE_REPORT_HITS)
				out->seq = mlsched_emit(f, raw->cpu, pid, source,
							MLSCHED_REASON_HIT, cfs_action, d, dst_cpu,
							bpf_ktime_get_ns());
			return d;
		}
		if (d == MLSCHED_NONE) {
			mlsched_count(MLSCHED_STAT_INVALID);
			reason = MLSCHED_REASON_OFF_GRID;
		} else {
			reason = MLSCHED_REASON_UNSURE;
		}
	}
	out->reason = reason;

	now = bpf_ktime_get_ns();
	if (!(flags & MLSCHED_DECIDE_NO_CONSUMER_CHECK) && !mlsched_consumer_alive(ctl, now)) {
		mlsched_count(MLSCHED_STAT_NO_CONSUMER);
		return MLSCHED_STAY;
	}
	out->seq = mlsched_emit(f, raw->cpu, pid, source, reason, cfs_action, MLSCHED_NONE,
				dst_cpu, now);
	out->fate = out->seq ? MLSCHED_FATE_SENT : MLSCHED_FATE_DROPPED;
	return MLSCHED_STAY;
}

/* The short form a balancer calls: features in, decision out, seq (0: none) for later. */
static __always_inline __u8 mlsched_decide(const struct mlsched_features *f, __u32 pid,
					   __u64 *seq_out)
{
	struct mlsched_outcome out;
	__u8 d = mlsched_decide_ex(f, pid, MLSCHED_SRC_BALANCER, MLSCHED_NONE, MLSCHED_CPU_NONE,
				   0, &out);

	*seq_out = out.fate == MLSCHED_FATE_SENT ? out.seq : 0;
	return d;
}

/*
 * Read user space's answer to `seq`: ANSWERED (*decision set), MISSING (no
 * answer yet, *decision = STAY) or OVERWRITTEN (the slot moved on to a newer
 * seq: the answer is lost, *decision = STAY). Counts nothing.
 */
static __always_inline __u8 mlsched_answer(__u64 seq, __u8 *decision)
{
	struct mlsched_control *ctl = mlsched_ctl();
	__u32 key;
	__u64 *slot, word, got;

	*decision = MLSCHED_STAY;
	if (!ctl || ctl->decision_slots == 0)
		return MLSCHED_ANS_MISSING;
	key = (__u32)seq & (ctl->decision_slots - 1);
	slot = bpf_map_lookup_elem(&decisions, &key);
	if (!slot)
		return MLSCHED_ANS_MISSING;
	word = *(volatile __u64 *)slot;
	got = word >> MLSCHED_ANSWER_SHIFT;
	if (got == seq) {
		*decision = (word & MLSCHED_ANSWER_DECISION_MASK) == MLSCHED_MIGRATE ?
			    MLSCHED_MIGRATE : MLSCHED_STAY;
		return MLSCHED_ANS_ANSWERED;
	}
	return got > seq ? MLSCHED_ANS_OVERWRITTEN : MLSCHED_ANS_MISSING;
}

#endif /* MLSCHED_DECIDE_H */
