// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlsched-measure - run a command, count what the scheduler did to it.
 *
 *   mlsched-measure [-o FILE] -- COMMAND [ARG...]
 *
 * 1. Forks; the child waits on a pipe until the counters exist.
 * 2. Opens two software perf counters on the child, CPU migrations and context
 *    switches, with inherit=1 (every thread and process the command starts is
 *    counted, the kernel folds their counts in as they exit) and enable_on_exec
 *    (counting starts when the command does, not during our fork).
 * 3. Releases the child, which execs COMMAND; waits for it; reads the counters.
 *
 * Prints one JSON object (on stdout, or into FILE with -o: the command's own
 * stdout stays its own): wall time from exec to exit, the two counts, the
 * exit status (a signal is reported as 128 + its number). Exits with the
 * command's status, 2 for bad usage or when the counters cannot be opened.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROG "mlsched-measure"
/* The child's exit status when exec itself fails (as the shell's "not found"). */
#define EXEC_FAILED 127

static void usage(FILE *f)
{
	fprintf(f, "Usage: " PROG " [-o FILE] -- COMMAND [ARG...]\n"
		"Runs COMMAND; prints wall time, CPU migrations and context switches of\n"
		"its whole process tree and its exit status as one JSON object.\n");
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int sw_counter(pid_t pid, __u64 config)
{
	struct perf_event_attr a;

	memset(&a, 0, sizeof(a));
	a.type = PERF_TYPE_SOFTWARE;
	a.size = sizeof(a);
	a.config = config;
	a.inherit = 1;
	a.disabled = 1;
	a.enable_on_exec = 1;
	return syscall(SYS_perf_event_open, &a, pid, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

static long long read_counter(int fd)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) != sizeof(v))
		return -1;
	return (long long)v;
}

int main(int argc, char **argv)
{
	const char *out_path = NULL;
	int c, go[2], mig_fd, cs_fd, status, code;
	double t0, t1;
	char byte = 0;
	FILE *out = stdout;
	pid_t pid;

	while ((c = getopt(argc, argv, "+o:h")) != -1) {
		switch (c) {
		case 'o': out_path = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, PROG ": no command given (" PROG " -h)\n");
		return 2;
	}
	if (out_path && !(out = fopen(out_path, "w"))) {
		fprintf(stderr, PROG ": %s: %s\n", out_path, strerror(errno));
		return 2;
	}
	if (pipe2(go, O_CLOEXEC) < 0) {
		fprintf(stderr, PROG ": pipe: %s\n", strerror(errno));
		return 2;
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, PROG ": fork: %s\n", strerror(errno));
		return 2;
	}
	if (pid == 0) {
		close(go[1]);
		if (read(go[0], &byte, 1) != 1)
			_exit(EXEC_FAILED);	/* the parent gave up */
		execvp(argv[optind], argv + optind);
		fprintf(stderr, PROG ": %s: %s\n", argv[optind], strerror(errno));
		_exit(EXEC_FAILED);
	}
	close(go[0]);
	mig_fd = sw_counter(pid, PERF_COUNT_SW_CPU_MIGRATIONS);
	cs_fd = sw_counter(pid, PERF_COUNT_SW_CONTEXT_SWITCHES);
	if (mig_fd < 0 || cs_fd < 0) {
		fprintf(stderr, PROG ": perf_event_open: %s\n", strerror(errno));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		if (out_path)
			unlink(out_path);
		return 2;
	}
	t0 = now_s();
	if (write(go[1], &byte, 1) != 1) {
		fprintf(stderr, PROG ": releasing the child: %s\n", strerror(errno));
		return 2;
	}
	close(go[1]);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			fprintf(stderr, PROG ": waitpid: %s\n", strerror(errno));
			return 2;
		}
	}
	t1 = now_s();
	code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);

	fprintf(out, "{\"wall_s\": %.4f, \"migrations\": %lld, \"context_switches\": %lld, "
		"\"status\": %d}\n", t1 - t0, read_counter(mig_fd), read_counter(cs_fd), code);
	if (fclose(out) != 0) {
		fprintf(stderr, PROG ": %s: %s\n", out_path ? out_path : "stdout", strerror(errno));
		return 2;
	}
	return code;
}
