/* top_cipher.c: the demo cipher (see top_cipher.h). */
#include "top_cipher.h"

#include <errno.h>

int top_cipher_init(top_cipher *c, const uint8_t *key, size_t keylen)
{
  if (!key || keylen == 0)
    return -EINVAL;
  c->key = key;
  c->keylen = keylen;
  c->i = 0;
  return 0;
}

void top_cipher_apply(top_cipher *c, uint8_t *p, size_t n)
{
  uint64_t i = c->i;
  for (size_t k = 0; k < n; k++, i++)
    p[k] ^= c->key[i % c->keylen] ^ (uint8_t)(i * 7 + 13);
  c->i = i;
}

void top_cipher_frame(top_cipher *c, uint8_t *frame, size_t len)
{
  if (len > TOP_CIPHER_CLEAR)
    top_cipher_apply(c, frame + TOP_CIPHER_CLEAR, len - TOP_CIPHER_CLEAR);
}
