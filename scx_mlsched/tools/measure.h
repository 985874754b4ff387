/* SPDX-License-Identifier: GPL-2.0-only */
/* What mlsched-measure's BPF side (measure.bpf.c) and its loader (measure.c) share. */
#ifndef MLSCHED_MEASURE_H
#define MLSCHED_MEASURE_H

/* moves is a MEASURE_MAX_CPUS x MEASURE_MAX_CPUS matrix, [from * MAX + to]. */
#define MEASURE_MAX_CPUS 64
/* Tasks (threads and processes) of the measured tree the kernel side can follow. */
#define MEASURE_MAX_TASKS 32768

/* Slots of the lost map: what the counts missed. */
enum measure_lost {
	MEASURE_LOST_TASKS,	/* a fork into a full tree map: that task's moves are missed */
	MEASURE_LOST_CPUS,	/* a move from or to a CPU id at or above MEASURE_MAX_CPUS */
	MEASURE_LOST_WAITS,	/* a task became runnable while the queued map was full */
	MEASURE_NR_LOST,
};

/*
 * Run-queue delay of the tree's tasks: from the moment a task becomes runnable (woken,
 * or put back while still runnable) to the moment it runs, as a log-linear histogram of
 * nanoseconds: values below MEASURE_HIST_SUB are their own bucket; above, each power of
 * two is split into MEASURE_HIST_SUB buckets (an eighth of an octave: 9 % wide at most).
 */
#define MEASURE_HIST_SUB_BITS 3
#define MEASURE_HIST_SUB (1 << MEASURE_HIST_SUB_BITS)
/* Octaves above the linear range up to 2^40 ns (18 minutes); longer waits go in the last. */
#define MEASURE_HIST_OCTAVES (40 - MEASURE_HIST_SUB_BITS)
#define MEASURE_HIST_BUCKETS (MEASURE_HIST_SUB * (MEASURE_HIST_OCTAVES + 1))

/* Which wait a delay ends: a wake-up's (sleep -> run) or a preempted task's. */
enum measure_delay {
	MEASURE_DELAY_WAKE,
	MEASURE_DELAY_PREEMPT,
	MEASURE_NR_DELAYS,
};

#endif
