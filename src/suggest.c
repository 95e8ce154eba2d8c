/* suggest.c: edit distance for "did you mean" (suggest.h). */
#include "suggest.h"

#include <ctype.h>
#include <stdint.h>

size_t gw_edit_distance(const char *a, size_t la, const char *b, size_t lb) {
  if (la > GW_SUGGEST_NAME_MAX || lb > GW_SUGGEST_NAME_MAX) return SIZE_MAX;
  /* three rows of the matrix: the swap looks two rows back */
  size_t rows[3][GW_SUGGEST_NAME_MAX + 1];
  size_t *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
  for (size_t j = 0; j <= lb; j++) prev[j] = j;
  for (size_t i = 1; i <= la; i++) {
    cur[0] = i;
    int ca = toupper((unsigned char)a[i - 1]);
    for (size_t j = 1; j <= lb; j++) {
      int cb = toupper((unsigned char)b[j - 1]);
      size_t best = prev[j - 1] + (ca != cb);
      if (prev[j] + 1 < best) best = prev[j] + 1;
      if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
      if (i > 1 && j > 1 && ca == toupper((unsigned char)b[j - 2]) &&
          toupper((unsigned char)a[i - 2]) == cb && prev2[j - 2] + 1 < best)
        best = prev2[j - 2] + 1;
      cur[j] = best;
    }
    size_t *t = prev2;
    prev2 = prev;
    prev = cur;
    cur = t;
  }
  return prev[lb];
}
