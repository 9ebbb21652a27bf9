"""Random differential testing against kernel overlayfs (issue 5), bounded:
tests/harness/difftest.py runs a seeded random operation sequence on
memoverlay and on kernel overlayfs (tmpfs upper) over identical lower trees
and compares every step and the final trees. Longer runs:

    python3 tests/harness/difftest.py --seeds 500 --steps 1000 [--layers 2] [--opts nowriteback]

A failure prints the seed and a shrunk (delta-debugged) sequence.
Environment: DIFFTEST_SEEDS=N overrides the number of seeds per variant."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import difftest  # noqa: E402

pytestmark = pytest.mark.memoverlay_only

# (id, first seed, seeds, steps, lower layers, mount options). Seeds are fixed
# so a failure reproduces; the CLI explores new ones.
VARIANTS = [
    ("one-layer", 1, 20, 200, 1, ""),
    ("two-layers", 101, 12, 200, 2, ""),
    ("nowriteback", 201, 8, 200, 2, "nowriteback"),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_difftest_random(variant, mount, memoverlay_build, tmp_path):
    name, first, nseeds, steps, nlayers, opts = variant
    nseeds = int(os.environ.get("DIFFTEST_SEEDS", nseeds))
    if memoverlay_build.sanitized:
        nseeds = max(1, nseeds // 2)   # ASan is ~3x slower; half the seeds keep the time bound

    def mount_mem(layers):
        m = mount(layers, opts)
        return m.path, lambda: mount.unmount(m)

    work = tmp_path / "difftest"
    work.mkdir()
    mounts = difftest.Mounts(os.fspath(work), opts=opts, mount_mem=mount_mem)
    failures = []
    for seed in range(first, first + nseeds):
        # Shrink only the first failing seed (bounded); list the others.
        rep = difftest.check_seed(seed, steps, mounts, os.fspath(work),
                                  do_shrink=not failures, shrink_budget=90,
                                  nlayers=nlayers, log=lambda *a: None)
        if rep:
            failures.append(rep)
    assert not failures, (f"{len(failures)} of {nseeds} seeds differ "
                          f"(intended differences: difftest.INTENDED):\n\n" +
                          "\n\n".join(failures))
