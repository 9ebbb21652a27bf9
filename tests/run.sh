#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds memoverlay twice (plain,
# and with AddressSanitizer + UndefinedBehaviorSanitizer) on the libfuse
# install-deps provides (the private 3.18 on Debian 12), and once more on the
# system's libfuse (3.14) when that is another, runs the C unit tests of each
# build, then the integration tests against each build, and against the
# plain build once more with io_uring=off (the /dev/fuse read loop; the
# others take FUSE over io_uring where they can, see below), and both once
# more with passthrough=upper.
# Must run as root (the tests mount, create users, and compare with kernel overlayfs).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh

setup() { # dir, meson options... (CC from the environment, on first setup)
	local dir=$1; shift
	if [ -f "$dir/build.ninja" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
	else meson setup "$dir" "$@" >/dev/null; fi
	if [ "$dir" = build-tsan ]; then ninja -C "$dir" fs/memoverlay >/dev/null
	else ninja -C "$dir" >/dev/null; fi
}
# gcc for the plain build, clang for the sanitized ones: every run compiles
# with both (warnings are errors), and clang brings libFuzzer for the fuzzers.
setup build
CC=clang setup build-san -Db_sanitize=address,undefined -Db_lundef=false
# The system's libfuse as well, when the two above have the private one: the
# daemon must keep building and working on 3.14, its newer features
# compiled out.
builds=build:build-san
if [ -f .deps/libfuse/lib/pkgconfig/fuse3.pc ]; then # what -Dlibfuse=auto looks for
	setup build-314 -Dlibfuse=system
	builds=$builds:build-314
fi
# ThreadSanitizer: only the daemon, for the stress test below; on the
# system's libfuse, whose custom I/O it needs (fs/kernel_io.h)
CC=clang setup build-tsan -Db_sanitize=thread -Db_lundef=false -Dlibfuse=system

# Installed, so that mount.fuse3 and mount -t fuse.memoverlay find it (tested).
meson install -C build --quiet >/dev/null

for b in ${builds//:/ }; do
	meson test -C "$b" --print-errorlogs
done

# FUSE over io_uring is off in the kernel unless asked for (the fuse
# module's enable_uring, N by default): turned on, so that the 3.18 builds
# serve through the ring (io_uring=auto takes it) and the io_uring tests
# run; build@io_uring=off tests the same build on the /dev/fuse read loop,
# and build-314 has no ring to take.
if [ -w /sys/module/fuse/parameters/enable_uring ]; then
	echo Y >/sys/module/fuse/parameters/enable_uring
fi
case :$builds: in
*:build:*) builds=$builds:build@io_uring=off ;;
esac
# -o passthrough=upper (root, 3.18 builds): the kernel reads and writes
# upper files itself; the whole suite once more with it, plain and
# sanitized (where the daemon may not use it, it is dropped)
if grep -q "passthrough yes" <(build/fs/memoverlay -V); then
	builds=$builds:build@passthrough=upper:build-san@passthrough=upper
fi

MEMOVERLAY_BUILDS=build-tsan /usr/bin/python3 -m pytest tests/integration/test_harness_stress.py \
	-q -p no:cacheprovider

MEMOVERLAY_BUILDS=$builds exec /usr/bin/python3 -m pytest tests/integration -q -p no:cacheprovider "$@"
