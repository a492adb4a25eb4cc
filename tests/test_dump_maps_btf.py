"""emulate --dump-maps shows keys, values and global variables decoded with
the object's BTF (structs, signed ints, enums, char arrays), raw otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from asm import ObjectBuilder, exit_, flatten, mov

from ebpfseccomp import cli
from ebpfseccomp.btf import decode
from ebpfseccomp.build import build
from ebpfseccomp.elf import load_object

SOURCE = """\
#include <ebpfseccomp/filter.h>
enum kind { K_NONE, K_READ = 3, K_WRITE = 7 };
struct stat_key { __u32 pid; __u16 nr; __s16 delta; };
struct stat_val { __u64 count; __s32 last; enum kind kind; char tag[8];
                  struct { __u8 a, b; } pair; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16);
         __type(key, struct stat_key); __type(value, struct stat_val); } stats SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4);
         __type(key, __u32); __type(value, __s64); } arr SEC(".maps");
__s32 last_nr = -1;
char name[4] = "abc";
SEC("seccomp") int f(struct seccomp_data *ctx)
{
    struct stat_key k = { .pid = (__u32)bpf_get_current_pid_tgid(), .nr = (__u16)ctx->nr,
                  .delta = -2 };
    struct stat_val *v = bpf_map_lookup_elem(&stats, &k);
    if (v) {
        v->count++;
        v->last = -5;
    } else {
        struct stat_val n = { .count = 1, .last = -3, .kind = K_WRITE, .tag = "hi",
                      .pair = { 1, 2 } };
        bpf_map_update_elem(&stats, &k, &n, BPF_ANY);
    }
    __u32 i = 1;
    __s64 *a = bpf_map_lookup_elem(&arr, &i);
    if (a)
        *a = -9;
    last_nr = ctx->nr;
    return SECCOMP_ALLOW;
}
SECCOMP_LICENSE("GPL");
"""


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("dumpbtf")
    (d / "s.c").write_text(SOURCE)
    return str(build(d / "s.c", out=d / "s.o"))


def _trace(tmp_path: Path) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text('{"syscall": "getpid"}\n{"syscall": "getpid"}\n{"syscall": "read"}\n')
    return str(path)


def test_json_decodes_keys_values_and_globals(obj: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emulate", obj, "--trace", _trace(tmp_path), "--dump-maps", "--json"]) == 0
    maps = json.loads(capsys.readouterr().out.splitlines()[-1])["maps"]
    stats = {e["key_btf"]["nr"]: (e["key_btf"], e["value_btf"]) for e in maps["stats"]["entries"]}
    pid = 1000  # the emulator's default
    assert stats[39] == ({"pid": pid, "nr": 39, "delta": -2},
                         {"count": 2, "last": -5, "kind": "K_WRITE", "tag": "hi",
                          "pair": {"a": 1, "b": 2}})
    assert stats[0][1]["count"] == 1 and stats[0][1]["last"] == -3
    # the raw forms stay: numbers for 1/2/4/8-byte fields, hex otherwise
    assert all(e["value"].startswith("hex:") for e in maps["stats"]["entries"])
    assert maps["arr"]["entries"] == [{"key": 1, "value": (1 << 64) - 9, "key_btf": 1,
                                       "value_btf": -9}]
    assert maps[".data"]["vars"] == {"last_nr": 0, "name": "abc"}
    assert maps[".data"]["bytes"] == "0000000061626300"


def test_text_shows_the_decoded_forms(obj: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emulate", obj, "--trace", _trace(tmp_path), "--dump-maps"]) == 0
    out = capsys.readouterr().out
    assert '  {"pid": 1000, "nr": 39, "delta": -2} -> {"count": 2, "last": -5, ' \
           '"kind": "K_WRITE", "tag": "hi", "pair": {"a": 1, "b": 2}}' in out
    assert "arr: 1 entry\n  1 -> -9\n" in out
    assert ".data: 0000000061626300\n  last_nr = 0\n  name = abc\n" in out


def test_without_btf_the_bytes_stay_raw(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    b = ObjectBuilder()
    b.add_program("f", flatten(mov(0, 0x7FFF0000), exit_()))
    b.add_data(".data", b"\x05\x00\x00\x00", symbols={"g": 0})
    path = b.write(tmp_path / "raw.o")
    assert cli.main(["emulate", str(path), "--syscall", "39", "--dump-maps", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["maps"][".data"] == {"bytes": "05000000"}


def test_decode_never_raises_on_short_or_odd_bytes(obj: str) -> None:
    spec = load_object(obj).maps["stats"]
    assert spec.btf is not None and spec.value_type
    for n in range(0, 40):
        decode(spec.btf, spec.value_type, bytes(range(n)))  # no exception
    assert decode(spec.btf, 0, b"\x01\x02") == "hex:0102"
    assert decode(spec.btf, 10**6, b"\x01") == "hex:01"


# --- the loader's Map answers as a bcc table: keys and values decoded with BTF ------


def _can_create_maps() -> bool:
    from ebpfseccomp import sys as esys

    try:
        os.close(esys.map_create_raw(1, 4, 8, 1))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _can_create_maps(), reason="needs bpf(BPF_MAP_CREATE) on this host (root)")
def test_loader_map_decodes_keys_and_values_with_btf(tmp_path: Path) -> None:
    import struct

    from ebpfseccomp import loader
    from ebpfseccomp import sys as esys

    src = tmp_path / "m.c"
    src.write_text(SOURCE)
    obj = load_object(str(build(src, out=tmp_path / "m.o")))
    spec = obj.maps["stats"]
    fd = esys.map_create_raw(spec.type, spec.key_size, spec.value_size, spec.max_entries)
    m = loader.Map("stats", fd, spec.type, spec.key_size, spec.value_size, spec.max_entries,
                   btf=spec.btf, key_type=spec.key_type, value_type=spec.value_type)
    try:
        key = struct.pack("<IHh", 7, 39, -2)
        value = struct.pack("<QiI8sBB", 5, -3, 7, b"hi", 1, 2).ljust(spec.value_size, b"\0")
        assert key not in m and m.get(key) is None
        with pytest.raises(KeyError):
            m[key]
        m[key] = value
        assert key in m
        want = {"count": 5, "last": -3, "kind": "K_WRITE", "tag": "hi",
                "pair": {"a": 1, "b": 2}}
        assert m[key] == want
        assert list(m.items_decoded()) == [({"pid": 7, "nr": 39, "delta": -2}, want)]
        del m[key]
        assert key not in m
        with pytest.raises(KeyError):
            del m[key]
    finally:
        m.close()


@pytest.mark.skipif(not _can_create_maps(), reason="needs bpf(BPF_MAP_CREATE) on this host (root)")
def test_loader_map_without_btf_and_per_cpu() -> None:
    from ebpfseccomp import loader
    from ebpfseccomp import sys as esys

    fd = esys.map_create_raw(6, 4, 4, 2)  # percpu_array, no BTF
    m = loader.Map("pc", fd, 6, 4, 4, 2)
    try:
        m[1] = 3
        assert m[1] == [3] * esys.possible_cpus()
        assert 1 in m and "getppid" not in m and 2.5 not in m
        assert dict(m.items_decoded()) == {0: [0] * esys.possible_cpus(),
                                           1: [3] * esys.possible_cpus()}
    finally:
        m.close()
    fd = esys.map_create_raw(1, 16, 3, 4)  # hash, odd sizes: hex
    m = loader.Map("h", fd, 1, 16, 3, 4)
    try:
        m[b"k" * 16] = b"abc"
        assert m[b"k" * 16] == "hex:616263"
        assert list(m.items_decoded()) == [("hex:" + (b"k" * 16).hex(), "hex:616263")]
    finally:
        m.close()
