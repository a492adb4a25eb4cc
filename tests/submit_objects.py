"""Objects a user could submit to ebpfseccompd, one per rule of
privilege.predict (shared by the host table test and the VM tests)."""

from __future__ import annotations

from pathlib import Path

HEAD = "#include <ebpfseccomp/filter.h>\n"
TAIL = '\nSECCOMP_LICENSE("GPL");\n'

_MAP = """
struct {{ __uint(type, {kind}); __uint(max_entries, 8);
         __type(key, __u32); __type(value, __u32); }} m SEC(".maps");
SEC("seccomp") int f(struct seccomp_data *ctx)
{{ __u32 k = ctx->nr; __u32 *v = bpf_map_lookup_elem(&m, &k); return v ? *v : SECCOMP_ALLOW; }}"""

SOURCES: dict[str, str] = {
    # no helpers, no maps: what classic BPF can do
    "plain": """
SEC("seccomp") int f(struct seccomp_data *ctx)
{ return ctx->nr == 39 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    # an unprivileged map type: needs the Yama hook
    "hashmap": _MAP.format(kind="BPF_MAP_TYPE_HASH"),
    "arraymap": _MAP.format(kind="BPF_MAP_TYPE_ARRAY"),
    # map types only CAP_BPF may create (the defect: loaded for nobody)
    "lru": _MAP.format(kind="BPF_MAP_TYPE_LRU_HASH"),
    "lru_percpu": _MAP.format(kind="BPF_MAP_TYPE_LRU_PERCPU_HASH"),
    # a global variable is a map too
    "global": """
__u32 calls;
SEC("seccomp") int f(struct seccomp_data *ctx)
{ calls++; return SECCOMP_ALLOW; }""",
    # a contract helper
    "ktime": """
SEC("seccomp") int f(struct seccomp_data *ctx)
{ return bpf_ktime_get_ns() == 1 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    # user-memory reads
    "readuser": """
SEC("seccomp") int f(struct seccomp_data *ctx)
{ char b[16]; return bpf_probe_read_user_str(b, sizeof(b), (void *)ctx->args[1]) == 3
    ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    # a tracing helper: CAP_BPF and CAP_PERFMON
    "tracing": """
static __u32 (* const smp_id)(void) = (void *)8;  /* bpf_get_smp_processor_id */
SEC("seccomp") int f(struct seccomp_data *ctx)
{ return smp_id() == 1000 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    # verifier rules that need CAP_BPF
    "calls": """
static __attribute__((noinline)) int pick(int nr) { return nr == 39 ? 1 : 0; }
SEC("seccomp") int f(struct seccomp_data *ctx)
{ return pick(ctx->nr) ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    "loop": """
SEC("seccomp") int f(struct seccomp_data *ctx)
{ __u64 a = ctx->args[0]; int n = 0;
  #pragma clang loop unroll(disable)
  for (int i = 0; i < 16; i++) { if (a & 1) n++; a >>= 1; }
  return n == 3 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
}


def _big_source(cases: int = 2200) -> str:
    body = "\n".join(
        f"  if (a == {i * 7919 % 100003}) return SECCOMP_ERRNO({1 + i % 100});"
        for i in range(cases)
    )
    return (
        'SEC("seccomp") int f(struct seccomp_data *ctx)\n{ __u64 a = ctx->args[0];\n'
        + body
        + "\n  return SECCOMP_ALLOW; }"
    )


SOURCES["big"] = _big_source()  # more than 4096 instructions


def build_all(directory: Path, names: list[str] | None = None) -> dict[str, Path]:
    from ebpfseccomp.build import build

    out = {}
    for name in names or list(SOURCES):
        src = directory / f"{name}.c"
        src.write_text(HEAD + SOURCES[name] + TAIL)
        out[name] = Path(build(src, out=directory / f"{name}.o"))
    return out
