/* strbuf.c - growable strings and diagnostics for one-line messages. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Values longer than this are cut in messages: the message must name the
 * value, not reproduce a megabyte of it. */
#define QUOTE_LIMIT 120

static bool sb_grow(struct strbuf *sb, size_t extra)
{
	if (sb->oom)
		return false;
	if (extra >= (size_t)-1 - sb->len - 1) {
		sb->oom = true;
		return false;
	}
	size_t need = sb->len + extra + 1;
	if (need <= sb->cap)
		return true;
	size_t cap = sb->cap ? sb->cap : 64;
	while (cap < need)
		cap = cap > ((size_t)-1) / 2 ? need : cap * 2;
	char *p = realloc(sb->buf, cap);
	if (!p) {
		sb->oom = true;
		return false;
	}
	sb->buf = p;
	sb->cap = cap;
	return true;
}

void sb_addn(struct strbuf *sb, const char *s, size_t n)
{
	if (!sb_grow(sb, n))
		return;
	memcpy(sb->buf + sb->len, s, n);
	sb->len += n;
	sb->buf[sb->len] = '\0';
}

void sb_adds(struct strbuf *sb, const char *s)
{
	sb_addn(sb, s, strlen(s));
}

void sb_addf(struct strbuf *sb, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		sb->oom = true;
		return;
	}
	if (!sb_grow(sb, (size_t)n))
		return;
	va_start(ap, fmt);
	vsnprintf(sb->buf + sb->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	sb->len += (size_t)n;
}

static void sb_add_escaped_char(struct strbuf *sb, unsigned char c)
{
	switch (c) {
	case '"':  sb_adds(sb, "\\\""); break;
	case '\\': sb_adds(sb, "\\\\"); break;
	case '\n': sb_adds(sb, "\\n"); break;
	case '\t': sb_adds(sb, "\\t"); break;
	case '\r': sb_adds(sb, "\\r"); break;
	default:
		if (c < 0x20 || c == 0x7f)
			sb_addf(sb, "\\x%02x", c);
		else
			sb_addn(sb, (const char *)&c, 1);
	}
}

void sb_addq(struct strbuf *sb, const char *s)
{
	size_t len = strlen(s);
	size_t shown = len > QUOTE_LIMIT ? QUOTE_LIMIT : len;
	sb_adds(sb, "\"");
	for (size_t i = 0; i < shown; i++)
		sb_add_escaped_char(sb, (unsigned char)s[i]);
	sb_adds(sb, "\"");
	if (shown < len)
		sb_addf(sb, "... (%zu bytes)", len);
}

void sb_add_clean(struct strbuf *sb, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char out = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
		sb_addn(sb, &out, 1);
	}
}

char *sb_take(struct strbuf *sb)
{
	char *s = NULL;
	if (!sb->oom)
		s = sb->buf ? sb->buf : strdup("");
	else
		free(sb->buf);
	sb->buf = NULL;
	sb->len = sb->cap = 0;
	sb->oom = false;
	return s;
}

void sb_release(struct strbuf *sb)
{
	free(sb_take(sb));
}

void *array_grow(void *arr, size_t n, size_t elem)
{
	if (n >= ((size_t)-1) / elem - 1)
		return NULL;
	char *p = realloc(arr, (n + 1) * elem);
	if (p)
		memset(p + n * elem, 0, elem);
	return p;
}

int diag_add(struct hints_config *cfg, enum hints_severity sev, struct strbuf *sb)
{
	char *msg = sb_take(sb);
	if (!msg)
		return -1;
	struct hints_diag *diags = array_grow(cfg->diags, cfg->n_diags, sizeof(*diags));
	if (!diags) {
		free(msg);
		return -1;
	}
	cfg->diags = diags;
	struct hints_diag *d = &diags[cfg->n_diags++];
	d->severity = sev;
	d->msg = msg;
	if (sev == HINTS_ERROR)
		cfg->n_errors++;
	return 0;
}
