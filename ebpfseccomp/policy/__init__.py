"""Container runtimes' seccomp profiles (OCI/Docker JSON) as eBPF filters.

model (parse, validate, select) -> semantics (libseccomp's meaning) -> render
(jinja2 C) -> ebpfseccomp.build; libseccomp (the classic filter for the same
profile), cbpf, inputs and differential (the proof that both decide alike).
See docs/policies.md.
"""
