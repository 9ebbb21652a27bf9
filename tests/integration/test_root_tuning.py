"""What a root daemon tunes on its own mount (fs/bdi.c): the dirty page
limits of the mount's backing device, lifted from the FUSE defaults
(max_ratio 1, strict_limit 1) to a disk's (100, 0), so buffered writers are
not throttled to the daemon's pace; a plain user's mount keeps the defaults
(test_rootless.py checks that)."""

import pytest

import helpers as H
from helpers import write, mkdir

pytestmark = pytest.mark.memoverlay_only


def test_root_mount_lifts_dirty_limits(mount, tmp_path):
    lower = mkdir(tmp_path / "lower")
    write(lower / "f", "data")
    m = mount([lower])
    assert H.bdi_knobs(m.path) == {"max_ratio": 100, "strict_limit": 0}
    # and the mount works as before
    write(m.path / "g", b"x" * (4 << 20))
    assert H.rd(m.path / "g") == b"x" * (4 << 20)


def test_root_mount_with_space_in_path_is_found(mount, tmp_path):
    lower = mkdir(tmp_path / "lower")
    mp = mkdir(tmp_path / "mount point\\x")
    m = mount([lower], mountpoint=mp)
    assert H.bdi_knobs(m.path) == {"max_ratio": 100, "strict_limit": 0}
