/* codec_xor.c: a repeating-key XOR codec for the pipeline, in C.
 *
 * Each call XORs its bytes with key[0], key[1], ... from the start of the
 * key: as a body codec every frame's body starts the key again, which is
 * what simple game "encryptions" do, and it is its own inverse. It is the C
 * reference for the cost of a body codec (a Lua codec does the same work
 * through two calls into Lua per frame). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pipe.h"

typedef struct xcodec {
  gw_codec base;
  size_t keylen;
  uint8_t key[];
} xcodec;

static void apply(const xcodec *x, const uint8_t *in, size_t n, uint8_t *out) {
  for (size_t i = 0, k = 0; i < n; i++) {
    out[i] = in[i] ^ x->key[k];
    if (++k == x->keylen) k = 0;
  }
}

static int x_decode(gw_codec *c, const uint8_t *in, size_t n, size_t *used, gw_bytes *out,
                    size_t max_out, char *err, size_t errlen) {
  (void)max_out, (void)err, (void)errlen;
  if (gw_bytes_reserve(out, n)) return -ENOMEM;
  apply((xcodec *)c, in, n, out->p + out->len);
  out->len += n;
  *used = n;
  return 0;
}

static int x_encode(gw_codec *c, const uint8_t *in, size_t n, gw_bytes *out, char *err,
                    size_t errlen) {
  size_t used;
  return x_decode(c, in, n, &used, out, n, err, errlen);
}

static void x_free(gw_codec *c) { free(c); }

static const gw_codec_type xor_type = {"xor", x_decode, x_encode, x_free};

gw_codec *gw_codec_xor_new(const uint8_t *key, size_t keylen) {
  if (!keylen) return NULL;
  xcodec *x = calloc(1, sizeof *x + keylen);
  if (!x) return NULL;
  x->base.type = &xor_type;
  x->keylen = keylen;
  memcpy(x->key, key, keylen);
  return &x->base;
}
