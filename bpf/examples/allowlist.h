/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * allowlist.h - the syscalls allowlist_switch.c and allowlist_hashmap.c
 * allow: roughly what a small dynamically linked program (coreutils, a
 * shell running builtins) needs to start, do file I/O and exit.
 *
 * X-macros: ALLOWLIST(X) expands X(name) once per syscall name; the names
 * are turned into numbers with SYS_##name, so every name must exist on the
 * target.  ALLOWLIST_ARCH(X) holds the ones only some architectures have.
 */
#ifndef EXAMPLES_ALLOWLIST_H
#define EXAMPLES_ALLOWLIST_H

#define ALLOWLIST(X)                                                          \
	X(read) X(write) X(readv) X(writev) X(pread64) X(pwrite64) X(close)   \
	X(openat) X(lseek) X(fstat) X(newfstatat) X(statx) X(faccessat)       \
	X(faccessat2) X(readlinkat) X(getdents64) X(getcwd) X(ioctl) X(fcntl) \
	X(dup) X(dup3) X(pipe2) X(mmap) X(mprotect) X(munmap) X(mremap)       \
	X(madvise) X(brk) X(rt_sigaction) X(rt_sigprocmask) X(rt_sigreturn)   \
	X(sigaltstack) X(futex) X(set_tid_address) X(set_robust_list) X(rseq) \
	X(prlimit64) X(getrandom) X(uname) X(getpid) X(getppid) X(gettid)     \
	X(getuid) X(geteuid) X(getgid) X(getegid) X(clock_gettime)            \
	X(clock_nanosleep) X(nanosleep) X(sched_yield) X(wait4) X(execve)     \
	X(exit) X(exit_group)

#if defined(__TARGET_ARCH_x86)
#define ALLOWLIST_ARCH(X) \
	X(arch_prctl) X(open) X(stat) X(lstat) X(access) X(readlink) X(dup2) X(pipe)
#else
#define ALLOWLIST_ARCH(X)
#endif

#endif /* EXAMPLES_ALLOWLIST_H */
