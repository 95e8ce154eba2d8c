/* pipe.h: one session's protocol pipeline, the same code for the relay and
 * the busted harness.
 *
 * Bytes read from a side go through
 *
 *   [stream codec: decode] -> framer (frame.c) -> dispatch (handlers?)
 *     -> verdicts -> [body codec: encode] -> [stream codec: encode] -> out
 *
 * and come out through the driver's callbacks, in order. The pipeline owns
 * the per-session protocol state: each side's current framing (which
 * handlers may switch at a frame boundary), bytes to pass unframed, codecs
 * and their buffers. It knows no sockets and no libuv: the relay drives it
 * with what it reads and writes what comes out; gangway.testing drives it
 * with strings and a simulated clock.
 *
 * Frames nobody handles, on a side with no codec, come out as one run of
 * bytes that lie in the caller's input (pass), which the relay writes
 * without a copy. Everything else comes out as bytes to copy. */
#ifndef GW_PIPE_H
#define GW_PIPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "frame.h"
#include "script.h"

/* A growable byte buffer owned by whoever embeds it. */
typedef struct gw_bytes {
  uint8_t *p;
  size_t len, cap;
} gw_bytes;
int gw_bytes_reserve(gw_bytes *b, size_t more);
int gw_bytes_append(gw_bytes *b, const void *p, size_t n);
void gw_bytes_consume(gw_bytes *b, size_t n); /* drops the first n bytes */
void gw_bytes_free(gw_bytes *b);

/* A codec: a transform of one side's bytes, with state of its own (a
 * zlib stream, a key). As a stream codec it sees the bytes of the wire; as
 * a body codec, each frame's body from `offset` on. */
typedef struct gw_codec gw_codec;
typedef struct gw_codec_type {
  const char *name;
  /* Appends the transform of in[0..n) to out, at most max_out bytes; sets
   * *used to the input consumed (less than n only when max_out stopped it).
   * Returns 0 or a negative errno with a message in err. */
  int (*decode)(gw_codec *c, const uint8_t *in, size_t n, size_t *used,
                gw_bytes *out, size_t max_out, char *err, size_t errlen);
  int (*encode)(gw_codec *c, const uint8_t *in, size_t n, gw_bytes *out,
                char *err, size_t errlen);
  void (*free)(gw_codec *c);
} gw_codec_type;
struct gw_codec {
  const gw_codec_type *type;
  uint32_t offset;              /* body codecs: bytes of a frame left clear */
  uint32_t refs;                /* pipeline slots holding it (one codec may
                                   serve both ways of a side) */
};
/* A codec is made with no reference; each pipeline slot that holds it
 * takes one. gw_codec_unref drops one and frees the codec with the last
 * (or at once if none was ever taken). */
gw_codec *gw_codec_ref(gw_codec *c);
void gw_codec_unref(gw_codec *c);

/* C codecs. zlib: a deflate stream each way (RFC 1950 with header), each
 * write flushed with Z_SYNC_FLUSH so the peer can read it at once. */
gw_codec *gw_codec_zlib_new(void);
/* xor: each call's bytes XORed with the key from its first byte on (a body
 * codec restarts it every frame); its own inverse. NULL for an empty key. */
gw_codec *gw_codec_xor_new(const uint8_t *key, size_t keylen);

/* What comes out of a pipeline. ud is the driver's. */
typedef struct gw_pipe_driver {
  /* len bytes toward `to` that lie in the input gw_pipe_input was given:
   * they may be referenced rather than copied. */
  int (*pass)(void *ud, gw_side to, const uint8_t *p, size_t len);
  /* len bytes toward `to` to copy before returning. */
  int (*copy)(void *ud, gw_side to, const uint8_t *p, size_t len);
  /* After a frame that went to the handlers: should the pipeline stop
   * here and keep the rest for later (backpressure)? NULL: never. */
  bool (*hold)(void *ud, gw_side from);
  /* Around each frame handed to the handlers, for a host that watches
   * them (the busted harness keeps dropped frames; the pipeline's cur_fi
   * is the frame's info then); NULL: none. */
  void (*before_handlers)(void *ud, gw_side from, const uint8_t *frame, size_t len);
  void (*after_handlers)(void *ud, gw_side from, int rc);
} gw_pipe_driver;

/* One side's protocol state: how frames from it are cut, and its codecs. */
typedef struct gw_pipe_side {
  gw_framing framing;           /* for frames from this side, now */
  bool switched;                /* framing changed since the session began */
  uint64_t raw_left;            /* bytes to pass unframed first */
  uint32_t need;                /* the unfinished frame's size, 0 unknown */
  uint64_t frames;              /* whole frames from this side */
  uint64_t offset;              /* stream offset (decoded) of the next frame */
  /* Codecs of this side's wire: "in" decodes what it sends, "out" encodes
   * what goes to it. Stream codecs see the bytes, body codecs each frame's
   * body from their offset on. */
  gw_codec *stream_in, *stream_out;
  gw_codec *body_in, *body_out;
  gw_bytes dec;                 /* stream-decoded bytes not yet framed */
  bool wait_logged;
  /* Phases (listener `phases`): steps before the side's own framing,
   * which a copy keeps after them (phases[nphases].framing): idle sessions
   * without phases pay one pointer for this, not a framing. */
  gw_phase *phases;             /* nphases + 1 entries, owned */
  size_t nphases, phase;        /* phase == nphases: over */
  uint32_t frames_left;         /* of a framing step; 0: until switched */
  bool raw_step;                /* raw_left belongs to a step */
  bool waiting;                 /* a handler of this side's last frame waits
                                   (GW_PIPE_WAIT): nothing from it moves */
} gw_pipe_side;

typedef struct gw_pipe {
  gw_pipe_side side[GW_SIDES];
  gw_script *script;
  gw_script_session *ss;
  const gw_pipe_driver *drv;
  void *ud;
  gw_bytes scratch;             /* a frame from a body decoder */
  gw_bytes obody;               /* a frame from a body encoder */
  gw_bytes enc;                 /* stream-encoded bytes on their way out */
  const uint8_t *cur_frame;     /* the frame in a handler (zero-copy pass) */
  bool cur_in_input;            /* ... and it lies in the caller's input */
  const gw_frame_info *cur_fi;  /* ... as it was cut (for before_handlers:
                                   no need to parse it again) */
  /* Set with -EPROTO: what was wrong and where. */
  gw_frame_error error;
  char error_msg[160];
  uint64_t error_offset;
} gw_pipe;

/* Sets p up for a session whose listener frames with f (both sides). */
void gw_pipe_init(gw_pipe *p, const gw_framing *f, gw_script *script,
                  gw_script_session *ss, const gw_pipe_driver *drv, void *ud);
/* Frees codecs and buffers. */
void gw_pipe_free(gw_pipe *p);

/* Results of gw_pipe_input besides 0 (every whole frame handled; what is
 * left at *start is an unfinished frame). */
#define GW_PIPE_HELD 1          /* the driver's hold() stopped it: call again
                                   with the same bytes when it can go on */
#define GW_PIPE_WAIT 2          /* a handler of a frame from this side waits
                                   (gw.redis, session:sleep): call again with
                                   the same bytes after gw_pipe_wait_done */

/* Runs data[*start, end) from side `from` through the pipeline and
 * advances *start past what it consumed. Returns 0, GW_PIPE_HELD, GW_PIPE_WAIT,
 * -EPROTO (a frame broke the framing, or a codec failed: error_msg says
 * how; nothing after it is trusted), -ECONNRESET (a handler closed the
 * session) or another negative errno from the driver. */
int gw_pipe_input(gw_pipe *p, gw_side from, uint8_t *data, uint32_t *start,
                  uint32_t end);

/* The handler that made gw_pipe_input return GW_PIPE_WAIT for side is
 * done (the script layer's frame_done): the side's bytes move again. */
static inline void gw_pipe_wait_done(gw_pipe *p, gw_side side) { p->side[side].waiting = false; }
static inline bool gw_pipe_waiting(const gw_pipe *p, gw_side side) { return p->side[side].waiting; }

/* A whole frame (or raw bytes) toward `to` from the script layer or a
 * handler's verdict: through `to`'s encoders, then out. */
int gw_pipe_output(gw_pipe *p, gw_side to, const uint8_t *data, size_t len);

/* From the next frame boundary on, frames from `side` are cut with f (a
 * raw framing passes everything from then on unframed). */
void gw_pipe_set_framing(gw_pipe *p, gw_side side, const gw_framing *f);
/* Side's phases: the steps run in order, then its framing so far applies.
 * Returns 0 or -ENOMEM. */
int gw_pipe_set_phases(gw_pipe *p, gw_side side, const gw_phase *steps, size_t n);
/* The next n bytes from `side` pass unframed, then framing resumes. */
void gw_pipe_expect_raw(gw_pipe *p, gw_side side, uint64_t n);
/* Installs (or with NULL removes) a codec on side's wire for what it sends
 * (in), what goes to it (out), or both; the pipeline takes a reference per
 * slot, the caller keeps its own. Applies from the next frame on. */
enum { GW_CODEC_IN = 1, GW_CODEC_OUT = 2, GW_CODEC_BOTH = 3 };
void gw_pipe_set_stream_codec(gw_pipe *p, gw_side side, gw_codec *c, int ways);
void gw_pipe_set_body_codec(gw_pipe *p, gw_side side, gw_codec *c, int ways);

/* The end of side's stream (FIN): what is left of an unfinished frame,
 * in data[*start, end) and the pipeline's own buffer, is dropped, or with
 * pass set handed on as it is. Returns how many bytes that was. */
size_t gw_pipe_finish(gw_pipe *p, gw_side side, uint8_t *data, uint32_t *start,
                      uint32_t end, bool pass);

/* Does side have an unfinished frame waiting for more bytes? (Its bytes
 * may be in the caller's input tail or in the pipeline's own buffer.) */
bool gw_pipe_partial(const gw_pipe *p, gw_side side, uint32_t input_left);

#endif
