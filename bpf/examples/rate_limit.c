// SPDX-License-Identifier: GPL-2.0-only
/*
 * rate_limit.c - a counter and a rate limit.
 *
 * Enforces: at most RATE_LIMIT getpid() calls per one-second window
 * (default 10; build with -D RATE_LIMIT=N to change it); calls over the
 * limit fail with EAGAIN until the window ends.  Windows are fixed, not
 * sliding: a window starts at the first getpid after the previous one ended
 * and lasts RATE_WINDOW_NS nanoseconds of bpf_ktime_get_ns() (monotonic).
 * Every other syscall is allowed.
 *
 * Counters, readable by user space through the maps:
 *   - `calls` (hash map): syscall number -> how many times it was called,
 *     for every syscall the filter saw, up to 512 distinct numbers;
 *   - `getpid_denied` (global): how many getpid calls were refused.
 *
 * State is shared by every task holding the filter: the limit is for the
 * whole process tree together, not per thread.  Updates of the window are
 * not atomic; under concurrent getpid calls the limit can be exceeded by a
 * few calls at a window boundary.  This is the kind of filter the 2021 eBPF
 * seccomp work measured against a user-space notifier.
 *
 * Tier: extended (bpf_ktime_get_ns, map lookup/update, globals).
 */
#include <ebpfseccomp/filter.h>

#ifndef RATE_LIMIT
#define RATE_LIMIT 10
#endif
#ifndef RATE_WINDOW_NS
#define RATE_WINDOW_NS 1000000000ULL
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, __u32);   /* syscall number */
	__type(value, __u64); /* calls seen */
} calls SEC(".maps");

__u64 window_start_ns;
__u64 window_calls;
__u64 getpid_denied;

static __always_inline void count_call(__u32 nr)
{
	__u64 one = 1, *count;

	count = bpf_map_lookup_elem(&calls, &nr);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&calls, &nr, &one, BPF_NOEXIST); /* full map: not counted */
}

SEC("seccomp")
int rate_limit(struct seccomp_data *ctx)
{
	__u64 now;

	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;
	count_call(ctx->nr);
	if (ctx->nr != SYS_getpid)
		return SECCOMP_ALLOW;

	now = bpf_ktime_get_ns();
	if (now - window_start_ns >= RATE_WINDOW_NS) {
		window_start_ns = now;
		window_calls = 0;
	}
	if (window_calls >= RATE_LIMIT) {
		__sync_fetch_and_add(&getpid_denied, 1);
		return SECCOMP_ERRNO(EAGAIN);
	}
	__sync_fetch_and_add(&window_calls, 1);
	return SECCOMP_ALLOW;
}

SECCOMP_LICENSE("GPL");
