/* SPDX-License-Identifier: Apache-2.0 */
/* cow.c: the byte ranges of a lazily copied-up file that are in the
 * filestore (see cow.h). */
#include "cow.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void cow_init(struct cow_map *m)
{
	*m = (struct cow_map){ 0 };
}

void cow_reset(struct cow_map *m)
{
	free(m->up);
	cow_init(m);
}

int cow_reserve(struct cow_map *m)
{
	if (m->lower_end == 0 || m->n < m->cap) /* unused map: cow_mark does nothing */
		return 0;
	size_t cap = m->cap ? 2 * m->cap : 4;
	struct cow_range *up = realloc(m->up, cap * sizeof(*up));
	if (!up)
		return -ENOMEM;
	m->up = up;
	m->cap = cap;
	return 0;
}

/* First range whose end is >= pos (touching counts: it merges). */
static size_t first_ending_at_or_after(const struct cow_map *m, uint64_t pos)
{
	size_t lo = 0, hi = m->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->up[mid].b < pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* First range that starts after pos. */
static size_t first_starting_after(const struct cow_map *m, uint64_t pos)
{
	size_t lo = 0, hi = m->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->up[mid].a <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Nothing left to read from the lower file: the map has done its job. */
static void reset_if_complete(struct cow_map *m)
{
	if (m->lower_end == 0 || (m->n == 1 && m->up[0].a == 0 && m->up[0].b >= m->lower_end))
		cow_reset(m);
}

void cow_mark(struct cow_map *m, uint64_t a, uint64_t b)
{
	if (b > m->lower_end)
		b = m->lower_end;
	if (a >= b)
		return;
	size_t i = first_ending_at_or_after(m, a);
	size_t j = first_starting_after(m, b);
	if (i == j) { /* touches nothing: a new range (cow_reserve made room) */
		memmove(&m->up[i + 1], &m->up[i], (m->n - i) * sizeof(*m->up));
		m->up[i] = (struct cow_range){ a, b };
		m->n++;
	} else {
		struct cow_range r = { m->up[i].a < a ? m->up[i].a : a,
				       m->up[j - 1].b > b ? m->up[j - 1].b : b };
		m->up[i] = r;
		memmove(&m->up[i + 1], &m->up[j], (m->n - j) * sizeof(*m->up));
		m->n -= j - i - 1;
	}
	reset_if_complete(m);
}

void cow_truncate(struct cow_map *m, uint64_t size)
{
	if (size >= m->lower_end)
		return;
	m->lower_end = size;
	if (size)
		m->n = first_starting_after(m, size - 1); /* keep ranges that start below size */
	if (m->n && m->up[m->n - 1].b > size)
		m->up[m->n - 1].b = size;
	reset_if_complete(m);
}

uint64_t cow_span(const struct cow_map *m, uint64_t pos, bool *lower)
{
	if (pos >= m->lower_end) {
		*lower = false;
		return UINT64_MAX;
	}
	size_t i = first_ending_at_or_after(m, pos + 1); /* first range with b > pos */
	if (i < m->n && m->up[i].a <= pos) {
		*lower = false;
		return m->up[i].b;
	}
	*lower = true;
	return i < m->n ? m->up[i].a : m->lower_end;
}

uint64_t cow_lower_bytes(const struct cow_map *m)
{
	uint64_t up = 0;
	for (size_t k = 0; k < m->n; k++)
		up += m->up[k].b - m->up[k].a;
	return m->lower_end - up;
}

bool cow_fragmented(const struct cow_map *m)
{
	return m->n > (m->max_ranges ? m->max_ranges : COW_MAX_RANGES);
}

void cow_backoff(struct cow_map *m)
{
	m->max_ranges = 2 * (m->n > COW_MAX_RANGES ? m->n : COW_MAX_RANGES);
}
