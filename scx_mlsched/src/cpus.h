/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * cpus.h - the CPUs scx_mlsched schedules: the online ones, from a sysfs CPU list.
 *
 * mlsched-lite's table has a row per online CPU and the kernel side's features count
 * idle + busy == N over them (src/mlsched/runtime/topology.py cpu_count()); a CPU the host could
 * have but has not online (hot-pluggable, offlined, an SMT sibling under nosmt) is no
 * CPU to the table. The scheduler numbers its CPUs 0..nr_cpus-1 (a DSQ per CPU, id ==
 * CPU, and its idle/busy counts run over those ids), so the online CPUs must be exactly
 * those: a host whose online list has a gap is named, not scheduled with the features
 * off the table's grid.
 *
 * Plain C with no BPF in it, so a host test (tests/kernel/test_scx_cpus.py) compiles it
 * on its own with support/cpus_driver.c.
 */
#ifndef MLSCHED_CPUS_H
#define MLSCHED_CPUS_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* CPU ids above this are no CPU list of this kernel's (its NR_CPUS is far below). */
#define CPULIST_MAX_ID		((1u << 20) - 1)
/* Bytes of a CPU list file read at most (sysfs gives one page). */
#define CPULIST_FILE_MAX	16384
/* CPUs struct cpulist keeps one bit each for: 0..CPULIST_LOW_BITS-1. */
#define CPULIST_LOW_BITS	64
/* Room for cpulist_numbered_from_0()'s one-line reason. */
#define CPUS_WHY_MAX		256

/* A CPU list ("0-3,8"): how many CPUs, the highest, and which of the low ones. */
struct cpulist {
	uint64_t low;		/* bit c: CPU c (c < CPULIST_LOW_BITS) is listed */
	unsigned int count;	/* CPUs listed */
	unsigned int highest;	/* the highest CPU listed */
};

/* Digits at *s as a CPU id (at most CPULIST_MAX_ID); false when there are none. */
static inline bool cpulist_id(const char **s, unsigned int *id)
{
	const char *p = *s;
	unsigned long v = 0;

	if (*p < '0' || *p > '9')
		return false;
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > CPULIST_MAX_ID)
			return false;
	}
	*id = (unsigned int)v;
	*s = p;
	return true;
}

/*
 * The sysfs CPU list format: ranges "N" or "N-M" (N <= M) separated by ',', in rising
 * order without overlap, as the kernel writes them; one trailing newline. 0, or -1
 * with errno EINVAL for anything else (an empty list included).
 */
static inline int cpulist_parse(const char *s, struct cpulist *out)
{
	unsigned int lo, hi, c;
	bool first = true;

	memset(out, 0, sizeof(*out));
	for (;;) {
		if (!cpulist_id(&s, &lo))
			goto bad;
		hi = lo;
		if (*s == '-' && (s++, !cpulist_id(&s, &hi)))
			goto bad;
		if (hi < lo || (!first && lo <= out->highest))
			goto bad;
		for (c = lo; c <= hi && c < CPULIST_LOW_BITS; c++)
			out->low |= 1ull << c;
		out->count += hi - lo + 1;
		out->highest = hi;
		first = false;
		if (*s != ',')
			break;
		s++;
	}
	if (*s == '\n')
		s++;
	if (*s)
		goto bad;
	return 0;
bad:
	memset(out, 0, sizeof(*out));
	errno = EINVAL;
	return -1;
}

/* A CPU list file (/sys/devices/system/cpu/online). 0, or -1 with errno (EINVAL: not one). */
static inline int cpulist_read(const char *path, struct cpulist *out)
{
	char buf[CPULIST_FILE_MAX + 1];
	size_t len = 0;
	ssize_t n;
	int err, fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	while (len < sizeof(buf) - 1 &&
	       (n = read(fd, buf + len, sizeof(buf) - 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = errno;
			close(fd);
			errno = err;
			return -1;
		}
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	if (len == sizeof(buf) - 1 || strlen(buf) != len) {	/* too long, or a NUL inside */
		errno = EINVAL;
		return -1;
	}
	return cpulist_parse(buf, out);
}

static inline int cpus_fail(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return -1;
}

/*
 * The CPU count of a scheduler that numbers its CPUs 0..n-1 and handles at most `max`
 * (<= CPULIST_LOW_BITS): n when the listed CPUs are exactly 0..n-1, else -1 with the
 * reason in why[].
 */
static inline int cpulist_numbered_from_0(const struct cpulist *l, unsigned int max, char *why,
					  size_t len)
{
	unsigned int gap = 0;

	if (l->count > max)
		return cpus_fail(why, len, "%u CPUs online: this scheduler handles at most %u",
				 l->count, max);
	if (l->count == 0 || l->highest + 1 == l->count)
		return (int)l->count;
	/* count <= max and a gap: the first one is below count */
	while (gap < CPULIST_LOW_BITS && l->low >> gap & 1)
		gap++;
	return cpus_fail(why, len, "CPU %u is offline while CPU %u is online: this scheduler"
			 " numbers its CPUs 0-%u (bring CPU %u online)", gap, l->highest,
			 l->count - 1, gap);
}

#endif /* MLSCHED_CPUS_H */
