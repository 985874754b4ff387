// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlsched_inject.bpf.c - requests and answers on demand, for tests, replay and
 * the benchmark: two SEC("syscall") programs run by bpf_prog_test_run_opts.
 *
 *   inject          a batch of feature records from the mmapped `inject_buf`
 *                   array, or N records generated from a seed, through
 *                   mlsched_decide_ex(); test flags stamp a wrong version or
 *                   size on records to exercise the consumer's validation.
 *   read_decisions  reads answers back the way a balancer would
 *                   (mlsched_answer()) into the mmapped `readback` array.
 *
 * The decision maps come from mlsched_decide.h, as in mlsched.bpf.c; the
 * loader hands this object the production object's maps before load
 * (bpf_map__reuse_fd), so both see one ring, one table and one seq counter.
 * Only `inject_buf` and `readback` belong to this object.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "mlsched_decide.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct mlsched_inject_slot);
	__uint(max_entries, MLSCHED_INJECT_SLOTS);
} inject_buf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct mlsched_readback);
	__uint(max_entries, MLSCHED_READBACK_SLOTS);
} readback SEC(".maps");

/* ---- injector -------------------------------------------------------------- */

struct inject_state {
	__u64 rng;
	__u64 first_seq, last_seq;
	__u32 flags, gen_ncpus, invalid_pct, pid;
	__u32 hits, sent, dropped, no_consumer, migrate, done;
};

/* splitmix64: user space regenerates the same records from the same seed. */
static __always_inline __u64 splitmix64(__u64 *state)
{
	__u64 z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* One generated record; bit fields of r as documented in support/traffic.py. */
static __always_inline void generate(struct inject_state *st, struct mlsched_features *f)
{
	__u64 r = splitmix64(&st->rng);
	__u32 n = st->gen_ncpus;

	f->cpu = (r & 0xffff) % n;
	f->idle = ((r >> 16) & 0xffff) % (n + 1);
	f->busy = n - f->idle;
	f->src_load = ((r >> 32) & 0x7ff) % (MLSCHED_LOAD_ONE + 1);
	f->dst_load = ((r >> 43) & 0x7ff) % (MLSCHED_LOAD_ONE + 1);
	if (((r >> 54) % 100) < st->invalid_pct)
		f->busy += 1;		/* idle + busy != N: off-grid */
}

/* A malformed record for the consumer's validation; not a decision. */
static __always_inline void inject_malformed(struct inject_state *st,
					     const struct mlsched_features *f)
{
	struct mlsched_request *r = bpf_ringbuf_reserve(&requests, sizeof(*r), 0);

	if (!r) {
		st->dropped++;
		mlsched_count(MLSCHED_STAT_DROPPED);
		return;
	}
	__builtin_memset(r, 0, sizeof(*r));
	r->version = MLSCHED_ABI_VERSION + ((st->flags & MLSCHED_INJ_BAD_VERSION) ? 1 : 0);
	r->size = sizeof(*r) + ((st->flags & MLSCHED_INJ_BAD_SIZE) ? 8 : 0);
	r->f = *f;
	bpf_ringbuf_submit(r, 0);
	st->sent++;
	st->done++;
}

/* The two clock reads that bracket a timed decide(), with no decide() between them. */
static __always_inline void inject_clock_only(struct inject_state *st,
					      struct mlsched_inject_slot *slot)
{
	__u64 t0 = bpf_ktime_get_ns();

	slot->decide_ns = bpf_ktime_get_ns() - t0;
	slot->result = MLSCHED_STAY;
	slot->reason = MLSCHED_REASON_BYPASS;
	slot->fate = MLSCHED_FATE_NO_CONSUMER;
	slot->level = 0;
	slot->seq = 0;
	st->done++;
}

static __always_inline void count_outcome(struct inject_state *st,
					  const struct mlsched_outcome *out, __u8 d)
{
	switch (out->fate) {
	case MLSCHED_FATE_HIT:
		st->hits++;
		break;
	case MLSCHED_FATE_SENT:
		st->sent++;
		if (!st->first_seq)
			st->first_seq = out->seq;
		st->last_seq = out->seq;
		break;
	case MLSCHED_FATE_DROPPED:
		st->dropped++;
		break;
	default:
		st->no_consumer++;
	}
	if (d == MLSCHED_MIGRATE)
		st->migrate++;
	st->done++;
}

/*
 * The decision, as a global BPF function: the verifier checks it once on its own, with
 * its arguments unknown, instead of once for every combination of the injector's mode
 * flags that reaches the call.
 */
__noinline int inject_decide(const struct mlsched_features *f, __u32 pid, __u32 flags,
			     struct mlsched_outcome *out)
{
	if (!f || !out)
		return MLSCHED_STAY;
	return mlsched_decide_ex(f, pid, MLSCHED_SRC_INJECT, MLSCHED_NONE, MLSCHED_CPU_NONE,
				 flags, out);
}

/*
 * One record: every mode shares the one call of inject_decide().
 */
static long inject_one(__u32 i, struct inject_state *st)
{
	struct mlsched_inject_slot *slot = NULL;
	struct mlsched_outcome out;
	struct mlsched_features f;
	__u32 flags = 0;
	__u64 t0 = 0;
	__u8 d;

	if (st->flags & MLSCHED_INJ_GENERATE) {
		generate(st, &f);
	} else {
		slot = bpf_map_lookup_elem(&inject_buf, &i);
		if (!slot)
			return 1;
		f = slot->f;
	}
	if (st->flags & (MLSCHED_INJ_BAD_VERSION | MLSCHED_INJ_BAD_SIZE)) {
		inject_malformed(st, &f);
		return 0;
	}
	if (slot && (st->flags & MLSCHED_INJ_TIME_CLOCK)) {
		inject_clock_only(st, slot);
		return 0;
	}
	if (st->flags & MLSCHED_INJ_BYPASS_TABLE)
		flags |= MLSCHED_DECIDE_BYPASS_TABLE;
	if (st->flags & MLSCHED_INJ_NO_CONSUMER_CHECK)
		flags |= MLSCHED_DECIDE_NO_CONSUMER_CHECK;

	if (slot && (st->flags & MLSCHED_INJ_TIME_EACH))
		t0 = bpf_ktime_get_ns();
	d = inject_decide(&f, st->pid, flags, &out);
	if (slot && (st->flags & MLSCHED_INJ_TIME_EACH))
		slot->decide_ns = bpf_ktime_get_ns() - t0;

	count_outcome(st, &out, d);
	if (slot) {
		slot->result = d;
		slot->reason = out.reason;
		slot->fate = out.fate;
		slot->level = out.level;
		slot->seq = out.seq;
	}
	return 0;
}

SEC("syscall")
int inject(struct mlsched_inject_args *args)
{
	struct inject_state st = {};
	__u32 count = args->count;
	__u64 t0, t1;

	if (args->version != MLSCHED_ABI_VERSION)
		return -22;	/* EINVAL */
	st.flags = args->flags;
	st.rng = args->seed;
	st.gen_ncpus = args->gen_ncpus;
	st.invalid_pct = args->gen_invalid_pct;
	st.pid = args->pid;
	if (st.flags & MLSCHED_INJ_GENERATE) {
		if (st.gen_ncpus == 0 || st.gen_ncpus > 0xffff)
			return -22;
	} else if (count > MLSCHED_INJECT_SLOTS) {
		return -7;	/* E2BIG */
	}

	t0 = bpf_ktime_get_ns();
	bpf_loop(count, inject_one, &st, 0);
	t1 = bpf_ktime_get_ns();

	args->elapsed_ns = t1 - t0;
	args->first_seq = st.first_seq;
	args->last_seq = st.last_seq;
	args->hits = st.hits;
	args->sent = st.sent;
	args->dropped = st.dropped;
	args->no_consumer = st.no_consumer;
	args->migrate = st.migrate;
	args->done = st.done;
	return 0;
}

/* ---- reader ---------------------------------------------------------------- */

struct read_state {
	__u64 first_seq;
	__u32 answered, missing, overwritten, migrate;
};

static long read_one(__u32 i, struct read_state *st)
{
	struct mlsched_readback *out = bpf_map_lookup_elem(&readback, &i);
	__u8 decision, status;

	if (!out)
		return 1;
	status = mlsched_answer(st->first_seq + i, &decision);
	out->decision = decision;
	out->status = status;
	if (status == MLSCHED_ANS_ANSWERED) {
		st->answered++;
		mlsched_count(MLSCHED_STAT_ANSWERED);
		if (decision == MLSCHED_MIGRATE)
			st->migrate++;
	} else {
		if (status == MLSCHED_ANS_OVERWRITTEN)
			st->overwritten++;
		else
			st->missing++;
		mlsched_count(MLSCHED_STAT_STALE);
	}
	return 0;
}

SEC("syscall")
int read_decisions(struct mlsched_read_args *args)
{
	struct read_state st = {};
	__u32 count = args->count;

	if (args->version != MLSCHED_ABI_VERSION)
		return -22;
	if (count > MLSCHED_READBACK_SLOTS)
		return -7;
	st.first_seq = args->first_seq;
	bpf_loop(count, read_one, &st, 0);
	args->answered = st.answered;
	args->missing = st.missing;
	args->overwritten = st.overwritten;
	args->migrate = st.migrate;
	return 0;
}
