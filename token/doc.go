// Package token defines the handle that cella hands out for one allocation of
// one slot.
//
// A Token is a 64-bit value that packs two numbers:
//
//	 63                               32 31                                0
//	+-----------------------------------+-----------------------------------+
//	|            generation             |            slot index             |
//	+-----------------------------------+-----------------------------------+
//
// The slot index says where the slot sits inside its arena. The generation is
// the slot's generation counter at the moment the token was issued. Every free
// advances the slot's generation, so a token whose generation no longer matches
// its slot is stale and every use of it is refused.
//
// Generations start at 1 or above, so the zero value, Nil, is never issued by
// any arena. A slot whose generation would wrap past 2^32-1 is retired by its
// arena instead of being reused: an old token can never match its slot again.
//
// Tokens are plain values: copy them, compare them, send them over channels or
// store them in off-heap memory. They hold no Go pointers.
package token
