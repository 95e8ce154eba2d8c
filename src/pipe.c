/* pipe.c: a session's protocol pipeline (see pipe.h): stream decode,
 * framing, dispatch to the script layer, body and stream encode.
 *
 * The common case costs what the relay's own loop did: no codec, so frames
 * are cut straight from the caller's input, and a run of frames nobody
 * handles comes out as one pass() of bytes the caller may reference. */
#include "pipe.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define DECODE_STEP (64 * 1024) /* stream-decoded bytes framed at a time */
#define WAIT_HEX 16             /* bytes shown of a frame that never comes */

static inline gw_side other(gw_side s) { return s == GW_CLIENT ? GW_SERVER : GW_CLIENT; }

/* ---- byte buffers ---- */

int gw_bytes_reserve(gw_bytes *b, size_t more) {
  if (b->cap - b->len >= more) return 0;
  if (more > SIZE_MAX / 2 - b->len) return -ENOMEM;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < more) cap *= 2;
  uint8_t *p = realloc(b->p, cap);
  if (!p) return -ENOMEM;
  b->p = p;
  b->cap = cap;
  return 0;
}

int gw_bytes_append(gw_bytes *b, const void *p, size_t n) {
  if (!n) return 0;
  int rc = gw_bytes_reserve(b, n);
  if (rc) return rc;
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

void gw_bytes_consume(gw_bytes *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->p, b->p + n, b->len - n);
  b->len -= n;
}

void gw_bytes_free(gw_bytes *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* ---- setup ---- */

void gw_pipe_init(gw_pipe *p, const gw_framing *f, gw_script *script,
                  gw_script_session *ss, const gw_pipe_driver *drv, void *ud) {
  memset(p, 0, sizeof *p);
  for (int i = 0; i < GW_SIDES; i++) p->side[i].framing = *f;
  p->script = script;
  p->ss = ss;
  p->drv = drv;
  p->ud = ud;
}

gw_codec *gw_codec_ref(gw_codec *c) {
  if (c) c->refs++;
  return c;
}

void gw_codec_unref(gw_codec *c) {
  if (c && (!c->refs || !--c->refs) && c->type->free) c->type->free(c);
}

void gw_pipe_free(gw_pipe *p) {
  for (int i = 0; i < GW_SIDES; i++) {
    gw_codec_unref(p->side[i].stream_in);
    gw_codec_unref(p->side[i].stream_out);
    gw_codec_unref(p->side[i].body_in);
    gw_codec_unref(p->side[i].body_out);
    gw_bytes_free(&p->side[i].dec);
    free(p->side[i].phases);
  }
  gw_bytes_free(&p->scratch);
  gw_bytes_free(&p->obody);
  gw_bytes_free(&p->enc);
}

static void enter_phase(gw_pipe_side *ps) {
  ps->raw_step = false;
  ps->frames_left = 0;
  ps->need = 0;
  ps->wait_logged = false;
  if (ps->phase >= ps->nphases) {
    if (ps->phases) ps->framing = ps->phases[ps->nphases].framing;
    return;
  }
  const gw_phase *st = &ps->phases[ps->phase];
  if (st->raw) {
    ps->raw_left = st->raw;
    ps->raw_step = true;
  } else {
    ps->framing = st->framing;
    ps->frames_left = st->frames;
  }
}

/* After a frame (or a raw step's last byte): on to the next step? */
static void phase_done_one(gw_pipe_side *ps) {
  if (ps->phase >= ps->nphases) return;
  if (ps->raw_step ? ps->raw_left == 0 : ps->frames_left && !--ps->frames_left) {
    ps->phase++;
    enter_phase(ps);
  }
}

int gw_pipe_set_phases(gw_pipe *p, gw_side side, const gw_phase *steps, size_t n) {
  gw_pipe_side *ps = &p->side[side];
  free(ps->phases);
  ps->phases = NULL;
  ps->nphases = ps->phase = 0;
  if (!n) return 0;
  if (!(ps->phases = malloc((n + 1) * sizeof *steps))) return -ENOMEM;
  memcpy(ps->phases, steps, n * sizeof *steps);
  memset(&ps->phases[n], 0, sizeof ps->phases[n]);
  ps->phases[n].framing = ps->framing; /* what follows the steps */
  ps->nphases = n;
  enter_phase(ps);
  return 0;
}

void gw_pipe_set_framing(gw_pipe *p, gw_side side, const gw_framing *f) {
  gw_pipe_side *ps = &p->side[side];
  ps->phase = ps->nphases; /* a script took over from the phases */
  ps->raw_step = false;
  ps->framing = *f;
  ps->switched = true;
  ps->need = 0;
  ps->wait_logged = false;
}

void gw_pipe_expect_raw(gw_pipe *p, gw_side side, uint64_t n) {
  p->side[side].raw_left = n;
  p->side[side].need = 0;
}

static void set_slots(gw_codec **in, gw_codec **out, gw_codec *c, int ways) {
  if (ways & GW_CODEC_IN) {
    gw_codec_unref(*in);
    *in = gw_codec_ref(c);
  }
  if (ways & GW_CODEC_OUT) {
    gw_codec_unref(*out);
    *out = gw_codec_ref(c);
  }
}

void gw_pipe_set_stream_codec(gw_pipe *p, gw_side side, gw_codec *c, int ways) {
  set_slots(&p->side[side].stream_in, &p->side[side].stream_out, c, ways);
}

void gw_pipe_set_body_codec(gw_pipe *p, gw_side side, gw_codec *c, int ways) {
  set_slots(&p->side[side].body_in, &p->side[side].body_out, c, ways);
}

bool gw_pipe_partial(const gw_pipe *p, gw_side side, uint32_t input_left) {
  const gw_pipe_side *ps = &p->side[side];
  return input_left > 0 || ps->dec.len > 0;
}

static int fail(gw_pipe *p, gw_side side, gw_frame_error e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(gw_pipe *p, gw_side side, gw_frame_error e, const char *fmt, ...) {
  p->error = e;
  p->error_offset = p->side[side].offset;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->error_msg, sizeof p->error_msg, fmt, ap);
  va_end(ap);
  return -EPROTO;
}

/* ---- body codecs ---- */

/* Rewrites the frame at data (len bytes, framed with f as from `origin`)
 * with its body from c->offset decoded or encoded, into out. The length
 * field is computed anew when the body's size changes. */
static int body_transform(gw_pipe *p, gw_codec *c, bool decode, const gw_framing *f,
                          gw_side origin, const uint8_t *data, size_t len, gw_bytes *out,
                          char *err, size_t errlen) {
  size_t off = c->offset;
  out->len = 0;
  if (off >= len) return gw_bytes_append(out, data, len); /* no body */
  /* The header first, then the body's transform after it. */
  int rc = gw_bytes_append(out, data, off);
  if (rc) return rc;
  if (decode) {
    size_t used = 0;
    rc = c->type->decode(c, data + off, len - off, &used, out, SIZE_MAX, err, errlen);
  } else {
    rc = c->type->encode(c, data + off, len - off, out, err, errlen);
  }
  if (rc) return rc;
  if (out->len == len) return 0;
  /* Another size: encode the frame again, its length field computed. */
  size_t lf_end = f->length_offset + gw_frame_length_field_size(f, len);
  if (lf_end > off) {
    snprintf(err, errlen, "body codec offset %zu is inside the length field", off);
    return -EINVAL;
  }
  size_t rest_len = out->len - lf_end;
  gw_bytes *tmp = &p->enc; /* free here: stream encoding comes after */
  tmp->len = 0;
  if ((rc = gw_bytes_reserve(tmp, out->len + GW_VARINT_MAX))) return rc;
  long n = gw_frame_encode(f, origin, tmp->p, tmp->cap, out->p, out->p + lf_end, rest_len);
  if (n < 0) {
    snprintf(err, errlen, "%s", n == -EMSGSIZE ? "frame too large after the body codec"
                                                : "frame does not fit its framing after the body codec");
    return (int)n;
  }
  out->len = 0;
  return gw_bytes_append(out, tmp->p, (size_t)n);
}

/* ---- output ---- */

/* Bytes toward `to`: a frame (frame=true, framed as from other(to)) or raw
 * bytes, through to's body and stream encoders. */
static int output(gw_pipe *p, gw_side to, const uint8_t *data, size_t len, bool frame,
                  bool in_input) {
  gw_pipe_side *dst = &p->side[to];
  char err[160];
  int rc;
  if (frame && dst->body_out) {
    gw_side origin = other(to);
    rc = body_transform(p, dst->body_out, false, &p->side[origin].framing, origin, data, len,
                        &p->obody, err, sizeof err);
    if (rc) {
      gw_warn("session %" PRIu64 " body codec %s toward the %s side: %s", p->ss->id,
              dst->body_out->type->name, gw_side_name(to), err);
      return rc;
    }
    data = p->obody.p;
    len = p->obody.len;
    in_input = false;
  }
  if (dst->stream_out) {
    p->enc.len = 0;
    rc = dst->stream_out->type->encode(dst->stream_out, data, len, &p->enc, err, sizeof err);
    if (rc) {
      gw_warn("session %" PRIu64 " stream codec %s toward the %s side: %s", p->ss->id,
              dst->stream_out->type->name, gw_side_name(to), err);
      return rc;
    }
    return p->enc.len ? p->drv->copy(p->ud, to, p->enc.p, p->enc.len) : 0;
  }
  return in_input ? p->drv->pass(p->ud, to, data, len) : p->drv->copy(p->ud, to, data, len);
}

int gw_pipe_output(gw_pipe *p, gw_side to, const uint8_t *data, size_t len) {
  /* The frame in a handler, passed on: it may still lie in the input. */
  bool in_input = data == p->cur_frame && p->cur_in_input;
  return output(p, to, data, len, true, in_input);
}

size_t gw_pipe_finish(gw_pipe *p, gw_side from, uint8_t *data, uint32_t *start, uint32_t end,
                      bool pass) {
  gw_pipe_side *ps = &p->side[from];
  size_t n = (end - *start) + ps->dec.len;
  if (pass && ps->dec.len) output(p, other(from), ps->dec.p, ps->dec.len, false, false);
  if (pass && *start < end) output(p, other(from), data + *start, end - *start, false, true);
  ps->dec.len = 0;
  ps->need = 0;
  *start = end;
  return n;
}

/* ---- input ---- */

/* A length field that announces far more than arrives is often a framing
 * that does not fit the protocol: say so once, so that a wrong framing is
 * found from the log rather than by a hang (timeouts.frame_ms ends it). */
static void log_long_wait(gw_pipe *p, gw_side from, const uint8_t *at, size_t n) {
  gw_pipe_side *ps = &p->side[from];
  ps->wait_logged = true;
  if (!gw_log_enabled(GW_LOG_DEBUG)) return;
  char hex[WAIT_HEX * 3 + 4] = "";
  size_t shown = n < WAIT_HEX ? n : WAIT_HEX;
  size_t len = 0;
  for (size_t i = 0; i < shown; i++)
    len += (size_t)snprintf(hex + len, sizeof hex - len, "%s%02x", i ? " " : "", at[i]);
  gw_debug("session %" PRIu64 " waits for a frame of %u bytes from the %s side at stream "
           "offset %" PRIu64 ", has %zu: %s%s (framing %s)",
           p->ss->id, ps->need, gw_side_name(from), ps->offset, n, hex, n > shown ? " ..." : "",
           ps->framing.name);
}

/* Frames data[*start, end) from `from`. in_input: the bytes lie in the
 * caller's input (else in the pipeline's decode buffer). Stops early, with
 * *start at the first byte not consumed, when the driver holds or when a
 * handler installed a stream decoder on `from` (the rest must be decoded
 * first: the caller looks again). */
/* Frames base[*start, end) until it runs out or must stop, the frames
 * handled back to back one run of the handler time (gw_script_run_end
 * when anything else comes between them, and at the end). */
static int frame_loop_in(gw_pipe *p, gw_side from, uint8_t *base, uint32_t *start, uint32_t end,
                         bool in_input);

static int frame_loop(gw_pipe *p, gw_side from, uint8_t *base, uint32_t *start, uint32_t end,
                      bool in_input) {
  int rc = frame_loop_in(p, from, base, start, end, in_input);
  if (p->script) gw_script_run_end(p->script);
  return rc;
}

static int frame_loop_in(gw_pipe *p, gw_side from, uint8_t *base, uint32_t *start, uint32_t end,
                         bool in_input) {
  gw_pipe_side *ps = &p->side[from];
  gw_side to = other(from);
  const gw_handlers *h = p->ss->handlers;
  bool had_decoder = ps->stream_in != NULL;
  uint32_t run = *start; /* a run of bytes passed on as they are */
  int rc = 0;
#define FLUSH_RUN()                                                                   \
  do {                                                                                \
    if (run < *start && (rc = output(p, to, base + run, *start - run, false,         \
                                     in_input)) < 0)                                  \
      return rc;                                                                      \
    run = *start;                                                                     \
  } while (0)
  /* Runs may go out as they are only if nothing on the way changes bytes. */
  bool plain = !ps->body_in && !p->side[to].body_out;
  bool follows = false; /* the last thing done was a handled frame */
  /* Something other than a handled frame comes next: the run ends. */
#define RUN_ENDS()                                                                    \
  do {                                                                                \
    if (follows) gw_script_run_end(p->script);                                        \
    follows = false;                                                                  \
  } while (0)
  while (*start < end) {
    uint32_t avail = end - *start;
    if (ps->raw_left) { /* expect_raw: bytes no framing applies to */
      RUN_ENDS();
      uint32_t n = ps->raw_left >= avail ? avail : (uint32_t)ps->raw_left;
      ps->raw_left -= n;
      if (ps->raw_step) phase_done_one(ps);
      *start += n;
      ps->offset += n;
      if (!plain) FLUSH_RUN(); /* raw bytes skip body codecs, not the run */
      continue;
    }
    if (ps->need > avail) break; /* still waiting for the rest of a frame */
    gw_frame_info fi;
    rc = gw_frame_next(&ps->framing, from, base + *start, avail, &fi);
    if (rc == -EAGAIN) {
      ps->need = (uint32_t)fi.need;
      if (fi.need > 2 * (size_t)avail + 1024 && !ps->wait_logged)
        log_long_wait(p, from, base + *start, avail);
      rc = 0;
      break;
    }
    if (rc < 0) {
      FLUSH_RUN();
      return fail(p, from, fi.error, "%s", gw_frame_strerror(fi.error));
    }
    ps->need = 0;
    if (!ps->framing.raw) ps->frames++; /* a raw chunk is no frame */
    if (plain && !gw_handlers_want(h, from, &fi)) { /* the fast path: it stays in the run */
      RUN_ENDS();
      *start += (uint32_t)fi.len;
      ps->offset += fi.len;
      if (ps->frames_left) phase_done_one(ps);
      continue;
    }
    FLUSH_RUN();
    uint8_t *frame = base + *start;
    size_t len = fi.len, wire_len = fi.len;
    bool frame_in_input = in_input;
    if (ps->body_in) { /* handlers see the clear frame (its opcode too) */
      RUN_ENDS(); /* a codec's work is no handler's time */
      char err[160];
      rc = body_transform(p, ps->body_in, true, &ps->framing, from, frame, len, &p->scratch, err,
                          sizeof err);
      if (rc) return fail(p, from, GW_FRAME_OK, "body codec: %s", err);
      frame = p->scratch.p;
      len = p->scratch.len;
      frame_in_input = false;
      if (gw_frame_next(&ps->framing, from, frame, len, &fi) != 1 || fi.len != len)
        return fail(p, from, GW_FRAME_OK, "body codec %s broke the frame", ps->body_in->type->name);
    }
    *start += (uint32_t)wire_len; /* an error above names the frame's start */
    ps->offset += wire_len;
    run = *start;
    if (!gw_handlers_want(h, from, &fi)) {
      RUN_ENDS();
      if (ps->frames_left) phase_done_one(ps);
      if ((rc = output(p, to, frame, len, true, frame_in_input)) < 0) return rc;
      continue;
    }
    p->cur_frame = frame;
    p->cur_in_input = frame_in_input;
    p->cur_fi = &fi;
    if (p->drv->before_handlers) p->drv->before_handlers(p->ud, from, frame, len);
    if (follows) gw_script_frame_follows(p->script);
    rc = gw_script_frame(p->script, p->ss, from, frame, &fi);
    follows = true;
    if (p->drv->after_handlers) p->drv->after_handlers(p->ud, from, rc);
    p->cur_frame = NULL;
    p->cur_fi = NULL;
    if (ps->frames_left) phase_done_one(ps); /* after: the handler read it framed */
    if (rc < 0) return rc;
    if (rc == GW_SCRIPT_PENDING) { /* the rest waits behind it, in order */
      ps->waiting = true;
      return GW_PIPE_WAIT;
    }
    if (p->drv->hold && p->drv->hold(p->ud, from)) return GW_PIPE_HELD;
    /* A handler may have switched codecs: re-plan the way out. */
    if (!had_decoder && ps->stream_in) return 0;
    plain = !ps->body_in && !p->side[to].body_out;
  }
  FLUSH_RUN();
#undef FLUSH_RUN
#undef RUN_ENDS
  return rc;
}

/* Frames what the decode buffer holds. */
static int frame_decoded(gw_pipe *p, gw_side from) {
  gw_bytes *dec = &p->side[from].dec;
  uint32_t pos = 0;
  int rc = frame_loop(p, from, dec->p, &pos, (uint32_t)dec->len, false);
  gw_bytes_consume(dec, pos);
  return rc;
}

int gw_pipe_input(gw_pipe *p, gw_side from, uint8_t *data, uint32_t *start, uint32_t end) {
  gw_pipe_side *ps = &p->side[from];
  int rc = 0;
  if (ps->waiting) return GW_PIPE_WAIT;
  for (;;) {
    if (ps->dec.len) { /* decoded (or carried over) bytes come first */
      size_t had = ps->dec.len;
      if ((rc = frame_decoded(p, from))) return rc;
      /* A handler's switch of decoder stops the framing of the buffer at
       * that frame: go on with what is left, until nothing moves. */
      if (ps->dec.len != had) continue;
      if (!ps->stream_in) {
        /* A decoder removed mid-frame: the frame goes on in plain bytes. */
        if (*start == end) return 0;
        if (gw_bytes_append(&ps->dec, data + *start, end - *start)) return -ENOMEM;
        *start = end;
        continue;
      }
    }
    if (*start == end) return 0;
    if (!ps->stream_in) {
      uint32_t before = *start;
      rc = frame_loop(p, from, data, start, end, true);
      if (rc || !ps->stream_in || *start == before) return rc;
      continue; /* a decoder was installed: the rest is decoded */
    }
    char err[160];
    size_t used = 0;
    rc = ps->stream_in->type->decode(ps->stream_in, data + *start, end - *start, &used, &ps->dec,
                                     DECODE_STEP, err, sizeof err);
    if (rc) return fail(p, from, GW_FRAME_OK, "stream codec %s: %s", ps->stream_in->type->name, err);
    *start += (uint32_t)used;
    if (!used && !ps->dec.len) return 0; /* the codec wants more input */
    if (!ps->dec.len) continue;
    if ((rc = frame_decoded(p, from))) return rc;
    if (!used && *start < end) return 0; /* no progress: wait for more */
    /* A small input may inflate to a lot: let the driver stop us between
     * steps, as between handled frames, so what waits to be written stays
     * bounded (the rest of the input waits where it is). */
    if (*start < end && p->drv->hold && p->drv->hold(p->ud, from)) return GW_PIPE_HELD;
  }
}
