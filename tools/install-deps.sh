#!/usr/bin/env bash
# Installs what building and testing memoverlay needs, from Debian 12 packages,
# and builds libfuse 3.18 into a private prefix when the system's is older
# (tools/build-libfuse.sh). Does nothing when everything is there already.
set -euo pipefail
pkgs=(meson ninja-build pkg-config gcc clang libclang-rt-14-dev
      libfuse3-dev fuse3 libjansson-dev libcap-dev libseccomp-dev
      python3 python3-pytest attr acl tar git gdb
      strace e2fsprogs # test_upperdir_faults: fault injection, chattr
      dpkg-dev liburing-dev libnuma-dev # the private libfuse: its source, io_uring
      # test_podman and the bench's podman row: the engines, runc (crun
      # fails on hybrid cgroups), newuidmap for rootless, a static busybox
      # for the image, fuse-overlayfs to compare with
      podman buildah runc conmon containernetworking-plugins
      golang-github-containers-common uidmap busybox-static fuse-overlayfs)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
tools/build-libfuse.sh
