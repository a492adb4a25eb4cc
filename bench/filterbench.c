// SPDX-License-Identifier: GPL-2.0-only
/*
 * filterbench.c - the timed loop of bench/bench_filters.py, run in the VM.
 *
 * usage: filterbench WORKLOAD N [FILTER...]
 *
 * WORKLOAD:
 *   mix      one iteration = read, write, fstat on /dev/null, getpid,
 *            openat("/dev/null", O_RDONLY) and close
 *   creat    one iteration = the same with openat(O_WRONLY | O_CREAT) on
 *            /dev/null (the call an argument rule inspects)
 *   getppid  one iteration = getppid
 * FILTER, attached in order (the last one runs first):
 *   cbpf:FILE          a classic filter, struct sock_filter[] in FILE
 *   ebpf:FD            an eBPF filter (BPF_PROG_TYPE_SECCOMP) open as FD
 *   notif-thread       getppid goes to a user-notification supervisor
 *   notif-process      thread of this process / a separate process, which
 *                      counts it and lets it continue
 *
 * Prints "ns_per_iteration calls_seen_by_the_supervisor", after a warm-up
 * of N/10 iterations.  Exits non-zero with a message on any failure; a
 * workload syscall that fails also fails the run (a filter that refuses
 * what the benchmark needs is a broken benchmark, not a fast one).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FLAG_EXTENDED (1UL << 6)

static void die(const char *what)
{
	fprintf(stderr, "filterbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int attach_cbpf(const char *path)
{
	static struct sock_filter prog[4096];
	struct sock_fprog fp;
	FILE *f = fopen(path, "rb");
	size_t len;

	if (!f)
		die(path);
	len = fread(prog, sizeof(prog[0]), 4096, f);
	fclose(f);
	fp.len = (unsigned short)len;
	fp.filter = prog;
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp);
}

/* --- user notification: getppid to a supervisor ------------------------ */

/* what the supervisor saw, in memory shared with a supervisor process */
static volatile long *supervised_calls;

static int attach_notif(void)
{
	struct sock_filter prog[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog fp = { .len = 4, .filter = prog };

	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
		       SECCOMP_FILTER_FLAG_NEW_LISTENER, &fp);
}

/* Count each notification and let the call continue, until the task is gone. */
static void supervise(int listener)
{
	struct seccomp_notif req;
	struct seccomp_notif_resp resp;

	for (;;) {
		memset(&req, 0, sizeof(req));
		if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req)) {
			if (errno == EINTR)
				continue;
			return;
		}
		__atomic_add_fetch(supervised_calls, 1, __ATOMIC_RELAXED);
		memset(&resp, 0, sizeof(resp));
		resp.id = req.id;
		resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
		if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) &&
		    errno != ENOENT)
			return;
	}
}

static void *supervisor_thread(void *arg)
{
	supervise(*(int *)arg);
	return NULL;
}

static void send_fd(int sock, int fd)
{
	char buf[CMSG_SPACE(sizeof(int))] = { 0 };
	char byte = 0;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = buf, .msg_controllen = sizeof(buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, 0) != 1)
		die("sendmsg");
}

static int recv_fd(int sock)
{
	char buf[CMSG_SPACE(sizeof(int))];
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = buf, .msg_controllen = sizeof(buf) };
	struct cmsghdr *c;
	int fd;

	if (recvmsg(sock, &msg, 0) != 1)
		die("recvmsg");
	c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_RIGHTS)
		die("no fd received");
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

/*
 * The supervisor is a child process, forked before the filter exists: it
 * gets the listener over a unix socket and ends when the filtered process
 * exits (the listener then has no task left).
 */
static void start_supervisor_process(int *sock_out)
{
	int sv[2];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		die("socketpair");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(sv[0]);
		supervise(recv_fd(sv[1]));
		_exit(0);
	}
	close(sv[1]);
	*sock_out = sv[0];
}

/* --- the workloads -------------------------------------------------------- */

static int devnull;
static char byte;

static void iteration(const char *workload)
{
	struct stat st;
	int fd;

	if (workload[0] == 'g') {
		if (syscall(SYS_getppid) <= 0)
			die("getppid");
		return;
	}
	if (read(devnull, &byte, 1) != 0)
		die("read");
	if (write(devnull, &byte, 1) != 1)
		die("write");
	if (fstat(devnull, &st))
		die("fstat");
	if (syscall(SYS_getpid) <= 0)
		die("getpid");
	fd = openat(AT_FDCWD, "/dev/null",
		    workload[0] == 'c' ? O_WRONLY | O_CREAT : O_RDONLY, 0644);
	if (fd < 0)
		die("openat");
	if (close(fd))
		die("close");
}

int main(int argc, char **argv)
{
	struct timespec a, b;
	const char *workload;
	pthread_t thread;
	int listener, sock;
	long n, i;
	double ns;

	if (argc < 3) {
		fprintf(stderr, "usage: filterbench mix|creat|getppid N [FILTER...]\n");
		return 2;
	}
	workload = argv[1];
	n = atol(argv[2]);
	devnull = open("/dev/null", O_RDWR);
	if (devnull < 0)
		die("/dev/null");
	supervised_calls = mmap(NULL, sizeof(long), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (supervised_calls == MAP_FAILED)
		die("mmap");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		die("no_new_privs");
	for (i = 3; i < argc; i++) {
		const char *f = argv[i];

		if (!strncmp(f, "cbpf:", 5)) {
			if (attach_cbpf(f + 5))
				die(f);
		} else if (!strncmp(f, "ebpf:", 5)) {
			int fd = atoi(f + 5);

			if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
				    FLAG_EXTENDED, &fd))
				die(f);
		} else if (!strcmp(f, "notif-thread")) {
			listener = attach_notif();
			if (listener < 0)
				die("user notification filter");
			if (pthread_create(&thread, NULL, supervisor_thread,
					   &listener))
				die("pthread_create");
		} else if (!strcmp(f, "notif-process")) {
			start_supervisor_process(&sock);
			listener = attach_notif();
			if (listener < 0)
				die("user notification filter");
			send_fd(sock, listener);
			close(listener);
		} else {
			fprintf(stderr, "filterbench: unknown filter %s\n", f);
			return 2;
		}
	}

	for (i = 0; i < n / 10; i++)
		iteration(workload);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (i = 0; i < n; i++)
		iteration(workload);
	clock_gettime(CLOCK_MONOTONIC, &b);
	ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
	printf("%.3f %ld\n", ns, *supervised_calls);
	fflush(stdout);
	/* a supervisor thread ends with the process, a process with the filter */
	_exit(0);
}
