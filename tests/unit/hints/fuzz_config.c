/* fuzz_config.c - libFuzzer target for the config.json and option parsers.
 *
 * The input is a config.json; everything a caller may do with the result is
 * done too (decisions, compatibility, classification, messages), because a
 * parser that returns garbage crashes its users, not itself. The same bytes
 * also go through the comma-list option parser and the path cleaner.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hints.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise_mount(const struct hints_config *cfg, const struct hints_mount *m)
{
	const struct hints_hint *h = hints_find_hint(cfg, m->source);
	for (int facts = 0; facts < 4; facts++) {
		struct hints_host_facts f = { facts & 1, facts & 2 };
		enum hints_mount_class cls = hints_classify_mount(m, &f);
		(void)hints_decide(h, m, cls);
		(void)hints_mount_access(h, cls);
		(void)hints_class_name(cls);
	}
	(void)hints_effective_flags(h, m);
	if (h) {
		unsigned bad = hints_check_compatible(&h->opts, &m->opts);
		for (unsigned rule = 1; rule <= HINTS_COMPAT_NOSUID; rule <<= 1)
			if (bad & rule)
				free(hints_compat_message(m->destination, h, rule));
	}
	free(hints_path_clean(m->destination));
	if (m->source)
		free(hints_path_clean(m->source));
	if (hints_find_mount(cfg, m->destination) == NULL)
		abort();    /* every kept mount must be findable by its destination */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct hints_config *cfg = hints_config_parse((const char *)data, size, "fuzz.json");
	if (cfg) {
		for (size_t i = 0; i < cfg->n_mounts; i++)
			exercise_mount(cfg, &cfg->mounts[i]);
		for (size_t i = 0; i < cfg->n_hints; i++) {
			const struct hints_hint *h = &cfg->hints[i];
			(void)hints_should_overlay(h);
			(void)hints_should_share(h);
			(void)hints_access_type(h);
			if (hints_find_hint(cfg, h->source) == NULL)
				abort();
		}
		for (size_t i = 0; i < cfg->n_diags; i++)
			if (strchr(cfg->diags[i].msg, '\n'))
				abort();    /* messages are one line, always */
		hints_config_free(cfg);
	}

	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	struct hints_options opts;
	if (hints_options_parse_csv(text, &opts) == 0)
		hints_options_free(&opts);
	free(hints_path_clean(text));
	free(text);
	return 0;
}
