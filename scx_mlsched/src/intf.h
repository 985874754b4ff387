/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * intf.h - what scx_mlsched's BPF side (bpf/main.bpf.c) and its loader (main.c) share:
 * the configuration the loader writes into .rodata before load and the
 * scheduler's own counters. The exit record is the kernel source's
 * (user_exit_info.h); the request/decision wire format is bpf/mlsched.h, as
 * for every other producer.
 */
#ifndef SCX_MLSCHED_H
#define SCX_MLSCHED_H

#define SCX_MLSCHED_MAX_CPUS	64
#define SCX_MLSCHED_MAX_DOMS	8

/* Who answers "move this task to the other domain?" (cfg.policy). */
enum scx_mlsched_policy {
	SCX_MLSCHED_POLICY_MODEL = 0,	/* mlsched_decide(): table, else mlsched-lite */
	SCX_MLSCHED_POLICY_STAY = 1,	/* control: never move between domains */
	SCX_MLSCHED_POLICY_MIGRATE = 2,	/* control: always move when asked */
};

/* Per-CPU counters (map sched_stats, one struct scx_mlsched_stats per CPU). */
enum scx_mlsched_stat {
	SCX_MLSCHED_STAT_ASK_WAKE,	/* balancer asked at wake-up (push to an idle domain) */
	SCX_MLSCHED_STAT_ASK_PULL,	/* balancer asked from an idle CPU's dispatch (pull) */
	SCX_MLSCHED_STAT_FROM_TABLE,	/* answered by the in-kernel table (either level) */
	SCX_MLSCHED_STAT_FROM_LEVEL2,	/* of those, answered by the table's second level */
	SCX_MLSCHED_STAT_FROM_DAEMON,	/* answered by mlsched-lite (an earlier request) */
	SCX_MLSCHED_STAT_SENT,		/* miss: request sent, STAY for now */
	SCX_MLSCHED_STAT_WAITING,	/* request in flight for this task: STAY */
	SCX_MLSCHED_STAT_UNANSWERED,	/* request never answered in time, asked again */
	SCX_MLSCHED_STAT_NO_ANSWER,	/* miss not sent (no consumer, ring full): STAY */
	SCX_MLSCHED_STAT_FIXED,		/* answered by a control policy */
	SCX_MLSCHED_STAT_SAID_MIGRATE,	/* answers that were MIGRATE */
	SCX_MLSCHED_STAT_MOVED_WAKE,	/* tasks moved to another domain at wake-up */
	SCX_MLSCHED_STAT_MOVED_PULL,	/* tasks pulled into another domain */
	SCX_MLSCHED_STAT_NUDGES,	/* idle CPUs kicked to run the pull balancer */
	SCX_MLSCHED_STAT_DIRECT,	/* wake-ups dispatched straight to an idle CPU */
	SCX_MLSCHED_STAT_QUEUED,	/* tasks queued on their CPU's DSQ */
	SCX_MLSCHED_STAT_PINNED,	/* tasks with restricted affinity, kept off the CPU DSQs */
	SCX_MLSCHED_STAT_STOLEN,	/* queued tasks an idle CPU took from a CPU of its domain */
	SCX_MLSCHED_STAT_EXPLORED,	/* answers chosen at random (--explore) */
	SCX_MLSCHED_STAT_EXPLORE_LOST,	/* explored answers whose record the ring had no room for */
	SCX_MLSCHED_STAT_COUNT,
};

struct scx_mlsched_stats {
	__u64 v[SCX_MLSCHED_STAT_COUNT];
};

/* Written by the loader into .rodata (const volatile cfg) before load. */
struct scx_mlsched_cfg {
	__u32 nr_cpus;				/* CPUs 0..nr_cpus-1, all in some domain */
	__u32 nr_doms;				/* domains 0..nr_doms-1 (a DSQ per CPU, id == CPU) */
	__u32 policy;				/* enum scx_mlsched_policy */
	__u32 levels;				/* table levels asked: 2, or 1 (level 2 via the ring) */
	__u32 explore_permille;			/* answers chosen at random, per thousand */
	__u32 _pad;
	__u64 slice_ns;				/* time slice of every task */
	__u64 answer_ttl_ns;			/* wait this long for mlsched-lite's answer */
	__u64 nudge_interval_ns;		/* at most one nudge per domain this often */
	__u64 cold_ns;				/* a CPU idle this long may take other CPUs' tasks */
	__u32 cpu_dom[SCX_MLSCHED_MAX_CPUS];	/* CPU -> domain */
	__u32 dom_ncpus[SCX_MLSCHED_MAX_DOMS];	/* CPUs per domain */
};

/* Where a question was asked (struct scx_mlsched_explore.kind). */
enum scx_mlsched_kind {
	SCX_MLSCHED_KIND_PUSH = 0,	/* at wake-up: home is full, dst has an idle CPU */
	SCX_MLSCHED_KIND_PULL = 1,	/* an idle CPU of dst looks at a task queued in src */
};

/*
 * One explored answer and what followed, on the `explore` ring buffer (--explore):
 * the question's features, the random answer and its probability, the time until the
 * task next started running and the tasks waiting in both domains at the answer and
 * at that start. Written only for answers that were carried out.
 */
struct scx_mlsched_explore {
	__u32 cpu, idle, busy;			/* features, as mlsched_decide() got them */
	__u32 src_load, dst_load;		/* 1/1024 (MLSCHED_LOAD_ONE) */
	__u8 action;				/* MLSCHED_STAY / MLSCHED_MIGRATE */
	__u8 kind;				/* enum scx_mlsched_kind */
	__u16 propensity_permille;		/* P(action) under the logging policy */
	__u32 src_queued, dst_queued;		/* waiting tasks at the answer */
	__u32 src_queued_after, dst_queued_after;	/* ... when the task next ran */
	__u32 pid;
	__u64 ts_ns;				/* the answer (bpf_ktime_get_ns) */
	__u64 wait_ns;				/* answer -> the task next started running */
};

#endif /* SCX_MLSCHED_H */
