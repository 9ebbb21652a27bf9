/* test_config.c - reading config.json: mounts, root, and every input error.
 * Every error must name the file, the JSON path and what was expected. */
#include "fixture.h"

#define E HINTS_ERROR

static void test_valid(void)
{
	struct hints_config *cfg = load_fixture("pod.json");
	is_int(cfg->n_errors, 0, "pod.json has no errors");
	is_int(cfg->n_diags, 0, "pod.json has no warnings");
	is_int(cfg->n_mounts, 8, "pod.json: all 8 mounts read");
	ok(cfg->has_root && strcmp(cfg->root_path, "rootfs") == 0 && !cfg->root_readonly,
	   "root path and readonly: false read");
	const struct hints_mount *m = hints_find_mount(cfg, "/data");
	ok(m != NULL, "find mount /data");
	if (m) {
		is_str(m->source, "/host/data", "/data source");
		is_str(m->type, "bind", "/data type");
		is_int(m->n_options, 4, "/data keeps its 4 option words as written");
		is_int(m->opts.flags, HINTS_OPT_BIND | HINTS_OPT_REC | HINTS_OPT_NOEXEC,
		       "/data options parsed: rbind, noexec, rw, rprivate dropped");
	}
	m = hints_find_mount(cfg, "/dev");
	ok(m && m->opts.n_data == 2, "/dev keeps mode= and size= as data");
	ok(hints_find_mount(cfg, "/nope") == NULL, "unknown destination not found");
	is_int(cfg->n_hints, 3, "pod.json: three hints");
	hints_config_free(cfg);

	cfg = load_fixture("empty_spec.json");
	ok(cfg->n_diags == 0 && cfg->n_mounts == 0 && cfg->n_hints == 0 && !cfg->has_root,
	   "a spec without mounts, root or annotations is valid and empty");
	hints_config_free(cfg);
}

/* One fixture, one expected error made of needles. */
static void expect_error(const char *fixture, const char *what, const char *n1, const char *n2,
			 const char *n3)
{
	struct hints_config *cfg = load_fixture(fixture);
	ok(cfg->n_errors > 0, "%s: is invalid", fixture);
	const char *msg = find_diag(cfg, E, fixture, n1, n2, n3, (const char *)NULL);
	if (!ok(msg != NULL, "%s: %s", fixture, what))
		print_diags(cfg);
	ok(all_one_line(cfg), "%s: messages are one line", fixture);
	hints_config_free(cfg);
}

static void test_errors(void)
{
	expect_error("malformed.json", "invalid JSON with line and column",
		     "invalid JSON at line 1, column", "", "");
	expect_error("not_object.json", "document must be an object",
		     ": $: ", "expected an object", "got an array");
	expect_error("mounts_not_array.json", "mounts must be an array",
		     "$.mounts:", "expected an array", "got an object");
	expect_error("mount_not_object.json", "a mount must be an object",
		     "$.mounts[0]:", "expected an object", "got a number");
	expect_error("mount_no_destination.json", "missing destination",
		     "$.mounts[0]:", "missing \"destination\"", "expected a string");
	expect_error("mount_no_destination.json", "empty destination",
		     "$.mounts[1].destination:", "expected a non-empty string", "got an empty string");
	expect_error("mount_bad_types.json", "destination of the wrong type",
		     "$.mounts[0].destination:", "expected a non-empty string", "got a number");
	expect_error("mount_bad_types.json", "type of the wrong type",
		     "$.mounts[0].type:", "expected a string", "got an array");
	expect_error("mount_bad_types.json", "source of the wrong type",
		     "$.mounts[0].source:", "expected a string", "got an object");
	expect_error("mount_bad_types.json", "an option word that is not a string",
		     "$.mounts[1].options[0]:", "expected a string", "got a number");
	expect_error("mount_bad_types.json", "a null option word",
		     "$.mounts[1].options[2]:", "expected a string", "got null");
	expect_error("mount_bad_types.json", "options that are not an array",
		     "$.mounts[2].options:", "expected an array of strings", "got a string");
	expect_error("annotations_not_object.json", "annotations must be an object",
		     "$.annotations:", "expected an object", "got an array");
	expect_error("annotation_not_string.json", "a hint annotation value must be a string",
		     "$.annotations[\"dev.gvisor.spec.mount.a.source\"]:", "expected a string",
		     "got a number");
	expect_error("annotation_not_string.json", "any annotation value must be a string",
		     "$.annotations[\"other\"]:", "expected a string", "got a boolean");
	expect_error("root_bad.json", "root without path",
		     "$.root:", "missing \"path\"", "");
	expect_error("root_bad.json", "root.readonly must be a boolean",
		     "$.root.readonly:", "expected a boolean", "got a string");
	expect_error("root_not_object.json", "root must be an object",
		     "$.root:", "expected an object", "got a string");
	expect_error("duplicate_keys.json", "duplicate keys are rejected",
		     "invalid JSON", "duplicate object key", "");
	expect_error("does-not-exist.json", "a missing file names the file and the reason",
		     "cannot read", "No such file or directory", "");
	expect_error(".", "a directory is not a config", "cannot read", "directory", "");

	struct hints_config *zero = hints_config_load("/dev/zero");
	ok(zero && zero->n_errors == 1 &&
	   find_diag(zero, E, "/dev/zero: cannot read: larger than 64 MiB", (char *)NULL),
	   "an endless file is refused after 64 MiB, not read forever");
	hints_config_free(zero);

	/* Mounts with errors in their optional parts are kept, minus the bad
	 * words; mounts without a destination are not. */
	struct hints_config *cfg = load_fixture("mount_bad_types.json");
	is_int(cfg->n_mounts, 2, "mount_bad_types.json: the mount without destination is skipped");
	const struct hints_mount *m = hints_find_mount(cfg, "/keep");
	ok(m && m->n_options == 2 && m->opts.flags == (HINTS_OPT_RDONLY | HINTS_OPT_NOEXEC),
	   "the good option words of a mount are kept");
	is_int(cfg->n_errors, 6, "mount_bad_types.json: every problem is listed (6)");
	hints_config_free(cfg);
}

static void test_parse_buffer(void)
{
	/* Not NUL-terminated: the parser must honour the length. */
	const char text[] = "{\"mounts\": [{\"destination\": \"/x\"}]}GARBAGE";
	struct hints_config *cfg = hints_config_parse(text, sizeof(text) - 1 - 7, "buf.json");
	ok(cfg && cfg->n_errors == 0 && cfg->n_mounts == 1, "parse a buffer by length");
	hints_config_free(cfg);

	cfg = hints_config_parse("", 0, "empty.json");
	ok(cfg && cfg->n_errors == 1 && find_diag(cfg, E, "empty.json: invalid JSON", (char *)NULL),
	   "an empty buffer is invalid JSON");
	hints_config_free(cfg);

	const char nul[] = "{\"mounts\":[{\"destination\":\"/a\\u0000b\"}]}";
	cfg = hints_config_parse(nul, sizeof(nul) - 1, "nul.json");
	ok(cfg && cfg->n_errors == 1, "a NUL inside a string is rejected, not truncated");
	hints_config_free(cfg);

	cfg = hints_config_parse("{}", 2, "bad\nname.json");
	hints_config_free(cfg);
	cfg = hints_config_parse("[]", 2, "bad\nname.json");
	ok(cfg && cfg->n_errors == 1 && all_one_line(cfg),
	   "a file name with a newline does not break the one-line message");
	hints_config_free(cfg);
}

/* Megabyte strings everywhere: parsed, and messages quote them cut short. */
static void test_huge_strings(void)
{
	size_t big = 1u << 20;
	char *s = malloc(big + 1);
	char *doc = malloc(5 * big + 512);
	if (!s || !doc) {
		printf("Bail out! out of memory\n");
		exit(1);
	}
	memset(s, 'x', big);
	s[big] = '\0';
	int n = sprintf(doc, "{\"mounts\":[{\"destination\":\"/%s\",\"source\":\"%s\","
			     "\"options\":[\"%s\"]}],\"annotations\":{"
			     "\"dev.gvisor.spec.mount.%s.share\":\"%s\"}}", s, s, s, s, s);
	struct hints_config *cfg = hints_config_parse(doc, (size_t)n, "huge.json");
	ok(cfg && cfg->n_mounts == 1 && cfg->n_errors == 0, "megabyte strings parse");
	ok(cfg && cfg->n_diags == 2, "the bad share and the incomplete hint warn");
	bool short_msgs = true;
	for (size_t i = 0; cfg && i < cfg->n_diags; i++)
		short_msgs = short_msgs && strlen(cfg->diags[i].msg) < 1024;
	ok(short_msgs, "messages quote huge values cut short");
	ok(cfg && find_diag(cfg, HINTS_WARNING, "bytes)", (char *)NULL) != NULL,
	   "a cut value says how long it was");
	hints_config_free(cfg);
	free(s);
	free(doc);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		fixture_dir = argv[1];
	test_valid();
	test_errors();
	test_parse_buffer();
	test_huge_strings();
	return tap_done();
}
