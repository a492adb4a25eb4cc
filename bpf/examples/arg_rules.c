// SPDX-License-Identifier: GPL-2.0-only
/*
 * arg_rules.c - rules on syscall arguments, including a path read from the
 * caller's memory.
 *
 * Enforces:
 *   - socket(AF_NETLINK, ...) fails with EACCES (other families allowed);
 *   - creating a file under /tmp/protected/ fails with EACCES: openat() and
 *     openat2() with O_CREAT, and on x86_64 also open() with O_CREAT and
 *     creat(), when the path starts with "/tmp/protected/";
 *   - if the path (or openat2's struct open_how) cannot be read, a creating
 *     open fails with EACCES too (fail closed);
 *   - everything else is allowed.
 *
 * TOCTOU -- read this before relying on it: the filter reads the path with
 * bpf_probe_read_user_str() from the calling process's memory, and the kernel
 * reads it again afterwards to do the open.  Another thread of the same
 * process (or a process sharing the memory) can rewrite the string between
 * the two reads, so the filter may approve "/tmp/ok" and the kernel open
 * "/tmp/protected/x".  The check is also purely textual: relative paths
 * resolved against a directory fd, "..", "//", symlinks and bind mounts all
 * reach the same file by another name, and O_TMPFILE creates without
 * O_CREAT.  Use this to catch mistakes, not to contain an adversary; for
 * that, use Landlock, mount namespaces or a USER_NOTIF supervisor that
 * opens the file itself.
 *
 * Tier: extended (bpf_probe_read_user_str, bpf_probe_read_user).  Reading
 * the memory of a non-dumpable process (setuid programs, or after
 * prctl(PR_SET_DUMPABLE, 0)) fails with -EPERM unless the loader had
 * CAP_SYS_PTRACE; such a process then cannot create any file with O_CREAT
 * under this filter.  The user-memory helpers are GPL-only: the license
 * below must stay GPL-compatible.
 */
#include <ebpfseccomp/filter.h>

#define AF_NETLINK 16
#define O_CREAT    00000100 /* the same on x86_64 and aarch64 */

#define PROTECTED_PREFIX "/tmp/protected/"
#define PREFIX_LEN       (sizeof(PROTECTED_PREFIX) - 1)
#define PATH_BUF         64 /* enough to hold the prefix and more */

/* 1 if the user string at ADDR starts with PROTECTED_PREFIX or cannot be read. */
static __always_inline int path_is_protected(__u64 addr)
{
	char buf[PATH_BUF];
	long len;

	len = bpf_probe_read_user_str(buf, sizeof(buf), (const void *)(unsigned long)addr);
	if (len < 0)
		return 1; /* unreadable (or not dumpable): fail closed */
	if ((__u64)len < PREFIX_LEN + 1)
		return 0; /* shorter than the prefix (len counts the NUL) */
#pragma unroll
	for (unsigned int i = 0; i < PREFIX_LEN; i++)
		if (buf[i] != PROTECTED_PREFIX[i])
			return 0;
	return 1;
}

SEC("seccomp")
int arg_rules(struct seccomp_data *ctx)
{
	__u64 flags;

	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;

	switch (ctx->nr) {
	case SYS_socket:
		/* socket(int domain, int type, int protocol): an int, so 32 bits */
		if ((__u32)ctx->args[0] == AF_NETLINK)
			return SECCOMP_ERRNO(EACCES);
		return SECCOMP_ALLOW;

	case SYS_openat: /* openat(int dirfd, const char *path, int flags, mode_t mode) */
		if ((ctx->args[2] & O_CREAT) && path_is_protected(ctx->args[1]))
			return SECCOMP_ERRNO(EACCES);
		return SECCOMP_ALLOW;

	case SYS_openat2: /* openat2(int dirfd, const char *path, struct open_how *how, size_t size) */
		/* struct open_how starts with __u64 flags */
		if (bpf_probe_read_user(&flags, sizeof(flags), SECCOMP_ARG_PTR(ctx, 2)) < 0)
			flags = O_CREAT; /* unreadable: judge by the path alone */
		if ((flags & O_CREAT) && path_is_protected(ctx->args[1]))
			return SECCOMP_ERRNO(EACCES);
		return SECCOMP_ALLOW;

#ifdef SYS_open
	case SYS_open: /* open(const char *path, int flags, mode_t mode) */
		if ((ctx->args[1] & O_CREAT) && path_is_protected(ctx->args[0]))
			return SECCOMP_ERRNO(EACCES);
		return SECCOMP_ALLOW;
#endif
#ifdef SYS_creat
	case SYS_creat: /* creat(const char *path, mode_t mode): always creates */
		if (path_is_protected(ctx->args[0]))
			return SECCOMP_ERRNO(EACCES);
		return SECCOMP_ALLOW;
#endif
	default:
		return SECCOMP_ALLOW;
	}
}

SECCOMP_LICENSE("GPL");
