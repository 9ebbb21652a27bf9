/* fixture.h - loading config.json fixtures and looking for diagnostics. */
#ifndef MEMOVERLAY_TEST_FIXTURE_H
#define MEMOVERLAY_TEST_FIXTURE_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hints.h"
#include "tap.h"

static const char *fixture_dir = "fixtures";

static inline struct hints_config *load_fixture(const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", fixture_dir, name);
	struct hints_config *cfg = hints_config_load(path);
	if (!cfg) {
		printf("Bail out! out of memory loading %s\n", path);
		exit(1);
	}
	return cfg;
}

/* The diag of this severity containing every NULL-terminated needle. */
static inline const char *find_diag(const struct hints_config *cfg, enum hints_severity sev, ...)
{
	for (size_t i = 0; i < cfg->n_diags; i++) {
		if (cfg->diags[i].severity != sev)
			continue;
		va_list ap;
		va_start(ap, sev);
		bool all = true;
		const char *needle;
		while ((needle = va_arg(ap, const char *)))
			all = all && strstr(cfg->diags[i].msg, needle);
		va_end(ap);
		if (all)
			return cfg->diags[i].msg;
	}
	return NULL;
}

/* Every message must be a single line, whatever the input contained. */
static inline bool all_one_line(const struct hints_config *cfg)
{
	for (size_t i = 0; i < cfg->n_diags; i++)
		if (strchr(cfg->diags[i].msg, '\n') || strchr(cfg->diags[i].msg, '\r'))
			return false;
	return true;
}

static inline void print_diags(const struct hints_config *cfg)
{
	for (size_t i = 0; i < cfg->n_diags; i++)
		printf("# %s: %s\n", cfg->diags[i].severity == HINTS_ERROR ? "error" : "warning",
		       cfg->diags[i].msg);
}

#endif
