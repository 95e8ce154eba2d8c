/* codec_zlib.c: a zlib (RFC 1950) stream codec for the pipeline.
 *
 * One inflate stream for the bytes read from a side and one deflate stream
 * for the bytes written toward it, as protocols that switch on compression
 * for the rest of a connection use them. Every write is flushed with
 * Z_SYNC_FLUSH, so the peer can decode each batch as soon as it arrives:
 * a game's frames cannot wait for a compression block to fill. Inflating
 * stops at max_out bytes a call, so a small input that expands hugely (a
 * "zip bomb") is framed and passed on in steps, under backpressure,
 * instead of being inflated into memory at once. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <zlib.h>

#include "pipe.h"

typedef struct zcodec {
  gw_codec base;
  z_stream in, out;
  bool in_ok, out_ok, in_end;
} zcodec;

static int z_decode(gw_codec *c, const uint8_t *in, size_t n, size_t *used, gw_bytes *out,
                    size_t max_out, char *err, size_t errlen) {
  zcodec *z = (zcodec *)c;
  *used = 0;
  if (z->in_end) {
    if (n) snprintf(err, errlen, "bytes after the end of the zlib stream");
    return n ? -EPROTO : 0;
  }
  z->in.next_in = (Bytef *)in;
  z->in.avail_in = n > UINT32_MAX ? UINT32_MAX : (uInt)n;
  size_t produced = 0;
  while (produced < max_out) {
    size_t step = max_out - produced < 16384 ? max_out - produced : 16384;
    if (gw_bytes_reserve(out, step)) return -ENOMEM;
    z->in.next_out = out->p + out->len;
    z->in.avail_out = (uInt)step;
    int rc = inflate(&z->in, Z_SYNC_FLUSH);
    size_t got = step - z->in.avail_out;
    out->len += got;
    produced += got;
    if (rc == Z_STREAM_END) {
      z->in_end = true;
      break;
    }
    if (rc == Z_BUF_ERROR || (rc == Z_OK && !got && !z->in.avail_in)) break; /* needs input */
    if (rc != Z_OK) {
      snprintf(err, errlen, "inflate: %s", z->in.msg ? z->in.msg : zError(rc));
      return -EPROTO;
    }
    if (!z->in.avail_in && z->in.avail_out) break;
  }
  *used = n - z->in.avail_in;
  return 0;
}

static int z_encode(gw_codec *c, const uint8_t *in, size_t n, gw_bytes *out, char *err,
                    size_t errlen) {
  zcodec *z = (zcodec *)c;
  z->out.next_in = (Bytef *)in;
  z->out.avail_in = (uInt)n;
  do {
    size_t step = deflateBound(&z->out, z->out.avail_in) + 16;
    if (gw_bytes_reserve(out, step)) return -ENOMEM;
    z->out.next_out = out->p + out->len;
    z->out.avail_out = (uInt)step;
    int rc = deflate(&z->out, Z_SYNC_FLUSH);
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      snprintf(err, errlen, "deflate: %s", zError(rc));
      return -EIO;
    }
    out->len += step - z->out.avail_out;
  } while (z->out.avail_in || !z->out.avail_out);
  return 0;
}

static void z_free(gw_codec *c) {
  zcodec *z = (zcodec *)c;
  if (z->in_ok) inflateEnd(&z->in);
  if (z->out_ok) deflateEnd(&z->out);
  free(z);
}

static const gw_codec_type zlib_type = {"zlib", z_decode, z_encode, z_free};

gw_codec *gw_codec_zlib_new(void) {
  zcodec *z = calloc(1, sizeof *z);
  if (!z) return NULL;
  z->base.type = &zlib_type;
  z->in_ok = inflateInit(&z->in) == Z_OK;
  z->out_ok = deflateInit(&z->out, Z_DEFAULT_COMPRESSION) == Z_OK;
  if (!z->in_ok || !z->out_ok) {
    z_free(&z->base);
    return NULL;
  }
  return &z->base;
}
