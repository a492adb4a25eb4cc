// SPDX-License-Identifier: GPL-2.0-only
/*
 * deny_all_errno.c - every syscall fails with EPERM, except exit and
 * exit_group.
 *
 * Enforces: the process can compute and leave, nothing else: each syscall
 * returns -1 with errno EPERM without reaching the kernel's implementation.
 * exit and exit_group stay allowed so the process can end normally (denying
 * them would leave the C library to crash the process on its way out).
 * Foreign-architecture syscalls are denied too (their numbers would not
 * mean exit).
 *
 * Tier: none (no helpers, no maps, no globals): what a classic cBPF filter
 * can do, so the LSM hook's answer does not matter.
 */
#include <ebpfseccomp/filter.h>

SEC("seccomp")
int deny_all_errno(struct seccomp_data *ctx)
{
	if (ctx->arch == EBPFSECCOMP_AUDIT_ARCH &&
	    (ctx->nr == SYS_exit || ctx->nr == SYS_exit_group))
		return SECCOMP_ALLOW;
	return SECCOMP_ERRNO(EPERM);
}

SECCOMP_LICENSE("GPL");
