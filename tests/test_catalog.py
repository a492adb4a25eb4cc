"""The daemon's catalog: entry files, validation, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebpfseccomp.catalog import (
    CatalogError,
    load_catalog,
    load_entry,
    load_settings,
    principals,
)
from ebpfseccomp.contract import Tier


@pytest.fixture
def obj(tmp_path: Path) -> Path:
    p = tmp_path / "f.o"
    p.write_bytes(b"\x7fELF")
    return p


def write(d: Path, name: str, text: str) -> Path:
    f = d / name
    f.write_text(text)
    return f


def test_full_entry(tmp_path: Path, obj: Path) -> None:
    f = write(
        tmp_path,
        "deny.toml",
        f"""
name = "deny-ptrace"
description = "no ptrace"
object = "{obj.name}"
program = "filter"
tier = "ptrace"
per_client = true
users = ["root", 1000, "*"]
groups = ["root", 4242]
[maps.denied]
entries = [["ptrace", 1], [39, [1, 0, 0, 0]], ["hex:00000001", "0x2"]]
""",
    )
    e = load_entry(f)
    assert e.name == "deny-ptrace" and e.description == "no ptrace"
    assert e.object == obj and e.source is None  # relative to the catalog dir
    assert e.program == "filter" and e.tier == Tier.PTRACE and e.per_client
    assert e.allowed.everyone and 0 in e.allowed.uids and 1000 in e.allowed.uids
    assert e.allowed.gids == {0, 4242}
    assert e.maps["denied"][0] == ("ptrace", 1)
    assert e.maps["denied"][1] == (39, [1, 0, 0, 0])
    assert len(e.fingerprint) == 64


def test_defaults(tmp_path: Path, obj: Path) -> None:
    e = load_entry(write(tmp_path, "simple.toml", f'object = "{obj}"\ngroups = [0]\n'))
    assert e.name == "simple" and e.tier == Tier.EXTENDED and not e.per_client
    assert e.program is None and e.maps == {}
    assert e.allows(12345, [0]) and not e.allows(12345, [1])
    assert not e.allows(0, [])  # uid 0 is not special


def test_fingerprint_follows_object(tmp_path: Path, obj: Path) -> None:
    f = write(tmp_path, "a.toml", f'object = "{obj}"\nusers = ["*"]\n')
    one = load_entry(f).fingerprint
    assert load_entry(f).fingerprint == one
    obj.write_bytes(b"\x7fELF changed")
    assert load_entry(f).fingerprint != one


def test_source_entry(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "x.h").write_text("#define X 1\n")
    (tmp_path / "f.c").write_text("int x;\n")
    f = write(
        tmp_path,
        "src.toml",
        'source = "f.c"\ninclude_dirs = ["inc"]\nusers = ["*"]\n[defines]\nLIMIT = 5\n',
    )
    e = load_entry(f)
    assert e.source == tmp_path / "f.c" and e.include_dirs == (tmp_path / "inc",)
    assert e.defines == {"LIMIT": "5"}
    before = e.fingerprint
    (tmp_path / "inc" / "x.h").write_text("#define X 2\n")
    assert load_entry(f).fingerprint != before


@pytest.mark.parametrize(
    "text, message",
    [
        ("users = ['*']\n", "exactly one of 'object'"),
        ("object = '{obj}'\nsource = 'x.c'\nusers = ['*']\n", "exactly one of"),
        ("object = 'missing.o'\nusers = ['*']\n", "no such file"),
        ("object = '{obj}'\n", "nobody could get it"),
        ("object = '{obj}'\nusers = ['no-such-user-xyz']\n", "no user named 'no-such-user-xyz'"),
        ("object = '{obj}'\ngroups = ['no-such-group-xyz']\n", "no group named"),
        ("object = '{obj}'\nusers = [true]\n", "not a user name or uid"),
        ("object = '{obj}'\nusers = 'root'\n", "must be a list"),
        ("object = '{obj}'\nusers = [-1]\n", "out of range"),
        ("object = '{obj}'\nusers = ['*']\ntier = 'godmode'\n", "tier 'godmode' is not one of"),
        ("object = '{obj}'\nusers = ['*']\nper_client = 'yes'\n", "true or false"),
        ("object = '{obj}'\nusers = ['*']\nname = 'bad name'\n", "name 'bad name'"),
        ("object = '{obj}'\nusers = ['*']\nfoo = 1\n", "unknown key foo"),
        ("object = '{obj}'\nusers = ['*']\ninclude_dirs = ['x']\n", "only applies to 'source'"),
        ("object = '{obj}'\nusers = ['*']\nmaps = 3\n", "'maps' must be a table"),
        ("object = '{obj}'\nusers = ['*']\n[maps.m]\nentries = [[1]]\n", "[key, value] pair"),
        ("object = '{obj}'\nusers = ['*']\n[maps.m]\nentries = [[1, -2]]\n", "negative"),
        ("object = '{obj}'\nusers = ['*']\n[maps.m]\nentries = [[1, 1.5]]\n", "not an integer"),
        ("object = '{obj}'\nusers = ['*']\n[maps.m]\nentries = [[[300], 1]]\n", "not an integer"),
        ("object = '{obj}'\nusers = ['*']\n[maps.m]\nkeys = []\n", "expected only 'entries"),
        ("object = [\n", "invalid TOML"),
        ("object = 5\nusers = ['*']\n", "'object' must be a string"),
    ],
)
def test_entry_errors(tmp_path: Path, obj: Path, text: str, message: str) -> None:
    f = write(tmp_path, "bad.toml", text.replace("{obj}", str(obj)))
    with pytest.raises(CatalogError) as ei:
        load_entry(f)
    assert message in ei.value.render()
    assert str(f) in ei.value.render()


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_bytes(b"name = '\xff'\n")
    with pytest.raises(CatalogError, match="UTF-8"):
        load_entry(f)


def test_catalog_skips_bad_entries_and_duplicates(tmp_path: Path, obj: Path) -> None:
    write(tmp_path, "a.toml", f'object = "{obj}"\nusers = ["*"]\n')
    write(tmp_path, "b.toml", f'name = "a"\nobject = "{obj}"\nusers = ["*"]\n')
    write(tmp_path, "c.toml", "garbage = \n")
    write(tmp_path, "d.toml", f'object = "{obj}"\nusers = ["*"]\n')
    write(tmp_path, "notes.txt", "not an entry")
    write(tmp_path, ".hidden.toml", "garbage")
    write(tmp_path, "ebpfseccompd.conf", "max_frame = 1000\n")
    cat = load_catalog(tmp_path)
    assert sorted(cat.entries) == ["a", "d"]
    msgs = {p.file.name: p.message for p in cat.problems}
    assert set(msgs) == {"b.toml", "c.toml"}
    assert "already used by a.toml" in msgs["b.toml"]
    assert "invalid TOML" in msgs["c.toml"]


def test_catalog_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the catalog directory"):
        load_catalog(tmp_path / "nope")


def test_principals() -> None:
    p = principals(["*"], [])
    assert p.allows(99, []) and p.describe() == "everyone"
    q = principals([0, "root"], [5])
    assert q.allows(0, []) and q.allows(7, [5]) and not q.allows(7, [6])
    assert q.describe() == "user 0, user root, group 5"


def test_settings(tmp_path: Path) -> None:
    default = load_settings(tmp_path)
    assert default.max_clients is None  # sized from RLIMIT_NOFILE by the daemon
    assert default.submit is False  # submit is off unless enabled
    write(
        tmp_path,
        "ebpfseccompd.conf",
        'socket = "/tmp/x.sock"\nsocket_mode = "0600"\nmax_frame = 4096\nclient_timeout = 2\n'
        "drop_privileges = true\n[submit]\nenabled = true\ngroups = [0]\n",
    )
    s = load_settings(tmp_path)
    assert s.socket == "/tmp/x.sock" and s.socket_mode == 0o600 and s.max_frame == 4096
    assert s.client_timeout == 2.0 and s.drop_privileges
    assert s.submit and s.submit_users.allows(1234, [0]) and not s.submit_users.allows(1234, [])


@pytest.mark.parametrize(
    "text, message",
    [
        ("bogus = 1\n", "unknown setting 'bogus'"),
        ("max_frame = 'big'\n", "wrong type"),
        ("drop_privileges = 1\n", "wrong type"),
        ("max_clients = 0\n", "must be positive"),
        ("socket_mode = '999'\n", "not an octal"),
        ("[submit]\nfoo = 1\n", "unknown submit setting"),
        ("[submit]\nenabled = 'no'\n", "true or false"),
    ],
)
def test_settings_errors(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "ebpfseccompd.conf", text)
    with pytest.raises(CatalogError) as ei:
        load_settings(tmp_path)
    assert message in ei.value.render()


def test_example_catalog_parses() -> None:
    d = Path(__file__).parent.parent / "contrib" / "catalog"
    if not d.is_dir():
        pytest.skip("no contrib/catalog")
    cat = load_catalog(d)
    bad = [str(p) for p in cat.problems if "no such file" not in p.message]
    assert not bad
    if os.environ.get("CI"):
        assert cat.entries or cat.problems


def test_example_settings_keep_submit_off() -> None:
    """The example ebpfseccompd.conf leaves submit off (issue 8, issue 12)."""
    d = Path(__file__).parent.parent / "contrib" / "catalog"
    if not (d / "ebpfseccompd.conf").exists():
        pytest.skip("no contrib/catalog/ebpfseccompd.conf")
    s = load_settings(d)
    assert s.submit is False
    assert s.max_clients is None  # sized from RLIMIT_NOFILE
