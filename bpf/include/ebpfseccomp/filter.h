/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ebpfseccomp/filter.h - the one include a seccomp filter needs.
 *
 *     #include <ebpfseccomp/filter.h>
 *
 *     SEC("seccomp") int my_filter(struct seccomp_data *ctx)
 *     {
 *             if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
 *                     return SECCOMP_KILL_PROCESS;
 *             if (ctx->nr == SYS_ptrace)
 *                     return SECCOMP_ERRNO(EPERM);
 *             return SECCOMP_ALLOW;
 *     }
 *
 *     SECCOMP_LICENSE("GPL");
 *
 * Build it with `ebpfseccomp build my_filter.c` (clang -O2 -g -target bpf
 * -mcpu=v3 with this directory on the include path and the target arch
 * defined).  See docs/writing-filters.md.
 *
 *   defs.h      types (__u32...), SEC(), SECCOMP_LICENSE()
 *   seccomp.h   struct seccomp_data, SECCOMP_* actions, AUDIT_ARCH_*
 *   errno.h     EPERM, EACCES, ... for SECCOMP_ERRNO()
 *   syscalls.h  SYS_<name> for the target, SYS_X86_64_/SYS_AARCH64_<name>
 *   helpers.h   the helpers the contract allows (EXTENDED tier)
 *   maps.h      BTF-defined maps, SECCOMP_MAP_INIT()
 */
#ifndef __EBPFSECCOMP_FILTER_H
#define __EBPFSECCOMP_FILTER_H

#include "defs.h"
#include "seccomp.h"
#include "errno.h"
#include "syscalls.h"
#include "helpers.h"
#include "maps.h"

#endif /* __EBPFSECCOMP_FILTER_H */
