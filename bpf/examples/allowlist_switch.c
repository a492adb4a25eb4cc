// SPDX-License-Identifier: GPL-2.0-only
/*
 * allowlist_switch.c - an allowlist written as a switch.
 *
 * Enforces: the syscalls listed in allowlist.h are allowed; every other
 * syscall fails with EPERM.  A syscall from a foreign architecture (or an
 * x32 syscall on x86_64) kills the process, since its number would be
 * looked up in the wrong table.
 *
 * clang compiles the switch into compare-and-jump chains or bit tests (the
 * BPF target has no jump tables), with no data tables in .rodata, so the
 * filter stays in the "none" tier.
 *
 * Tier: none (no helpers, no maps, no globals).
 */
#include <ebpfseccomp/filter.h>
#include "allowlist.h"

#define CASE(name) case SYS_##name:

SEC("seccomp")
int allowlist_switch(struct seccomp_data *ctx)
{
	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;
#ifdef X32_SYSCALL_BIT
	if (ctx->nr & X32_SYSCALL_BIT)
		return SECCOMP_KILL_PROCESS;
#endif
	switch (ctx->nr) {
	ALLOWLIST(CASE)
	ALLOWLIST_ARCH(CASE)
		return SECCOMP_ALLOW;
	default:
		return SECCOMP_ERRNO(EPERM);
	}
}

SECCOMP_LICENSE("GPL");
