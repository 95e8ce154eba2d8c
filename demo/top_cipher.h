/* top_cipher.h: the demo cipher, an optional body encryption after login.
 *
 * Not Tales of Pirates' own algorithm: a toy the demo programs (-e) and
 * gangway's example Lua body codec implement the same way, so the demo can
 * show a proxy decrypting, filtering and re-encrypting. The contract:
 *
 * - key: the bytes of the chap string (MC_CHAPSTR, without its NUL);
 * - in every frame of an encrypted direction, the bytes from offset 6 (the
 *   command and the body) are encrypted; the length and session fields
 *   stay clear, and a keep-alive (`00 02`) has nothing to encrypt;
 * - client to server: the frames after CM_LOGIN; server to client: the
 *   frames after MC_LOGIN;
 * - one counter i per direction, 0 at the first encrypted byte, never reset
 *   across frames: out = in ^ key[i % keylen] ^ (uint8_t)(i * 7 + 13).
 *
 * XOR makes encryption and decryption the same operation. Pure: no libuv,
 * no allocation. */
#ifndef TOP_CIPHER_H
#define TOP_CIPHER_H

#include <stddef.h>
#include <stdint.h>

#define TOP_CIPHER_CLEAR 6 /* bytes of a frame's header left clear */

/* One direction's keystream. The key is the caller's: it must outlive the
 * cipher. */
typedef struct top_cipher {
  const uint8_t *key;
  size_t keylen;
  uint64_t i; /* bytes of this direction transformed so far */
} top_cipher;

/* Returns 0, or -EINVAL for an empty key. */
int top_cipher_init(top_cipher *c, const uint8_t *key, size_t keylen);
/* Encrypts or decrypts n bytes in place, moving the counter on. */
void top_cipher_apply(top_cipher *c, uint8_t *p, size_t n);
/* The same on the part of a whole frame of len bytes past its clear
 * header; a keep-alive is left as it is. */
void top_cipher_frame(top_cipher *c, uint8_t *frame, size_t len);

#endif
