/* oci_config.c - OCI runtime config.json -> struct hints_config.
 *
 * Only the parts memoverlay uses are read: "mounts", "annotations" and
 * "root"; every other key is left alone. Wrong types and missing fields are
 * errors naming the file, the JSON path ($.mounts[2].options[0]) and what was
 * expected, and parsing goes on so that every problem is reported at once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "internal.h"

/* A config.json is a few kilobytes; anything this big is the wrong file
 * (or /dev/zero) and must not make us read forever. */
#define CONFIG_MAX_BYTES (64u << 20)

static const char *json_type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:  return "an object";
	case JSON_ARRAY:   return "an array";
	case JSON_STRING:  return json_string_length(v) ? "a string" : "an empty string";
	case JSON_INTEGER:
	case JSON_REAL:    return "a number";
	case JSON_TRUE:
	case JSON_FALSE:   return "a boolean";
	case JSON_NULL:    return "null";
	}
	return "an unknown value";
}

/* "FILE: PATH: expected WHAT, got TYPE" as an error. */
static int type_error(struct hints_config *cfg, const char *jpath, const char *what,
		      const json_t *got)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_clean(&sb, cfg->path);
	sb_addf(&sb, ": %s: expected %s, got %s", jpath, what, json_type_name(got));
	return diag_add(cfg, HINTS_ERROR, &sb);
}

static int missing_error(struct hints_config *cfg, const char *jpath, const char *key,
			 const char *what)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_clean(&sb, cfg->path);
	sb_addf(&sb, ": %s: missing \"%s\" (expected %s)", jpath, key, what);
	return diag_add(cfg, HINTS_ERROR, &sb);
}

/* Outcome of reading one optional string member. */
enum field { FIELD_ABSENT, FIELD_OK, FIELD_BAD, FIELD_OOM };

/* Read obj[key] as a string into *out (copied). An empty string counts as
 * absent for optional fields (type, source) and is an error for required
 * ones, which name something and cannot be empty. */
static enum field get_string(struct hints_config *cfg, const json_t *obj, const char *jpath,
			     const char *key, bool required, char **out)
{
	const json_t *v = json_object_get(obj, key);
	if (!v)
		return FIELD_ABSENT;
	if (json_is_string(v) && json_string_length(v) == 0 && !required)
		return FIELD_ABSENT;
	char path[64];
	snprintf(path, sizeof(path), "%s.%s", jpath, key);
	if (!json_is_string(v) || json_string_length(v) == 0) {
		const char *what = required ? "a non-empty string" : "a string";
		if (type_error(cfg, path, what, v) < 0)
			return FIELD_OOM;
		return FIELD_BAD;
	}
	*out = strdup(json_string_value(v));
	return *out ? FIELD_OK : FIELD_OOM;
}

static void mount_free(struct hints_mount *m)
{
	free(m->destination);
	free(m->type);
	free(m->source);
	for (size_t i = 0; i < m->n_options; i++)
		free(m->options[i]);
	free(m->options);
	hints_options_free(&m->opts);
}

/* The option words of one mount; bad entries are reported and skipped. */
static int parse_mount_options(struct hints_config *cfg, const json_t *arr, const char *jpath,
			       struct hints_mount *m)
{
	char path[96];
	snprintf(path, sizeof(path), "%s.options", jpath);
	if (!json_is_array(arr))
		return type_error(cfg, path, "an array of strings", arr);
	size_t i;
	const json_t *w;
	json_array_foreach(arr, i, w) {
		if (!json_is_string(w)) {
			snprintf(path, sizeof(path), "%s.options[%zu]", jpath, i);
			if (type_error(cfg, path, "a string", w) < 0)
				return -1;
			continue;
		}
		char **opts = array_grow(m->options, m->n_options, sizeof(*opts));
		if (!opts)
			return -1;
		m->options = opts;
		if (!(opts[m->n_options] = strdup(json_string_value(w))))
			return -1;
		m->n_options++;
	}
	return hints_options_parse((const char *const *)m->options, m->n_options, &m->opts);
}

/* One element of "mounts". Mounts without a usable destination are not
 * kept: every kept mount has one, so users never see a NULL destination. */
static int parse_mount(struct hints_config *cfg, const json_t *v, size_t idx)
{
	char jpath[48];
	snprintf(jpath, sizeof(jpath), "$.mounts[%zu]", idx);
	if (!json_is_object(v))
		return type_error(cfg, jpath, "an object", v);

	struct hints_mount m = { 0 };
	bool ok = true;
	enum field f = get_string(cfg, v, jpath, "destination", true, &m.destination);
	if (f == FIELD_ABSENT && missing_error(cfg, jpath, "destination", "a string") < 0)
		f = FIELD_OOM;
	ok = f == FIELD_OK;
	if (f != FIELD_OOM)
		f = get_string(cfg, v, jpath, "type", false, &m.type);
	if (f != FIELD_OOM)
		f = get_string(cfg, v, jpath, "source", false, &m.source);
	if (f == FIELD_OOM)
		goto oom;
	const json_t *opts = json_object_get(v, "options");
	if (opts && parse_mount_options(cfg, opts, jpath, &m) < 0)
		goto oom;
	if (!ok) {
		mount_free(&m);
		return 0;
	}
	struct hints_mount *mounts = array_grow(cfg->mounts, cfg->n_mounts, sizeof(*mounts));
	if (!mounts)
		goto oom;
	cfg->mounts = mounts;
	mounts[cfg->n_mounts++] = m;
	return 0;
oom:
	mount_free(&m);
	return -1;
}

static int parse_mounts(struct hints_config *cfg, const json_t *arr)
{
	if (!json_is_array(arr))
		return type_error(cfg, "$.mounts", "an array", arr);
	size_t i;
	const json_t *v;
	json_array_foreach(arr, i, v) {
		if (parse_mount(cfg, v, i) < 0)
			return -1;
	}
	return 0;
}

static int parse_root(struct hints_config *cfg, const json_t *root)
{
	if (!json_is_object(root))
		return type_error(cfg, "$.root", "an object", root);
	enum field f = get_string(cfg, root, "$.root", "path", true, &cfg->root_path);
	if (f == FIELD_OOM)
		return -1;
	if (f == FIELD_ABSENT && missing_error(cfg, "$.root", "path", "a string") < 0)
		return -1;
	const json_t *ro = json_object_get(root, "readonly");
	if (ro && !json_is_boolean(ro) && type_error(cfg, "$.root.readonly", "a boolean", ro) < 0)
		return -1;
	cfg->root_readonly = ro && json_is_true(ro);
	cfg->has_root = f == FIELD_OK;
	return 0;
}

/* Collect the string annotations (in document order) and hand them to the
 * mount hint rules, which do not need to know about JSON. */
static int parse_annotations(struct hints_config *cfg, json_t *obj)
{
	if (!json_is_object(obj))
		return type_error(cfg, "$.annotations", "an object", obj);
	size_t n = json_object_size(obj), k = 0;
	const char **keys = calloc(n ? n : 1, sizeof(*keys));
	const char **vals = calloc(n ? n : 1, sizeof(*vals));
	int rc = -1;
	if (!keys || !vals)
		goto out;
	const char *key;
	json_t *v;
	json_object_foreach(obj, key, v) {
		if (json_is_string(v)) {
			keys[k] = key;
			vals[k++] = json_string_value(v);
			continue;
		}
		struct strbuf sb = STRBUF_INIT;
		sb_add_clean(&sb, cfg->path);
		sb_adds(&sb, ": $.annotations[");
		sb_addq(&sb, key);
		sb_addf(&sb, "]: expected a string, got %s", json_type_name(v));
		if (diag_add(cfg, HINTS_ERROR, &sb) < 0)
			goto out;
	}
	rc = hints_from_annotations(cfg, keys, vals, k);
out:
	free(keys);
	free(vals);
	return rc;
}

static int parse_document(struct hints_config *cfg, json_t *doc)
{
	if (!json_is_object(doc))
		return type_error(cfg, "$", "an object (an OCI runtime spec)", doc);
	json_t *v;
	if ((v = json_object_get(doc, "mounts")) && parse_mounts(cfg, v) < 0)
		return -1;
	if ((v = json_object_get(doc, "root")) && parse_root(cfg, v) < 0)
		return -1;
	if ((v = json_object_get(doc, "annotations")) && parse_annotations(cfg, v) < 0)
		return -1;
	return 0;
}

static struct hints_config *config_new(const char *name)
{
	struct hints_config *cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return NULL;
	cfg->path = strdup(name);
	if (!cfg->path) {
		free(cfg);
		return NULL;
	}
	return cfg;
}

struct hints_config *hints_config_parse(const char *text, size_t len, const char *name)
{
	struct hints_config *cfg = config_new(name);
	if (!cfg)
		return NULL;
	json_error_t jerr;
	/* Duplicate keys are rejected: with them, which value counts would
	 * depend on the parser, and a hint could silently change. */
	json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	int rc;
	if (!doc) {
		struct strbuf sb = STRBUF_INIT;
		sb_add_clean(&sb, cfg->path);
		sb_addf(&sb, ": invalid JSON at line %d, column %d: ", jerr.line, jerr.column);
		sb_add_clean(&sb, jerr.text);
		rc = diag_add(cfg, HINTS_ERROR, &sb);
	} else {
		rc = parse_document(cfg, doc);
		json_decref(doc);
	}
	if (rc < 0) {
		hints_config_free(cfg);
		return NULL;
	}
	return cfg;
}

/* Read the whole file; on failure a diag is added to cfg and *text is NULL. */
static int read_file(struct hints_config *cfg, const char *path, char **text, size_t *len)
{
	*text = NULL;
	const char *why = NULL;
	int err = 0;
	struct strbuf buf = STRBUF_INIT;
	FILE *f = fopen(path, "rb");
	if (!f) {
		err = errno;
	} else {
		char chunk[65536];
		size_t n;
		while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
			sb_addn(&buf, chunk, n);
			if (buf.len > CONFIG_MAX_BYTES) {
				why = "larger than 64 MiB, not a config.json";
				break;
			}
		}
		if (!why && ferror(f))
			err = errno ? errno : EIO;
		fclose(f);
	}
	if (err || why) {
		sb_release(&buf);
		struct strbuf sb = STRBUF_INIT;
		sb_add_clean(&sb, cfg->path);
		sb_addf(&sb, ": cannot read: %s", why ? why : strerror(err));
		return diag_add(cfg, HINTS_ERROR, &sb);
	}
	*len = buf.len;
	*text = sb_take(&buf);
	return *text ? 0 : -1;
}

struct hints_config *hints_config_load(const char *path)
{
	struct hints_config *probe = config_new(path);
	if (!probe)
		return NULL;
	char *text;
	size_t len = 0;
	if (read_file(probe, path, &text, &len) < 0) {
		hints_config_free(probe);
		return NULL;
	}
	if (!text)
		return probe;   /* carries the read error */
	hints_config_free(probe);
	struct hints_config *cfg = hints_config_parse(text, len, path);
	free(text);
	return cfg;
}

void hints_config_free(struct hints_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->n_mounts; i++)
		mount_free(&cfg->mounts[i]);
	free(cfg->mounts);
	for (size_t i = 0; i < cfg->n_hints; i++) {
		free(cfg->hints[i].name);
		free(cfg->hints[i].source);
		hints_options_free(&cfg->hints[i].opts);
	}
	free(cfg->hints);
	for (size_t i = 0; i < cfg->n_diags; i++)
		free(cfg->diags[i].msg);
	free(cfg->diags);
	free(cfg->root_path);
	free(cfg->path);
	free(cfg);
}

const struct hints_hint *hints_find_hint(const struct hints_config *cfg, const char *source)
{
	if (!source)
		return NULL;
	for (size_t i = 0; i < cfg->n_hints; i++)
		if (strcmp(cfg->hints[i].source, source) == 0)
			return &cfg->hints[i];
	return NULL;
}

const struct hints_mount *hints_find_mount(const struct hints_config *cfg, const char *destination)
{
	const struct hints_mount *found = NULL;
	for (size_t i = 0; i < cfg->n_mounts; i++)
		if (strcmp(cfg->mounts[i].destination, destination) == 0)
			found = &cfg->mounts[i];
	return found;
}
