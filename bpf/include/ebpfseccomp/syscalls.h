/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ebpfseccomp/syscalls.h - syscall numbers, generated from Linux 6.12.
 *
 * Two spellings:
 *   SYS_X86_64_openat, SYS_AARCH64_openat   always defined, one per arch;
 *   SYS_openat                              the number on the architecture
 *                                           the filter is built for (the
 *                                           __TARGET_ARCH_* define that
 *                                           `ebpfseccomp build --arch` passes).
 * A syscall that does not exist on the target has no SYS_ name (x86_64 has
 * SYS_open, aarch64 does not), so `#ifdef SYS_open` selects arch-specific
 * rules.  SYS_MAX is one more than the highest number on the target.
 *
 * The per-arch files are written by tools/gen_syscalls.py; do not edit them.
 */
#ifndef __EBPFSECCOMP_SYSCALLS_H
#define __EBPFSECCOMP_SYSCALLS_H

#include "syscalls_x86_64.h"
#include "syscalls_aarch64.h"

#endif /* __EBPFSECCOMP_SYSCALLS_H */
