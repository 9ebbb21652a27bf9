#!/bin/bash
# A/B of the request counters' cost (fs/stats.c, around every handler):
# 4 KiB random writes and O_DIRECT reads through FUSE (fio, psync, one
# job, nowriteback so every request reaches the daemon), alternating two
# daemons, three rounds. As root:
#   bench/ctl/hotpath_ab.sh OLD/fs/memoverlay NEW/fs/memoverlay
# OLD: a build of the commit before memoverlay-ctl (git archive ab663b1).
set -euo pipefail
a=$1 b=$2
d=$(mktemp -d /tmp/hotpath.XXXXXX)
trap 'fusermount3 -u "$d/m" 2>/dev/null || true; rm -rf "$d"' EXIT
mkdir -p "$d/l" "$d/m"
for round in 1 2 3; do
	for exe in "$a" "$b"; do
		"$exe" "$d/m" -o lowerdir="$d/l",nowriteback
		w=$(fio --name=w --directory="$d/m" --rw=randwrite --bs=4k --size=64m --ioengine=psync \
			--runtime=4 --time_based --output-format=terse --terse-version=3 | cut -d';' -f49)
		r=$(fio --name=r --directory="$d/m" --rw=randread --bs=4k --size=64m --ioengine=psync \
			--runtime=4 --time_based --direct=1 --output-format=terse --terse-version=3 |
			cut -d';' -f8)
		echo "round $round $exe: randwrite ${w} IOPS, randread (direct) ${r} IOPS"
		fusermount3 -u "$d/m"
		sleep 0.5
	done
done
