/* top_wire.c: Tales of Pirates message bodies (see top_wire.h). */
#include "top_wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const gw_framing *top_framing(void)
{
  static gw_framing framing;
  static bool loaded;
  if (!loaded) {
    /* "top" is built in; failing to find it is a build error, not a
     * runtime condition. */
    if (gw_framing_preset("top", &framing) != 0)
      abort();
    loaded = true;
  }
  return &framing;
}

const char *top_cmd_name(uint32_t cmd)
{
  switch (cmd) {
  case TOP_CM_SAY: return "CM_SAY";
  case TOP_CM_BEGINACTION: return "CM_BEGINACTION";
  case TOP_CM_LOGIN: return "CM_LOGIN";
  case TOP_MC_SAY: return "MC_SAY";
  case TOP_MC_LOGIN: return "MC_LOGIN";
  case TOP_MC_CHAPSTR: return "MC_CHAPSTR";
  default: return NULL;
  }
}

void top_writer_init(top_writer *w, uint8_t *buf, size_t cap)
{
  w->p = buf;
  w->cap = cap;
  w->len = 0;
  w->err = 0;
}

/* Room for n more bytes, or the sticky error. */
static uint8_t *put_space(top_writer *w, size_t n)
{
  if (w->err)
    return NULL;
  if (w->cap - w->len < n) {
    w->err = -ENOBUFS;
    return NULL;
  }
  uint8_t *p = w->p + w->len;
  w->len += n;
  return p;
}

static void put_uint(top_writer *w, unsigned size, uint32_t v)
{
  uint8_t *p = put_space(w, size);
  if (p)
    gw_put_uint(p, size, true, v);
}

void top_put_u8(top_writer *w, uint8_t v) { put_uint(w, 1, v); }
void top_put_u16(top_writer *w, uint16_t v) { put_uint(w, 2, v); }
void top_put_u32(top_writer *w, uint32_t v) { put_uint(w, 4, v); }
void top_put_i32(top_writer *w, int32_t v) { put_uint(w, 4, (uint32_t)v); }

void top_put_strn(top_writer *w, const char *s, size_t n)
{
  if (!w->err && n >= UINT16_MAX) { /* the length counts the NUL too */
    w->err = -ERANGE;
    return;
  }
  top_put_u16(w, (uint16_t)(n + 1));
  uint8_t *p = put_space(w, n + 1);
  if (!p)
    return;
  memcpy(p, s, n);
  p[n] = 0;
}

void top_put_str(top_writer *w, const char *s) { top_put_strn(w, s, strlen(s)); }

long top_frame(const top_writer *w, gw_side side, uint32_t cmd, uint8_t *out,
               size_t cap)
{
  if (w->err)
    return w->err;
  return gw_frame_build(top_framing(), side, out, cap, cmd, w->p, w->len);
}

void top_reader_init(top_reader *r, const uint8_t *frame, size_t frame_len)
{
  size_t off = gw_frame_body_offset(top_framing());
  if (frame_len < off)
    off = frame_len; /* a keep-alive has no body */
  r->p = frame + off;
  r->len = frame_len - off;
  r->pos = 0;
  r->err = 0;
}

size_t top_remaining(const top_reader *r) { return r->len - r->pos; }

/* The next n bytes, or NULL (and the sticky error). */
static const uint8_t *get_bytes(top_reader *r, size_t n)
{
  if (r->err)
    return NULL;
  if (r->len - r->pos < n) {
    r->err = -EPROTO;
    return NULL;
  }
  const uint8_t *p = r->p + r->pos;
  r->pos += n;
  return p;
}

static uint32_t get_uint(top_reader *r, unsigned size)
{
  const uint8_t *p = get_bytes(r, size);
  return p ? (uint32_t)gw_get_uint(p, size, true) : 0;
}

uint8_t top_get_u8(top_reader *r) { return (uint8_t)get_uint(r, 1); }
uint16_t top_get_u16(top_reader *r) { return (uint16_t)get_uint(r, 2); }
uint32_t top_get_u32(top_reader *r) { return get_uint(r, 4); }
int32_t top_get_i32(top_reader *r) { return (int32_t)get_uint(r, 4); }

void top_get_str(top_reader *r, const char **s, size_t *n)
{
  *s = "";
  *n = 0;
  uint16_t len = top_get_u16(r);
  if (!r->err && len == 0) /* no room for the NUL the length counts */
    r->err = -EPROTO;
  const uint8_t *p = get_bytes(r, len);
  if (!p)
    return;
  if (p[len - 1] != 0) {
    r->err = -EPROTO;
    return;
  }
  *s = (const char *)p;
  *n = len - 1u;
}

void top_put_login(top_writer *w, const char *account)
{
  top_put_str(w, account);
  top_put_str(w, "secret"); /* topd takes any password */
  top_put_str(w, "00-00-00-00-00-00");
  top_put_u16(w, TOP_CLIENT_VERSION);
  top_put_u16(w, TOP_LOGIN_MARKER);
}

int top_get_login(top_reader *r, top_login *out)
{
  top_get_str(r, &out->account, &out->account_len);
  top_get_str(r, &out->password, &out->password_len);
  if (!r->err && top_remaining(r) < 4)
    r->err = -EPROTO;
  if (r->err)
    return r->err;
  r->pos = r->len - 4; /* what sits between the password and the end varies */
  out->version = top_get_u16(r);
  out->marker = top_get_u16(r);
  return r->err;
}

void top_put_login_reply(top_writer *w, uint16_t err, uint32_t id)
{
  top_put_u16(w, err);
  if (err == 0)
    top_put_u32(w, id);
}

int top_get_login_reply(top_reader *r, uint16_t *err, uint32_t *id)
{
  *err = top_get_u16(r);
  *id = *err == 0 ? top_get_u32(r) : 0;
  return r->err;
}

void top_put_say(top_writer *w, const top_say *say)
{
  top_put_u32(w, say->id);
  top_put_strn(w, say->name, say->name_len);
  top_put_strn(w, say->text, say->text_len);
}

int top_get_say(top_reader *r, top_say *out)
{
  out->id = top_get_u32(r);
  top_get_str(r, &out->name, &out->name_len);
  top_get_str(r, &out->text, &out->text_len);
  return r->err;
}

void top_put_action(top_writer *w, const top_action *a)
{
  top_put_u32(w, a->world);
  top_put_u8(w, a->type);
  if (a->type == TOP_ACTION_MOVE) {
    top_put_i32(w, a->x);
    top_put_i32(w, a->y);
  }
}

int top_get_action(top_reader *r, top_action *out)
{
  out->world = top_get_u32(r);
  out->type = top_get_u8(r);
  out->x = out->y = 0;
  if (out->type == TOP_ACTION_MOVE) {
    out->x = top_get_i32(r);
    out->y = top_get_i32(r);
  }
  return r->err;
}

/* Length of the well-formed UTF-8 sequence at s (at most n bytes) that is
 * safe to print: 0 for malformed ones and for C1 controls (U+0080..U+009F),
 * which some terminals obey. */
static size_t utf8_printable(const unsigned char *s, size_t n)
{
  unsigned char b = s[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
  if (b >= 0xc2 && b <= 0xdf)
    len = 2;
  else if (b >= 0xe0 && b <= 0xef)
    len = 3;
  else if (b >= 0xf0 && b <= 0xf4)
    len = 4;
  else
    return 0;
  if (b == 0xc2)
    lo = 0xa0; /* U+0080..U+009F are C1 controls */
  else if (b == 0xe0)
    lo = 0xa0; /* overlong */
  else if (b == 0xed)
    hi = 0x9f; /* surrogates */
  else if (b == 0xf0)
    lo = 0x90; /* overlong */
  else if (b == 0xf4)
    hi = 0x8f; /* above U+10FFFF */
  if (n < len || s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xbf)
      return 0;
  return len;
}

/* Appends piece (k bytes) to out at *o unless it would leave no room for
 * "..." and the NUL; then appends "..." and returns false. */
static bool append(char *out, size_t cap, size_t *o, const char *piece,
                   size_t k)
{
  if (*o + k + 4 > cap) {
    if (*o + 4 <= cap) {
      memcpy(out + *o, "...", 3);
      *o += 3;
    }
    return false;
  }
  memcpy(out + *o, piece, k);
  *o += k;
  return true;
}

char *top_readable(char *out, size_t cap, const char *s, size_t n)
{
  if (cap == 0)
    return out;
  const unsigned char *u = (const unsigned char *)s;
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    char esc[5];
    size_t k;
    if (u[i] >= 0x20 && u[i] < 0x7f && u[i] != '\\')
      k = 1;
    else if (u[i] >= 0x80 && (k = utf8_printable(u + i, n - i)) > 0)
      ;
    else {
      snprintf(esc, sizeof esc, "\\x%02x", u[i]);
      if (!append(out, cap, &o, esc, 4))
        break;
      i++;
      continue;
    }
    if (!append(out, cap, &o, s + i, k))
      break;
    i += k;
  }
  out[o < cap ? o : cap - 1] = 0;
  return out;
}

char *top_format_say(char *out, size_t cap, const top_say *say)
{
  char name[64], text[1024];
  snprintf(out, cap, "[local] %s: %s",
           top_readable(name, sizeof name, say->name, say->name_len),
           top_readable(text, sizeof text, say->text, say->text_len));
  return out;
}

char *top_hex(char *out, size_t cap, const uint8_t *p, size_t n)
{
  if (cap == 0)
    return out;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char h[4];
    snprintf(h, sizeof h, i ? " %02x" : "%02x", p[i]);
    if (!append(out, cap, &o, h, strlen(h)))
      break;
  }
  out[o < cap ? o : cap - 1] = 0;
  return out;
}
