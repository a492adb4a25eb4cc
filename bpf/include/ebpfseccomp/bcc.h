/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ebpfseccomp/bcc.h - the seccomp definitions for a filter compiled by bcc.
 *
 * ebpfseccomp.bcc puts `#include <ebpfseccomp/bcc.h>` before a bcc-style
 * source (C in a Python string) and the target define (__TARGET_ARCH_x86 or
 * __TARGET_ARCH_arm64) on the command line, so the source reads as any
 * other filter:
 *
 *     BPF_HASH(counts, u32, u64, 1024);
 *
 *     int my_filter(struct seccomp_data *ctx)
 *     {
 *             if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
 *                     return SECCOMP_KILL_PROCESS;
 *             ...
 *             return SECCOMP_ALLOW;
 *     }
 *
 * bcc compiles against the running kernel's headers and includes its own
 * <bcc/helpers.h> first: helpers (bpf_map_lookup_elem, ...), SEC(), the map
 * macros (BPF_HASH, BPF_ARRAY, ...) and the license (GPL unless BPF_LICENSE
 * says otherwise) are bcc's.  So this file takes from the project only what
 * bcc does not have: struct seccomp_data and the SECCOMP_* actions
 * (seccomp.h), errno values (errno.h), SYS_<name> numbers (syscalls.h), and
 * defs.h's types, which equal the kernel's.  helpers.h and maps.h are left
 * out: their helper pointers and map declarations are the libbpf/clang
 * spelling and would clash with bcc's.
 */
#ifndef __EBPFSECCOMP_BCC_H
#define __EBPFSECCOMP_BCC_H

#include "defs.h"
#include "seccomp.h"
#include "errno.h"
#include "syscalls.h"

/* As in helpers.h: the user pointer held in a syscall argument. */
#ifndef SECCOMP_ARG_PTR
#define SECCOMP_ARG_PTR(ctx, i) ((const void *)(unsigned long)(ctx)->args[i])
#endif

#endif /* __EBPFSECCOMP_BCC_H */
