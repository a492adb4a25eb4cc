// SPDX-License-Identifier: GPL-2.0-only
/*
 * allow_all.c - allows every syscall.
 *
 * Enforces: nothing.  The smallest valid filter, for measuring the cost of
 * running an eBPF filter at all and for checking that the toolchain works.
 *
 * Tier: none (no helpers, no maps, no globals): loadable even when the LSM
 * hook denies extended filters.
 */
#include <ebpfseccomp/filter.h>

SEC("seccomp")
int allow_all(struct seccomp_data *ctx)
{
	return SECCOMP_ALLOW;
}

SECCOMP_LICENSE("GPL");
