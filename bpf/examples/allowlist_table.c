// SPDX-License-Identifier: GPL-2.0-only
/*
 * allowlist_table.c - an allowlist held in a read-only table.
 *
 * Enforces: the syscalls listed in allowlist.h are allowed; every other
 * syscall fails with EPERM.  A syscall from a foreign architecture (or an
 * x32 syscall on x86_64) kills the process.
 *
 * The table `actions` maps a syscall number to the value to return for it
 * (0: no entry, EPERM).  It is a const global, so it lives in .rodata, which
 * the loader (libbpf) turns into an array map that programs cannot write
 * (BPF_F_RDONLY_PROG) and freezes once filled.  Nothing can change it after
 * that, so the kernel's action cache reads it when the filter is attached:
 * every allowed syscall is answered from the cache without running the
 * filter, as for the switch form (allowlist_switch.c), while the list stays
 * data.  Unlike allowlist_hashmap.c, the entries cannot be changed at run
 * time; `ebpfseccomp check` lists which syscalls the kernel will cache.
 *
 * A value is a full return value, so an entry may also say
 * SECCOMP_ERRNO(ENOSYS) or SECCOMP_LOG for one syscall; 0 cannot be used
 * for SECCOMP_KILL_THREAD (it means "no entry").
 *
 * Tier: extended (a global in .rodata is a map).
 */
#include <ebpfseccomp/filter.h>
#include "allowlist.h"

/* Above the highest syscall number of x86_64 and aarch64. */
#define TABLE_SIZE 512

#define ENTRY(name) [SYS_##name] = SECCOMP_ALLOW,

static const __u32 actions[TABLE_SIZE] = {
	ALLOWLIST(ENTRY)
	ALLOWLIST_ARCH(ENTRY)
};

SEC("seccomp")
int allowlist_table(struct seccomp_data *ctx)
{
	__u32 nr, action;

	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;
#ifdef X32_SYSCALL_BIT
	if (ctx->nr & X32_SYSCALL_BIT)
		return SECCOMP_KILL_PROCESS;
#endif
	nr = ctx->nr;
	if (nr >= TABLE_SIZE)
		return SECCOMP_ERRNO(EPERM);
	action = actions[nr];
	return action ? action : SECCOMP_ERRNO(EPERM);
}

SECCOMP_LICENSE("GPL");
