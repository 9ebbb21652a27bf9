"""Read side: file data (big files, random preads, mmap, sendfile, many
threads) and statfs."""

import hashlib
import mmap
import os
import random
import threading

import pytest

import helpers as H
from helpers import write

BIG = 64 << 20


@pytest.fixture(scope="module")
def big_file_layers(tmp_path_factory):
    base = tmp_path_factory.mktemp("bigfile")
    top, bot = base / "top", base / "bot"
    rng = random.Random(42)
    data = rng.randbytes(BIG)
    write(bot / "big.bin", data)
    write(bot / "shadowed.bin", rng.randbytes(1 << 20))
    write(top / "shadowed.bin", b"small top version")
    sparse = bot / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(128 << 20)
        for off in (0, 5 << 20, (128 << 20) - 4096):
            f.seek(off)
            f.write(b"X" * 4096)
    for n in range(50):
        write(top / "small" / f"f{n}", bytes([n]) * (n * 997))
    return [top, bot], hashlib.sha256(data).hexdigest(), data


def test_big_file_sha256_and_random_preads(mount, big_file_layers):
    layers, digest, data = big_file_layers
    m = mount(layers)
    p = m / "big.bin"
    assert os.stat(p).st_size == BIG
    h = hashlib.sha256()
    with open(p, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    assert h.hexdigest() == digest
    rng = random.Random(7)
    fd = os.open(p, os.O_RDONLY)
    try:
        for _ in range(400):
            off = rng.randrange(0, BIG)
            n = rng.choice([1, 7, 4095, 4096, 4097, 65536, 131072, 1 << 20])
            assert os.pread(fd, n, off) == data[off:off + n], (off, n)
        for off in (0, 4095, 4096, BIG - 1, BIG - 4096):   # page edges and the end
            assert os.pread(fd, 8192, off) == data[off:off + 8192], off
        assert os.pread(fd, 100, BIG) == b""
        assert os.pread(fd, 100, BIG + 12345) == b""
    finally:
        os.close(fd)


def test_mmap_sendfile_and_threads(mount, big_file_layers):
    layers, digest, data = big_file_layers
    m = mount(layers)
    p = m / "big.bin"
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            for off in (0, 12345, BIG // 2, BIG - 100):
                assert mm[off:off + 100] == data[off:off + 100]
        finally:
            mm.close()
    # sendfile out of the mount (the splice path)
    out = m.path.parent / "copy.bin"
    with open(p, "rb") as src, open(out, "wb") as dst:
        sent, off = 0, 0
        while sent < BIG:
            n = os.sendfile(dst.fileno(), src.fileno(), off, BIG - sent)
            assert n > 0
            sent += n
            off += n
    with open(out, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest
    os.unlink(out)
    # several readers at once, each on its own fd, on different ranges
    errors = []

    def reader(k):
        try:
            rng = random.Random(k)
            fd = os.open(p, os.O_RDONLY)
            try:
                for _ in range(100):
                    off = rng.randrange(0, BIG - 300000)
                    n = rng.randrange(1, 300000)
                    if os.pread(fd, n, off) != data[off:off + n]:
                        errors.append((k, off, n))
            finally:
                os.close(fd)
        except Exception as e:  # reported below
            errors.append((k, repr(e)))

    ts = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts), "readers hung"
    assert not errors, errors[:5]


def test_shadowed_sparse_and_small_files(mount, big_file_layers):
    layers, digest, data = big_file_layers
    m = mount(layers)
    assert (m / "shadowed.bin").read_bytes() == b"small top version"
    assert os.stat(m / "shadowed.bin").st_size == len(b"small top version")
    st = os.stat(m / "sparse.bin")
    assert st.st_size == 128 << 20
    with open(m / "sparse.bin", "rb") as f:
        assert f.read(4096) == b"X" * 4096
        assert f.read(4096) == b"\0" * 4096
        f.seek(5 << 20)
        assert f.read(4097) == b"X" * 4096 + b"\0"
        f.seek((128 << 20) - 4096)
        assert f.read() == b"X" * 4096
    for n in range(50):
        assert (m / "small" / f"f{n}").read_bytes() == bytes([n]) * (n * 997)


def test_statfs(mount, lowers):
    (l,) = lowers(1)
    write(l / "f", "x")
    m = mount([l])
    sv = os.statvfs(m)
    assert sv.f_bsize > 0 and sv.f_frsize > 0
    assert sv.f_namemax >= 255
    assert sv.f_blocks >= sv.f_bfree >= sv.f_bavail >= 0
    assert sv.f_files >= sv.f_ffree >= 0
    # also from inside the tree and through an fd
    assert os.statvfs(m / "f").f_namemax == sv.f_namemax
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.fstatvfs(fd).f_bsize == sv.f_bsize
    finally:
        os.close(fd)
    # `df` works on the mount
    import subprocess
    r = subprocess.run(["df", "-P", str(m)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
