"""System calls that probe every edge of a converted profile.

`generate(plan, minimum=100_000, seed=0)` yields `(arch, nr, args)` triples:

* every syscall number of every architecture's table (sub-architectures'
  too), numbers past the table, the largest numbers, x32 numbers
  (X32_SYSCALL_BIT set) and -1;
* every architecture of the filter and those outside it (of x86_64,
  aarch64, i386, arm);
* for syscalls with argument rules: every compared argument at 0, the
  compared value, value +-1, with the upper 32 bits set or cleared, as a
  negative 32-bit int sign-extended to 64 bits, at the mask's edges
  (value | ~mask, value & mask, the mask itself), combined across the
  compared arguments; the other arguments at 0 and at random values;
  (at most PRODUCT_CAP combinations per syscall);
* then random calls (random numbers, random boundary mixes) up to MINIMUM.

The same stream feeds the host differential test and (a sample of it) the
kernel test in the VM.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from .semantics import X32_SYSCALL_BIT, Plan, arch_table

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1
#: ABIs the stream may use, by ebpfseccomp name: (seccomp_data.arch, tables
#: whose numbers it tries).  x32 calls are AUDIT_ARCH_X86_64 calls.
AUDIT = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7, "i386": 0x40000003,
         "arm": 0x40000028}

Call = tuple[int, int, tuple[int, ...]]


def boundary_values(plan: Plan, index: int, nr: int | None = None) -> list[int]:
    """Interesting values for argument INDEX from every comparison of it in PLAN."""
    vals = {0, 1, M32, M64, 0x80000000, 0xFFFFFFFF80000000, 1 << 32, 0x7FFFFFFF}
    for ap in plan.arches:
        for sp in ap.syscalls.values():
            if nr is not None and sp.nr != nr:
                continue
            for br in sp.branches:
                for c in br.conds:
                    if c.index != index:
                        continue
                    v = c.value
                    base = [v, v - 1, v + 1]
                    if c.op == "MASKED_EQ":
                        base += [c.mask, v | (~c.mask & M64), v & c.mask, ~c.mask & M64,
                                 v ^ (c.mask & -c.mask)]
                    for b in base:
                        b &= M64
                        vals.update({b, b | (M32 << 32), b & M32, b ^ (1 << 32)})
                        lo = b & M32
                        if lo & 0x80000000:
                            vals.add(lo | (M32 << 32))  # a negative int, sign-extended
    return sorted(vals)


def _arches(plan: Plan) -> list[tuple[int, list[str]]]:
    """(seccomp_data.arch, ABI names) of the filter, then of ABIs outside it."""
    inside: dict[int, list[str]] = {}
    for ap in plan.arches:
        inside.setdefault(ap.audit, []).append(ap.name)
    outside = [(a, [n]) for n, a in AUDIT.items() if a not in inside]
    return list(inside.items()) + outside


def _numbers(names: list[str]) -> list[int]:
    """Every number of the ABIs' tables and past their ends, the largest
    numbers, x32 numbers and -1."""
    nums: set[int] = set()
    for name in names:
        table = arch_table(name)
        top = max(n & ~X32_SYSCALL_BIT for n in table.values())
        nums.update(table.values())
        nums.update(range(top + 1, top + 40))
        nums.update(n | X32_SYSCALL_BIT for n in list(table.values())[:80])
    nums.update({0x3FFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, M32, 1000, 4095, 4096})
    nums.update(X32_SYSCALL_BIT + n for n in range(512, 548))
    nums.update(X32_SYSCALL_BIT + n for n in range(0, 40))
    return sorted(nums)


def generate(plan: Plan, minimum: int = 100_000, seed: int = 0,
             product_cap: int = 60_000) -> Iterator[Call]:
    rng = random.Random(seed)
    count = 0
    arches = _arches(plan)
    ruled = {(ap.audit, sp.nr): sp for ap in plan.arches for sp in ap.syscalls.values()
             if sp.branches}
    # 1. every number, every arch, a few argument vectors
    plain = [(0,) * 6, (M64,) * 6, tuple(rng.getrandbits(64) for _ in range(6))]
    numbers = {audit: _numbers(names) for audit, names in arches}
    for audit, _names in arches:
        for nr in numbers[audit]:
            for args in plain:
                count += 1
                yield audit, nr, args
    # 2. argument rules: boundary products, on the rule's arch and the others
    for (audit, nr), sp in ruled.items():
        indexes = sorted({c.index for br in sp.branches for c in br.conds})
        per = {i: boundary_values(plan, i, nr) for i in indexes}
        combos = itertools.product(*(per[i] for i in indexes))
        for combo in itertools.islice(combos, product_cap):
            args = [0] * 6
            for i, v in zip(indexes, combo, strict=True):
                args[i] = v
            for target in (audit, *(a for a, _ in arches if a != audit)):
                count += 1
                yield target, nr, tuple(args)
            if rng.random() < 0.2:
                noisy = [a if i in indexes else rng.getrandbits(64) for i, a in enumerate(args)]
                count += 1
                yield audit, nr, tuple(noisy)
    # 3. random calls until MINIMUM
    pool = {i: boundary_values(plan, i) for i in range(6)}
    while count < minimum:
        audit = rng.choice(arches)[0] if rng.random() < 0.3 else arches[0][0]
        if ruled and rng.random() < 0.5:
            audit, nr = rng.choice(list(ruled))
        else:
            nr = rng.choice(numbers[audit]) if rng.random() < 0.9 else rng.getrandbits(32)
        args = tuple(rng.choice(pool[i]) if rng.random() < 0.8 else rng.getrandbits(64)
                     for i in range(6))
        count += 1
        yield audit, nr, args
