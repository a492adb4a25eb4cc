// SPDX-License-Identifier: GPL-2.0-only
/*
 * execve_once.c - a stateful filter: the first execve is allowed, every
 * later one is denied.
 *
 * Enforces: the first execve() or execveat() made by any task holding this
 * filter is allowed; every later one fails with EPERM.  All other syscalls
 * are allowed.  Typical use: `ebpfseccomp run -f execve_once.o -- CMD`
 * attaches the filter and then execs CMD, which spends the one allowed
 * execve, so CMD itself (and anything it forks) can no longer run programs.
 * Note that a failed first attempt (e.g. ENOENT) also spends it.
 *
 * State: the global `execve_calls` (a one-entry array map in .bss) counts
 * the attempts that reached the decision.  Program state is shared by every
 * task that holds the filter -- all threads and every child forked after
 * attaching -- so "once" means once for the whole process tree, not once
 * per process.  The first check is a plain read; the atomic fetch-and-add
 * then decides, so two threads racing for the first execve cannot both be
 * allowed, and the counter stops growing once it is non-zero.  User space
 * can read it (or reset it to 0 to grant another execve) through the map.
 *
 * Tier: extended (a global variable, i.e. a map).
 */
#include <ebpfseccomp/filter.h>

__u32 execve_calls;

SEC("seccomp")
int execve_once(struct seccomp_data *ctx)
{
	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;
	if (ctx->nr != SYS_execve && ctx->nr != SYS_execveat)
		return SECCOMP_ALLOW;
	if (execve_calls != 0)
		return SECCOMP_ERRNO(EPERM);
	if (__sync_fetch_and_add(&execve_calls, 1) != 0)
		return SECCOMP_ERRNO(EPERM); /* another thread won the race */
	return SECCOMP_ALLOW;
}

SECCOMP_LICENSE("GPL");
