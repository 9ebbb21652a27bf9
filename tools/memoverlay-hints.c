/* memoverlay-hints - inspect the mount hints of an OCI config.json.
 *
 *   memoverlay-hints check CONFIG.json [--json]
 *       every hint, the spec mounts it matches, the decision for each and any
 *       incompatibility, as a table (or JSON).
 *   memoverlay-hints plan CONFIG.json [--root] [--with-hints]
 *       the mount.fuse3 command for every mount that should be overlaid, as
 *       a shell script: one command per line, everything else a # comment.
 *
 * Exit status: 0 valid, 1 invalid (every problem on stderr, one per line),
 * 2 usage. All the rules live in libhints; this file only gathers host facts
 * (stat/statfs of sources) and prints.
 */
#include <stdarg.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>

#include <jansson.h>

#include "version.h"
#include "hints.h"

#define EXIT_INVALID 1
#define EXIT_USAGE 2

static const char usage_text[] =
	"usage: memoverlay-hints check CONFIG.json [--json]\n"
	"       memoverlay-hints plan CONFIG.json [--root] [--with-hints]\n"
	"\n"
	"check  list every mount hint, the spec mounts it matches, the decision\n"
	"       (overlay with memoverlay / shared tmpfs / plain bind) and any\n"
	"       incompatibility; --json for machine-readable output.\n"
	"plan   print the mount.fuse3 ... -t memoverlay command for each mount to\n"
	"       overlay; --root adds the root when it is writable, --with-hints\n"
	"       passes hints=CONFIG,hint_mount=DEST so the daemon re-checks.\n"
	"exit   0 valid, 1 invalid (problems on stderr), 2 usage\n";

struct args {
	const char *cmd;
	const char *config;
	bool json, root, with_hints;
};

/* One row of the report: a spec mount with everything decided about it. */
struct verdict {
	const struct hints_mount *mount;
	const struct hints_hint *hint;
	enum hints_mount_class cls;
	enum hints_decision decision;
	enum hints_access access;
	unsigned violated;          /* HINTS_COMPAT_* */
};

struct report {
	struct hints_config *cfg;
	struct verdict *v;          /* one per cfg->mounts[] */
	char **problems;            /* extra errors found here (compat, plan) */
	size_t n_problems;
	char *bundle;               /* directory of the config: relative paths */
};

static void die_oom(void)
{
	fputs("memoverlay-hints: out of memory\n", stderr);
	exit(EXIT_INVALID);
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	va_start(ap, fmt);
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		die_oom();
	return s;
}

static void add_problem(struct report *r, char *msg)
{
	char **p = realloc(r->problems, (r->n_problems + 1) * sizeof(*p));
	if (!p || !msg)
		die_oom();
	r->problems = p;
	p[r->n_problems++] = msg;
}

/* Printable copy for the table: control characters would break the line. */
static char *printable(const char *s)
{
	char *out = strdup(s ? s : "-");
	if (!out)
		die_oom();
	for (char *p = out; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return out;
}

/* Relative sources and root paths are relative to the bundle directory. */
static char *bundle_path(const struct report *r, const char *path)
{
	if (path[0] == '/')
		return xasprintf("%s", path);
	return xasprintf("%s/%s", r->bundle, path);
}

static struct hints_host_facts host_facts(const struct report *r, const char *source)
{
	struct hints_host_facts f = { false, false };
	if (!source)
		return f;
	char *p = bundle_path(r, source);
	struct stat st;
	struct statfs sfs;
	if (stat(p, &st) == 0)
		f.source_is_regular = S_ISREG(st.st_mode);
	if (statfs(p, &sfs) == 0)
		f.source_on_tmpfs = sfs.f_type == TMPFS_MAGIC;
	free(p);
	return f;
}

static void report_build(struct report *r)
{
	struct hints_config *cfg = r->cfg;
	char *copy = strdup(cfg->path);
	char dir[PATH_MAX];
	if (!copy)
		die_oom();
	r->bundle = realpath(dirname(copy), dir) ? xasprintf("%s", dir)
						  : xasprintf("%s", dirname(copy));
	free(copy);
	r->v = calloc(cfg->n_mounts ? cfg->n_mounts : 1, sizeof(*r->v));
	if (!r->v)
		die_oom();
	for (size_t i = 0; i < cfg->n_mounts; i++) {
		struct verdict *v = &r->v[i];
		const struct hints_mount *m = &cfg->mounts[i];
		struct hints_host_facts facts = host_facts(r, m->source);
		v->mount = m;
		v->hint = hints_find_hint(cfg, m->source);
		v->cls = hints_classify_mount(m, &facts);
		v->decision = hints_decide(v->hint, m, v->cls);
		v->access = hints_mount_access(v->hint, v->cls);
		if (!v->hint)
			continue;
		v->violated = hints_check_compatible(&v->hint->opts, &m->opts);
		for (unsigned rule = 1; rule <= HINTS_COMPAT_NOSUID; rule <<= 1) {
			if (!(v->violated & rule))
				continue;
			char *msg = hints_compat_message(m->destination, v->hint, rule);
			if (!msg)
				die_oom();
			add_problem(r, xasprintf("%s: %s", cfg->path, msg));
			free(msg);
		}
	}
}

static void report_free(struct report *r)
{
	for (size_t i = 0; i < r->n_problems; i++)
		free(r->problems[i]);
	free(r->problems);
	free(r->v);
	free(r->bundle);
	hints_config_free(r->cfg);
}

static size_t n_errors(const struct report *r)
{
	return r->cfg->n_errors + r->n_problems;
}

/* Warnings and errors to stderr, one per line; errors last so they end the
 * output a user reads. */
static void print_problems(const struct report *r)
{
	for (size_t i = 0; i < r->cfg->n_diags; i++)
		if (r->cfg->diags[i].severity == HINTS_WARNING)
			fprintf(stderr, "warning: %s\n", r->cfg->diags[i].msg);
	for (size_t i = 0; i < r->cfg->n_diags; i++)
		if (r->cfg->diags[i].severity == HINTS_ERROR)
			fprintf(stderr, "error: %s\n", r->cfg->diags[i].msg);
	for (size_t i = 0; i < r->n_problems; i++)
		fprintf(stderr, "error: %s\n", r->problems[i]);
}

/* Canonical option words for a flag set plus data words, comma-joined. */
static char *options_words(const struct hints_options *o)
{
	static const struct { unsigned flag; const char *word; } words[] = {
		{ HINTS_OPT_RDONLY, "ro" }, { HINTS_OPT_NOSUID, "nosuid" },
		{ HINTS_OPT_NODEV, "nodev" }, { HINTS_OPT_NOEXEC, "noexec" },
		{ HINTS_OPT_SYNC, "sync" }, { HINTS_OPT_REMOUNT, "remount" },
		{ HINTS_OPT_MAND, "mand" }, { HINTS_OPT_DIRSYNC, "dirsync" },
		{ HINTS_OPT_NOATIME, "noatime" }, { HINTS_OPT_NODIRATIME, "nodiratime" },
		{ HINTS_OPT_REC, "rbind" }, { HINTS_OPT_BIND, "bind" },
		{ HINTS_OPT_RELATIME, "relatime" }, { HINTS_OPT_STRICTATIME, "strictatime" },
	};
	char *out = xasprintf("%s", "");
	unsigned flags = o->flags;
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		if (!(flags & words[i].flag))
			continue;
		if (words[i].flag == HINTS_OPT_REC)
			flags &= ~HINTS_OPT_BIND;   /* rbind already says bind */
		char *next = xasprintf("%s%s%s", out, *out ? "," : "", words[i].word);
		free(out);
		out = next;
	}
	for (size_t i = 0; i < o->n_data; i++) {
		char *next = xasprintf("%s%s%s", out, *out ? "," : "", o->data[i]);
		free(out);
		out = next;
	}
	return out;
}

/* ---- check: table ------------------------------------------------------- */

#define N_COLS 9
static const char *const col_names[N_COLS] = {
	"HINT", "SOURCE", "TYPE/SHARE/LIFECYCLE", "HINT OPTIONS", "MOUNT",
	"CLASS", "DECISION", "ACCESS", "COMPATIBLE",
};

struct table {
	char *(*cells)[N_COLS];
	size_t n_rows;
};

static void table_add(struct table *t, char *cells[N_COLS])
{
	char *(*rows)[N_COLS] = realloc(t->cells, (t->n_rows + 1) * sizeof(*rows));
	if (!rows)
		die_oom();
	t->cells = rows;
	for (int c = 0; c < N_COLS; c++) {
		rows[t->n_rows][c] = printable(cells[c]);
		free(cells[c]);
	}
	t->n_rows++;
}

static void table_print(struct table *t)
{
	size_t w[N_COLS];
	for (int c = 0; c < N_COLS; c++) {
		w[c] = strlen(col_names[c]);
		for (size_t r = 0; r < t->n_rows; r++)
			if (strlen(t->cells[r][c]) > w[c])
				w[c] = strlen(t->cells[r][c]);
	}
	for (int c = 0; c < N_COLS; c++)
		printf("%-*s%s", c + 1 < N_COLS ? (int)w[c] : 0, col_names[c],
		       c + 1 < N_COLS ? "  " : "\n");
	for (size_t r = 0; r < t->n_rows; r++) {
		for (int c = 0; c < N_COLS; c++) {
			printf("%-*s%s", c + 1 < N_COLS ? (int)w[c] : 0, t->cells[r][c],
			       c + 1 < N_COLS ? "  " : "\n");
			free(t->cells[r][c]);
		}
	}
	free(t->cells);
}

static char *compat_cell(unsigned violated)
{
	if (!violated)
		return xasprintf("yes");
	char *out = xasprintf("no:");
	for (unsigned rule = 1; rule <= HINTS_COMPAT_NOSUID; rule <<= 1) {
		if (!(violated & rule))
			continue;
		char *next = xasprintf("%s %s", out, hints_compat_rule_word(rule));
		free(out);
		out = next;
	}
	return out;
}

static void hint_cells(const struct hints_hint *h, char *cells[N_COLS])
{
	cells[0] = xasprintf("%s", h ? h->name : "-");
	cells[2] = h ? xasprintf("%s/%s/%s", hints_type_name(h->type), hints_share_name(h->share),
				 hints_lifecycle_name(h->lifecycle))
		     : xasprintf("-");
	cells[3] = h ? options_words(&h->opts) : xasprintf("-");
	if (h && !*cells[3]) {
		free(cells[3]);
		cells[3] = xasprintf("-");
	}
}

static void check_table(const struct report *r)
{
	const struct hints_config *cfg = r->cfg;
	struct table t = { NULL, 0 };
	/* Hints first, each with the spec mounts that use it. */
	for (size_t h = 0; h < cfg->n_hints; h++) {
		const struct hints_hint *hint = &cfg->hints[h];
		bool used = false;
		for (size_t i = 0; i < cfg->n_mounts; i++) {
			const struct verdict *v = &r->v[i];
			if (v->hint != hint)
				continue;
			char *cells[N_COLS];
			hint_cells(hint, cells);
			cells[1] = xasprintf("%s", hint->source);
			cells[4] = xasprintf("%s", v->mount->destination);
			cells[5] = xasprintf("%s", hints_class_name(v->cls));
			cells[6] = xasprintf("%s", hints_decision_name(v->decision));
			cells[7] = xasprintf("%s", hints_access_name(v->access));
			cells[8] = compat_cell(v->violated);
			table_add(&t, cells);
			used = true;
		}
		if (used)
			continue;
		char *cells[N_COLS];
		hint_cells(hint, cells);
		cells[1] = xasprintf("%s", hint->source);
		cells[4] = xasprintf("(no spec mount)");
		cells[5] = xasprintf("-");
		cells[6] = xasprintf("-");
		cells[7] = xasprintf("%s", hints_access_name(hints_access_type(hint)));
		cells[8] = xasprintf("-");
		table_add(&t, cells);
	}
	/* Then the spec mounts no hint speaks about. */
	for (size_t i = 0; i < cfg->n_mounts; i++) {
		const struct verdict *v = &r->v[i];
		if (v->hint)
			continue;
		char *cells[N_COLS];
		hint_cells(NULL, cells);
		cells[1] = xasprintf("%s", v->mount->source ? v->mount->source : "-");
		cells[4] = xasprintf("%s", v->mount->destination);
		cells[5] = xasprintf("%s", hints_class_name(v->cls));
		cells[6] = xasprintf("%s", hints_decision_name(v->decision));
		cells[7] = xasprintf("%s", hints_access_name(v->access));
		cells[8] = xasprintf("-");
		table_add(&t, cells);
	}
	table_print(&t);
	if (cfg->has_root)
		printf("root: %s (%s)\n", cfg->root_path,
		       cfg->root_readonly ? "read-only, not overlaid"
					  : "writable, may be overlaid as a whole: plan --root");
}

/* ---- check: JSON -------------------------------------------------------- */

static json_t *jstr_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *json_words(char *const *words, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(words[i]));
	return a;
}

static json_t *json_hint(const struct report *r, const struct hints_hint *h)
{
	/* The canonical words, as an array like a spec mount's options; data
	 * words never hold a comma (they came from a comma-split list). */
	char *opts = options_words(&h->opts);
	json_t *words = json_array();
	for (char *w = strtok(opts, ","); w; w = strtok(NULL, ","))
		json_array_append_new(words, json_string(w));
	json_t *mounts = json_array();
	for (size_t i = 0; i < r->cfg->n_mounts; i++)
		if (r->v[i].hint == h)
			json_array_append_new(mounts, json_string(r->v[i].mount->destination));
	json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:b, s:b, s:s, s:o}",
			      "name", h->name, "source", h->source,
			      "type", hints_type_name(h->type), "share", hints_share_name(h->share),
			      "lifecycle", hints_lifecycle_name(h->lifecycle), "options", words,
			      "should_overlay", hints_should_overlay(h),
			      "should_share", hints_should_share(h),
			      "access", hints_access_name(hints_access_type(h)), "mounts", mounts);
	free(opts);
	return o;
}

static json_t *json_mount(const struct verdict *v)
{
	json_t *rules = json_array();
	for (unsigned rule = 1; rule <= HINTS_COMPAT_NOSUID; rule <<= 1)
		if (v->violated & rule)
			json_array_append_new(rules, json_string(hints_compat_rule_word(rule)));
	return json_pack("{s:s, s:o, s:o, s:o, s:s, s:o, s:s, s:s, s:b, s:o}",
			 "destination", v->mount->destination,
			 "source", jstr_or_null(v->mount->source),
			 "type", jstr_or_null(v->mount->type),
			 "options", json_words(v->mount->options, v->mount->n_options),
			 "class", hints_class_name(v->cls),
			 "hint", jstr_or_null(v->hint ? v->hint->name : NULL),
			 "decision", hints_decision_name(v->decision),
			 "access", hints_access_name(v->access),
			 "compatible", v->violated == 0,
			 "violated_rules", rules);
}

static void check_json(const struct report *r)
{
	const struct hints_config *cfg = r->cfg;
	json_t *hints = json_array(), *mounts = json_array();
	json_t *warnings = json_array(), *errors = json_array();
	for (size_t i = 0; i < cfg->n_hints; i++)
		json_array_append_new(hints, json_hint(r, &cfg->hints[i]));
	for (size_t i = 0; i < cfg->n_mounts; i++)
		json_array_append_new(mounts, json_mount(&r->v[i]));
	for (size_t i = 0; i < cfg->n_diags; i++)
		json_array_append_new(cfg->diags[i].severity == HINTS_ERROR ? errors : warnings,
				      json_string(cfg->diags[i].msg));
	for (size_t i = 0; i < r->n_problems; i++)
		json_array_append_new(errors, json_string(r->problems[i]));
	json_t *root = cfg->has_root ? json_pack("{s:s, s:b}", "path", cfg->root_path,
						 "readonly", cfg->root_readonly)
				     : json_null();
	json_t *doc = json_pack("{s:s, s:b, s:o, s:o, s:o, s:o, s:o}",
				"config", cfg->path, "valid", n_errors(r) == 0, "root", root,
				"hints", hints, "mounts", mounts,
				"warnings", warnings, "errors", errors);
	char *text = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
	if (!text)
		die_oom();
	puts(text);
	free(text);
	json_decref(doc);
}

/* ---- plan ----------------------------------------------------------------- */

/* Quote a word for sh only when it needs it. */
static char *shell_quote(const char *s)
{
	static const char safe[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				   "0123456789_@%+=:,./-";
	if (*s && strspn(s, safe) == strlen(s))
		return xasprintf("%s", s);
	size_t n = 2;
	for (const char *p = s; *p; p++)
		n += *p == '\'' ? 4 : 1;
	char *out = malloc(n + 1), *o = out;
	if (!out)
		die_oom();
	*o++ = '\'';
	for (const char *p = s; *p; p++) {
		if (*p == '\'') {
			memcpy(o, "'\\''", 4);
			o += 4;
		} else {
			*o++ = *p;
		}
	}
	*o++ = '\'';
	*o = '\0';
	return out;
}

/* A value inside -o: mount.fuse3 splits on commas and memoverlay's lowerdir
 * splits on colons (escaped as "\:"). Commas and backslashes cannot be
 * carried, so they are a problem rather than a silently different path. */
static char *option_value(struct report *r, const char *what, const char *dest, const char *val,
			  bool escape_colons)
{
	bool control = false;
	for (const char *p = val; *p; p++)
		control |= (unsigned char)*p < 0x20 || *p == 0x7f;
	if (strpbrk(val, ",\\") || control) {
		char *pd = printable(dest), *pv = printable(val);
		add_problem(r, xasprintf("%s: mount \"%s\": %s \"%s\" contains a comma, a "
					 "backslash or a control character, which one mount.fuse3 -o "
					 "line cannot carry", r->cfg->path, pd, what, pv));
		free(pd);
		free(pv);
		return NULL;
	}
	char *out = malloc(2 * strlen(val) + 1), *o = out;
	if (!out)
		die_oom();
	for (const char *p = val; *p; p++) {
		if (escape_colons && *p == ':')
			*o++ = '\\';
		*o++ = *p;
	}
	*o = '\0';
	return out;
}

/* The -o words memoverlay takes, from the effective flags and the data
 * words it understands; the rest are reported as comments. */
static char *daemon_options(unsigned flags, const struct hints_mount *m, char **dropped)
{
	char *out = xasprintf("%s%s%s%s", flags & HINTS_OPT_RDONLY ? ",ro" : "",
			      flags & HINTS_OPT_NOSUID ? ",nosuid" : "",
			      flags & HINTS_OPT_NODEV ? ",nodev" : "",
			      flags & HINTS_OPT_NOEXEC ? ",noexec" : "");
	const char *atime = flags & HINTS_OPT_NOATIME ? ",noatime"
			  : flags & HINTS_OPT_STRICTATIME ? ",strictatime"
			  : flags & HINTS_OPT_RELATIME ? ",relatime" : "";
	char *next = xasprintf("%s%s", out, atime);
	free(out);
	out = next;
	*dropped = xasprintf("%s", "");
	for (size_t i = 0; m && i < m->opts.n_data; i++) {
		const char *w = m->opts.data[i];
		bool known = strncmp(w, "size=", 5) == 0 || strncmp(w, "nr_inodes=", 10) == 0;
		char **to = known ? &out : dropped;
		next = xasprintf("%s%s%s", *to, known || **to ? "," : "", w);
		free(*to);
		*to = next;
	}
	return out;
}

struct lines {
	char **v;
	size_t n;
};

static void lines_add(struct lines *l, char *line)
{
	char **v = realloc(l->v, (l->n + 1) * sizeof(*v));
	if (!v)
		die_oom();
	l->v = v;
	v[l->n++] = line;
}

/* One mount.fuse3 command; nothing is added if a path cannot be expressed.
 * with_hints: pass hints=CONFIG,hint_mount=DEST (only for hinted mounts). */
static void plan_overlay(struct report *r, bool with_hints, struct lines *out,
			 const char *dest, const char *source, unsigned flags,
			 const struct hints_mount *m)
{
	char *lower_path = bundle_path(r, source);
	char *lower = option_value(r, "source", dest, lower_path, true);
	char *dest_ok = option_value(r, "destination", dest, dest, false);
	char *extra = NULL;
	if (with_hints) {
		char abs[PATH_MAX];
		const char *cfgpath = realpath(r->cfg->path, abs) ? abs : r->cfg->path;
		char *h = option_value(r, "config path", dest, cfgpath, false);
		if (h && dest_ok)
			extra = xasprintf(",hints=%s,hint_mount=%s", h, dest_ok);
		free(h);
	}
	char *dropped;
	char *opts = daemon_options(flags, m, &dropped);
	if (*dropped) {
		char *pd = printable(dest), *pw = printable(dropped);
		lines_add(out, xasprintf("# %s: not passed to memoverlay: %s", pd, pw));
		free(pd);
		free(pw);
	}
	if (lower && dest_ok && (extra || !with_hints)) {
		char *o = xasprintf("lowerdir=%s%s%s", lower, opts, extra ? extra : "");
		char *qdest = shell_quote(dest), *qo = shell_quote(o);
		lines_add(out, xasprintf("mount.fuse3 overlay %s -o %s -t memoverlay", qdest, qo));
		free(qdest);
		free(qo);
		free(o);
	}
	free(dropped);
	free(dest_ok);
	free(extra);
	free(opts);
	free(lower);
	free(lower_path);
}

/* Why a mount gets no command, as a comment line. */
static char *plan_skip_reason(const struct verdict *v)
{
	char *dest = printable(v->mount->destination);
	char *line;
	switch (v->cls) {
	case HINTS_CLASS_SYSTEM:
		line = xasprintf("# %s: system mount, never overlaid", dest);
		break;
	case HINTS_CLASS_HOST_DEVICE:
		line = xasprintf("# %s: host device, never overlaid", dest);
		break;
	case HINTS_CLASS_EPHEMERAL:
		line = xasprintf("# %s: kubernetes empty-dir on tmpfs, ephemeral already", dest);
		break;
	default:
		if (!v->hint)
			line = xasprintf("# %s: no mount hint, mounted as the spec says", dest);
		else if (v->decision == HINTS_DECIDE_SHARED_TMPFS)
			line = xasprintf("# %s: shared tmpfs of hint \"%s\"", dest, v->hint->name);
		else
			line = xasprintf("# %s: plain bind (hint \"%s\" asks for no overlay, or read-only)",
					 dest, v->hint->name);
	}
	free(dest);
	return line;
}

static int cmd_plan(struct report *r, const struct args *a)
{
	const struct hints_config *cfg = r->cfg;
	struct lines out = { NULL, 0 };
	lines_add(&out, xasprintf("# memoverlay plan for %s", a->config));
	for (size_t i = 0; i < cfg->n_mounts; i++) {
		const struct verdict *v = &r->v[i];
		if (v->decision != HINTS_DECIDE_OVERLAY) {
			lines_add(&out, plan_skip_reason(v));
			continue;
		}
		char *dest = printable(v->mount->destination);
		lines_add(&out, xasprintf("# %s: overlay, %s access%s", dest,
					  hints_access_name(v->access),
					  v->cls == HINTS_CLASS_WATCHABLE
						  ? " (configmap/secret changes underneath)" : ""));
		free(dest);
		plan_overlay(r, a->with_hints, &out, v->mount->destination, v->mount->source,
			     hints_effective_flags(v->hint, v->mount), v->mount);
	}
	if (cfg->has_root && cfg->root_readonly) {
		lines_add(&out, xasprintf("# root: read-only, not overlaid"));
	} else if (cfg->has_root && !a->root) {
		lines_add(&out, xasprintf("# root: writable, may be overlaid as a whole with --root"));
	} else if (cfg->has_root) {
		char *root = bundle_path(r, cfg->root_path);
		lines_add(&out, xasprintf("# root: writable, overlaid as a whole"));
		plan_overlay(r, false, &out, root, root, 0, NULL);
		free(root);
	}
	int rc = n_errors(r) ? EXIT_INVALID : 0;
	if (rc)
		print_problems(r);
	for (size_t i = 0; i < out.n; i++) {
		if (!rc)
			puts(out.v[i]);
		free(out.v[i]);
	}
	free(out.v);
	if (!rc)
		for (size_t i = 0; i < cfg->n_diags; i++)
			fprintf(stderr, "warning: %s\n", cfg->diags[i].msg);
	return rc;
}

static int cmd_check(struct report *r, const struct args *a)
{
	if (a->json)
		check_json(r);
	else
		check_table(r);
	print_problems(r);
	return n_errors(r) ? EXIT_INVALID : 0;
}

static int usage(FILE *f, int rc)
{
	fputs(usage_text, f);
	return rc;
}

static bool parse_args(int argc, char **argv, struct args *a)
{
	if (argc < 2)
		return false;
	a->cmd = argv[1];
	bool check = strcmp(a->cmd, "check") == 0, plan = strcmp(a->cmd, "plan") == 0;
	if (!check && !plan)
		return false;
	for (int i = 2; i < argc; i++) {
		const char *w = argv[i];
		if (check && strcmp(w, "--json") == 0)
			a->json = true;
		else if (plan && strcmp(w, "--root") == 0)
			a->root = true;
		else if (plan && strcmp(w, "--with-hints") == 0)
			a->with_hints = true;
		else if (w[0] == '-' && w[1] != '\0') {
			fprintf(stderr, "memoverlay-hints: unknown option %s for %s\n", w, a->cmd);
			return false;
		} else if (a->config) {
			fprintf(stderr, "memoverlay-hints: unexpected argument %s\n", w);
			return false;
		} else {
			a->config = w;
		}
	}
	return a->config != NULL;
}

int main(int argc, char **argv)
{
	struct args a = { 0 };
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))
		return usage(stdout, 0);
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		puts("memoverlay-hints " MEMOVERLAY_VERSION);
		return 0;
	}
	if (!parse_args(argc, argv, &a))
		return usage(stderr, EXIT_USAGE);

	struct report r = { 0 };
	r.cfg = hints_config_load(a.config);
	if (!r.cfg)
		die_oom();
	report_build(&r);
	int rc = strcmp(a.cmd, "check") == 0 ? cmd_check(&r, &a) : cmd_plan(&r, &a);
	report_free(&r);
	return rc;
}
