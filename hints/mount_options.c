/* mount_options.c - the fstab/OCI mount option table.
 *
 * The same words containerd's parseMountOptions knows, with its semantics:
 * words apply left to right so the later word wins ("ro,rw" is rw), words the
 * table does not know are filesystem data, and mount propagation words are
 * dropped because they describe the mount tree, not the filesystem.
 *
 * It is the daemon's table of mount flag words too (fs/options.c), so that a
 * word means the same on memoverlay's command line and in a config.json.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const struct hints_opt_word opt_table[] = {
	{ "async",         true,  HINTS_OPT_SYNC },
	{ "atime",         true,  HINTS_OPT_NOATIME },
	{ "bind",          false, HINTS_OPT_BIND },
	/* fstab's placeholder: the kernel defaults, so it changes nothing. */
	{ "defaults",      false, 0 },
	{ "dev",           true,  HINTS_OPT_NODEV },
	{ "diratime",      true,  HINTS_OPT_NODIRATIME },
	{ "dirsync",       false, HINTS_OPT_DIRSYNC },
	{ "exec",          true,  HINTS_OPT_NOEXEC },
	{ "mand",          false, HINTS_OPT_MAND },
	{ "noatime",       false, HINTS_OPT_NOATIME },
	{ "nodev",         false, HINTS_OPT_NODEV },
	{ "nodiratime",    false, HINTS_OPT_NODIRATIME },
	{ "noexec",        false, HINTS_OPT_NOEXEC },
	{ "nomand",        true,  HINTS_OPT_MAND },
	{ "norelatime",    true,  HINTS_OPT_RELATIME },
	{ "nostrictatime", true,  HINTS_OPT_STRICTATIME },
	{ "nosuid",        false, HINTS_OPT_NOSUID },
	{ "rbind",         false, HINTS_OPT_BIND | HINTS_OPT_REC },
	{ "relatime",      false, HINTS_OPT_RELATIME },
	{ "remount",       false, HINTS_OPT_REMOUNT },
	{ "ro",            false, HINTS_OPT_RDONLY },
	{ "rw",            true,  HINTS_OPT_RDONLY },
	{ "strictatime",   false, HINTS_OPT_STRICTATIME },
	{ "suid",          true,  HINTS_OPT_NOSUID },
	{ "sync",          false, HINTS_OPT_SYNC },
};

static const char *const propagation_words[] = {
	"shared", "rshared", "slave", "rslave",
	"private", "rprivate", "unbindable", "runbindable",
};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

const struct hints_opt_word *hints_option_lookup(const char *word)
{
	for (size_t i = 0; i < ARRAY_LEN(opt_table); i++)
		if (strcmp(opt_table[i].word, word) == 0)
			return &opt_table[i];
	return NULL;
}

unsigned hints_option_apply(unsigned flags, const struct hints_opt_word *w)
{
	return w->clear ? flags & ~w->flag : flags | w->flag;
}

const char *hints_option_word(unsigned flag, bool clear)
{
	for (size_t i = 0; i < ARRAY_LEN(opt_table); i++)
		if (opt_table[i].flag == flag && opt_table[i].clear == clear)
			return opt_table[i].word;
	return NULL;
}

bool hints_option_is_flag(const char *word)
{
	return hints_option_lookup(word) != NULL;
}

bool hints_option_is_propagation(const char *word)
{
	for (size_t i = 0; i < ARRAY_LEN(propagation_words); i++)
		if (strcmp(propagation_words[i], word) == 0)
			return true;
	return false;
}

/* Apply one word; len bounds it so the CSV parser need not copy. */
static int options_apply(struct hints_options *opts, const char *word, size_t len)
{
	char *w = strndup(word, len);
	if (!w)
		return -1;
	const struct hints_opt_word *ow = hints_option_lookup(w);
	if (ow) {
		opts->flags = hints_option_apply(opts->flags, ow);
		free(w);
		return 0;
	}
	if (hints_option_is_propagation(w)) {
		free(w);
		return 0;
	}
	char **data = array_grow(opts->data, opts->n_data, sizeof(*data));
	if (!data) {
		free(w);
		return -1;
	}
	opts->data = data;
	data[opts->n_data++] = w;
	return 0;
}

int hints_options_parse(const char *const *words, size_t n, struct hints_options *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < n; i++) {
		if (options_apply(out, words[i], strlen(words[i])) < 0) {
			hints_options_free(out);
			return -1;
		}
	}
	return 0;
}

int hints_options_parse_csv(const char *csv, struct hints_options *out)
{
	memset(out, 0, sizeof(*out));
	const char *p = csv;
	while (*p) {
		size_t len = strcspn(p, ",");
		if (len > 0 && options_apply(out, p, len) < 0) {
			hints_options_free(out);
			return -1;
		}
		p += len;
		if (*p == ',')
			p++;
	}
	return 0;
}

void hints_options_free(struct hints_options *opts)
{
	for (size_t i = 0; i < opts->n_data; i++)
		free(opts->data[i]);
	free(opts->data);
	memset(opts, 0, sizeof(*opts));
}
