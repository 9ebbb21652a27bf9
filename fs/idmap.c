/* idmap.c: how lower owners are shown — uidmapping=/gidmapping= (the syntax
 * of fuse-overlayfs and containers/storage) and squash_to_*.
 *
 * A mapping C:H:N (containers/storage's ContainerID:HostID:Size) means
 * what it means to fuse-overlayfs: a layer file owned by C+k on disk (the
 * id the container sees: images are not shifted) is shown as H+k, the host
 * id the container's user namespace maps C+k to, so that the container
 * sees C+k; an owner outside every range shows as the overflow id. Upper
 * files keep the ids they were given (already as shown), and go back to
 * the disk's ids when written to upperdir= (idmap_to_disk). squash_to_*
 * reports one owner for everything.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OVERFLOW_ID 65534u

int idmap_parse(const char *value, struct idmap *map)
{
	struct idrange *r = NULL;
	size_t n = 0;
	const char *s = value;

	/* containers/storage joins its ranges onto an empty string: ":0:1000:1" */
	if (*s == ':' && s[1])
		s++;
	while (*s) {
		unsigned long v[3];
		for (int k = 0; k < 3; k++) {
			char *end;
			if (!isdigit((unsigned char)*s))
				goto bad;
			errno = 0;
			v[k] = strtoul(s, &end, 10);
			if (errno || v[k] > UINT32_MAX)
				goto bad;
			s = end;
			if (k < 2 && *s++ != ':')
				goto bad;
		}
		if (*s == ':')
			s++;
		else if (*s)
			goto bad;
		if (v[2] == 0 || v[0] + v[2] - 1 > UINT32_MAX || v[1] + v[2] - 1 > UINT32_MAX)
			goto bad;
		struct idrange *grown = realloc(r, (n + 1) * sizeof(*r));
		if (!grown)
			goto bad;
		r = grown;
		r[n++] = (struct idrange){ .container = (uint32_t)v[0], .host = (uint32_t)v[1],
					   .count = (uint32_t)v[2] };
	}
	if (n == 0)
		goto bad;
	free(map->r);
	map->r = r;
	map->n = n;
	return 0;
bad:
	free(r);
	return -1;
}

void idmap_free(struct idmap *map)
{
	free(map->r);
	map->r = NULL;
	map->n = 0;
}

static uint32_t map_id(const struct idmap *map, uint32_t id, bool to_disk)
{
	if (map->n == 0)
		return id;
	for (size_t i = 0; i < map->n; i++) {
		uint32_t from = to_disk ? map->r[i].host : map->r[i].container;
		uint32_t to = to_disk ? map->r[i].container : map->r[i].host;
		if (id >= from && id - from < map->r[i].count)
			return to + (id - from);
	}
	return OVERFLOW_ID;
}

void idmap_map_lower(const struct config *cfg, struct stat *st)
{
	st->st_uid = map_id(&cfg->uidmap, st->st_uid, false);
	st->st_gid = map_id(&cfg->gidmap, st->st_gid, false);
}

void idmap_to_disk(const struct config *cfg, uid_t *uid, gid_t *gid)
{
	*uid = map_id(&cfg->uidmap, *uid, true);
	*gid = map_id(&cfg->gidmap, *gid, true);
}

void idmap_show(const struct config *cfg, struct stat *st, bool from_lower)
{
	if (from_lower)
		idmap_map_lower(cfg, st);
	if (cfg->squash_uid >= 0)
		st->st_uid = (uid_t)cfg->squash_uid;
	if (cfg->squash_gid >= 0)
		st->st_gid = (gid_t)cfg->squash_gid;
}
