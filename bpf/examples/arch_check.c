// SPDX-License-Identifier: GPL-2.0-only
/*
 * arch_check.c - kills the process on a syscall from a foreign architecture.
 *
 * Enforces: ctx->arch must be the architecture the filter was built for
 * (EBPFSECCOMP_AUDIT_ARCH, chosen by `ebpfseccomp build --arch`); any other
 * value -- e.g. a 32-bit int 0x80 syscall on x86_64 (AUDIT_ARCH_I386) --
 * gets KILL_PROCESS.  On x86_64 the x32 ABI shares AUDIT_ARCH_X86_64 but sets
 * bit 30 of the number; those syscalls are killed as well.  Everything else
 * is allowed: this is the prologue every filter that decides by syscall
 * number needs, shown alone.  Syscall numbers differ between architectures
 * (openat is 257 on x86_64, 56 on aarch64, 295 on i386), so a number-based
 * rule is only meaningful once the architecture is known.
 *
 * Tier: none (no helpers, no maps, no globals).
 */
#include <ebpfseccomp/filter.h>

SEC("seccomp")
int arch_check(struct seccomp_data *ctx)
{
	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;
#ifdef X32_SYSCALL_BIT
	if (ctx->nr & X32_SYSCALL_BIT)
		return SECCOMP_KILL_PROCESS;
#endif
	return SECCOMP_ALLOW;
}

SECCOMP_LICENSE("GPL");
