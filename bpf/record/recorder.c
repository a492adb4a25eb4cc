// SPDX-License-Identifier: GPL-2.0-only
/*
 * recorder.c - the filter of `ebpfseccomp record --backend ebpf`.
 *
 * Allows every call, after writing it to the ring buffer `events`: the
 * syscall number, seccomp_data.arch, the calling process (tgid, in the
 * loader's pid namespace) and the six argument registers.  Every task
 * holding the filter writes to the same buffer, so the recorder follows
 * threads, forks and execs by inheritance, and sees each call exactly as
 * seccomp does (compat calls with their own arch and numbers).
 *
 * A call for which the buffer has no room is still allowed, and counted in
 * `lost`: the recorder refuses to write a profile then (it would allow less
 * than the program did).  The buffer and the record: record_event.h.
 *
 * Tier: tracing (bpf_ringbuf_* are base helpers: the loader needs CAP_BPF
 * and CAP_PERFMON).  The program never reads user memory.
 */
#include <ebpfseccomp/filter.h>

#include "record_event.h"

SEC("seccomp")
int record_calls(struct seccomp_data *ctx)
{
	struct record_event *e;
	__u32 zero = 0;
	__u64 *n;
	int i;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		n = bpf_map_lookup_elem(&lost, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
		return SECCOMP_ALLOW;
	}
	e->nr = ctx->nr;
	e->arch = ctx->arch;
	e->tgid = bpf_get_current_pid_tgid() >> 32;
	e->pad = 0;
#pragma unroll
	for (i = 0; i < 6; i++)
		e->args[i] = ctx->args[i];
	bpf_ringbuf_submit(e, 0);
	return SECCOMP_ALLOW;
}

SECCOMP_LICENSE("GPL");
