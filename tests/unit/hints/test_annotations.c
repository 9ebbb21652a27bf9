/* test_annotations.c - the gVisor mount hint rules, one fixture per rule. */
#include "fixture.h"

#define E HINTS_ERROR
#define W HINTS_WARNING
#define END ((const char *)NULL)

static const struct hints_hint *hint_named(const struct hints_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_hints; i++)
		if (strcmp(cfg->hints[i].name, name) == 0)
			return &cfg->hints[i];
	return NULL;
}

static void test_pod(void)
{
	struct hints_config *cfg = load_fixture("pod.json");
	const struct hints_hint *h = hints_find_hint(cfg, "/host/data");
	ok(h && strcmp(h->name, "data") == 0, "hint found by its source");
	if (h) {
		is_int(h->type, HINTS_TYPE_BIND, "data: type bind");
		is_int(h->share, HINTS_SHARE_CONTAINER, "data: share container");
		is_int(h->lifecycle, HINTS_LIFECYCLE_POD, "data: lifecycle pod");
		is_int(h->opts.flags, HINTS_OPT_NOEXEC, "data: options rw,noexec; rshared dropped");
		is_int(h->opts.n_data, 0, "data: propagation word is not kept as data");
	}
	h = hint_named(cfg, "scratch");
	ok(h && h->type == HINTS_TYPE_TMPFS && h->share == HINTS_SHARE_POD, "scratch: tmpfs, pod");
	ok(hints_find_hint(cfg, "/nope") == NULL && hints_find_hint(cfg, NULL) == NULL,
	   "no hint for other sources or none");
	ok(hint_named(cfg, "container-type") == NULL, "other annotations are not hints");
	hints_config_free(cfg);
}

static void test_key_shape(void)
{
	struct hints_config *cfg = load_fixture("hint_key_parts.json");
	is_int(cfg->n_errors, 4, "hint_key_parts.json: four bad keys, four errors");
	ok(find_diag(cfg, E, "hint_key_parts.json", "$.annotations[\"dev.gvisor.spec.mount.a.b.source\"]",
		     "must be dev.gvisor.spec.mount.<name>.<field>", "got 3 parts", END),
	   "three parts after the prefix is an error naming the key");
	ok(find_diag(cfg, E, "[\"dev.gvisor.spec.mount.nofield\"]", "got 1 part after", END),
	   "one part after the prefix is an error");
	ok(find_diag(cfg, E, "[\"dev.gvisor.spec.mount.\"]", "got 1 part after", END),
	   "nothing after the prefix is an error");
	ok(find_diag(cfg, E, "[\"dev.gvisor.spec.mount..source\"]", "empty mount hint name", END),
	   "an empty name is an error");
	ok(!find_diag(cfg, E, "mountain", END) && !find_diag(cfg, W, "mountain", END),
	   "a key that only looks like the prefix is not a hint");
	is_int(cfg->n_hints, 0, "no hint survives");
	ok(all_one_line(cfg), "messages are one line");
	hints_config_free(cfg);
}

static void test_bad_values(void)
{
	struct hints_config *cfg = load_fixture("hint_bad_values.json");
	is_int(cfg->n_errors, 0, "bad values and unknown fields are not errors");
	ok(find_diag(cfg, W, "[\"dev.gvisor.spec.mount.t.type\"]", "ignoring type \"nfs\"",
		     "(expected tmpfs or bind)", END), "a bad type warns, naming the value");
	ok(find_diag(cfg, W, "[\"dev.gvisor.spec.mount.t.share\"]", "ignoring share \"everyone\"",
		     "(expected container, pod or shared)", END), "a bad share warns");
	ok(find_diag(cfg, W, "[\"dev.gvisor.spec.mount.t.lifecycle\"]",
		     "ignoring lifecycle \"forever\"", "(expected container, pod or shared)", END),
	   "a bad lifecycle warns");
	ok(find_diag(cfg, W, "[\"dev.gvisor.spec.mount.u.source\"]", "ignoring an empty source", END),
	   "an empty source warns");
	ok(find_diag(cfg, W, "[\"dev.gvisor.spec.mount.v.color\"]",
		     "ignoring unknown mount hint field \"color\"", END), "an unknown field warns");
	ok(find_diag(cfg, W, "[\"dev.gvisor.spec.mount.v.\"]",
		     "ignoring unknown mount hint field \"\"", END), "an empty field warns");
	ok(find_diag(cfg, W, "mount hint \"t\": dropped, missing share, type", END),
	   "t lost share and type to bad values and is dropped");
	ok(find_diag(cfg, W, "mount hint \"u\": dropped, missing source", END),
	   "u lost its source to the empty value and is dropped");
	is_int(cfg->n_hints, 1, "only v survives");
	const struct hints_hint *v = hint_named(cfg, "v");
	ok(v && v->type == HINTS_TYPE_BIND && v->share == HINTS_SHARE_CONTAINER &&
	   v->lifecycle == HINTS_LIFECYCLE_SHARED, "v keeps its good fields despite the bad ones");
	ok(v && v->opts.flags == HINTS_OPT_RDONLY && v->opts.n_data == 1 &&
	   strcmp(v->opts.data[0], "size=5m") == 0, "v options: ro, data size=5m, rshared dropped");
	hints_config_free(cfg);
}

static void test_missing_fields(void)
{
	struct hints_config *cfg = load_fixture("hint_missing_fields.json");
	is_int(cfg->n_errors, 0, "incomplete hints are not errors");
	ok(find_diag(cfg, W, "hint_missing_fields.json: mount hint \"noshare\": dropped, missing share",
		     END), "a hint without share is dropped with a warning");
	ok(find_diag(cfg, W, "mount hint \"onlyshare\": dropped, missing source, type", END),
	   "a hint without source and type is dropped with a warning naming both");
	is_int(cfg->n_hints, 1, "the complete hint stays");
	ok(hints_find_hint(cfg, "/g") && hints_find_hint(cfg, "/a") == NULL,
	   "dropped hints match nothing");
	ok(hint_named(cfg, "good") && hint_named(cfg, "good")->lifecycle == HINTS_LIFECYCLE_CONTAINER,
	   "lifecycle container read");
	hints_config_free(cfg);
}

static void test_duplicate_source(void)
{
	struct hints_config *cfg = load_fixture("hint_duplicate_source.json");
	is_int(cfg->n_errors, 1, "one duplicate, one error");
	ok(find_diag(cfg, E, "hint_duplicate_source.json: mount hints \"first\" and \"second\" "
			     "have the same source \"/same\"", END),
	   "the error names both hints and the source");
	hints_config_free(cfg);
}

static void test_lifecycles(void)
{
	struct hints_config *cfg = load_fixture("hint_lifecycles.json");
	is_int(cfg->n_diags, 0, "lifecycle fixture is clean");
	ok(hint_named(cfg, "dflt") && hint_named(cfg, "dflt")->lifecycle == HINTS_LIFECYCLE_SHARED,
	   "lifecycle defaults to shared");
	ok(hint_named(cfg, "pod") && hint_named(cfg, "pod")->lifecycle == HINTS_LIFECYCLE_POD,
	   "lifecycle pod");
	ok(hint_named(cfg, "shr") && hint_named(cfg, "shr")->lifecycle == HINTS_LIFECYCLE_SHARED,
	   "lifecycle shared");
	hints_config_free(cfg);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		fixture_dir = argv[1];
	test_pod();
	test_key_shape();
	test_bad_values();
	test_missing_fields();
	test_duplicate_source();
	test_lifecycles();
	return tap_done();
}
