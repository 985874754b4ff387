// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlsched_native.c - load the kernel side through its generated skeletons
 * (bpf/mlsched.skel.h, bpf/mlsched_inject.skel.h: the objects are embedded, maps
 * and programs are struct members), move requests from the ring buffer into
 * caller-owned batches, and write decisions back through mmap. Compiled into
 * mlsched.runtime._bpf by cffi_build.py.
 *
 * Role in the request -> decision path:
 *
 *   ring `requests` --mls_poll()--> struct mlsched_request batch[] (numpy)
 *                                    engine decides, vectorized, in Python
 *   mmap `decisions` <--mls_answer_batch()-- uint8 decisions[]
 *
 * The injector object (mlsched_inject.bpf.c) is loaded on the first mls_inject(),
 * mls_read_decisions() or mapping of its buffers, onto the production object's
 * maps (bpf_map__reuse_fd): a daemon that never injects never loads it.
 *
 * Threading: one thread polls and answers; mls_drain() uses its own ring
 * object and may run while another thread injects. libbpf's print callback is
 * process-wide and guarded by a mutex.
 */
#define _GNU_SOURCE
#ifndef MLSCHED_NATIVE_IMPL
#define MLSCHED_NATIVE_IMPL
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>
#include <linux/magic.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "mlsched_native.h"
#include "mlsched.skel.h"
#include "mlsched_inject.skel.h"

/* How long a joining producer waits for a starting consumer's marker, and how often it looks. */
#define MARKER_WAIT_MS	10000
#define MARKER_POLL_MS	10

#define ERR_LEN		512
#define LOG_CAP		(1u << 20)	/* libbpf log kept: last 1 MiB */
#define NSEC_PER_SEC	1000000000ull
#define NSEC_PER_USEC	1000ull
/* bpf_loop() runs at most this many iterations per call (kernel limit 1 << 23). */
#define INJECT_CHUNK	(1u << 22)
#define SPLITMIX_GAMMA	0x9e3779b97f4a7c15ull
/* mls_drain(): pause between sweeps of an empty ring. */
#define DRAIN_NAP_NS	20000

/* The production object's maps, at most. */
#define MAX_STALE_PINS	32
/* References a pinned map nobody uses has while map_refs looks at it: the pin, the iterator. */
#define UNUSED_PIN_REFS	2
/* How long the references of a process that just ended may take to go (replace_stale()). */
#define HOLDERS_SETTLE_NS	(2 * NSEC_PER_SEC)
#define HOLDERS_NAP_NS		20000000

/* A pinned map of another geometry than this run needs: replaced after load if unused. */
struct stale_pin {
	struct bpf_map *map;		/* ours, created at load */
	uint32_t id;			/* the pinned one's */
	char differs[160];		/* "max_entries P pinned, N needed", ... */
};

struct mls_kernel {
	struct mlsched *skel;		/* production: decision maps + collector */
	struct mlsched_inject *inj;	/* injector and reader; NULL until first used */
	struct ring_buffer *rb;		/* copies into the current batch */
	struct ring_buffer *drain_rb;	/* discards (benchmark ceiling) */
	int epoll_fd;
	bool collector_attached;
	void *mm[MLS_MAP_COUNT];
	size_t mm_size[MLS_MAP_COUNT];
	volatile uint64_t *slots;	/* mmapped `decisions` */
	uint64_t slot_mask;
	struct mlsched_control *ctl;	/* mmapped `control` */
	uint32_t table_capacity;	/* rows in `table` */
	uint32_t table2_capacity;	/* words in each half of `table2` */
	char pin_dir[PATH_MAX];
	int pin_dir_fd;			/* the pin directory, flock()ed unless shared */
	bool shared;			/* MLS_OPEN_SHARE: another handle is the consumer */
	bool reused;			/* `control` was pinned before this handle */
	struct stale_pin stale[MAX_STALE_PINS];	/* pins of another geometry to replace */
	int nstale;
	char notice[ERR_LEN];		/* what opening did that the user should hear of */

	/* current batch, filled by on_record() */
	struct mlsched_request *batch;
	uint32_t n, max;
	struct mls_consumer_stats cs;
};

/* ---- errors and the captured libbpf log ------------------------------------ */

static __thread char err_msg[ERR_LEN];

static int fail(int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_msg, sizeof(err_msg), fmt, ap);
	va_end(ap);
	return rc < 0 ? rc : -rc;
}

const char *mls_last_error(void)
{
	return err_msg;
}

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char *log_buf;
static size_t log_len;

static int capture_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char *line = NULL;
	int len;

	if (level == LIBBPF_DEBUG)
		return 0;
	len = vasprintf(&line, fmt, ap);	/* the verifier log arrives as one string */
	if (len <= 0) {
		free(line);
		return 0;
	}
	pthread_mutex_lock(&log_lock);
	if (!log_buf)
		log_buf = malloc(LOG_CAP);
	if (log_buf) {
		const char *src = line;
		size_t n = len;

		if (n > LOG_CAP) {			/* keep the tail: the error is last */
			src += n - LOG_CAP;
			n = LOG_CAP;
		}
		if (log_len + n > LOG_CAP) {		/* drop the oldest text */
			size_t keep = LOG_CAP - n;

			memmove(log_buf, log_buf + log_len - keep, keep);
			log_len = keep;
		}
		memcpy(log_buf + log_len, src, n);
		log_len += n;
	}
	pthread_mutex_unlock(&log_lock);
	free(line);
	return len;
}

size_t mls_log_take(char *buf, size_t len)
{
	size_t n;

	pthread_mutex_lock(&log_lock);
	n = log_len < len ? log_len : len;
	if (buf && n)
		memcpy(buf, log_buf + (log_len - n), n);	/* the newest part */
	log_len = 0;
	pthread_mutex_unlock(&log_lock);
	return n;
}

uint64_t mls_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC_PER_SEC + ts.tv_nsec;
}

/* ---- ring callbacks ------------------------------------------------------------ */

/* Returned by on_record() to stop libbpf's loop once the batch is full. */
#define BATCH_FULL (-ENOSPC)

static int on_record(void *ctx, void *data, size_t len)
{
	struct mls_kernel *k = ctx;
	const struct mlsched_request *r = data;

	if (len != sizeof(*r) || r->version != MLSCHED_ABI_VERSION || r->size != sizeof(*r)) {
		k->cs.rejected++;
		return 0;
	}
	k->batch[k->n++] = *r;
	return k->n >= k->max ? BATCH_FULL : 0;
}

static int on_discard(void *ctx, void *data, size_t len)
{
	(void)data;
	(void)len;
	((struct mls_kernel *)ctx)->cs.drained++;
	return 0;
}

/* ---- open / close ---------------------------------------------------------- */

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/*
 * The pin directory and each pin in it must be ours: owned by this process's user and
 * writable by nobody else. A plain BPF filesystem's root is 1777, so anyone may create
 * the directory first; whoever owns or may write it can rename, remove or pre-pin maps
 * that libbpf would reuse. `name` NULL: the directory itself (dirfd).
 */
static int check_ours(struct mls_kernel *k, int dirfd, const char *name)
{
	struct stat st;
	int rc = name ? fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) : fstat(dirfd, &st);

	if (rc)
		return errno == ENOENT ? 0 : fail(-errno, "%s%s%s: %s", k->pin_dir,
						  name ? "/" : "", name ?: "", strerror(errno));
	if (st.st_uid != geteuid())
		return fail(-EEXIST, "%s%s%s is owned by uid %u, not by this user (uid %u): remove"
			    " it or choose another --pin-dir", k->pin_dir, name ? "/" : "",
			    name ?: "", st.st_uid, geteuid());
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return fail(-EEXIST, "%s%s%s is writable by others (mode %03o): remove it or"
			    " choose another --pin-dir", k->pin_dir, name ? "/" : "", name ?: "",
			    st.st_mode & 07777);
	if (name ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode))
		return fail(-EEXIST, "%s%s%s is not a pinned map", k->pin_dir, name ? "/" : "",
			    name ?: "");
	return 0;
}

/*
 * The pin directory: on a BPF filesystem, created if missing (not when joining), opened
 * without following a link and, for the consumer, locked for the handle's lifetime.
 */
static int prepare_pin_dir(struct mls_kernel *k)
{
	const char *dir = k->pin_dir;
	char parent[PATH_MAX];
	struct statfs st;
	char *slash;
	int err;

	snprintf(parent, sizeof(parent), "%s", dir);
	slash = strrchr(parent, '/');
	if (slash && slash != parent)
		*slash = '\0';
	if (statfs(parent, &st) || st.f_type != BPF_FS_MAGIC)
		return fail(-ENODEV, "%s is not on a BPF filesystem: mount -t bpf bpf %s", dir,
			    parent);
	if (!k->shared && mkdir(dir, 0700) && errno != EEXIST)
		return fail(-errno, "cannot create %s: %s", dir, strerror(errno));
	k->pin_dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (k->pin_dir_fd < 0) {
		if (k->shared && errno == ENOENT)
			return fail(-ENOENT, "nothing pinned at %s: start `mlsched-lite run --pin"
				    " --pin-dir %s` first", dir, dir);
		return fail(-errno, "cannot open %s: %s", dir, strerror(errno));
	}
	if ((err = check_ours(k, k->pin_dir_fd, NULL)))
		return err;
	if (k->shared)
		return 0;
	if (flock(k->pin_dir_fd, LOCK_EX | LOCK_NB)) {
		if (errno == EWOULDBLOCK)
			return fail(-EBUSY, "pin directory %s is in use by another consumer: stop it"
				    " or choose another --pin-dir", dir);
		return fail(-errno, "cannot lock %s: %s", dir, strerror(errno));
	}
	return 0;
}

/*
 * A pinned `table2` is reused at its own size (libbpf reuses a pinned map only when its
 * size is the one set): a consumer restarted with another bundle keeps the maps a
 * balancer may hold. A level 2 larger than the pinned room is then refused by
 * mls_set_table() (E2BIG), and the caller may serve level 1 alone.
 */
static int set_size(struct bpf_map *map, uint32_t entries)
{
	int err = bpf_map__set_max_entries(map, entries);

	return err ? fail(err, "cannot size map %s to %u", bpf_map__name(map), entries) : 0;
}

static int adopt_pinned_size(struct bpf_map *map, const char *path)
{
	struct bpf_map_info info = {};
	__u32 len = sizeof(info);
	int fd = bpf_obj_get(path), err = 0;

	if (fd < 0)
		return 0;	/* nothing pinned yet: created at the size asked for */
	if (!bpf_obj_get_info_by_fd(fd, &info, &len) && info.max_entries &&
	    info.max_entries != bpf_map__max_entries(map))
		err = set_size(map, info.max_entries);
	close(fd);
	return err;
}

/* Append one "what pinned, what needed" difference to `out`. */
static void differ(char *out, size_t len, const char *what, unsigned long long pinned,
		   unsigned long long needed)
{
	size_t n = strlen(out);

	if (pinned != needed)
		snprintf(out + n, len - n, "%s%s %llu pinned, %llu needed", n ? ", " : "", what,
			 pinned, needed);
}

/*
 * Is the map pinned at `path` one libbpf would reuse for `map` (the checks of its own
 * reuse: type, key and value size, entries, flags, extra)? 0: yes, or nothing pinned;
 * 1: it differs, and `map` goes on the handle's stale list (created fresh at load,
 * pinned in its place if nobody else holds it, see replace_stale()).
 */
static int check_pinned_geometry(struct mls_kernel *k, struct bpf_map *map, const char *path)
{
	struct bpf_map_info info = {};
	__u32 len = sizeof(info);
	struct stale_pin *st;
	char differs[sizeof(st->differs)] = "";
	int fd = bpf_obj_get(path);

	if (fd < 0)
		return 0;	/* nothing pinned: created and pinned at load */
	if (bpf_obj_get_info_by_fd(fd, &info, &len)) {
		int err = fail(-errno, "%s: %s", path, strerror(errno));

		close(fd);
		return err;
	}
	close(fd);
	differ(differs, sizeof(differs), "map type", info.type, bpf_map__type(map));
	differ(differs, sizeof(differs), "key size", info.key_size, bpf_map__key_size(map));
	differ(differs, sizeof(differs), "value size", info.value_size, bpf_map__value_size(map));
	differ(differs, sizeof(differs), "max_entries", info.max_entries,
	       bpf_map__max_entries(map));
	differ(differs, sizeof(differs), "flags", info.map_flags, bpf_map__map_flags(map));
	differ(differs, sizeof(differs), "map_extra", info.map_extra, bpf_map__map_extra(map));
	if (!differs[0])
		return 0;
	if (k->nstale >= MAX_STALE_PINS)
		return fail(-E2BIG, "%s: too many pinned maps of another geometry", k->pin_dir);
	st = &k->stale[k->nstale++];
	st->map = map;
	st->id = info.id;
	snprintf(st->differs, sizeof(st->differs), "%s", differs);
	return 1;
}

/*
 * The consumer pins every map under the pin directory (libbpf creates or reuses them;
 * a pinned map of another geometry is replaced after load, see replace_stale());
 * a joining handle takes the consumer's maps as they are (their sizes included).
 */
static int set_pins(struct mls_kernel *k)
{
	struct bpf_map *map;
	char path[PATH_MAX];
	int err, fd;

	k->reused = k->shared ||
		    !faccessat(k->pin_dir_fd, bpf_map__name(k->skel->maps.control), F_OK,
			       AT_SYMLINK_NOFOLLOW);
	bpf_object__for_each_map(map, k->skel->obj) {
		if (bpf_map__is_internal(map))
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", k->pin_dir, bpf_map__name(map)) >=
		    (int)sizeof(path))
			return fail(-ENAMETOOLONG, "pin path too long: %s", k->pin_dir);
		if ((err = check_ours(k, k->pin_dir_fd, bpf_map__name(map))))
			return err;
		if (!k->shared) {
			if (map == k->skel->maps.table2 && (err = adopt_pinned_size(map, path)))
				return err;
			if ((err = check_pinned_geometry(k, map, path)) < 0)
				return err;
			if (err) {
				if (map == k->skel->maps.control)
					k->reused = false;	/* ours will be new */
				continue;
			}
			err = bpf_map__set_pin_path(map, path);
			if (err)
				return fail(err, "cannot pin %s: %s", path, strerror(-err));
			continue;
		}
		fd = bpf_obj_get(path);
		if (fd < 0)
			return fail(-ENOENT, "nothing pinned at %s: start `mlsched-lite run --pin"
				    " --pin-dir %s` first", path, k->pin_dir);
		err = bpf_map__reuse_fd(map, fd);
		close(fd);
		if (err)
			return fail(err, "cannot reuse %s: %s", path, strerror(-err));
	}
	return 0;
}

/*
 * The injector object, loaded onto the production object's decision maps so that both
 * see one ring, one table, one seq counter and one set of counters.
 */
static int load_injector(struct mls_kernel *k)
{
	struct mlsched_inject *inj;
	int err;

	if (k->inj)
		return 0;
	inj = mlsched_inject__open();
	if (!inj)
		return fail(-errno, "cannot open the injector object: %s", strerror(errno));
	if ((err = bpf_map__reuse_fd(inj->maps.requests, bpf_map__fd(k->skel->maps.requests))) ||
	    (err = bpf_map__reuse_fd(inj->maps.table, bpf_map__fd(k->skel->maps.table))) ||
	    (err = bpf_map__reuse_fd(inj->maps.table2, bpf_map__fd(k->skel->maps.table2))) ||
	    (err = bpf_map__reuse_fd(inj->maps.cpu_index, bpf_map__fd(k->skel->maps.cpu_index))) ||
	    (err = bpf_map__reuse_fd(inj->maps.decisions, bpf_map__fd(k->skel->maps.decisions))) ||
	    (err = bpf_map__reuse_fd(inj->maps.control, bpf_map__fd(k->skel->maps.control))) ||
	    (err = bpf_map__reuse_fd(inj->maps.host, bpf_map__fd(k->skel->maps.host))) ||
	    (err = bpf_map__reuse_fd(inj->maps.stats, bpf_map__fd(k->skel->maps.stats)))) {
		mlsched_inject__destroy(inj);
		return fail(err, "cannot share the decision maps with the injector: %s",
			    strerror(-err));
	}
	err = mlsched_inject__load(inj);
	if (err) {
		mlsched_inject__destroy(inj);
		return fail(err, "loading the injector failed: %s", strerror(-err));
	}
	k->inj = inj;
	return 0;
}

/* The map behind an enum mls_map; loads the injector for its two buffers. */
static struct bpf_map *mmap_map(struct mls_kernel *k, enum mls_map which)
{
	switch (which) {
	case MLS_MAP_DECISIONS:
		return k->skel->maps.decisions;
	case MLS_MAP_CONTROL:
		return k->skel->maps.control;
	case MLS_MAP_HOST:
		return k->skel->maps.host;
	case MLS_MAP_TABLE:
		return k->skel->maps.table;
	case MLS_MAP_TABLE2:
		return k->skel->maps.table2;
	case MLS_MAP_DOMAINS:
		return k->skel->maps.domains;
	case MLS_MAP_INJECT_BUF:
		return load_injector(k) ? NULL : k->inj->maps.inject_buf;
	case MLS_MAP_READBACK:
		return load_injector(k) ? NULL : k->inj->maps.readback;
	case MLS_MAP_COUNT:
		break;
	}
	fail(-EINVAL, "no memory-mapped map %d", (int)which);
	return NULL;
}

/*
 * Map a map into memory on first use. Pages of a BPF map mapped here count in the
 * process's RSS, so maps only tests and replay touch (inject_buf, readback) are mapped
 * when asked for, not at open.
 */
static void *map_mm(struct mls_kernel *k, enum mls_map which)
{
	long page = sysconf(_SC_PAGESIZE);
	struct bpf_map *map;
	size_t sz;
	void *p;

	if ((unsigned)which >= MLS_MAP_COUNT) {
		fail(-EINVAL, "no memory-mapped map %d", (int)which);
		return NULL;
	}
	if (k->mm[which])
		return k->mm[which];
	map = mmap_map(k, which);
	if (!map)
		return NULL;
	sz = (size_t)((bpf_map__value_size(map) + 7) & ~7u) * bpf_map__max_entries(map);
	sz = (sz + page - 1) & ~(size_t)(page - 1);
	p = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(map), 0);
	if (p == MAP_FAILED) {
		fail(-errno, "mmap of map %s: %s", bpf_map__name(map), strerror(errno));
		return NULL;
	}
	k->mm[which] = p;
	k->mm_size[which] = sz;
	return p;
}

/*
 * The references of each stale pin's map, counted by map_refs (iter/bpf_map); a map that
 * is gone meanwhile counts none. 0, or a negative errno.
 */
static int count_stale_refs(struct mls_kernel *k, uint64_t *refs)
{
	struct mlsched_map_refs buf[64];
	struct bpf_link *link;
	size_t have = 0;
	ssize_t n;
	int fd, err = 0;

	memset(refs, 0, sizeof(*refs) * k->nstale);
	link = bpf_program__attach_iter(k->skel->progs.map_refs, NULL);
	if (!link)
		return fail(-errno, "cannot count who holds the pinned maps in %s: %s", k->pin_dir,
			    strerror(errno));
	fd = bpf_iter_create(bpf_link__fd(link));
	if (fd < 0) {
		err = fail(-errno, "cannot count who holds the pinned maps in %s: %s", k->pin_dir,
			   strerror(errno));
		goto out;
	}
	for (;;) {
		size_t whole;

		n = read(fd, (char *)buf + have, sizeof(buf) - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += n;
		whole = have / sizeof(buf[0]);
		for (size_t r = 0; r < whole; r++)
			for (int i = 0; i < k->nstale; i++)
				if (buf[r].id == k->stale[i].id)
					refs[i] = buf[r].refs;
		have -= whole * sizeof(buf[0]);
		memmove(buf, (char *)buf + whole * sizeof(buf[0]), have);
	}
	if (n < 0)
		err = fail(-errno, "reading who holds the pinned maps in %s: %s", k->pin_dir,
			   strerror(errno));
	close(fd);
out:
	bpf_link__destroy(link);
	return err;
}

/*
 * Pinned maps of another geometry than this run needs (another --ring-size, a CPU
 * less): refused if another process still holds one (it would go on using the old map;
 * -ETXTBSY, the message names the pin, the difference and the fix), else each pin is
 * removed and this handle's new map pinned in its place; k->notice says which.
 * A process that just ended still holds its maps until the kernel has freed its programs
 * (after a grace period): the count is taken again for up to HOLDERS_SETTLE_NS.
 */
static int replace_stale(struct mls_kernel *k)
{
	const struct timespec nap = { .tv_nsec = HOLDERS_NAP_NS };
	uint64_t refs[MAX_STALE_PINS], deadline = mls_now_ns() + HOLDERS_SETTLE_NS;
	char path[PATH_MAX];
	int err, held;
	size_t n;

	for (;;) {
		if ((err = count_stale_refs(k, refs)))
			return err;
		for (held = 0; held < k->nstale && refs[held] <= UNUSED_PIN_REFS; held++)
			;	/* the first pin another process holds, if any */
		if (held == k->nstale || mls_now_ns() >= deadline)
			break;
		nanosleep(&nap, NULL);
	}
	if (held < k->nstale)
		return fail(-ETXTBSY, "%s/%s is held by another process and differs from what"
			    " this run needs (%s): stop that process, then `mlsched-lite unpin"
			    " --pin-dir %s`", k->pin_dir, bpf_map__name(k->stale[held].map),
			    k->stale[held].differs, k->pin_dir);
	n = snprintf(k->notice, sizeof(k->notice), "replaced pinned maps of another geometry"
		     " in %s, held by no other process:", k->pin_dir);
	for (int i = 0; i < k->nstale; i++) {
		struct bpf_map *map = k->stale[i].map;

		if (snprintf(path, sizeof(path), "%s/%s", k->pin_dir, bpf_map__name(map)) >=
		    (int)sizeof(path))
			return fail(-ENAMETOOLONG, "pin path too long: %s", k->pin_dir);
		if (unlinkat(k->pin_dir_fd, bpf_map__name(map), 0) && errno != ENOENT)
			return fail(-errno, "cannot remove %s: %s", path, strerror(errno));
		if ((err = bpf_map__pin(map, path)))
			return fail(err, "cannot pin %s: %s", path, strerror(-err));
		if (n < sizeof(k->notice))
			n += snprintf(k->notice + n, sizeof(k->notice) - n, "%s %s (%s)",
				      i ? ";" : "", bpf_map__name(map), k->stale[i].differs);
	}
	return 0;
}

const char *mls_notice(struct mls_kernel *k)
{
	return k->notice;
}

/* The options mls_open() can take, before anything is allocated. */
static int check_open_opts(const struct mls_load_opts *o)
{
	long page = sysconf(_SC_PAGESIZE);

	if (!is_pow2(o->ring_bytes) || o->ring_bytes < (uint32_t)page)
		return fail(-EINVAL, "ring size %u: must be a power of two >= %ld", o->ring_bytes,
			    page);
	if (!is_pow2(o->decision_slots) || o->decision_slots < MLSCHED_MIN_DECISION_SLOTS)
		return fail(-EINVAL, "decision slots %u: must be a power of two >= %d",
			    o->decision_slots, MLSCHED_MIN_DECISION_SLOTS);
	if (o->table_ncpus > MLSCHED_MAX_TABLE_CPUS)
		return fail(-E2BIG, "table for %u CPUs: at most %d", o->table_ncpus,
			    MLSCHED_MAX_TABLE_CPUS);
	if (o->table2_words > UINT32_MAX / 2)
		return fail(-E2BIG, "table level 2 of %u words: at most %u", o->table2_words,
			    UINT32_MAX / 2);
	return 0;
}

/* Map sizes for this load, and the pins to reuse (or replace) when pinning. */
static int size_and_pin_maps(struct mls_kernel *k, const struct mls_load_opts *o)
{
	uint32_t rows = o->table_ncpus ? o->table_ncpus * (o->table_ncpus + 1) : 1;
	int err;

	if ((err = set_size(k->skel->maps.requests, o->ring_bytes)) ||
	    (err = set_size(k->skel->maps.decisions, o->decision_slots)) ||
	    (err = set_size(k->skel->maps.table, 2 * rows)) ||	/* two halves */
	    (err = set_size(k->skel->maps.table2, 2 * (o->table2_words ? o->table2_words : 1))))
		return err;
	if (o->pin_dir && *o->pin_dir) {
		snprintf(k->pin_dir, sizeof(k->pin_dir), "%s", o->pin_dir);
		return prepare_pin_dir(k) ?: set_pins(k);
	}
	if (k->shared)
		return fail(-EINVAL, "joining another consumer's maps needs its pin directory");
	return 0;
}

/* Load the production object (the verifier runs here), then replace stale pins. */
static int load_object(struct mls_kernel *k)
{
	int err;

	/* map_refs only counts the holders of stale pins; it is never attached as a collector */
	bpf_program__set_autoload(k->skel->progs.map_refs, k->nstale > 0);
	bpf_program__set_autoattach(k->skel->progs.map_refs, false);
	err = mlsched__load(k->skel);
	if (err) {
		if (err == -EPERM || err == -EACCES)
			return fail(err, "loading the BPF object was refused (%s)", strerror(-err));
		return fail(err, "loading the BPF object failed: %s", strerror(-err));
	}
	return k->nstale ? replace_stale(k) : 0;
}

/*
 * Whether `control` carries mlsched's marker. A consumer writes it just after its load has
 * pinned the maps, so a producer joining in that moment finds the pins without it: a
 * joining producer waits for the marker (MARKER_WAIT_MS at most) before it calls the maps
 * another program's; the consumer itself decides at once.
 */
static bool has_marker(struct mls_kernel *k)
{
	for (int waited = 0; ; waited += MARKER_POLL_MS) {
		if (__atomic_load_n(&k->ctl->magic, __ATOMIC_ACQUIRE) == MLSCHED_CTL_MAGIC)
			return true;
		if (!k->shared || waited >= MARKER_WAIT_MS)
			return false;
		usleep(MARKER_POLL_MS * 1000);
	}
}

/* The decision slots and the control map, mapped; capacities; the marker of reused pins. */
static int map_shared_views(struct mls_kernel *k)
{
	k->slots = map_mm(k, MLS_MAP_DECISIONS);
	k->ctl = map_mm(k, MLS_MAP_CONTROL);
	if (!k->slots || !k->ctl)
		return -ENOMEM;
	k->slot_mask = bpf_map__max_entries(k->skel->maps.decisions) - 1;
	k->table_capacity = bpf_map__max_entries(k->skel->maps.table) / 2;
	k->table2_capacity = bpf_map__max_entries(k->skel->maps.table2) / 2;
	if (k->reused && !has_marker(k))
		return fail(-EEXIST, "%s: the pinned maps were not created by mlsched (no marker in"
			    " `control`): remove them or choose another --pin-dir", k->pin_dir);
	return 0;
}

/* The consumer's settings in `control` (a joining producer leaves them as they are). */
static void init_control(struct mls_kernel *k, const struct mls_load_opts *o)
{
	k->ctl->abi_version = MLSCHED_ABI_VERSION;
	k->ctl->magic = MLSCHED_CTL_MAGIC;
	k->ctl->decision_slots = o->decision_slots;
	if (k->ctl->table_half_rows != k->table_capacity ||
	    k->ctl->table2_half_words != k->table2_capacity) {	/* a new map: no table yet */
		k->ctl->table_sel = 0;
		k->ctl->table_half_rows = k->table_capacity;
		k->ctl->table2_half_words = k->table2_capacity;
		memset(k->ctl->level2, 0, sizeof(k->ctl->level2));
	}
	/* a consumer killed during set_table(): whichever table is published is whole */
	if (k->ctl->table_seq & 1)
		__atomic_store_n(&k->ctl->table_seq, k->ctl->table_seq + 1, __ATOMIC_RELEASE);
	k->ctl->consumer_timeout_ns = o->consumer_timeout_ns;
	if (!k->ctl->stale_after_ns)
		k->ctl->stale_after_ns = 10 * 1000 * 1000;
}

/* The request ring's consumer side. */
static int open_ring(struct mls_kernel *k)
{
	k->rb = ring_buffer__new(bpf_map__fd(k->skel->maps.requests), on_record, k, NULL);
	if (!k->rb)
		return fail(-errno, "cannot map the request ring: %s", strerror(errno));
	k->epoll_fd = ring_buffer__epoll_fd(k->rb);
	return 0;
}

int mls_open(const struct mls_load_opts *o, struct mls_kernel **out)
{
	struct mls_kernel *k;
	int err;

	*out = NULL;
	libbpf_set_print(capture_print);
	if ((err = check_open_opts(o)))
		return err;
	k = calloc(1, sizeof(*k));
	if (!k)
		return fail(-ENOMEM, "out of memory");
	k->epoll_fd = -1;
	k->pin_dir_fd = -1;
	k->shared = o->flags & MLS_OPEN_SHARE;
	k->skel = mlsched__open();
	if (!k->skel) {
		err = fail(-errno, "cannot open the BPF object: %s", strerror(errno));
		free(k);
		return err;
	}
	if ((err = size_and_pin_maps(k, o)) || (err = load_object(k)) ||
	    (err = map_shared_views(k))) {
		mls_close(k);
		return err;
	}
	if (!k->shared)
		init_control(k, o);
	if ((err = open_ring(k))) {
		mls_close(k);
		return err;
	}
	*out = k;
	return 0;
}

void mls_close(struct mls_kernel *k)
{
	if (!k)
		return;
	mls_detach_collector(k);
	ring_buffer__free(k->rb);
	ring_buffer__free(k->drain_rb);
	for (size_t i = 0; i < MLS_MAP_COUNT; i++)
		if (k->mm[i])
			munmap(k->mm[i], k->mm_size[i]);
	mlsched_inject__destroy(k->inj);
	mlsched__destroy(k->skel);
	if (k->pin_dir_fd >= 0)
		close(k->pin_dir_fd);	/* releases the lock */
	free(k);
}

int mls_unpin(struct mls_kernel *k)
{
	struct bpf_map *map;
	int err, first = 0;

	if (!k->pin_dir[0])
		return 0;
	bpf_object__for_each_map(map, k->skel->obj) {
		if (bpf_map__is_internal(map))
			continue;
		if (bpf_map__is_pinned(map))
			err = bpf_map__unpin(map, NULL);
		else	/* a joining handle reused the pins by fd: remove them by name */
			err = unlinkat(k->pin_dir_fd, bpf_map__name(map), 0) && errno != ENOENT ?
			      -errno : 0;
		if (err && !first)
			first = fail(err, "cannot unpin %s: %s", bpf_map__name(map), strerror(-err));
	}
	if (rmdir(k->pin_dir) && errno != ENOENT && !first)
		first = fail(-errno, "cannot remove %s: %s", k->pin_dir, strerror(errno));
	return first;
}

/* ---- configuration ------------------------------------------------------------ */

/*
 * Write the table (and its level 2, if any) into the halves of `table` and `table2` not
 * in use, describe level 2 in control.level2[half], then publish geometry and half with
 * one store: a lookup reads table_sel once, so it sees the old table or the new one,
 * never the old geometry over new cells. All of it happens while control.table_seq is
 * odd: a lookup whose reads overlap a change (one held across two changes reads its own
 * half rewritten) sees the count move and answers nothing from the table.
 */
int mls_set_table(struct mls_kernel *k, const uint8_t *rows, size_t len, uint32_t ncpus,
		  const uint8_t *lines, size_t lines_len, const struct mlsched_level2 *level2)
{
	uint8_t *dst = map_mm(k, MLS_MAP_TABLE);
	uint64_t nrows = (uint64_t)ncpus * (ncpus + 1);
	uint64_t words = (lines_len + 7) / 8;
	uint32_t cur, sel, half, seq;
	uint8_t *dst2;

	if (!dst)
		return -ENOMEM;
	if (k->shared)
		return fail(-EBUSY, "the table belongs to the consumer of %s", k->pin_dir);
	if (len < nrows * MLSCHED_ROW_BYTES)
		return fail(-EINVAL, "table for %u CPUs needs %llu bytes, got %zu", ncpus,
			    (unsigned long long)(nrows * MLSCHED_ROW_BYTES), len);
	if (nrows > k->table_capacity)
		return fail(-E2BIG, "table for %u CPUs (%llu rows) exceeds the %u rows loaded",
			    ncpus, (unsigned long long)nrows, k->table_capacity);
	if (level2 && level2->lines && level2->lines > MLSCHED_L2_MAX_LINES)
		return fail(-EINVAL, "level 2 with %u lines per cell: at most %d", level2->lines,
			    MLSCHED_L2_MAX_LINES);
	if (level2 && level2->lines && (!lines || !lines_len))
		return fail(-EINVAL, "level 2 described but no bytes given");
	if (level2 && level2->lines &&
	    ((uint64_t)level2->index_base + ((uint64_t)level2->cells + 1) / 2 >
	     level2->word_base || level2->word_base >= words))
		return fail(-EINVAL, "level 2 index or lines outside its %zu bytes", lines_len);
	if (level2 && level2->lines && words > k->table2_capacity)
		return fail(-E2BIG, "table level 2 of %zu bytes exceeds the %llu bytes loaded",
			    lines_len, (unsigned long long)k->table2_capacity * 8);
	dst2 = level2 && level2->lines ? map_mm(k, MLS_MAP_TABLE2) : NULL;
	if (level2 && level2->lines && !dst2)
		return -ENOMEM;
	cur = __atomic_load_n(&k->ctl->table_sel, __ATOMIC_ACQUIRE);
	sel = (cur & MLSCHED_TABLE_SECOND) ? 0 : MLSCHED_TABLE_SECOND;	/* the other half */
	half = sel ? 1 : 0;
	/* odd from here on (already odd if a writer was killed mid-change) */
	seq = __atomic_load_n(&k->ctl->table_seq, __ATOMIC_RELAXED) | 1;
	__atomic_store_n(&k->ctl->table_seq, seq, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);	/* the odd count before any table store */
	if (sel)
		dst += (size_t)k->table_capacity * MLSCHED_ROW_BYTES;
	memcpy(dst, rows, nrows * MLSCHED_ROW_BYTES);
	memset(&k->ctl->level2[half], 0, sizeof(k->ctl->level2[half]));
	if (dst2) {
		dst2 += (size_t)half * k->table2_capacity * 8;
		memcpy(dst2, lines, lines_len);
		memset(dst2 + lines_len, 0, words * 8 - lines_len);
		k->ctl->level2[half] = *level2;
		k->ctl->level2[half].word_base += half * k->table2_capacity;
		k->ctl->level2[half].index_base += half * k->table2_capacity;
	}
	__atomic_store_n(&k->ctl->table_sel, sel | ncpus, __ATOMIC_RELEASE);
	__atomic_store_n(&k->ctl->table_seq, seq + 1, __ATOMIC_RELEASE);
	return 0;
}

/*
 * Forget what the collector knew of each CPU (pinned maps keep it across runs): with the
 * domains' busy counts zeroed, a CPU still marked busy would take one away that was never
 * added. Each CPU starts unknown and is counted again at its next switch; the host-wide
 * idle/busy counts restart with it.
 */
static int reset_cpu_state(struct mls_kernel *k)
{
	struct mlsched_host *h = map_mm(k, MLS_MAP_HOST);
	int ncpu = libbpf_num_possible_cpus(), err = 0;
	uint32_t zero = 0;
	uint64_t *none;

	if (!h)
		return -ENOMEM;
	if (ncpu <= 0)
		return fail(ncpu ? ncpu : -EINVAL, "cannot count possible CPUs");
	none = calloc(ncpu, sizeof(*none));	/* per-CPU values sit at 8-byte strides */
	if (!none)
		return fail(-ENOMEM, "out of memory");
	if (bpf_map_update_elem(bpf_map__fd(k->skel->maps.cpu_state), &zero, none, BPF_ANY))
		err = fail(-errno, "cpu_state reset: %s", strerror(errno));
	free(none);
	if (!err) {
		__atomic_store_n(&h->idle_cpus, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&h->busy_cpus, 0, __ATOMIC_RELAXED);
	}
	return err;
}

int mls_set_domains(struct mls_kernel *k, const uint32_t *cpu_domain, size_t len,
		    uint32_t ncpus, uint32_t ndomains)
{
	struct mlsched_domain *doms = map_mm(k, MLS_MAP_DOMAINS);
	int fd = bpf_map__fd(k->skel->maps.cpu_domain), err;

	if (!doms)
		return -ENOMEM;
	if (k->shared)
		return fail(-EBUSY, "the domains belong to the consumer of %s", k->pin_dir);
	if (k->collector_attached)
		return fail(-EBUSY, "domains cannot change while the collector is attached");
	if (ncpus > MLSCHED_MAX_CPUS || ndomains > MLSCHED_MAX_DOMAINS || ndomains == 0)
		return fail(-EINVAL, "%u CPUs in %u domains: at most %d CPUs, 1..%d domains",
			    ncpus, ndomains, MLSCHED_MAX_CPUS, MLSCHED_MAX_DOMAINS);
	if (len < ncpus)
		return fail(-EINVAL, "domains of %u CPUs from %zu entries", ncpus, len);
	if ((err = reset_cpu_state(k)))
		return err;
	memset(doms, 0, sizeof(*doms) * MLSCHED_MAX_DOMAINS);
	for (uint32_t cpu = 0; cpu < ncpus; cpu++)
		if (cpu_domain[cpu] >= ndomains && cpu_domain[cpu] != MLSCHED_DOMAIN_NONE)
			return fail(-EINVAL, "CPU %u in domain %u of %u", cpu, cpu_domain[cpu],
				    ndomains);
	/* every CPU the map can name: those in no domain (or past ncpus) count nowhere */
	for (uint32_t cpu = 0; cpu < MLSCHED_MAX_CPUS; cpu++) {
		uint32_t d = cpu < ncpus ? cpu_domain[cpu] : MLSCHED_DOMAIN_NONE;

		if (bpf_map_update_elem(fd, &cpu, &d, BPF_ANY))
			return fail(-errno, "cpu_domain update: %s", strerror(errno));
		if (d != MLSCHED_DOMAIN_NONE)
			doms[d].ncpus++;
	}
	k->ctl->ndomains = ndomains;
	return 0;
}

/*
 * cpu_index: cpus[i] -> i for the table's ncpus CPUs, MLSCHED_CPU_NONE for every other id
 * the map can name. The host-wide idle/busy counts restart with it (they count indexed
 * CPUs only).
 */
int mls_set_cpu_index(struct mls_kernel *k, const uint32_t *cpus, size_t len, uint32_t ncpus)
{
	int fd = bpf_map__fd(k->skel->maps.cpu_index), err;
	uint32_t *index;

	if (k->shared)
		return fail(-EBUSY, "the CPU index belongs to the consumer of %s", k->pin_dir);
	if (k->collector_attached)
		return fail(-EBUSY, "the CPU index cannot change while the collector is attached");
	if (ncpus > MLSCHED_MAX_CPUS)
		return fail(-EINVAL, "%u CPUs: at most %d", ncpus, MLSCHED_MAX_CPUS);
	if (len < ncpus)
		return fail(-EINVAL, "CPU index of %u CPUs from %zu entries", ncpus, len);
	index = malloc(sizeof(*index) * MLSCHED_MAX_CPUS);
	if (!index)
		return fail(-ENOMEM, "out of memory");
	for (uint32_t cpu = 0; cpu < MLSCHED_MAX_CPUS; cpu++)
		index[cpu] = MLSCHED_CPU_NONE;
	for (uint32_t i = 0; i < ncpus; i++) {
		if (cpus[i] >= MLSCHED_MAX_CPUS || index[cpus[i]] != MLSCHED_CPU_NONE) {
			err = fail(-EINVAL, "CPU %u: %s", cpus[i], cpus[i] >= MLSCHED_MAX_CPUS ?
				   "id past the largest the kernel side takes" : "listed twice");
			goto out;
		}
		index[cpus[i]] = i;
	}
	if ((err = reset_cpu_state(k)))
		goto out;
	for (uint32_t cpu = 0; cpu < MLSCHED_MAX_CPUS; cpu++)
		if (bpf_map_update_elem(fd, &cpu, &index[cpu], BPF_ANY)) {
			err = fail(-errno, "cpu_index update: %s", strerror(errno));
			goto out;
		}
out:
	free(index);
	return err;
}

int mls_attach_collector(struct mls_kernel *k)
{
	int err;

	if (k->collector_attached)
		return 0;
	err = mlsched__attach(k->skel);	/* every tp_btf program of the skeleton */
	if (err) {
		mlsched__detach(k->skel);
		return fail(err, "cannot attach the collector: %s", strerror(-err));
	}
	k->collector_attached = true;
	return 0;
}

int mls_detach_collector(struct mls_kernel *k)
{
	mlsched__detach(k->skel);
	k->collector_attached = false;
	return 0;
}

/* ---- hot path -------------------------------------------------------------------- */

/*
 * The kernel side computes `now - heartbeat_ns` unsigned, with `now` read just before the
 * heartbeat: a heartbeat stored in between lies in its future, the difference wraps and a
 * live consumer reads as gone (a few misses per million counted no_consumer at 1 M/s).
 * So the heartbeat is dated a little in the past: 1/16 of the timeout, at most 1 ms.
 */
#define HEARTBEAT_BACKDATE_MAX_NS	1000000ull

void mls_heartbeat(struct mls_kernel *k)
{
	uint64_t timeout = k->ctl->consumer_timeout_ns, back = timeout / 16;

	if (back > HEARTBEAT_BACKDATE_MAX_NS)
		back = HEARTBEAT_BACKDATE_MAX_NS;
	__atomic_store_n(&k->ctl->heartbeat_ns, mls_now_ns() - back, __ATOMIC_RELAXED);
}

static int consume(struct mls_kernel *k)
{
	int err = ring_buffer__consume(k->rb);

	return err == BATCH_FULL ? 0 : err;
}

static int wait_ready(struct mls_kernel *k, uint64_t timeout_ns)
{
	struct epoll_event ev;
	struct timespec ts = {
		.tv_sec = timeout_ns / NSEC_PER_SEC,
		.tv_nsec = timeout_ns % NSEC_PER_SEC,
	};
	int n = epoll_pwait2(k->epoll_fd, &ev, 1, &ts, NULL);

	return n < 0 && errno != EINTR ? -errno : 0;
}

int mls_poll(struct mls_kernel *k, struct mlsched_request *batch, uint32_t max_records,
	     int timeout_ms, uint32_t linger_us)
{
	uint64_t deadline, now;
	int err;

	if (!max_records)
		return fail(-EINVAL, "batch of 0 records");
	k->batch = batch;
	k->n = 0;
	k->max = max_records;
	mls_heartbeat(k);

	if ((err = consume(k)) < 0)
		return fail(err, "ring buffer: %s", strerror(-err));
	if (k->n == 0 && timeout_ms != 0) {
		struct epoll_event ev;
		int n = epoll_wait(k->epoll_fd, &ev, 1, timeout_ms);

		if (n < 0 && errno != EINTR)
			return fail(-errno, "epoll_wait: %s", strerror(errno));
		if ((err = consume(k)) < 0)
			return fail(err, "ring buffer: %s", strerror(-err));
	}
	if (linger_us && k->n && k->n < k->max) {
		/* the batch closes at max_records or linger_us after its first record */
		deadline = mls_now_ns() + linger_us * NSEC_PER_USEC;
		while (k->n < k->max && (now = mls_now_ns()) < deadline) {
			if ((err = wait_ready(k, deadline - now)) < 0)
				return fail(err, "epoll_pwait2: %s", strerror(-err));
			if ((err = consume(k)) < 0)
				return fail(err, "ring buffer: %s", strerror(-err));
		}
	}
	if (k->n) {
		k->cs.batches++;
		k->cs.records += k->n;
	}
	return (int)k->n;
}

/*
 * Store one answer unless the slot already holds the same or a newer seq. A compare-and-
 * swap, so a writer racing another (a second thread, a second handle on the pinned map)
 * never stores a seq twice nor puts an older seq over a newer one.
 */
static inline void answer(struct mls_kernel *k, uint64_t seq, uint8_t d)
{
	uint64_t *slot = (uint64_t *)&k->slots[seq & k->slot_mask];
	uint64_t want = (seq << MLSCHED_ANSWER_SHIFT) | d;
	uint64_t old = __atomic_load_n(slot, __ATOMIC_RELAXED);

	if (d > MLSCHED_MIGRATE) {
		k->cs.bad_decisions++;
		return;
	}
	for (;;) {
		uint64_t held = old >> MLSCHED_ANSWER_SHIFT;

		if (held == seq) {
			k->cs.double_answers++;
			return;
		}
		if (held > seq) {
			k->cs.late_answers++;
			return;
		}
		/* on failure `old` is reloaded with what the slot holds now */
		if (__atomic_compare_exchange_n(slot, &old, want, false, __ATOMIC_RELEASE,
						__ATOMIC_RELAXED)) {
			k->cs.written++;
			return;
		}
	}
}

int mls_answer_batch(struct mls_kernel *k, const struct mlsched_request *batch,
		     const uint8_t *decisions, uint32_t n)
{
	uint64_t before = k->cs.written;

	for (uint32_t i = 0; i < n; i++)
		if (batch[i].kernel_decision == MLSCHED_NONE)	/* hits need no answer */
			answer(k, batch[i].seq, decisions[i]);
	return (int)(k->cs.written - before);
}

int mls_write_back(struct mls_kernel *k, const uint64_t *seqs, const uint8_t *decisions,
		   uint32_t n)
{
	uint64_t before = k->cs.written;

	for (uint32_t i = 0; i < n; i++)
		answer(k, seqs[i], decisions[i]);
	return (int)(k->cs.written - before);
}

int mls_drain(struct mls_kernel *k, uint64_t target, int idle_timeout_ms, uint64_t *drained)
{
	const struct timespec nap = { .tv_nsec = DRAIN_NAP_NS };
	uint64_t start = k->cs.drained, idle_since = 0, now;
	int err;

	*drained = 0;
	if (!k->drain_rb) {	/* mapped on first use: the ring's pages count in RSS again */
		k->drain_rb = ring_buffer__new(bpf_map__fd(k->skel->maps.requests), on_discard, k,
					       NULL);
		if (!k->drain_rb)
			return fail(-errno, "cannot map the request ring: %s", strerror(errno));
	}
	/*
	 * Sweep, and nap when the ring is empty instead of sleeping in epoll: a consumer
	 * that waits caught up makes the producer wake it on every record, which measures
	 * wake-ups, not the ring.
	 */
	for (;;) {
		mls_heartbeat(k);
		err = ring_buffer__consume(k->drain_rb);
		if (err < 0)
			return fail(err, "ring buffer: %s", strerror(-err));
		*drained = k->cs.drained - start;
		if (target && *drained >= target)
			return 0;
		now = mls_now_ns();
		if (err > 0) {
			idle_since = 0;
		} else if (!idle_since) {
			idle_since = now;
		} else if (now - idle_since >= (uint64_t)idle_timeout_ms * 1000000ull) {
			return 0;
		}
		if (err == 0)
			nanosleep(&nap, NULL);
	}
}

/* ---- test-run programs ---------------------------------------------------------- */

static int test_run(int fd, void *ctx, size_t size, const char *what)
{
	LIBBPF_OPTS(bpf_test_run_opts, o, .ctx_in = ctx, .ctx_size_in = size);
	int err = bpf_prog_test_run_opts(fd, &o);

	if (err)
		return fail(-errno, "running %s: %s", what, strerror(errno));
	if ((int)o.retval < 0)
		return fail((int)o.retval, "%s refused its arguments: %s", what,
			    strerror(-(int)o.retval));
	return 0;
}

int mls_load_injector(struct mls_kernel *k)
{
	return load_injector(k);
}

int mls_inject(struct mls_kernel *k, struct mlsched_inject_args *a)
{
	struct mlsched_inject_args part;
	uint32_t left = a->count;
	uint64_t seed = a->seed;
	int err, fd;

	a->version = MLSCHED_ABI_VERSION;
	if ((err = load_injector(k)))
		return err;
	fd = bpf_program__fd(k->inj->progs.inject);
	if (!(a->flags & MLSCHED_INJ_GENERATE))
		return test_run(fd, a, sizeof(*a), "the injector");
	/* generated traffic: chunks of INJECT_CHUNK continuing the same splitmix64 stream */
	a->elapsed_ns = a->first_seq = a->last_seq = 0;
	a->hits = a->sent = a->dropped = a->no_consumer = a->migrate = a->done = 0;
	while (left) {
		part = *a;
		part.count = left < INJECT_CHUNK ? left : INJECT_CHUNK;
		part.seed = seed;
		if ((err = test_run(fd, &part, sizeof(part), "the injector")))
			return err;
		seed += (uint64_t)part.count * SPLITMIX_GAMMA;
		left -= part.count;
		a->elapsed_ns += part.elapsed_ns;
		if (!a->first_seq)
			a->first_seq = part.first_seq;
		if (part.last_seq)
			a->last_seq = part.last_seq;
		a->hits += part.hits;
		a->sent += part.sent;
		a->dropped += part.dropped;
		a->no_consumer += part.no_consumer;
		a->migrate += part.migrate;
		a->done += part.done;
	}
	return 0;
}

int mls_read_decisions(struct mls_kernel *k, struct mlsched_read_args *a)
{
	int err = load_injector(k);

	if (err)
		return err;
	a->version = MLSCHED_ABI_VERSION;
	return test_run(bpf_program__fd(k->inj->progs.read_decisions), a, sizeof(*a),
			"the decision reader");
}

/* ---- state ------------------------------------------------------------------------ */

int mls_read_stats(struct mls_kernel *k, uint64_t *out, uint32_t n)
{
	int ncpu = libbpf_num_possible_cpus(), fd;
	struct mlsched_stats *per_cpu;
	uint32_t zero = 0;

	if (ncpu <= 0)
		return fail(ncpu ? ncpu : -EINVAL, "cannot count possible CPUs");
	if (n > MLSCHED_STAT_COUNT)
		n = MLSCHED_STAT_COUNT;
	per_cpu = calloc(ncpu, sizeof(*per_cpu));
	if (!per_cpu)
		return fail(-ENOMEM, "out of memory");
	fd = bpf_map__fd(k->skel->maps.stats);
	if (bpf_map_lookup_elem(fd, &zero, per_cpu)) {
		int err = fail(-errno, "reading stats: %s", strerror(errno));

		free(per_cpu);
		return err;
	}
	memset(out, 0, n * sizeof(*out));
	for (int c = 0; c < ncpu; c++)
		for (uint32_t i = 0; i < n; i++)
			out[i] += per_cpu[c].v[i];
	free(per_cpu);
	return (int)n;
}

void mls_consumer_stats(struct mls_kernel *k, struct mls_consumer_stats *out)
{
	*out = k->cs;
}

void *mls_map_mmap(struct mls_kernel *k, enum mls_map which, size_t *size)
{
	void *p = map_mm(k, which);

	*size = p ? k->mm_size[which] : 0;
	return p;
}

int mls_map_fd(struct mls_kernel *k, enum mls_map which, size_t *size)
{
	*size = 0;
	if (!map_mm(k, which))	/* loads the injector for its maps; gives the size */
		return -ENOENT;
	*size = k->mm_size[which];
	return bpf_map__fd(mmap_map(k, which));
}

/* Kernel ids of what this handle owns, so tests can check nothing outlives close(). */
#define INFO_ID(type, fd) ({						\
	struct type info = {};						\
	__u32 len = sizeof(info);					\
	bpf_obj_get_info_by_fd((fd), &info, &len) ? 0u : info.id;	\
})

/* The objects a handle holds: production always, the injector once used. */
#define for_each_object(k, obj, i)						\
	for ((i) = 0; (i) < 2; (i)++)						\
		if (((obj) = (i) ? ((k)->inj ? (k)->inj->obj : NULL) : (k)->skel->obj))

int mls_prog_ids(struct mls_kernel *k, uint32_t *ids, uint32_t n)
{
	struct bpf_object *obj;
	struct bpf_program *p;
	uint32_t got = 0;
	int i;

	for_each_object(k, obj, i)
		bpf_object__for_each_program(p, obj)
			if (got < n && bpf_program__fd(p) >= 0)
				ids[got++] = INFO_ID(bpf_prog_info, bpf_program__fd(p));
	return (int)got;
}

/* Maps the injector shares with production are listed once, under production. */
int mls_map_ids(struct mls_kernel *k, uint32_t *ids, uint32_t n)
{
	struct bpf_object *obj;
	struct bpf_map *m;
	uint32_t got = 0, id;
	int i;

	for_each_object(k, obj, i)
		bpf_object__for_each_map(m, obj) {
			if (got >= n || bpf_map__fd(m) < 0)
				continue;
			id = INFO_ID(bpf_map_info, bpf_map__fd(m));
			for (uint32_t j = 0; j < got && id; j++)
				if (ids[j] == id)
					id = 0;
			if (id)
				ids[got++] = id;
		}
	return (int)got;
}

int mls_link_ids(struct mls_kernel *k, uint32_t *ids, uint32_t n)
{
	const struct bpf_object_skeleton *sk = k->skel->skeleton;
	uint32_t got = 0;

	for (int i = 0; i < sk->prog_cnt && got < n; i++)
		if (sk->progs[i].link && *sk->progs[i].link)
			ids[got++] = INFO_ID(bpf_link_info, bpf_link__fd(*sk->progs[i].link));
	return (int)got;
}
