/* mount_hints.c - gVisor mount hints from annotations.
 *
 *   dev.gvisor.spec.mount.<name>.<field> = <value>
 *
 * A pod declares a volume once (the "master": source, type, share, options,
 * lifecycle) and each container's spec mount with the same source is a
 * replica of it. The rules follow gVisor: a malformed key or an empty name is
 * an error; an unknown field or a bad value is only a warning (the rest of the
 * hint still counts); a hint without share, source or type is dropped with a
 * warning; two hints with one source are an error, because a replica could
 * not tell which master it belongs to.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int annotation_diag(struct hints_config *cfg, enum hints_severity sev, const char *key,
			   const char *what, const char *value, const char *expected)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_clean(&sb, cfg->path);
	sb_adds(&sb, ": $.annotations[");
	sb_addq(&sb, key);
	sb_addf(&sb, "]: %s", what);
	if (value) {
		sb_adds(&sb, " ");
		sb_addq(&sb, value);
	}
	if (expected)
		sb_addf(&sb, " (expected %s)", expected);
	return diag_add(cfg, sev, &sb);
}

static struct hints_hint *hint_get(struct hints_config *cfg, const char *name, size_t name_len)
{
	for (size_t i = 0; i < cfg->n_hints; i++)
		if (strlen(cfg->hints[i].name) == name_len &&
		    memcmp(cfg->hints[i].name, name, name_len) == 0)
			return &cfg->hints[i];
	struct hints_hint *hints = array_grow(cfg->hints, cfg->n_hints, sizeof(*hints));
	if (!hints)
		return NULL;
	cfg->hints = hints;
	struct hints_hint *h = &hints[cfg->n_hints];
	if (!(h->name = strndup(name, name_len)))
		return NULL;
	h->lifecycle = HINTS_LIFECYCLE_SHARED;
	cfg->n_hints++;
	return h;
}

/* Map value to one of names[] (index + 1, since 0 means "not set"). */
static int enum_lookup(const char *value, const char *const *names, int n)
{
	for (int i = 0; i < n; i++)
		if (strcmp(value, names[i]) == 0)
			return i + 1;
	return 0;
}

static const char *const type_words[] = { "tmpfs", "bind" };
static const char *const share_words[] = { "container", "pod", "shared" };
static const char *const lifecycle_words[] = { "shared", "pod", "container" };

/* Apply one field; bad values leave the hint as it was and only warn. */
static int hint_set_field(struct hints_config *cfg, struct hints_hint *h, const char *key,
			  const char *field, const char *value)
{
	int v;
	if (strcmp(field, "source") == 0) {
		if (!*value)
			return annotation_diag(cfg, HINTS_WARNING, key, "ignoring an empty source",
					       NULL, "a path");
		char *s = strdup(value);
		if (!s)
			return -1;
		free(h->source);
		h->source = s;
	} else if (strcmp(field, "type") == 0) {
		if (!(v = enum_lookup(value, type_words, 2)))
			return annotation_diag(cfg, HINTS_WARNING, key, "ignoring type", value,
					       "tmpfs or bind");
		h->type = (enum hints_type)v;
	} else if (strcmp(field, "share") == 0) {
		if (!(v = enum_lookup(value, share_words, 3)))
			return annotation_diag(cfg, HINTS_WARNING, key, "ignoring share", value,
					       "container, pod or shared");
		h->share = (enum hints_share)v;
	} else if (strcmp(field, "lifecycle") == 0) {
		if (!(v = enum_lookup(value, lifecycle_words, 3)))
			return annotation_diag(cfg, HINTS_WARNING, key, "ignoring lifecycle", value,
					       "container, pod or shared");
		h->lifecycle = (enum hints_lifecycle)(v - 1);
	} else if (strcmp(field, "options") == 0) {
		struct hints_options opts;
		if (hints_options_parse_csv(value, &opts) < 0)
			return -1;
		hints_options_free(&h->opts);
		h->opts = opts;
	} else {
		return annotation_diag(cfg, HINTS_WARNING, key, "ignoring unknown mount hint field",
				       field, "source, type, share, options or lifecycle");
	}
	return 0;
}

static int parse_one(struct hints_config *cfg, const char *key, const char *value)
{
	const char *rest = key + strlen(HINTS_ANNOTATION_PREFIX);
	const char *dot = strchr(rest, '.');
	if (!dot || strchr(dot + 1, '.')) {
		size_t parts = 1;
		for (const char *p = rest; *p; p++)
			parts += *p == '.';
		struct strbuf what = STRBUF_INIT;
		sb_addf(&what, "mount hint key must be %s<name>.<field>, got %zu part%s after the prefix",
			HINTS_ANNOTATION_PREFIX, parts, parts == 1 ? "" : "s");
		char *w = sb_take(&what);
		if (!w)
			return -1;
		int rc = annotation_diag(cfg, HINTS_ERROR, key, w, NULL, NULL);
		free(w);
		return rc;
	}
	if (dot == rest)
		return annotation_diag(cfg, HINTS_ERROR, key, "empty mount hint name", NULL, NULL);
	struct hints_hint *h = hint_get(cfg, rest, (size_t)(dot - rest));
	if (!h)
		return -1;
	return hint_set_field(cfg, h, key, dot + 1, value);
}

static void hint_free(struct hints_hint *h)
{
	free(h->name);
	free(h->source);
	hints_options_free(&h->opts);
}

/* Drop hints that lack a required field, warning once per hint. */
static int drop_incomplete(struct hints_config *cfg)
{
	size_t kept = 0;
	for (size_t i = 0; i < cfg->n_hints; i++) {
		struct hints_hint *h = &cfg->hints[i];
		const char *missing[3];
		size_t n = 0;
		if (h->share == HINTS_SHARE_NONE)
			missing[n++] = "share";
		if (!h->source)
			missing[n++] = "source";
		if (h->type == HINTS_TYPE_NONE)
			missing[n++] = "type";
		if (n == 0) {
			cfg->hints[kept++] = *h;
			continue;
		}
		struct strbuf sb = STRBUF_INIT;
		sb_add_clean(&sb, cfg->path);
		sb_adds(&sb, ": mount hint ");
		sb_addq(&sb, h->name);
		sb_adds(&sb, ": dropped, missing");
		for (size_t k = 0; k < n; k++)
			sb_addf(&sb, "%s%s", k ? ", " : " ", missing[k]);
		hint_free(h);
		if (diag_add(cfg, HINTS_WARNING, &sb) < 0) {
			/* Keep the array consistent for hints_config_free. */
			memmove(&cfg->hints[kept], &cfg->hints[i + 1],
				(cfg->n_hints - i - 1) * sizeof(*h));
			cfg->n_hints = kept + (cfg->n_hints - i - 1);
			return -1;
		}
	}
	cfg->n_hints = kept;
	return 0;
}

/* Each hint that repeats an earlier hint's source is one error. */
static int check_duplicate_sources(struct hints_config *cfg)
{
	for (size_t j = 1; j < cfg->n_hints; j++) {
		for (size_t i = 0; i < j; i++) {
			if (strcmp(cfg->hints[i].source, cfg->hints[j].source) != 0)
				continue;
			struct strbuf sb = STRBUF_INIT;
			sb_add_clean(&sb, cfg->path);
			sb_adds(&sb, ": mount hints ");
			sb_addq(&sb, cfg->hints[i].name);
			sb_adds(&sb, " and ");
			sb_addq(&sb, cfg->hints[j].name);
			sb_adds(&sb, " have the same source ");
			sb_addq(&sb, cfg->hints[j].source);
			if (diag_add(cfg, HINTS_ERROR, &sb) < 0)
				return -1;
			break;
		}
	}
	return 0;
}

int hints_from_annotations(struct hints_config *cfg, const char *const *keys,
			   const char *const *values, size_t n)
{
	size_t plen = strlen(HINTS_ANNOTATION_PREFIX);
	for (size_t i = 0; i < n; i++) {
		if (strncmp(keys[i], HINTS_ANNOTATION_PREFIX, plen) != 0)
			continue;
		if (parse_one(cfg, keys[i], values[i]) < 0)
			return -1;
	}
	if (drop_incomplete(cfg) < 0)
		return -1;
	return check_duplicate_sources(cfg);
}
