/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ebpfseccomp/defs.h - basic types and section macros for seccomp filters.
 *
 * A filter is a C function in the ELF section "seccomp":
 *
 *     SEC("seccomp") int my_filter(struct seccomp_data *ctx) { ... }
 *     SECCOMP_LICENSE("GPL");
 *
 * The compiler is clang with -target bpf (`ebpfseccomp build` runs it), so the
 * C library's headers are not available: this file supplies the few types a
 * filter needs.  The typedefs are the same as <linux/types.h>'s, so including
 * that header as well is harmless.
 *
 * The license string matters: bpf_probe_read_user() and
 * bpf_probe_read_user_str() are GPL-only helpers, and the kernel refuses a
 * program calling them unless its license is GPL-compatible ("GPL",
 * "GPL v2", "Dual BSD/GPL", ...).
 */
#ifndef __EBPFSECCOMP_DEFS_H
#define __EBPFSECCOMP_DEFS_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;

#ifndef NULL
#define NULL ((void *)0)
#endif

/*
 * SEC(name): put a function or variable in ELF section NAME.  Programs go in
 * "seccomp" (or "seccomp/<anything>" when an object holds several), maps in
 * ".maps", the license in "license".  The definition is the same as libbpf's
 * (<bpf/bpf_helpers.h>), so either header may define it first.
 */
#ifndef SEC
#define SEC(name) __attribute__((section(name), used))
#endif

/* The section every seccomp program lives in. */
#define SECCOMP_SECTION "seccomp"

/* SECCOMP_LICENSE("GPL"); at file scope: the program's license string. */
#define SECCOMP_LICENSE(text) char _license[] SEC("license") = text

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Branch hints for the compiler; no effect on what the filter decides. */
#ifndef likely
#define likely(x) __builtin_expect(!!(x), 1)
#endif
#ifndef unlikely
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif

#endif /* __EBPFSECCOMP_DEFS_H */
