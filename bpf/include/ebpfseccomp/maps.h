/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ebpfseccomp/maps.h - BTF-defined maps, and their initial contents.
 *
 * A map is a global struct in section ".maps" whose members describe it
 * through their types, the convention libbpf reads from BTF:
 *
 *     struct {
 *             __uint(type, BPF_MAP_TYPE_HASH);
 *             __uint(max_entries, 512);
 *             __type(key, __u32);
 *             __type(value, __u64);
 *     } counts SEC(".maps");
 *
 * Map state is shared by every task that holds the filter: all threads, and
 * every child forked after the filter was attached, see and change the same
 * entries.  Plain global variables (.data, .bss, .rodata) are one-entry
 * array maps and are shared the same way.  Using any map or global needs the
 * EXTENDED tier.
 *
 * Types the contract allows: HASH, ARRAY, PERCPU_HASH, PERCPU_ARRAY,
 * LRU_HASH, LRU_PERCPU_HASH, and RINGBUF (27: no key or value, max_entries
 * a power of two and a multiple of the page size; written only through the
 * bpf_ringbuf_* helpers, which need the tracing tier: see
 * bpf/record/record_event.h).
 */
#ifndef __EBPFSECCOMP_MAPS_H
#define __EBPFSECCOMP_MAPS_H

#include "defs.h"

#ifndef __BPF_HELPERS__
/* Member NAME whose value VAL is encoded in the array size of a pointer type. */
#define __uint(name, val) int (*name)[val]
/* Member NAME whose type is VAL (key and value types). */
#define __type(name, val) typeof(val) *name
/* Member NAME: an array of VAL (map-in-map; not used by seccomp filters). */
#define __array(name, val) typeof(val) *name[]
#endif

#if !defined(_UAPI__LINUX_BPF_H__) && !defined(__LINUX_BPF_H__) && !defined(BPF_MAP_TYPE_HASH)
#define BPF_MAP_TYPE_HASH            1
#define BPF_MAP_TYPE_ARRAY           2
#define BPF_MAP_TYPE_PERCPU_HASH     5
#define BPF_MAP_TYPE_PERCPU_ARRAY    6
#define BPF_MAP_TYPE_LRU_HASH        9
#define BPF_MAP_TYPE_LRU_PERCPU_HASH 10

#define BPF_F_NO_PREALLOC (1U << 0) /* map_flags for hash maps */
#define BPF_F_RDONLY_PROG (1U << 7) /* map_flags: the program may only read */
#endif

/*
 * Initial entries for a hash or array map: the ebpfseccomp convention.
 *
 * The kernel creates maps empty.  To ship a map's starting contents inside
 * the object, define a const array of entries with SECCOMP_MAP_INIT(map):
 *
 *     struct { __u32 key; __u32 value; } allowed_init[] SECCOMP_MAP_INIT(allowed) = {
 *             { SYS_read, SECCOMP_ALLOW }, ...
 *     };
 *
 * This puts the array in its own ELF section ".rodata.init.<map>".  Each
 * entry is the key's bytes immediately followed by the value's bytes, so the
 * section's size is a multiple of key_size + value_size (choose types
 * without padding between or after them).  The ebpfseccomp loader writes
 * every entry into <map> with BPF_ANY before it attaches the filter, and
 * the emulator does the same before the first syscall.  The program itself
 * never reads the array.  A later entry with the same key wins.
 *
 * Loaders that do not know the convention (plain libbpf) leave the map
 * empty, so write filters whose behaviour with an empty map is safe and
 * documented (e.g. deny everything).
 */
#define SECCOMP_MAP_INIT(map) __attribute__((section(".rodata.init." #map), used))

#endif /* __EBPFSECCOMP_MAPS_H */
