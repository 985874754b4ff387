/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * mlsched.h - the one wire contract between the kernel side (bpf/) and
 * mlsched-lite (runtime/).
 *
 * The BPF C includes this file; cffi_build.py reads it for the cdef. Nobody
 * copies the layouts below. Rules that keep it readable by cffi: fixed-width
 * __u8/__u16/__u32/__u64 only, constants as `#define NAME <integer>`, enums
 * with plain values, and anything BPF-only inside `#ifdef __bpf__`.
 *
 * Request -> decision path:
 *
 *   producer (collector tracepoint / injector / a balancer)
 *     mlsched_decide(): i = cpu_index[cpu], q(src), q(dst)
 *                       -> `table` row (i * (N + 1) + idle)
 *        sure cell            -> decision now (kernel hit, level 1)
 *        refined cell         -> `table2` line at the model's input levels of
 *                                src and dst -> decision now (level 2)
 *        UNSURE / off-grid    -> struct mlsched_request on `requests` ring,
 *                                return STAY for now
 *   mlsched-lite polls the ring, decides, writes
 *        decisions[seq & (slots - 1)] = MLSCHED_ANSWER(seq, decision)
 *   through mmap (no syscall per decision); the kernel side reads the slot
 *   and trusts it only when the seq in it is the seq it asked about.
 */
#ifndef MLSCHED_H
#define MLSCHED_H

/* Bumped on any layout change below; every record and argument block carries it. */
#define MLSCHED_ABI_VERSION 4

/* ---- decisions ----------------------------------------------------------- */
enum mlsched_decision {
	MLSCHED_STAY = 0,
	MLSCHED_MIGRATE = 1,
	MLSCHED_UNSURE = 2,	/* table cells only: "ask user space" */
};
/* "no decision / no CFS action" in the u8 fields of a request. */
#define MLSCHED_NONE 255
/* "no CPU" in u32 CPU fields. */
#define MLSCHED_CPU_NONE 4294967295

/* ---- features and quantization -------------------------------------------- */
/* Loads travel in fixed point: MLSCHED_LOAD_ONE == 1.0 (SCHED_CAPACITY_SCALE). */
#define MLSCHED_LOAD_SHIFT 10
#define MLSCHED_LOAD_ONE 1024
/* q(L) = (MLSCHED_LOAD_STEPS * min(L, ONE) + ONE / 2) >> SHIFT, in 0..STEPS. */
#define MLSCHED_LOAD_STEPS 10
#define MLSCHED_LOAD_LEVELS 11

struct mlsched_features {
	__u32 cpu;		/* producers: CPU id the decision is about (the task's CPU);
				 * in a request: its index among the table's CPUs
				 * (cpu_index), MLSCHED_CPU_NONE outside the table */
	__u32 idle;		/* CPUs running their idle task */
	__u32 busy;		/* CPUs running a task */
	__u32 src_load;		/* source domain load, 1/1024 */
	__u32 dst_load;		/* destination domain load, 1/1024 */
};

/* ---- table ------------------------------------------------------------------
 * Array map of two halves of control.table_half_rows rows each; the table in
 * use is in one half, and the next one is written into the other before it is
 * published. control.table_sel names both its geometry and its half in one word
 * (one store publishes a table): N = table_sel & MLSCHED_TABLE_NCPUS_MASK, base =
 * table_half_rows if table_sel & MLSCHED_TABLE_SECOND, else 0.
 * key = base + i * (N + 1) + idle, i = cpu_index[cpu]; the value is one row:
 * cell[q(src) * LEVELS + q(dst)] in {STAY, MIGRATE, UNSURE} or, for a cell the
 * second level refines, MLSCHED_CELL_LEVEL2 + k (k: the cell's rank among the
 * row's refined cells; see "table level 2"). Readers that know only level 1 take
 * any value above MIGRATE as UNSURE.
 * A key is valid iff i < N and idle + busy == N; anything else misses.
 *
 * control.table_seq counts table changes twice: odd while one is under way (the
 * unused halves written, then table_sel), even once it is done. A lookup reads it
 * before table_sel and again after its last read of the table; if the first read
 * was odd or the two differ, the table changed under it (a reader held across two
 * changes finds its own half rewritten) and it answers nothing from the table:
 * the request goes to user space. The same count covers `table2` and
 * control.level2.
 *
 * cpu_index (array, MLSCHED_MAX_CPUS __u32, filled by the loader): CPU id -> its
 * index 0..N-1 among the table's CPUs (the first N online CPUs, in order), or
 * MLSCHED_CPU_NONE for a CPU outside the table. With a gap in the online mask
 * ("0,2-3") CPU 3 is index 2; the collector counts idle/busy only for CPUs
 * with an index, so idle + busy == N holds when the table covers fewer CPUs
 * than the host has.
 */
#define MLSCHED_TABLE_NCPUS_MASK 65535
#define MLSCHED_TABLE_SECOND 65536
#define MLSCHED_ROW_CELLS 121
#define MLSCHED_ROW_BYTES 128
/* Largest table the loader accepts (64 CPUs: 4160 rows, 520 KiB). */
#define MLSCHED_MAX_TABLE_CPUS 256

struct mlsched_row {
	__u8 cell[124];		/* ROW_CELLS used; the rest UNSURE */
	__u32 level2_base;	/* cell number in `table2` of the row's first refined cell */
};

/* ---- table level 2 ------------------------------------------------------------
 * The int8 model sees a load as one of 256 input levels (its input quantization),
 * a finer grid than the 0.1 steps of level 1. Under a refined level-1 cell the
 * second level holds the model's decision at every pair of input levels the cell
 * covers, verified against the interpreter when the bundle was made.
 *
 * Input level of a wire load L (0..LOAD_ONE, after the clamp), in integers:
 *   level(L) = clamp((L * quant.mul + quant.add) >> MLSCHED_L2_SHIFT, 0, 255)
 * One quant per load column (src, dst); band_start[q] is level(L) of the smallest
 * L of band q (q = q(L) of level 1), so s = level(src) - src.band_start[q(src)] and
 * d = level(dst) - dst.band_start[q(dst)] are offsets inside the cell.
 *
 * `table2` is an array of __u64 words. Each half holds an index, then line
 * bytes. Refined cell c (= row.level2_base + k) has a line set u: the __u32 at
 * word index_base + c / 2, low half first (neighbouring rows' cells often
 * share one set, stored once). A set is `lines` line bytes, one per src offset
 * s: the byte u * lines + s counted from word word_base, 8 bytes per word,
 * little end first. A line byte says, over the d
 * offsets of the cell: d < t -> first, else the other decision, where
 * t = byte & MLSCHED_L2_THRESHOLD_MASK and first = MIGRATE iff byte &
 * MLSCHED_L2_FIRST_MIGRATE; t == MLSCHED_L2_RING: this line is not refined,
 * the request goes to the ring.
 *
 * control.level2[h] describes half h of `table` and `table2` (h = 1 when
 * table_sel & MLSCHED_TABLE_SECOND); lines == 0: that table has no level 2.
 */
#define MLSCHED_CELL_LEVEL2 3
#define MLSCHED_L2_SHIFT 32
#define MLSCHED_L2_INPUT_LEVELS 256
#define MLSCHED_L2_FIRST_MIGRATE 128
#define MLSCHED_L2_THRESHOLD_MASK 127
#define MLSCHED_L2_RING 127
/* Most offsets a cell may span on either axis (a larger span: no level 2). */
#define MLSCHED_L2_MAX_LINES 126

struct mlsched_load_quant {
	__s64 mul;
	__s64 add;
	__u8 band_start[12];	/* MLSCHED_LOAD_LEVELS used */
	__u32 _pad;
};

struct mlsched_level2 {
	__u32 word_base;	/* first word of this table's line bytes in `table2` */
	__u32 lines;		/* line bytes per line set; 0: no level 2 */
	__u32 index_base;	/* first word of this table's index in `table2` */
	__u32 cells;		/* refined cells (index entries) */
	struct mlsched_load_quant src;
	struct mlsched_load_quant dst;
};

/* ---- requests (ring buffer records) ------------------------------------------ */
/* request.source */
enum mlsched_source {
	MLSCHED_SRC_INJECT = 0,		/* SEC("syscall") injector */
	MLSCHED_SRC_MIGRATE = 1,	/* collector: CFS migrated the task */
	MLSCHED_SRC_WAKEUP = 2,		/* collector: CFS woke the task where it was */
	MLSCHED_SRC_BALANCER = 3,	/* a scheduler's balancer calling mlsched_decide() */
};

/* request.reason: why the record is on the ring */
enum mlsched_reason {
	MLSCHED_REASON_UNSURE = 0,	/* table cell UNSURE */
	MLSCHED_REASON_OFF_GRID = 1,	/* key outside the table (or no table) */
	MLSCHED_REASON_BYPASS = 2,	/* table bypassed on request */
	MLSCHED_REASON_HIT = 3,		/* kernel answered; record is informational */
};

struct mlsched_request {
	__u16 version;		/* MLSCHED_ABI_VERSION */
	__u16 size;		/* sizeof(struct mlsched_request) */
	__u8 source;		/* enum mlsched_source */
	__u8 reason;		/* enum mlsched_reason */
	__u8 cfs_action;	/* STAY / MIGRATE for collector records, else MLSCHED_NONE */
	__u8 kernel_decision;	/* STAY / MIGRATE when reason == HIT, else MLSCHED_NONE */
	__u64 seq;		/* unique, from one counter, starts at 1 */
	__u64 ts_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 pid;		/* task the decision is about (0: none) */
	__u32 dst_cpu;		/* CPU CFS moved the task to, or MLSCHED_CPU_NONE */
	struct mlsched_features f;	/* f.cpu: the CPU's index (see table) */
	__u32 raw_cpu;		/* CPU id the decision is about */
};
/* A request needs an answer from user space iff reason != MLSCHED_REASON_HIT. */

/* ---- decisions (answers) -----------------------------------------------------
 * `decisions` is a BPF_F_MMAPABLE array of __u64 words, `slots` entries (a
 * power of two). User space answers seq S by one aligned 8-byte store of
 * MLSCHED_ANSWER(S, d) into slot S & (slots - 1): seq and decision can never be
 * seen torn apart, and a slot holding any other seq means "not answered".
 */
#define MLSCHED_ANSWER_SHIFT 8
#define MLSCHED_ANSWER_DECISION_MASK 255
#define MLSCHED_ANSWER(seq, d) (((seq) << MLSCHED_ANSWER_SHIFT) | (d))
#define MLSCHED_MIN_DECISION_SLOTS 64

/* ---- control: user space -> kernel (1-entry BPF_F_MMAPABLE array) ------------ */
/* control.flags */
#define MLSCHED_CTL_BYPASS_TABLE 1	/* every decide() goes to the ring */
#define MLSCHED_CTL_REPORT_HITS 2	/* collector: also emit kernel hits (shadow mode) */

/* control.magic of maps mlsched-lite created ("mlsc"); pinned maps without it are not reused. */
#define MLSCHED_CTL_MAGIC 0x6d6c7363

struct mlsched_control {
	__u32 abi_version;		/* set by the loader */
	__u32 flags;			/* MLSCHED_CTL_* */
	__u32 table_sel;		/* N and half of the table in use (see table); 0: none */
	__u32 decision_slots;		/* entries of `decisions`, power of two */
	__u32 ndomains;			/* domains in use (collector) */
	__u32 magic;			/* MLSCHED_CTL_MAGIC: the loader created these maps */
	__u64 heartbeat_ns;		/* consumer's last poll (CLOCK_MONOTONIC); 0: none yet */
	__u64 consumer_timeout_ns;	/* heartbeat older than this: no consumer; 0: never */
	__u64 stale_after_ns;		/* advice to balancers: how long an answer is worth
					 * waiting for; the helper itself enforces no deadline
					 * (stale = not in the slot when the kernel side reads) */
	__u32 table_half_rows;		/* rows in each half of `table`; set once at load */
	__u32 table2_half_words;	/* words in each half of `table2`; set once at load */
	struct mlsched_level2 level2[2];	/* per half of the table (see table level 2) */
	__u32 table_seq;		/* odd while the table changes (see table) */
	__u32 _pad;
};

/* ---- host state: kernel -> user space (1-entry BPF_F_MMAPABLE array) ---------- */
struct mlsched_host {
	__u64 seq;			/* last sequence number handed out */
	__u32 idle_cpus;		/* CPUs last seen switching to idle */
	__u32 busy_cpus;		/* CPUs last seen switching to a task */
	__u64 transitions;		/* CPU idle <-> busy changes seen */
};

/* ---- domains (collector) ------------------------------------------------------- */
#define MLSCHED_MAX_CPUS 1024
#define MLSCHED_MAX_DOMAINS 64
/* cpu_domain value of a CPU in no domain (the collector then keeps no load for it). */
#define MLSCHED_DOMAIN_NONE 4294967295
/* Domain load: time-averaged busy fraction with this time constant. */
#define MLSCHED_LOAD_TAU_NS 32000000

struct mlsched_domain {
	__u32 ncpus;			/* user space: CPUs in the domain */
	__u32 nr_busy;			/* kernel: domain CPUs running a task now */
	__u32 load_avg;			/* kernel: 1/1024, as of last_update_ns */
	__u32 _pad;
	__u64 last_update_ns;
};

/* ---- statistics: per-CPU array, one entry of MLSCHED_STAT_COUNT __u64 ---------- */
enum mlsched_stat {
	MLSCHED_STAT_PRODUCED = 0,	/* records committed to the ring (any reason) */
	MLSCHED_STAT_DROPPED = 1,	/* records lost: ring full */
	MLSCHED_STAT_KERNEL_HITS = 2,	/* decisions answered by the kernel table (either level) */
	MLSCHED_STAT_MISSES_SENT = 3,	/* records committed that need an answer */
	MLSCHED_STAT_ANSWERED = 4,	/* answers the kernel side read back in time */
	MLSCHED_STAT_STALE = 5,		/* answers the kernel side found missing / too late */
	MLSCHED_STAT_NO_CONSUMER = 6,	/* misses answered STAY: consumer heartbeat too old */
	MLSCHED_STAT_CLAMPED = 7,	/* loads above 1.0 clamped before quantization */
	MLSCHED_STAT_INVALID = 8,	/* keys outside the table geometry */
	MLSCHED_STAT_LEVEL2_HITS = 9,	/* the part of kernel_hits answered by table level 2 */
	MLSCHED_STAT_COUNT = 10,
};

struct mlsched_stats {
	__u64 v[10];			/* indexed by enum mlsched_stat (MLSCHED_STAT_COUNT) */
};

/* ---- injector: SEC("syscall") inject, ctx = struct mlsched_inject_args -------- */
/* In mlsched_inject.bpf.c, not the production object. Batch records come from its
 * `inject_buf` array (BPF_F_MMAPABLE, one slot each). */
#define MLSCHED_INJECT_SLOTS 65536

/* inject_args.flags */
#define MLSCHED_INJ_GENERATE 1		/* generate `count` records from `seed` */
#define MLSCHED_INJ_BYPASS_TABLE 2	/* every record goes to the ring */
#define MLSCHED_INJ_BAD_VERSION 4	/* stamp a wrong version on records (tests) */
#define MLSCHED_INJ_BAD_SIZE 8		/* stamp a wrong size on records (tests) */
#define MLSCHED_INJ_NO_CONSUMER_CHECK 16 /* ignore the consumer heartbeat */
#define MLSCHED_INJ_TIME_EACH 32	/* batch mode: time each decide() into slot.decide_ns */
#define MLSCHED_INJ_TIME_CLOCK 64	/* with TIME_EACH: time two clock reads only, no decide() */

/* What became of one decide() call (inject_slot.fate). */
enum mlsched_fate {
	MLSCHED_FATE_HIT = 0,		/* kernel table answered */
	MLSCHED_FATE_SENT = 1,		/* request committed to the ring */
	MLSCHED_FATE_DROPPED = 2,	/* ring full: answered STAY */
	MLSCHED_FATE_NO_CONSUMER = 3,	/* no consumer heartbeat: answered STAY */
};

struct mlsched_inject_slot {
	struct mlsched_features f;	/* in */
	__u8 result;			/* out: what decide() returned */
	__u8 reason;			/* out: enum mlsched_reason (HIT for hits) */
	__u8 fate;			/* out: enum mlsched_fate */
	__u8 level;			/* out: table level that answered (1, 2), 0: none */
	__u64 seq;			/* out: seq of the record sent, 0 if none */
	__u32 decide_ns;		/* out (TIME_EACH): clock read -> decide() -> clock read */
	__u32 _pad;
};

struct mlsched_inject_args {
	__u32 version;		/* in: MLSCHED_ABI_VERSION */
	__u32 flags;		/* in: MLSCHED_INJ_* */
	__u32 count;		/* in: records (batch mode: <= MLSCHED_INJECT_SLOTS) */
	__u32 gen_ncpus;	/* in (GENERATE): host size of generated records */
	__u64 seed;		/* in (GENERATE): splitmix64 seed */
	__u32 pid;		/* in: pid stamped on the records */
	__u32 gen_invalid_pct;	/* in (GENERATE): percent of off-grid records */
	/* out */
	__u64 elapsed_ns;	/* time spent in the record loop */
	__u64 first_seq;	/* first seq sent by this call, 0 if none */
	__u64 last_seq;		/* last seq sent by this call */
	__u32 hits;		/* answered from the table */
	__u32 sent;		/* committed to the ring */
	__u32 dropped;		/* ring full */
	__u32 no_consumer;	/* not sent: no consumer */
	__u32 migrate;		/* decide() returned MIGRATE */
	__u32 done;		/* records processed */
};

/* ---- reader: SEC("syscall") read_decisions, ctx = struct mlsched_read_args ----- */
/* In mlsched_inject.bpf.c too. */
#define MLSCHED_READBACK_SLOTS 65536

/* readback.status */
enum mlsched_answer_status {
	MLSCHED_ANS_ANSWERED = 0,	/* slot holds this seq */
	MLSCHED_ANS_MISSING = 1,	/* slot holds an older seq or nothing */
	MLSCHED_ANS_OVERWRITTEN = 2,	/* slot holds a newer seq: answer lost to aliasing */
};

struct mlsched_readback {
	__u8 decision;		/* the answer; STAY unless status == ANSWERED */
	__u8 status;		/* enum mlsched_answer_status */
	__u8 _pad[6];
};

struct mlsched_read_args {
	__u32 version;		/* in: MLSCHED_ABI_VERSION */
	__u32 count;		/* in: seqs first_seq .. first_seq + count - 1 */
	__u64 first_seq;	/* in */
	/* out; per-seq results in the `readback` array, index i = seq - first_seq */
	__u32 answered;
	__u32 missing;
	__u32 overwritten;
	__u32 migrate;
};

/* ---- pinned maps: who holds them (mlsched.bpf.c, SEC("iter/bpf_map") map_refs) -----
 * One record per map of the system, read by a consumer that must replace pinned maps
 * of another geometry: besides the pin (one reference) and the iterator
 * itself (one reference while it looks), every reference is a program, an open
 * descriptor or a mapping of another process.
 */
struct mlsched_map_refs {
	__u32 id;		/* map id */
	__u32 _pad;
	__u64 refs;		/* all references */
};

#ifdef __bpf__
_Static_assert(sizeof(struct mlsched_request) == 56, "request layout");
_Static_assert(sizeof(struct mlsched_row) == MLSCHED_ROW_BYTES, "row layout");
_Static_assert(MLSCHED_ROW_CELLS <= 124, "row cells fit before level2_base");
_Static_assert(MLSCHED_CELL_LEVEL2 + MLSCHED_ROW_CELLS <= 255, "level-2 cell codes fit a byte");
_Static_assert(sizeof(struct mlsched_load_quant) == 32, "load quant layout");
_Static_assert(MLSCHED_ROW_CELLS == MLSCHED_LOAD_LEVELS * MLSCHED_LOAD_LEVELS, "row cells");
_Static_assert(sizeof(struct mlsched_stats) == 8 * MLSCHED_STAT_COUNT, "stats layout");
_Static_assert(MLSCHED_LOAD_ONE == 1 << MLSCHED_LOAD_SHIFT, "load scale");
#endif

#endif /* MLSCHED_H */
