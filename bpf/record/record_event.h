/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * record_event.h - what recorder.c and tracepoint.c write, and where.
 *
 * One record per system call in the ring buffer `events`
 * (ebpfseccomp/record/ebpf.py reads this layout); a call that finds the
 * buffer full is counted in `lost`.  RECORD_RING_BYTES (a power of two, a
 * multiple of the page size) sizes the buffer; the recorder passes it with -D.
 *
 * The includer defines SEC, __uint, __type and the map type numbers first.
 */
#ifndef __EBPFSECCOMP_RECORD_EVENT_H
#define __EBPFSECCOMP_RECORD_EVENT_H

#ifndef RECORD_RING_BYTES
#define RECORD_RING_BYTES (16 * 1024 * 1024)
#endif

#ifndef BPF_MAP_TYPE_RINGBUF
#define BPF_MAP_TYPE_RINGBUF 27
#endif

/* Base helpers (ids of enum bpf_func_id), granted at the tracing tier. */
static void *(* const bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (* const bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;

struct record_event {
	__s32 nr;
	__u32 arch;
	__u32 tgid;
	__u32 pad;
	__u64 args[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RECORD_RING_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

#endif
