/* internal.h - helpers shared by the libhints .c files; not installed, not
 * part of the contract (that is hints.h). */
#ifndef MEMOVERLAY_HINTS_INTERNAL_H
#define MEMOVERLAY_HINTS_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "hints.h"

/* A growable string. Allocation failure is sticky (oom) so callers can build
 * a whole message and check once, instead of after every append. */
struct strbuf {
	char *buf;
	size_t len;
	size_t cap;
	bool oom;
};
#define STRBUF_INIT { NULL, 0, 0, false }

void sb_adds(struct strbuf *sb, const char *s);
void sb_addn(struct strbuf *sb, const char *s, size_t n);
void sb_addf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a double-quoted string with control characters and quotes
 * escaped, cut after a limit: messages stay one readable line whatever the
 * input holds (a config may carry megabyte strings or newlines). */
void sb_addq(struct strbuf *sb, const char *s);
/* Append s with control characters replaced, for file names in messages. */
void sb_add_clean(struct strbuf *sb, const char *s);
/* The string (caller frees), or NULL if any append failed. Resets sb. */
char *sb_take(struct strbuf *sb);
void sb_release(struct strbuf *sb);

/* Append a diagnostic built in sb (sb is consumed). -1 on OOM. */
int diag_add(struct hints_config *cfg, enum hints_severity sev, struct strbuf *sb);

/* Return arr (n elements of size elem) regrown to n + 1 with the new slot
 * zeroed, or NULL on OOM with arr untouched. Used for every config array. */
void *array_grow(void *arr, size_t n, size_t elem);

/* mount_hints.c: turn the annotations into cfg->hints, adding diagnostics.
 * keys/values are parallel arrays in document order. -1 on OOM. */
int hints_from_annotations(struct hints_config *cfg, const char *const *keys,
			   const char *const *values, size_t n);

#endif
