"""emulate --dump-maps shows keys, values and global variables decoded with
the object's BTF (structs, signed ints, enums, char arrays), raw otherwise."""

from __future__ import annotations

import json
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
