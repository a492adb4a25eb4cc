/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ebpfseccomp/seccomp.h - what a filter reads and what it returns.
 *
 * The context: struct seccomp_data, 64 bytes, read-only.  Any naturally
 * aligned load of 1, 2, 4 or 8 bytes inside it is accepted by the verifier
 * (so `ctx->args[1] & 0xff` is fine); stores are rejected.
 *
 * The return value: a 32-bit action in the upper 16 bits and data in the
 * lower 16, exactly as for classic seccomp.  Over a chain of filters the
 * least permissive action wins (KILL_PROCESS < KILL_THREAD < TRAP < ERRNO <
 * USER_NOTIF < TRACE < LOG < ALLOW).  Spell them with the SECCOMP_* macros
 * below:
 *
 *     return SECCOMP_ALLOW;
 *     return SECCOMP_ERRNO(EPERM);      // the syscall fails with -1/EPERM
 *     return SECCOMP_TRAP(7);           // SIGSYS, si_errno = 7
 *     return SECCOMP_KILL_PROCESS;
 *
 * The architecture: ctx->arch holds an AUDIT_ARCH_* value.  A filter built
 * by `ebpfseccomp build --arch A` gets EBPFSECCOMP_AUDIT_ARCH for A and
 * should refuse everything else, because syscall numbers mean different
 * things on different architectures (see examples/arch_check.c).
 */
#ifndef __EBPFSECCOMP_SECCOMP_H
#define __EBPFSECCOMP_SECCOMP_H

#include "defs.h"

/*
 * The uapi definitions (<linux/seccomp.h>).  If that header was included
 * first we use its definitions; otherwise we define the same things and its
 * include guard, so a later #include <linux/seccomp.h> is a no-op.
 */
#if !defined(_LINUX_SECCOMP_H) && !defined(_UAPI_LINUX_SECCOMP_H)
#define _LINUX_SECCOMP_H
#define _UAPI_LINUX_SECCOMP_H

struct seccomp_data {
	int nr;                    /* offset 0: syscall number */
	__u32 arch;                /* offset 4: AUDIT_ARCH_* of the calling convention */
	__u64 instruction_pointer; /* offset 8: user IP at the syscall */
	__u64 args[6];             /* offset 16 + 8*i: arguments, zero-extended to 64 bits */
};

#define SECCOMP_RET_KILL_PROCESS 0x80000000U
#define SECCOMP_RET_KILL_THREAD  0x00000000U
#define SECCOMP_RET_KILL         SECCOMP_RET_KILL_THREAD
#define SECCOMP_RET_TRAP         0x00030000U
#define SECCOMP_RET_ERRNO        0x00050000U
#define SECCOMP_RET_USER_NOTIF   0x7fc00000U
#define SECCOMP_RET_TRACE        0x7ff00000U
#define SECCOMP_RET_LOG          0x7ffc0000U
#define SECCOMP_RET_ALLOW        0x7fff0000U

#define SECCOMP_RET_ACTION_FULL  0xffff0000U
#define SECCOMP_RET_ACTION       0x7fff0000U
#define SECCOMP_RET_DATA         0x0000ffffU
#endif

_Static_assert(sizeof(struct seccomp_data) == 64, "struct seccomp_data is 64 bytes");

/* Actions, ready to return. */
#define SECCOMP_ALLOW        SECCOMP_RET_ALLOW
#define SECCOMP_LOG          SECCOMP_RET_LOG
#define SECCOMP_USER_NOTIF   SECCOMP_RET_USER_NOTIF
#define SECCOMP_KILL_PROCESS SECCOMP_RET_KILL_PROCESS
#define SECCOMP_KILL_THREAD  SECCOMP_RET_KILL_THREAD

/* Actions carrying 16 bits of data: the errno, si_errno, or the tracer's message. */
#define SECCOMP_WITH_DATA(action, data) ((action) | ((__u32)(data) & SECCOMP_RET_DATA))
#define SECCOMP_ERRNO(err)  SECCOMP_WITH_DATA(SECCOMP_RET_ERRNO, err)
#define SECCOMP_TRAP(data)  SECCOMP_WITH_DATA(SECCOMP_RET_TRAP, data)
#define SECCOMP_TRACE(data) SECCOMP_WITH_DATA(SECCOMP_RET_TRACE, data)

/* Decoding a return value (e.g. one read back from a map). */
#define SECCOMP_ACTION_OF(ret) ((__u32)(ret) & SECCOMP_RET_ACTION_FULL)
#define SECCOMP_DATA_OF(ret)   ((__u32)(ret) & SECCOMP_RET_DATA)

/* AUDIT_ARCH_* values (<linux/audit.h>) for ctx->arch. */
#ifndef AUDIT_ARCH_X86_64
#define AUDIT_ARCH_X86_64  0xc000003eU
#define AUDIT_ARCH_I386    0x40000003U
#define AUDIT_ARCH_AARCH64 0xc00000b7U
#define AUDIT_ARCH_ARM     0x40000028U
#endif

/*
 * The architecture this filter is built for, from the libbpf-style target
 * define that `ebpfseccomp build --arch` passes (-D__TARGET_ARCH_x86 for
 * x86_64, -D__TARGET_ARCH_arm64 for aarch64).
 */
#if defined(__TARGET_ARCH_x86)
#define EBPFSECCOMP_AUDIT_ARCH AUDIT_ARCH_X86_64
#define EBPFSECCOMP_ARCH_NAME  "x86_64"
/* x32 syscalls arrive with AUDIT_ARCH_X86_64 and this bit set in nr. */
#define X32_SYSCALL_BIT 0x40000000
#elif defined(__TARGET_ARCH_arm64)
#define EBPFSECCOMP_AUDIT_ARCH AUDIT_ARCH_AARCH64
#define EBPFSECCOMP_ARCH_NAME  "aarch64"
#else
#error "no target architecture: build with `ebpfseccomp build` or pass -D__TARGET_ARCH_x86 / -D__TARGET_ARCH_arm64"
#endif

#endif /* __EBPFSECCOMP_SECCOMP_H */
