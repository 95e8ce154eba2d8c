/* suggest.h: "did you mean" for names an admin wrote (config keys, packet
 * and field names). Pure. */
#ifndef GW_SUGGEST_H
#define GW_SUGGEST_H

#include <stddef.h>

#define GW_SUGGEST_NAME_MAX 64 /* longer names are never close to anything */

/* Edit distance of a[0..la) and b[0..lb), ASCII case folded, a swap of two
 * neighbours counting as one edit (optimal string alignment): "cm_sayy" is
 * one edit from "CM_SAY". SIZE_MAX when either is longer than
 * GW_SUGGEST_NAME_MAX. */
size_t gw_edit_distance(const char *a, size_t la, const char *b, size_t lb);

#endif
