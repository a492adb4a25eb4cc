"""ebpfseccomp: eBPF seccomp filters from restricted C to a running process.

The library is split by responsibility; import the module you need:

- ebpfseccomp.build     compile restricted C to a BPF_PROG_TYPE_SECCOMP object
- ebpfseccomp.elf       read such an object (programs, maps, relocations, BTF lines)
- ebpfseccomp.analysis  check it against the kernel's rules, disassemble it,
                        emulate it against syscalls without a kernel
- ebpfseccomp.loader    load it through libbpf, predict the privilege tier
- ebpfseccomp.attach    attach a program fd with seccomp(2)
- ebpfseccomp.daemon    the privileged loader daemon
- ebpfseccomp.contract  the numbers, flags and tiers shared with the kernel
"""

__version__ = "0.1.0"
