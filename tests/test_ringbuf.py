"""BPF_MAP_TYPE_RINGBUF, which the kernel series allows seccomp programs
(patch 0005, seccomp_bpf_map_type_allowed): the checker accepts it and
applies the kernel's rules (sizes; only the ringbuf helpers may touch it),
the emulator runs output/reserve/submit/discard with the kernel's room
accounting, and the recorder's filter (bpf/record/recorder.c) is checked
like any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebpfseccomp.analysis.checker import check
from ebpfseccomp.analysis.emulator import Emulator, SyscallInput
from ebpfseccomp.analysis.emumaps import RingbufMap
from ebpfseccomp.build import build
from ebpfseccomp.contract import Tier
from ebpfseccomp.elf import load_object
from ebpfseccomp.errors import EmulationError
from ebpfseccomp.record.ebpf import source_path

HEAD = """#include <ebpfseccomp/filter.h>
static long (* const bpf_ringbuf_output)(void *rb, void *data, __u64 size, __u64 flags) =
	(void *)130;
static void *(* const bpf_ringbuf_reserve)(void *rb, __u64 size, __u64 flags) = (void *)131;
static void (* const bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static void (* const bpf_ringbuf_discard)(void *data, __u64 flags) = (void *)133;
static __u64 (* const bpf_ringbuf_query)(void *rb, __u64 flags) = (void *)134;
struct { __uint(type, 27); __uint(max_entries, SIZE); } rb SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } lost SEC(".maps");
"""

#: getppid: reserve + submit the number; getpid: discard; others: output
RING = HEAD + """
SEC("seccomp") int f(struct seccomp_data *ctx)
{
	__u32 zero = 0;
	__u64 *n;
	if (ctx->nr == SYS_getppid || ctx->nr == SYS_getpid) {
		__u64 *e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
		if (!e)
			goto lost;
		*e = ctx->nr;
		if (ctx->nr == SYS_getpid)
			bpf_ringbuf_discard(e, 0);
		else
			bpf_ringbuf_submit(e, 0);
		return SECCOMP_ALLOW;
	}
	__u32 nr = ctx->nr;
	if (bpf_ringbuf_output(&rb, &nr, sizeof(nr), 0) == 0)
		return SECCOMP_ALLOW;
lost:
	n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1;
	return SECCOMP_ALLOW;
}
SECCOMP_LICENSE("GPL");
"""


def _obj(tmp_path: Path, text: str, size: int = 4096, name: str = "rb") -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(text.replace("SIZE", str(size)))
    return build(src, out=tmp_path / f"{name}.o", arch="x86_64")


def test_a_ring_buffer_filter_is_loadable_at_the_tracing_tier(tmp_path: Path) -> None:
    report = check(load_object(str(_obj(tmp_path, RING))))
    assert report.problems == [], report.problems
    assert report.tier == Tier.TRACING


def test_the_recorders_filter_checks_clean(tmp_path: Path) -> None:
    obj = build(source_path(), out=tmp_path / "recorder.o", arch="x86_64",
                defines={"RECORD_RING_BYTES": 1 << 16})
    report = check(load_object(str(obj)))
    assert report.problems == [], report.problems
    assert report.tier == Tier.TRACING


def test_the_emulator_keeps_the_kernels_room_accounting(tmp_path: Path) -> None:
    emu = Emulator(load_object(str(_obj(tmp_path, RING))))
    ring = emu.maps["rb"]
    assert isinstance(ring, RingbufMap)
    getppid, getpid, read = 110, 39, 0
    emu.run(SyscallInput(getppid))
    emu.run(SyscallInput(getpid))  # discarded: no record, room given back
    emu.run(SyscallInput(read))
    assert ring.records == [getppid.to_bytes(8, "little"), read.to_bytes(4, "little")]
    # 4096 bytes: each 8-byte record costs 16 (header + size); two are used
    for _ in range(300):
        emu.run(SyscallInput(getppid))
    assert len(ring.records) == 4096 // 16
    assert emu.maps["lost"].lookup(0) == (300 - (4096 // 16 - 2)).to_bytes(8, "little")
    assert len(ring.drain()) == 256 and ring.records == []
    emu.run(SyscallInput(getppid))
    assert ring.records == [getppid.to_bytes(8, "little")]
    with pytest.raises(EmulationError, match="ring buffer: it has no keys"):
        ring.lookup(0)


def test_the_checker_applies_the_kernels_ring_buffer_rules(tmp_path: Path) -> None:
    lookup = HEAD + """
SEC("seccomp") int f(struct seccomp_data *ctx)
{
	__u32 k = 0;
	void *v = bpf_map_lookup_elem(&rb, &k);
	__u64 x = 1;
	bpf_ringbuf_output(&lost, &x, sizeof(x), 0);
	return v ? SECCOMP_ALLOW : SECCOMP_KILL_PROCESS;
}
SECCOMP_LICENSE("GPL");
"""
    report = check(load_object(str(_obj(tmp_path, lookup, name="lookup"))))
    messages = [p.message for p in report.problems]
    assert any("map_type 27 (ringbuf, 'rb') into func bpf_map_lookup_elem#1" in m
               for m in messages), messages
    assert any("map_type 2 (array, 'lost') into func bpf_ringbuf_output#130" in m
               for m in messages), messages
    report = check(load_object(str(_obj(tmp_path, RING, size=5000, name="odd"))))
    assert [p.code for p in report.problems] == ["map-size"]
    assert "power of two" in report.problems[0].message


def test_the_emulator_refuses_ringbuf_query_by_name(tmp_path: Path) -> None:
    query = HEAD + """
SEC("seccomp") int f(struct seccomp_data *ctx)
{
	return bpf_ringbuf_query(&rb, 0) ? SECCOMP_ALLOW : SECCOMP_LOG;
}
SECCOMP_LICENSE("GPL");
"""
    emu = Emulator(load_object(str(_obj(tmp_path, query, name="query"))))
    with pytest.raises(EmulationError, match="unsupported helper ringbuf_query"):
        emu.run(SyscallInput(0))
