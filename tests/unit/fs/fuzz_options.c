/* fuzz_options.c - libFuzzer target for the daemon's command-line parser
 * (config_parse) and the lowerdir= splitter (lowerdir_split), fs/options.c.
 * config_parse resolves the paths it is given (realpath, an O_PATH open):
 * inputs that name existing directories get through to the end.
 *
 * Input: bytes split at NUL into an argv (after a fixed argv[0]); the same
 * bytes, as one string, also go through lowerdir_split, whose result is
 * checked: at least one layer, none empty, and escaping the layers again and
 * re-splitting gives the same layers. options.c prints a line to stderr on
 * bad input (and usage to stdout for -h); both are sent to /dev/null here so
 * the test log stays small (libFuzzer and the sanitizers write to fd 2 directly).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	FILE *null = fopen("/dev/null", "w");
	if (null) {
		stderr = null;
		stdout = null;
	}
	return 0;
}

static char *escape_layers(char **dirs, int n)
{
	size_t len = 1;
	for (int i = 0; i < n; i++)
		len += 2 * strlen(dirs[i]) + 1;
	char *s = malloc(len), *p = s;
	if (!s)
		abort();
	for (int i = 0; i < n; i++) {
		if (i)
			*p++ = ':';
		for (const char *c = dirs[i]; *c; c++) {
			if (*c == ':' || *c == '\\')
				*p++ = '\\';
			*p++ = *c;
		}
	}
	*p = '\0';
	return s;
}

static void check_split(const char *s)
{
	char **dirs = NULL;
	int n = -1;
	int r = lowerdir_split(s, &dirs, &n);
	if (r < 0)
		return;
	if (r != 0 || n < 1 || !dirs)
		abort();
	for (int i = 0; i < n; i++)
		if (!dirs[i] || dirs[i][0] == '\0')
			abort();   /* an empty layer must be refused, never returned */
	char *again = escape_layers(dirs, n);
	char **d2 = NULL;
	int n2 = -1;
	if (lowerdir_split(again, &d2, &n2) != 0 || n2 != n)
		abort();
	for (int i = 0; i < n; i++) {
		if (strcmp(dirs[i], d2[i]) != 0)
			abort();
		free(d2[i]);
		free(dirs[i]);
	}
	free(d2);
	free(dirs);
	free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 4096)
		return 0;
	char *buf = malloc(size + 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';

	check_split(buf);

	enum { MAXARGS = 32 };
	char *argv[MAXARGS + 2];
	int argc = 0;
	argv[argc++] = "memoverlay";
	for (size_t i = 0; i <= size && argc < MAXARGS + 1;) {
		argv[argc++] = buf + i;
		i += strlen(buf + i) + 1;
	}
	argv[argc] = NULL;

	struct config cfg;
	int r = config_parse(&cfg, argc, argv);
	if (r == 0) {
		/* What main() relies on after a successful parse. */
		if (cfg.nlower < 1 || !cfg.lower || !cfg.mountpoint || cfg.mountpoint[0] != '/' ||
		    !cfg.source)
			abort();
		for (int i = 0; i < cfg.nlower; i++)
			if (!cfg.lower[i].given || !cfg.lower[i].given[0] || !cfg.lower[i].path ||
			    cfg.lower[i].path[0] != '/' || cfg.lower[i].fd < 0)
				abort();
		if (cfg.max_threads < 1 || cfg.max_threads > 1024)
			abort();
		if (cfg.entry_timeout < 0 || cfg.attr_timeout < 0)
			abort();
		if (cfg.medium_dir && cfg.medium_dir[0] != '/')
			abort();
	} else if (r != -1 && r != CONFIG_HELP && r != CONFIG_VERSION) {
		abort();
	}
	config_free(&cfg);
	free(buf);
	return 0;
}
