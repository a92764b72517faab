"""Identifiers: time-ordered queue ids, readable in logs and sortable in the database."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def new_id() -> str:
    """20 characters: 48 bits of milliseconds then 52 random bits, base32 (ULID-like, shorter)."""
    n = (int(time.time() * 1000) << 52) | int.from_bytes(os.urandom(7), "big") >> 4
    out = []
    for _ in range(20):
        n, r = divmod(n, 32)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))
