"""fsx-style data integrity (issue 5): tests/harness/fsx.py does random
reads, writes, truncates, fallocates (incl. punch hole and zero range) and
mmap writes/reads on one file and checks every result against an in-memory
model; on a file that starts in the lower layer and on a new one, with the
kernel write cache (default) and without (-o nowriteback), and with the
filestore in a directory (medium=dir=). After the run the page cache is
dropped and the file read again by path. Longer runs:

    python3 tests/harness/fsx.py /mnt/file --seed S --ops 100000
"""

import os
import sys

import pytest

import helpers as H

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import fsx  # noqa: E402

pytestmark = pytest.mark.memoverlay_only

OPTS = {"writeback": "", "nowriteback": "nowriteback", "medium-dir": "medium=dir={tmp}"}


@pytest.mark.parametrize("start", ["lower", "new"])
@pytest.mark.parametrize("opts", list(OPTS), ids=list(OPTS))
def test_fsx(start, opts, mount, lowers, memoverlay_build, tmp_path, drop_caches):
    (l,) = lowers(1)
    initial = os.urandom(150_000)
    H.write(l / "sub/file", initial)
    medium = tmp_path / "medium"
    medium.mkdir()
    m = mount([l], OPTS[opts].format(tmp=medium))
    path = m / "sub" / ("file" if start == "lower" else "newfile")
    if start == "new":
        path.write_bytes(b"")
    nops = 1500 if memoverlay_build.sanitized else 4000
    seed = {"lower": 11, "new": 12}[start] + 100 * list(OPTS).index(opts)
    f = fsx.Fsx(os.fspath(path), seed)
    try:
        f.run(nops)
        os.fsync(f.fd)
    finally:
        f.close()
    assert not ({"alloc", "alloc_keep", "punch"} & f.unsupported), \
        f"fallocate modes refused: {sorted(f.unsupported)}"
    f.verify_fresh()
    drop_caches()
    f.verify_fresh()   # now from the daemon, not the page cache
    if start == "lower":
        assert (l / "sub/file").read_bytes() == initial
