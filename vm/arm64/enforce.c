// SPDX-License-Identifier: GPL-2.0-only
/*
 * enforce.c - load an eBPF seccomp filter from a BPF object, attach it and
 * report what a list of system calls answer under it.  Runs in the arm64
 * guest (static; libbpf and python are not there), started by
 * vm/arm64.py's test suite; tests/vm/test_arm64.py judges its output.
 *
 * usage: enforce OBJ.o
 *
 * The object comes from `ebpfseccomp build --arch aarch64` on the host.
 * Only what a filter of the "none" tier needs is supported: the program in
 * section "seccomp" (or "seccomp/NAME") with no relocations (no maps or
 * globals), and its license.  Steps, each reported as one JSON line on
 * stdout:
 *
 *   {"step":"load","fd":N,"jited_len":N,"xlated_len":N}  bpf(BPF_PROG_LOAD) as
 *        root with BPF_PROG_TYPE_SECCOMP (33), then BPF_OBJ_GET_INFO_BY_FD:
 *        jited_len > 0 means the arm64 JIT compiled it;
 *   {"step":"attach","ret":R,"errno":E}  in a child, after no_new_privs and
 *        dropping to uid/gid 65534 (no capabilities): seccomp(
 *        SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_EXTENDED, &fd);
 *   {"check":NAME,"nr":NR,"ret":R,"errno":E}  then each system call of the
 *        table below, under the filter (raw syscall(2), the aarch64 numbers).
 *
 * The child writes its lines with write(2) (the example filters allow it)
 * into a pipe the parent copies to stdout, so a filter that refuses write
 * loses only the child's lines.  The parent adds
 *   {"step":"child","status":S,"signal":N,"pid":CHILD,"ppid":PARENT}.
 * Exit status 0 when every step ran (the verdicts are the host's to judge),
 * 1 on a load failure (with the verifier log on stderr), 2 on bad input.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef EM_BPF
#define EM_BPF 247
#endif
#define PROG_TYPE_SECCOMP 33		/* BPF_PROG_TYPE_SECCOMP (the series) */
#define FILTER_FLAG_EXTENDED (1U << 6)	/* SECCOMP_FILTER_FLAG_EXTENDED */
#define SET_MODE_FILTER 1		/* SECCOMP_SET_MODE_FILTER */
#define CMD_PROG_LOAD 5			/* BPF_PROG_LOAD */
#define CMD_OBJ_GET_INFO_BY_FD 15	/* BPF_OBJ_GET_INFO_BY_FD */

/* The fields of union bpf_attr this program uses, at their uapi offsets. */
struct prog_load_attr {
	uint32_t prog_type;
	uint32_t insn_cnt;
	uint64_t insns;
	uint64_t license;
	uint32_t log_level;
	uint32_t log_size;
	uint64_t log_buf;
	uint32_t kern_version;
	uint32_t prog_flags;
	char prog_name[16];
	uint8_t pad[128 - 64];
};

struct info_attr {
	uint32_t bpf_fd;
	uint32_t info_len;
	uint64_t info;
	uint8_t pad[128 - 16];
};

/* The beginning of struct bpf_prog_info (uapi order). */
struct prog_info_head {
	uint32_t type;
	uint32_t id;
	uint8_t tag[8];
	uint32_t jited_prog_len;
	uint32_t xlated_prog_len;
};

static char log_buf[1 << 20];

static void bad_input(const char *path, const char *why)
{
	fprintf(stderr, "enforce: %s: %s\n", path, why);
	exit(2);
}

static unsigned char *slurp(const char *path, size_t *len)
{
	struct stat st;
	unsigned char *buf;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st)) {
		fprintf(stderr, "enforce: %s: %s\n", path, strerror(errno));
		exit(2);
	}
	buf = malloc(st.st_size ? st.st_size : 1);
	if (!buf || read(fd, buf, st.st_size) != st.st_size)
		bad_input(path, "cannot read it");
	close(fd);
	*len = st.st_size;
	return buf;
}

/* The program's instructions and license, from an ELF BPF object. */
static void parse_object(const char *path, const void **insns, size_t *insn_bytes,
			 const char **license)
{
	size_t len;
	unsigned char *buf = slurp(path, &len);
	const Elf64_Ehdr *eh = (const void *)buf;
	const Elf64_Shdr *sh;
	const char *names;
	int prog = -1;

	if (len < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
	    eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_ident[EI_DATA] != ELFDATA2LSB ||
	    eh->e_machine != EM_BPF)
		bad_input(path, "not a little-endian 64-bit BPF ELF object (ebpfseccomp build makes one)");
	if (eh->e_shentsize != sizeof(*sh) || eh->e_shoff > len ||
	    eh->e_shnum > (len - eh->e_shoff) / sizeof(*sh) || eh->e_shstrndx >= eh->e_shnum)
		bad_input(path, "truncated section table");
	sh = (const void *)(buf + eh->e_shoff);
	if (sh[eh->e_shstrndx].sh_offset > len || !sh[eh->e_shstrndx].sh_size ||
	    sh[eh->e_shstrndx].sh_size > len - sh[eh->e_shstrndx].sh_offset ||
	    buf[sh[eh->e_shstrndx].sh_offset + sh[eh->e_shstrndx].sh_size - 1] != '\0')
		bad_input(path, "truncated section names");
	names = (const char *)buf + sh[eh->e_shstrndx].sh_offset;
	*license = NULL;
	for (int i = 0; i < eh->e_shnum; i++) {
		const char *name = names + sh[i].sh_name;

		if (sh[i].sh_name >= sh[eh->e_shstrndx].sh_size)
			bad_input(path, "a section name is out of bounds");
		if (sh[i].sh_type != SHT_NOBITS &&
		    (sh[i].sh_offset > len || sh[i].sh_size > len - sh[i].sh_offset))
			bad_input(path, "a section is out of bounds");
		if (!strcmp(name, "seccomp") || !strncmp(name, "seccomp/", 8)) {
			if (prog >= 0)
				bad_input(path, "more than one seccomp program: this loader takes one");
			prog = i;
		} else if (!strcmp(name, "license") && sh[i].sh_size) {
			if (buf[sh[i].sh_offset + sh[i].sh_size - 1] != '\0')
				bad_input(path, "the license is not NUL-terminated");
			*license = (const char *)buf + sh[i].sh_offset;
		}
	}
	if (prog < 0)
		bad_input(path, "no section \"seccomp\"");
	for (int i = 0; i < eh->e_shnum; i++)
		if ((sh[i].sh_type == SHT_REL || sh[i].sh_type == SHT_RELA) &&
		    (int)sh[i].sh_info == prog)
			bad_input(path, "the program has relocations (maps or globals): this "
				  "loader takes filters of the \"none\" tier only");
	if (!sh[prog].sh_size || sh[prog].sh_size % 8)
		bad_input(path, "the program section is empty or not a whole number of instructions");
	if (!*license)
		bad_input(path, "no license section (SECCOMP_LICENSE(\"GPL\"))");
	*insns = buf + sh[prog].sh_offset;
	*insn_bytes = sh[prog].sh_size;
}

static void emit(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emit(int fd, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0 && write(fd, line, (size_t)n) < 0)
		_exit(3);
}

/* What the child asks under the filter: raw aarch64 system calls. */
struct check {
	const char *name;
	long nr;
	long a0, a1, a2, a3;
};

static const char proc_status[] = "/proc/self/status";
static const char new_dir[] = "/tmp/enforce-mkdir";

static const struct check checks[] = {
	/* allowed by allowlist_switch (bpf/examples/allowlist.h) */
	{ "getpid", __NR_getpid },
	{ "getppid", __NR_getppid },
	{ "openat", __NR_openat, -100 /* AT_FDCWD */, (long)proc_status, O_RDONLY },
	{ "uname_null", __NR_uname, 0 },		/* EFAULT from the syscall itself */
	/* not in the list: ERRNO(EPERM) from the filter */
	{ "mkdirat", __NR_mkdirat, -100, (long)new_dir, 0700 },
	{ "socket", __NR_socket, 1 /* AF_UNIX */, 1 /* SOCK_STREAM */, 0 },
	{ "getpgid", __NR_getpgid, 0 },
	/* 39 is x86_64's getpid and aarch64's umount2: refused on aarch64 */
	{ "nr39", 39, 0, 0 },
	/* 172 is aarch64's getpid (x86_64's iopl) */
	{ "nr172", 172 },
};

int main(int argc, char **argv)
{
	struct prog_load_attr load = { 0 };
	struct info_attr info = { 0 };
	struct prog_info_head head = { 0 };
	const void *insns;
	const char *license;
	size_t insn_bytes;
	int fd, pipefd[2], st;
	pid_t pid;

	if (argc != 2) {
		fprintf(stderr, "usage: enforce OBJ.o  (see vm/arm64/enforce.c)\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	parse_object(argv[1], &insns, &insn_bytes, &license);
	load.prog_type = PROG_TYPE_SECCOMP;
	load.insn_cnt = insn_bytes / 8;
	load.insns = (uintptr_t)insns;
	load.license = (uintptr_t)license;
	load.log_level = 1;
	load.log_size = sizeof(log_buf);
	load.log_buf = (uintptr_t)log_buf;
	strcpy(load.prog_name, "enforce");
	fd = syscall(__NR_bpf, CMD_PROG_LOAD, &load, sizeof(load));
	if (fd < 0) {
		int e = errno;

		printf("{\"step\":\"load\",\"fd\":-1,\"errno\":%d}\n", e);
		fprintf(stderr, "enforce: BPF_PROG_LOAD: %s; verifier log:\n%s\n",
			strerror(e), log_buf);
		return 1;
	}
	info.bpf_fd = fd;
	info.info_len = sizeof(head);
	info.info = (uintptr_t)&head;
	if (syscall(__NR_bpf, CMD_OBJ_GET_INFO_BY_FD, &info, sizeof(info)))
		fprintf(stderr, "enforce: BPF_OBJ_GET_INFO_BY_FD: %s\n", strerror(errno));
	printf("{\"step\":\"load\",\"fd\":%d,\"insns\":%zu,\"jited_len\":%u,\"xlated_len\":%u}\n",
	       fd, insn_bytes / 8, head.jited_prog_len, head.xlated_prog_len);

	if (pipe(pipefd))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		int out = pipefd[1];
		long ret;

		close(pipefd[0]);
		rmdir(new_dir);
		/* An unprivileged attacher: the filter was loaded by root. */
		if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) ||
		    setresuid(65534, 65534, 65534))
			_exit(4);
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
			_exit(5);
		ret = syscall(__NR_seccomp, SET_MODE_FILTER, FILTER_FLAG_EXTENDED, &fd);
		emit(out, "{\"step\":\"attach\",\"ret\":%ld,\"errno\":%d}\n",
		     ret, ret ? errno : 0);
		if (ret)
			_exit(6);
		for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
			const struct check *c = &checks[i];

			errno = 0;
			ret = syscall(c->nr, c->a0, c->a1, c->a2, c->a3);
			emit(out, "{\"check\":\"%s\",\"nr\":%ld,\"ret\":%ld,\"errno\":%d}\n",
			     c->name, c->nr, ret, ret == -1 ? errno : 0);
		}
		_exit(0);
	}
	close(pipefd[1]);
	for (;;) {
		char buf[4096];
		ssize_t n = read(pipefd[0], buf, sizeof(buf));

		if (n <= 0)
			break;
		fwrite(buf, 1, (size_t)n, stdout);
	}
	waitpid(pid, &st, 0);
	printf("{\"step\":\"child\",\"status\":%d,\"signal\":%d,\"pid\":%d,\"ppid\":%d}\n",
	       WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0,
	       (int)pid, (int)getpid());
	return 0;
}
