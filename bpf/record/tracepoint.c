// SPDX-License-Identifier: GPL-2.0-only
/*
 * tracepoint.c - the programs of `ebpfseccomp record --backend tracepoint`,
 * for stock kernels (no eBPF seccomp): BTF-enabled tracepoint programs,
 * loaded by root (CAP_BPF and CAP_PERFMON) on a kernel with BTF.
 *
 *   tp_btf/sys_enter           every system call of every task on the
 *                              machine; the ones of a process in `tracked`
 *                              go to the ring buffer `events`, in the
 *                              layout of recorder.c (struct record_event)
 *   tp_btf/sched_process_fork  a child of a tracked process is tracked
 *
 * The recorder puts the command's pid into `tracked` before it execs.
 * Entries are never removed: a pid reused by an unrelated process during the
 * recording would be recorded too (more allowed, never less).  Pids are
 * those of the initial pid namespace.
 *
 * The ABI of a call comes from the task's TS_COMPAT status bit (x86: set
 * for int 0x80 / sysenter calls and for every call of a 32-bit program);
 * the arguments from the registers the ABI passes them in.  Kernel structs
 * are read with CO-RE (preserve_access_index): libbpf finds the offsets in
 * the running kernel's BTF.
 */
#include <ebpfseccomp/defs.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_ANY 0

#define TS_COMPAT 0x0002
#define AUDIT_ARCH_X86_64 0xC000003EU
#define AUDIT_ARCH_I386 0x40000003U

static void *(* const bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (* const bpf_map_update_elem)(void *map, const void *key, const void *value,
					  __u64 flags) = (void *)2;
static __u64 (* const bpf_get_current_pid_tgid)(void) = (void *)14;
static void *(* const bpf_get_current_task_btf)(void) = (void *)158;

/* The fields read here, as the kernel's BTF names them (x86_64). */
struct pt_regs {
	unsigned long bx, cx, dx, si, di, bp, r10, r8, r9;
} __attribute__((preserve_access_index));

struct thread_info {
	__u32 status;
} __attribute__((preserve_access_index));

struct task_struct {
	struct thread_info thread_info;
	int tgid;
} __attribute__((preserve_access_index));

#include "record_event.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);   /* tgid */
	__type(value, __u8);
} tracked SEC(".maps");

/* Counts forks whose child could not be tracked (the map was full). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} untracked SEC(".maps");

static __always_inline void count(void *map)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(map, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("tp_btf/sys_enter")
int record_sys_enter(__u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long id = (long)ctx[1];
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct task_struct *task;
	struct record_event *e;

	if (!bpf_map_lookup_elem(&tracked, &tgid))
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(&lost);
		return 0;
	}
	task = bpf_get_current_task_btf();
	e->nr = id;
	e->tgid = tgid;
	e->pad = 0;
	if (task->thread_info.status & TS_COMPAT) {
		e->arch = AUDIT_ARCH_I386;
		e->args[0] = (__u32)regs->bx;
		e->args[1] = (__u32)regs->cx;
		e->args[2] = (__u32)regs->dx;
		e->args[3] = (__u32)regs->si;
		e->args[4] = (__u32)regs->di;
		e->args[5] = (__u32)regs->bp;
	} else {
		e->arch = AUDIT_ARCH_X86_64;
		e->args[0] = regs->di;
		e->args[1] = regs->si;
		e->args[2] = regs->dx;
		e->args[3] = regs->r10;
		e->args[4] = regs->r8;
		e->args[5] = regs->r9;
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int record_fork(__u64 *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx[0];
	struct task_struct *child = (struct task_struct *)ctx[1];
	__u32 ptgid = parent->tgid, ctgid = child->tgid;
	__u8 one = 1;

	if (ptgid == ctgid || !bpf_map_lookup_elem(&tracked, &ptgid))
		return 0;
	if (bpf_map_update_elem(&tracked, &ctgid, &one, BPF_ANY))
		count(&untracked);
	return 0;
}

char _license[] SEC("license") = "GPL";
