/* pool.c: the buffer pool (see pool.h). */
#include "pool.h"

#include <stdlib.h>

void gw_pool_init(gw_pool *p, uint32_t buf_size, size_t max_free) {
  *p = (gw_pool){.buf_size = buf_size, .max_free = max_free};
}

void gw_pool_destroy(gw_pool *p) {
  while (p->free) {
    gw_buf *b = p->free;
    p->free = b->next_free;
    free(b);
  }
  p->nfree = 0;
}

gw_buf *gw_buf_get(gw_pool *p, size_t min_cap) {
  gw_buf *b;
  p->gets++;
  if (min_cap <= p->buf_size && p->free) {
    b = p->free;
    p->free = b->next_free;
    p->nfree--;
  } else {
    size_t cap = min_cap <= p->buf_size ? p->buf_size : min_cap;
    if (cap > UINT32_MAX) return NULL;
    b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->cap = (uint32_t)cap;
    p->allocs++;
  }
  b->next_free = NULL;
  b->refs = 1;
  b->used = 0;
  p->live++;
  return b;
}

void gw_buf_unref(gw_pool *p, gw_buf *b) {
  if (--b->refs) return;
  p->live--;
  /* Only standard-size buffers are kept; LIFO so the next get is warm. */
  if (b->cap == p->buf_size && p->nfree < p->max_free) {
    b->next_free = p->free;
    p->free = b;
    p->nfree++;
  } else {
    free(b);
  }
}
