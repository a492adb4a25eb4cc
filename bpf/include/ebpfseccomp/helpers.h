/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ebpfseccomp/helpers.h - the helpers a seccomp filter may call.
 *
 * Exactly the contract's list (../shared/DESIGN-NOTES.md, "Helper tiers").
 * A filter that calls none of them, and touches no map or global variable,
 * needs no tier at all ("none": what classic seccomp can do).  Calling any
 * of them needs the EXTENDED tier, which the kernel grants at load time when
 * the LSM hook security_seccomp_extended() allows it (Yama: ptrace_scope 0 or
 * 1, or 2 with CAP_SYS_PTRACE; 3 never).
 *
 * Each helper is a constant function pointer whose value is the helper's id
 * in the kernel's enum bpf_func_id: clang turns a call through it into the
 * BPF `call <id>` instruction.  The names and ids are the kernel's.
 *
 * If <bpf/bpf_helpers.h> (libbpf) was included before this file, its
 * declarations are used and these are skipped.
 */
#ifndef __EBPFSECCOMP_HELPERS_H
#define __EBPFSECCOMP_HELPERS_H

#include "defs.h"

#ifndef __BPF_HELPERS__

/* Flags for bpf_map_update_elem(). */
#ifndef BPF_ANY
#define BPF_ANY     0 /* create a new element or update an existing one */
#define BPF_NOEXIST 1 /* create only */
#define BPF_EXIST   2 /* update only */
#endif

/* id 1: pointer to the value stored under KEY in MAP, or NULL.  Check it. */
static void *(* const bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;

/* id 2: store VALUE under KEY; FLAGS is BPF_ANY/BPF_NOEXIST/BPF_EXIST.  0 or -errno. */
static long (* const bpf_map_update_elem)(void *map, const void *key, const void *value,
					  __u64 flags) = (void *)2;

/* id 3: delete KEY from MAP (hash maps).  0 or -errno. */
static long (* const bpf_map_delete_elem)(void *map, const void *key) = (void *)3;

/* id 5: monotonic clock in nanoseconds (CLOCK_MONOTONIC, not counting suspend). */
static __u64 (* const bpf_ktime_get_ns)(void) = (void *)5;

/* id 7: a pseudo-random 32-bit number (not for cryptography). */
static __u32 (* const bpf_get_prandom_u32)(void) = (void *)7;

/* id 14: (tgid << 32) | pid of the calling task, as seen from the loader's pid namespace. */
static __u64 (* const bpf_get_current_pid_tgid)(void) = (void *)14;

/* id 15: (gid << 32) | uid of the calling task, in the initial user namespace. */
static __u64 (* const bpf_get_current_uid_gid)(void) = (void *)15;

/*
 * id 112: copy SIZE bytes from user address UNSAFE_PTR of the calling task
 * into DST.  0 or -errno; on failure DST is zeroed.
 *
 * id 114: copy a NUL-terminated string of at most SIZE bytes (NUL included).
 * Returns the length including the NUL, or -errno (DST zeroed).
 *
 * Both are GPL-only (declare a GPL-compatible SECCOMP_LICENSE).  They read
 * only if the calling task is dumpable, else fail with -EPERM, unless the
 * loader had CAP_SYS_PTRACE in its user namespace.
 *
 * TOCTOU: what they read is a snapshot.  Another thread of the same process
 * can change the memory after the filter looked at it and before the kernel
 * does, so a path check made this way is advice, not enforcement.
 */
static long (* const bpf_probe_read_user)(void *dst, __u32 size,
					  const void *unsafe_ptr) = (void *)112;
static long (* const bpf_probe_read_user_str)(void *dst, __u32 size,
					      const void *unsafe_ptr) = (void *)114;

#endif /* __BPF_HELPERS__ */

/* Convenience: the user pointer held in a syscall argument. */
#define SECCOMP_ARG_PTR(ctx, i) ((const void *)(unsigned long)(ctx)->args[i])

#endif /* __EBPFSECCOMP_HELPERS_H */
