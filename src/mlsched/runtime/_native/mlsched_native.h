/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * mlsched_native.h - the C that sits between mlsched-lite and libbpf.
 *
 * cffi_build.py reads this file (and bpf/mlsched.h) for the cdef, so it keeps
 * to plain declarations; the includes live behind MLSCHED_NATIVE_IMPL.
 *
 * Conventions: every int-returning function returns >= 0 on success and a
 * negative errno on failure, with a one-line reason in mls_last_error()
 * (per thread). libbpf's own messages (verifier log included) are captured
 * process-wide; mls_log_take() hands them over.
 *
 * Hot path, per batch and never per record:
 *   mls_poll()        epoll wait, then copy ring records into the caller's
 *                     array of struct mlsched_request (a C callback, no Python)
 *   mls_answer_batch()/mls_write_back()
 *                     one aligned 8-byte compare-and-swap per decision into the mmapped
 *                     `decisions` map (no syscall)
 */
#ifndef MLSCHED_NATIVE_H
#define MLSCHED_NATIVE_H

#ifdef MLSCHED_NATIVE_IMPL
#include <stddef.h>
#include <stdint.h>
#include <linux/types.h>
#include "mlsched.h"
#endif

struct mls_kernel;	/* the loaded BPF side: its skeletons, maps, rings and links */

/*
 * Maps user space reads or writes through mmap (mls_map_mmap()). The injector's two
 * (INJECT_BUF, READBACK) load the injector object on first use.
 */
enum mls_map {
	MLS_MAP_DECISIONS = 0,		/* __u64 answer words */
	MLS_MAP_CONTROL = 1,		/* struct mlsched_control */
	MLS_MAP_HOST = 2,		/* struct mlsched_host */
	MLS_MAP_TABLE = 3,		/* struct mlsched_row per (cpu, idle) */
	MLS_MAP_DOMAINS = 4,		/* struct mlsched_domain */
	MLS_MAP_INJECT_BUF = 5,		/* struct mlsched_inject_slot (injector) */
	MLS_MAP_READBACK = 6,		/* struct mlsched_readback (injector) */
	MLS_MAP_TABLE2 = 7,		/* __u64 words of level-2 line bytes */
	MLS_MAP_COUNT = 8,
};

/*
 * mls_load_opts.flags. A handle with a pin directory is its one consumer: it holds an
 * exclusive lock on the directory (flock) for its lifetime, and a second consumer is
 * refused. MLS_OPEN_SHARE joins the maps of the consumer that holds the lock instead
 * (a producer: injector, reader): no lock, and the control settings are left alone.
 */
#define MLS_OPEN_SHARE 1

struct mls_load_opts {
	uint32_t ring_bytes;		/* `requests` size: power of two, >= page size */
	uint32_t decision_slots;	/* `decisions` entries: power of two */
	uint32_t table_ncpus;		/* capacity of `table` (N of the table to load) */
	uint32_t flags;			/* MLS_OPEN_* */
	uint32_t table2_words;		/* capacity of each half of `table2`, in __u64 words */
	uint32_t _pad;
	uint64_t consumer_timeout_ns;	/* control.consumer_timeout_ns (0: never) */
	const char *pin_dir;		/* NULL/"": nothing pinned; else maps live there */
};

/* Counters kept by the consumer side (user space), per handle. */
struct mls_consumer_stats {
	uint64_t records;		/* well-formed records copied into batches */
	uint64_t batches;		/* non-empty batches returned by mls_poll() */
	uint64_t rejected;		/* records of the wrong size/version, skipped */
	uint64_t written;		/* answers stored */
	uint64_t double_answers;	/* answers for a seq already answered (skipped) */
	uint64_t late_answers;		/* slot already reused by a newer seq (skipped) */
	uint64_t bad_decisions;		/* decision values other than STAY/MIGRATE (skipped) */
	uint64_t drained;		/* records discarded by mls_drain() */
};

/* life cycle. With a pin directory, pinned maps of another geometry than the options ask
 * for are replaced when no other process holds them (mls_notice() then says which) and
 * refused with -ETXTBSY when one does. */
int mls_open(const struct mls_load_opts *opts, struct mls_kernel **out);
const char *mls_notice(struct mls_kernel *k);
void mls_close(struct mls_kernel *k);
/* rows: `len` bytes; cpu_domain: `len` entries; a buffer short of the geometry is refused.
 * level2: NULL or lines == 0 for a table without level 2; else `lines_len` bytes of one
 * half of `table2` (index, then line bytes; word_base and index_base relative to it). */
int mls_set_table(struct mls_kernel *k, const uint8_t *rows, size_t len, uint32_t ncpus,
		  const uint8_t *lines, size_t lines_len, const struct mlsched_level2 *level2);
int mls_set_domains(struct mls_kernel *k, const uint32_t *cpu_domain, size_t len,
		    uint32_t ncpus, uint32_t ndomains);
/* cpus: the table's CPU ids in index order, `len` entries, `ncpus` of them used */
int mls_set_cpu_index(struct mls_kernel *k, const uint32_t *cpus, size_t len, uint32_t ncpus);
int mls_attach_collector(struct mls_kernel *k);
int mls_detach_collector(struct mls_kernel *k);
int mls_unpin(struct mls_kernel *k);

/* hot path */
int mls_poll(struct mls_kernel *k, struct mlsched_request *batch, uint32_t max_records,
	     int timeout_ms, uint32_t linger_us);
int mls_answer_batch(struct mls_kernel *k, const struct mlsched_request *batch,
		     const uint8_t *decisions, uint32_t n);
int mls_write_back(struct mls_kernel *k, const uint64_t *seqs, const uint8_t *decisions,
		   uint32_t n);
void mls_heartbeat(struct mls_kernel *k);
int mls_drain(struct mls_kernel *k, uint64_t target, int idle_timeout_ms, uint64_t *drained);

/* test-run programs: the injector object, loaded on the first call onto the same maps
 * (or ahead of it by mls_load_injector(), so no timed part pays for its verification) */
int mls_load_injector(struct mls_kernel *k);
int mls_inject(struct mls_kernel *k, struct mlsched_inject_args *args);
int mls_read_decisions(struct mls_kernel *k, struct mlsched_read_args *args);

/* state */
int mls_read_stats(struct mls_kernel *k, uint64_t *out, uint32_t n);
void mls_consumer_stats(struct mls_kernel *k, struct mls_consumer_stats *out);
void *mls_map_mmap(struct mls_kernel *k, enum mls_map map, size_t *size);
/* The map's fd (owned by the handle) and the length to mmap it with: callers that map it
 * themselves keep their mapping as long as they like, past mls_close(). */
int mls_map_fd(struct mls_kernel *k, enum mls_map map, size_t *size);
int mls_prog_ids(struct mls_kernel *k, uint32_t *ids, uint32_t n);
int mls_map_ids(struct mls_kernel *k, uint32_t *ids, uint32_t n);
int mls_link_ids(struct mls_kernel *k, uint32_t *ids, uint32_t n);
uint64_t mls_now_ns(void);

/* diagnostics */
const char *mls_last_error(void);
size_t mls_log_take(char *buf, size_t len);

#endif /* MLSCHED_NATIVE_H */
