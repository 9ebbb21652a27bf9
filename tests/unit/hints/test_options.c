/* test_options.c - the fstab/OCI mount option table. */
#include <stdlib.h>

#include "hints.h"
#include "tap.h"

static unsigned flags_of(const char *csv)
{
	struct hints_options o;
	if (hints_options_parse_csv(csv, &o) < 0)
		return ~0u;
	unsigned f = o.flags;
	hints_options_free(&o);
	return f;
}

static void test_each_word(void)
{
	static const struct { const char *word; unsigned set; } words[] = {
		{ "ro", HINTS_OPT_RDONLY }, { "noexec", HINTS_OPT_NOEXEC },
		{ "nosuid", HINTS_OPT_NOSUID }, { "nodev", HINTS_OPT_NODEV },
		{ "noatime", HINTS_OPT_NOATIME }, { "nodiratime", HINTS_OPT_NODIRATIME },
		{ "relatime", HINTS_OPT_RELATIME }, { "strictatime", HINTS_OPT_STRICTATIME },
		{ "sync", HINTS_OPT_SYNC }, { "dirsync", HINTS_OPT_DIRSYNC },
		{ "mand", HINTS_OPT_MAND }, { "bind", HINTS_OPT_BIND },
		{ "rbind", HINTS_OPT_BIND | HINTS_OPT_REC }, { "remount", HINTS_OPT_REMOUNT },
	};
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		is_int(flags_of(words[i].word), words[i].set, "%s sets its flag", words[i].word);

	/* Each clearing word undoes its partner, whichever flags were set. */
	static const struct { const char *csv; unsigned left; } pairs[] = {
		{ "ro,rw", 0 }, { "noexec,exec", 0 }, { "nosuid,suid", 0 }, { "nodev,dev", 0 },
		{ "noatime,atime", 0 }, { "nodiratime,diratime", 0 },
		{ "relatime,norelatime", 0 }, { "strictatime,nostrictatime", 0 },
		{ "sync,async", 0 }, { "mand,nomand", 0 },
		{ "rw,ro", HINTS_OPT_RDONLY }, { "exec,noexec", HINTS_OPT_NOEXEC },
		{ "atime,noatime", HINTS_OPT_NOATIME },
	};
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
		is_int(flags_of(pairs[i].csv), pairs[i].left, "later word wins in %s", pairs[i].csv);
}

static void test_data_and_propagation(void)
{
	struct hints_options o;
	const char *words[] = { "rshared", "size=1g", "ro", "mode=0755", "private", "defaults",
				"slave", "rslave", "rprivate", "unbindable", "runbindable",
				"shared", "uid=1000" };
	ok(hints_options_parse(words, sizeof(words) / sizeof(words[0]), &o) == 0, "parse array");
	is_int(o.flags, HINTS_OPT_RDONLY, "only ro is a flag; defaults changes nothing");
	is_int(o.n_data, 3, "unknown words are kept as filesystem data, propagation dropped");
	if (o.n_data == 3) {
		is_str(o.data[0], "size=1g", "data word 1 in order");
		is_str(o.data[1], "mode=0755", "data word 2 in order");
		is_str(o.data[2], "uid=1000", "data word 3 in order");
	}
	hints_options_free(&o);
	is_int(o.n_data, 0, "free leaves the options empty");

	ok(hints_options_parse_csv(",,noexec,,size=2m,", &o) == 0, "parse csv with empty words");
	is_int(o.flags, HINTS_OPT_NOEXEC, "empty csv words are skipped");
	is_int(o.n_data, 1, "one data word");
	hints_options_free(&o);

	ok(hints_options_parse_csv("", &o) == 0 && o.flags == 0 && o.n_data == 0, "empty csv");
	hints_options_free(&o);

	ok(hints_option_is_propagation("rshared") && hints_option_is_propagation("runbindable"),
	   "propagation words are recognised");
	ok(!hints_option_is_propagation("ro") && !hints_option_is_propagation("sharedx"),
	   "other words are not propagation");
	ok(hints_option_is_flag("defaults") && hints_option_is_flag("strictatime") &&
	   !hints_option_is_flag("size=1g") && !hints_option_is_flag("RO"),
	   "flag table membership is exact and case-sensitive");
}

/* The table as the daemon reads it (fs/options.c): one entry per word, and
 * the word back for a flag. */
static void test_lookup(void)
{
	const struct hints_opt_word *w = hints_option_lookup("rw");
	ok(w && w->clear && w->flag == HINTS_OPT_RDONLY, "rw: clears ro");
	w = hints_option_lookup("async");
	ok(w && w->clear && w->flag == HINTS_OPT_SYNC, "async: clears sync");
	ok(w && hints_option_apply(HINTS_OPT_SYNC | HINTS_OPT_RDONLY, w) == HINTS_OPT_RDONLY,
	   "apply async: sync off, the rest kept");
	w = hints_option_lookup("defaults");
	ok(w && hints_option_apply(HINTS_OPT_NOEXEC, w) == HINTS_OPT_NOEXEC,
	   "apply defaults: nothing changes");
	ok(!hints_option_lookup("size=1g") && !hints_option_lookup("shared") &&
	   !hints_option_lookup(""), "no entry for data, propagation, or an empty word");
	is_str(hints_option_word(HINTS_OPT_NOSUID, false), "nosuid", "the word that sets nosuid");
	is_str(hints_option_word(HINTS_OPT_NOSUID, true), "suid", "the word that clears it");
	is_str(hints_option_word(HINTS_OPT_RDONLY, false), "ro", "the word that sets ro");
	is_str(hints_option_word(HINTS_OPT_NOATIME, false), "noatime", "the word that sets noatime");
	ok(hints_option_word(HINTS_OPT_BIND, true) == NULL, "no word clears bind");
}

int main(void)
{
	test_each_word();
	test_data_and_propagation();
	test_lookup();
	return tap_done();
}
