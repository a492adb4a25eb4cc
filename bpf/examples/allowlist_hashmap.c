// SPDX-License-Identifier: GPL-2.0-only
/*
 * allowlist_hashmap.c - an allowlist held in a hash map.
 *
 * Enforces: the map `allowed` maps a syscall number to the action to return
 * for it; a syscall with no entry fails with EPERM.  A syscall from a
 * foreign architecture (or an x32 syscall on x86_64) kills the process.
 *
 * Where the entries come from: the array `allowed_init`, placed by
 * SECCOMP_MAP_INIT(allowed) in the section ".rodata.init.allowed", holds
 * { number, SECCOMP_ALLOW } for every syscall in allowlist.h.  The
 * ebpfseccomp loader copies it into the map before attaching the filter and
 * the emulator does so before the first syscall (see maps.h).  The program
 * never reads the array.  User space may add, change or delete entries at
 * any time (bpf(BPF_MAP_UPDATE_ELEM) on the map's fd); the change applies to
 * every task holding the filter from its next syscall on.  A value is a full
 * return value, so an entry can also say SECCOMP_ERRNO(ENOSYS) or
 * SECCOMP_LOG for one syscall.
 *
 * With an empty map (a loader that ignores .rodata.init.*, or entries
 * deleted) every syscall fails with EPERM: the filter fails closed.
 *
 * Tier: extended (bpf_map_lookup_elem and a hash map).
 */
#include <ebpfseccomp/filter.h>
#include "allowlist.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);   /* syscall number */
	__type(value, __u32); /* seccomp return value */
} allowed SEC(".maps");

struct allowed_entry {
	__u32 nr;
	__u32 action;
};

#define ENTRY(name) { SYS_##name, SECCOMP_ALLOW },

const struct allowed_entry allowed_init[] SECCOMP_MAP_INIT(allowed) = {
	ALLOWLIST(ENTRY)
	ALLOWLIST_ARCH(ENTRY)
};

SEC("seccomp")
int allowlist_hashmap(struct seccomp_data *ctx)
{
	__u32 nr, *action;

	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;
#ifdef X32_SYSCALL_BIT
	if (ctx->nr & X32_SYSCALL_BIT)
		return SECCOMP_KILL_PROCESS;
#endif
	nr = ctx->nr;
	action = bpf_map_lookup_elem(&allowed, &nr);
	if (!action)
		return SECCOMP_ERRNO(EPERM);
	return *action;
}

SECCOMP_LICENSE("GPL");
