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
	MEASURE_NR_LOST,
};

#endif
