// SPDX-License-Identifier: GPL-2.0-only
/*
 * init.c - PID 1 of the arm64 test guest (vm/arm64.py).
 *
 * The arm64 guest cannot run the host's x86_64 binaries, so its whole
 * userland is this static program in an initramfs plus the static test
 * binaries it runs from 9p shares.  It:
 *
 *  1. mounts /dev (devtmpfs), /proc, /sys, /tmp and /run (tmpfs) and puts
 *     the console on fds 0-2;
 *  2. mounts the run directory (9p tag "run") at the host path given on the
 *     kernel command line as ebpfseccomp.rundir=PATH, and reads
 *     PATH/guest.conf;
 *  3. mounts the other shares the file lists, at their host paths;
 *  4. runs each job of the file in turn: stdout into PATH/NAME.out, stderr
 *     into PATH/NAME.err, as the job's uid/gid (no supplementary groups; a
 *     non-zero uid has no capabilities), in its own process group, killed
 *     after its timeout (stderr into NAME.out too when the job says
 *     "merged", as a TAP stream with its diagnostics in order); then
 *     writes PATH/NAME.status (the exit status,
 *     128 + the signal number, or "timeout");
 *  5. powers the machine off (PSCI), which ends QEMU.
 *
 * guest.conf has one record a line, fields separated by tabs:
 *   mount TAG PATH ro|rw      a 9p share
 *   env NAME=VALUE            for every job
 *   job NAME TIMEOUT UID GID CWD merged|split
 *   arg ARGUMENT              the next argv element of the last job
 * The host (vm/arm64.py) refuses paths and arguments holding a tab or a
 * newline, so no quoting is needed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINES 4096
#define MAX_ARGS 256
#define MAX_ENV 64

static const char *rundir;
static volatile sig_atomic_t alarmed;

static void say(const char *fmt, const char *a, const char *b)
{
	dprintf(2, "arm64-init: ");
	dprintf(2, fmt, a ? a : "", b ? b : "");
	dprintf(2, "\n");
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	/* Not reached; if it were, PID 1 must not exit (panic). */
	for (;;)
		pause();
}

static void fatal(const char *what, const char *arg)
{
	dprintf(2, "arm64-init: error: %s %s: %s\n", what, arg ? arg : "",
		strerror(errno));
	power_off();
}

/*
 * mkdir -p.  Every directory of the initramfs on the way gets mode 0755, so
 * that every uid can reach the shares (the kernel makes /root 0700); the
 * directories of a share mounted earlier keep the host's modes.
 */
static void mkdir_reachable(const char *dir)
{
	static dev_t rootfs_dev;
	struct stat st;

	if (!rootfs_dev && !stat("/", &st))
		rootfs_dev = st.st_dev;
	mkdir(dir, 0755);
	if (!stat(dir, &st) && st.st_dev == rootfs_dev)
		chmod(dir, 0755);
}

static void mkdirs(const char *path)
{
	char buf[4096];
	size_t n = strlen(path);

	if (n >= sizeof(buf))
		return;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		mkdir_reachable(buf);
		*p = '/';
	}
	mkdir_reachable(buf);
}

static void mount_9p(const char *tag, const char *path, int readonly)
{
	mkdirs(path);
	if (mount(tag, path, "9p", readonly ? MS_RDONLY : 0,
		  "trans=virtio,version=9p2000.L,msize=262144,cache=none"))
		fatal("mount 9p", tag);
}

static void basic_mounts(void)
{
	mkdirs("/dev");
	if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) && errno != EBUSY)
		fatal("mount", "/dev");
	int fd = open("/dev/console", O_RDWR);

	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	mkdirs("/proc");
	mkdirs("/sys");
	mkdirs("/tmp");
	mkdirs("/run");
	if (mount("proc", "/proc", "proc", 0, NULL))
		fatal("mount", "/proc");
	if (mount("sysfs", "/sys", "sysfs", 0, NULL))
		fatal("mount", "/sys");
	if (mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777"))
		fatal("mount", "/tmp");
	if (mount("tmpfs", "/run", "tmpfs", 0, "mode=0755"))
		fatal("mount", "/run");
	mkdirs("/dev/shm");
	mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777");
}

/* The value of ebpfseccomp.rundir= on the kernel command line. */
static char *find_rundir(void)
{
	static char cmdline[4096];
	int fd = open("/proc/cmdline", O_RDONLY);
	ssize_t n;

	if (fd < 0)
		fatal("open", "/proc/cmdline");
	n = read(fd, cmdline, sizeof(cmdline) - 1);
	close(fd);
	if (n <= 0)
		fatal("read", "/proc/cmdline");
	cmdline[n] = '\0';
	for (char *tok = strtok(cmdline, " \n"); tok; tok = strtok(NULL, " \n"))
		if (!strncmp(tok, "ebpfseccomp.rundir=", 19))
			return tok + 19;
	errno = ENOENT;
	fatal("kernel command line has no", "ebpfseccomp.rundir=");
	return NULL;
}

static char *read_file(const char *path)
{
	int fd = open(path, O_RDONLY);
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);

	if (fd < 0 || !buf)
		fatal("open", path);
	for (;;) {
		ssize_t n = read(fd, buf + len, cap - 1 - len);

		if (n < 0)
			fatal("read", path);
		if (n == 0)
			break;
		len += n;
		if (len == cap - 1) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				fatal("realloc", path);
		}
	}
	close(fd);
	buf[len] = '\0';
	return buf;
}

static int split(char *line, char **fields, int max)
{
	int n = 0;

	fields[n++] = line;
	for (char *p = line; *p && n < max; p++) {
		if (*p == '\t') {
			*p = '\0';
			fields[n++] = p + 1;
		}
	}
	return n;
}

/* RUNDIR/NAMESUFFIX, created or truncated. */
static int open_output(const char *name, const char *suffix)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/%s%s", rundir, name, suffix);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		fatal("open", path);
	return fd;
}

static void write_text(const char *name, const char *suffix, const char *text)
{
	int fd = open_output(name, suffix);

	dprintf(fd, "%s\n", text);
	fsync(fd);
	close(fd);
}

static void on_alarm(int sig)
{
	(void)sig;
	alarmed = 1;
}

struct job {
	char *name;
	unsigned int timeout;
	uid_t uid;
	gid_t gid;
	char *cwd;
	int merged;
	char *argv[MAX_ARGS + 1];
	int argc;
};

static void run_job(struct job *job, char **envp)
{
	int out = open_output(job->name, ".out");
	int err = job->merged ? dup(out) : open_output(job->name, ".err");
	char status[64];
	pid_t pid;
	int st;

	write_text(job->name, ".started", "");
	pid = fork();
	if (pid < 0)
		fatal("fork for", job->name);
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);

		setpgid(0, 0);
		dup2(devnull, 0);
		dup2(out, 1);
		dup2(err, 2);
		if (chdir(job->cwd)) {
			dprintf(2, "arm64-init: chdir %s: %s\n", job->cwd, strerror(errno));
			_exit(126);
		}
		if (job->uid || job->gid) {
			if (setgroups(0, NULL) || setresgid(job->gid, job->gid, job->gid) ||
			    setresuid(job->uid, job->uid, job->uid)) {
				dprintf(2, "arm64-init: cannot become %u:%u: %s\n",
					job->uid, job->gid, strerror(errno));
				_exit(126);
			}
		}
		execve(job->argv[0], job->argv, envp);
		dprintf(2, "arm64-init: cannot run %s: %s (the guest runs only static "
			"aarch64 binaries from the shared directories)\n",
			job->argv[0], strerror(errno));
		_exit(127);
	}
	close(out);
	close(err);
	alarmed = 0;
	alarm(job->timeout);
	for (;;) {
		pid_t got = waitpid(-1, &st, 0);

		if (got == pid)
			break;
		if (got < 0 && errno == EINTR && alarmed) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
				;
			st = -1;
			break;
		}
		if (got < 0 && errno == ECHILD)
			fatal("lost the child of", job->name);
		/* otherwise an orphan reparented to PID 1: reaped, go on */
	}
	alarm(0);
	/* The job's own leftovers (its process group). */
	kill(-pid, SIGKILL);
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	if (st == -1)
		snprintf(status, sizeof(status), "timeout");
	else if (WIFSIGNALED(st))
		snprintf(status, sizeof(status), "%d", 128 + WTERMSIG(st));
	else
		snprintf(status, sizeof(status), "%d", WEXITSTATUS(st));
	write_text(job->name, ".status", status);
}

/* RUNDIR/guest.txt: kernel release, online CPUs, clocksource (as guest-test). */
static void guest_facts(void)
{
	char clock[64] = "unknown";
	struct utsname u;
	int fd = open("/sys/devices/system/clocksource/clocksource0/current_clocksource",
		      O_RDONLY);

	if (fd >= 0) {
		ssize_t n = read(fd, clock, sizeof(clock) - 1);

		clock[n > 0 ? n : 0] = '\0';
		clock[strcspn(clock, "\n")] = '\0';
		close(fd);
	}
	uname(&u);
	fd = open_output("guest.txt", "");
	dprintf(fd, "kernel=%s\ncpus=%ld\nclocksource=%s\nmachine=%s\n", u.release,
		sysconf(_SC_NPROCESSORS_ONLN), clock, u.machine);
	close(fd);
	dprintf(2, "arm64-init: kernel %s (%s), %ld cpus, clocksource %s\n", u.release,
		u.machine, sysconf(_SC_NPROCESSORS_ONLN), clock);
}

int main(void)
{
	static char *lines[MAX_LINES];
	static char *envp[MAX_ENV + 1];
	static struct job jobs[64];
	struct sigaction sa = { .sa_handler = on_alarm };
	char conf[4096];
	char *text;
	int nlines = 0, nenv = 0, njobs = 0;

	basic_mounts();
	sigaction(SIGALRM, &sa, NULL); /* no SA_RESTART: waitpid sees EINTR */
	rundir = find_rundir();
	mount_9p("run", rundir, 0);
	guest_facts();
	snprintf(conf, sizeof(conf), "%s/guest.conf", rundir);
	text = read_file(conf);
	for (char *save, *l = strtok_r(text, "\n", &save); l && nlines < MAX_LINES;
	     l = strtok_r(NULL, "\n", &save))
		lines[nlines++] = l;

	for (int i = 0; i < nlines; i++) {
		char *f[8];
		int n = split(lines[i], f, 8);

		if (!strcmp(f[0], "mount") && n == 4) {
			mount_9p(f[1], f[2], !strcmp(f[3], "ro"));
		} else if (!strcmp(f[0], "env") && n == 2 && nenv < MAX_ENV) {
			envp[nenv++] = f[1];
		} else if (!strcmp(f[0], "job") && n == 7 && njobs < 64) {
			struct job *j = &jobs[njobs++];

			j->name = f[1];
			j->timeout = strtoul(f[2], NULL, 10);
			j->uid = strtoul(f[3], NULL, 10);
			j->gid = strtoul(f[4], NULL, 10);
			j->cwd = f[5];
			j->merged = !strcmp(f[6], "merged");
		} else if (!strcmp(f[0], "arg") && n == 2 && njobs &&
			   jobs[njobs - 1].argc < MAX_ARGS) {
			struct job *j = &jobs[njobs - 1];

			j->argv[j->argc++] = f[1];
		} else {
			say("guest.conf: bad record '%s'%s", f[0], NULL);
			power_off();
		}
	}
	envp[nenv] = NULL;
	for (int i = 0; i < njobs; i++) {
		if (!jobs[i].argc) {
			say("job %s has no command%s", jobs[i].name, NULL);
			write_text(jobs[i].name, ".status", "127");
			continue;
		}
		jobs[i].argv[jobs[i].argc] = NULL;
		run_job(&jobs[i], envp);
	}
	write_text("done", "", "");
	power_off();
	return 0;
}
