/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for fs/idmap.c (TAP): the uidmapping=/gidmapping= syntax,
 * lower owners through the ranges, the overflow id, squashing. */
#include "memoverlay.h"

#include "tap.h"

#include <string.h>

static struct stat owned(uid_t uid, gid_t gid)
{
	struct stat st;
	memset(&st, 0, sizeof(st));
	st.st_uid = uid;
	st.st_gid = gid;
	return st;
}

int main(void)
{
	struct idmap m = { 0 };
	is_int(idmap_parse("0:100000:65536", &m), 0, "one range");
	ok(m.n == 1 && m.r[0].container == 0 && m.r[0].host == 100000 && m.r[0].count == 65536,
	   "... read as container:host:count");
	is_int(idmap_parse("0:1000:1:1:100000:65535", &m), 0, "two ranges");
	is_int(m.n, 2, "... both kept");
	static const char *const bad[] = { "", "0:1", "0:1:0", "a:b:c", "0:1:2::", ":",
					   "0:4294967295:2", "-1:0:1", "0:1:2x", "4294967296:0:1" };
	/* a trailing colon after the last range is accepted (as a separator) */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct idmap before = m;
		is_int(idmap_parse(bad[i], &m), -1, "'%s' is refused", bad[i]);
		ok(m.r == before.r && m.n == before.n, "... and leaves the map as it was");
	}

	struct config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.squash_uid = cfg.squash_gid = -1;
	idmap_parse("0:100000:65536", &cfg.uidmap);
	idmap_parse("0:200000:10", &cfg.gidmap);
	/* as fuse-overlayfs: an image keeps the container's ids (C+k), the
	 * mount shows the host ids (H+k) its user namespace maps them to */
	struct stat st = owned(5, 9);
	idmap_show(&cfg, &st, true);
	ok(st.st_uid == 100005 && st.st_gid == 200009, "layer owners show as the host's ids");
	st = owned(65536, 10);
	idmap_show(&cfg, &st, true);
	ok(st.st_uid == 65534 && st.st_gid == 65534, "owners outside every range: overflow id");
	uid_t uid = 100005;
	gid_t gid = 200009;
	idmap_to_disk(&cfg, &uid, &gid);
	ok(uid == 5 && gid == 9, "written back: the container's ids again");
	uid = 0;
	gid = 200010;
	idmap_to_disk(&cfg, &uid, &gid);
	ok(uid == 65534 && gid == 65534, "... outside every range: overflow id");
	st = owned(100005, 200009);
	idmap_show(&cfg, &st, false);
	ok(st.st_uid == 100005 && st.st_gid == 200009, "upper owners are shown as they are");

	cfg.squash_uid = 0;
	cfg.squash_gid = 7;
	st = owned(100005, 200009);
	idmap_show(&cfg, &st, true);
	ok(st.st_uid == 0 && st.st_gid == 7, "squash_to_* shows one owner");
	st = owned(5, 9);
	idmap_map_lower(&cfg, &st);
	ok(st.st_uid == 100005 && st.st_gid == 200009,
	   "what an upper copy keeps is mapped, not squashed");

	idmap_free(&cfg.uidmap);
	idmap_free(&cfg.gidmap);
	idmap_free(&m);
	ok(m.r == NULL && m.n == 0, "free empties the map");
	return tap_done();
}
