"""Stable content hashes of JSON-serialisable values."""

from __future__ import annotations

import hashlib
import json

__all__ = ["fingerprint"]


def fingerprint(*parts) -> str:
    """A stable SHA-256 hex digest of JSON-serialisable parts.

    Parameters
    ----------
    *parts
        Values serialised with sorted keys.

    Returns
    -------
    str
        64 hex digits.
    """
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
