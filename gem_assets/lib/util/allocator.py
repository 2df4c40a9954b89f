"""Control of the C heap (glibc malloc): hand freed pages back, and map large buffers for a block of work.

A long-lived process (``make run`` in process, a Dagster worker) runs one shard after another; glibc
keeps what each frees in its arenas unless told otherwise. These helpers are no-ops that say so
(they return False) off glibc. Kept apart from :mod:`gem_assets.lib.io.streaming` so that the torch
paths (the sentence encoder) need neither polars nor pyarrow.
"""

from __future__ import annotations

import contextlib
import functools

__all__ = ["release_memory", "fix_mmap_threshold", "mapped_large_buffers"]

#: glibc's ``mallopt`` parameter numbers of ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD`` (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The ceiling of glibc's dynamic mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``).
_DYNAMIC_MMAP_CEILING = 32 << 20


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library as a ctypes handle, or None when it is not glibc (no ``mallopt``/``malloc_trim``).

    Looked up once per process: ``find_library`` runs ``ldconfig`` (~1.7 ms a call here), and
    ``release_memory`` / ``mapped_large_buffers`` run after every shard and around every encode."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # both are glibc extensions
    except (OSError, AttributeError):  # musl, macOS
        return None
    return libc


def fix_mmap_threshold(threshold_bytes: int = 1 << 20) -> bool:
    """Make glibc serve every allocation of at least ``threshold_bytes`` with its own ``mmap``.

    glibc starts with a 128 KiB mmap threshold and raises it to the size of every mmapped block
    that is freed (up to 32 MiB), and its trim threshold to twice that. After the first batch of
    a transformer's forward pass frees its multi-MiB activations, the next batches' activations
    therefore come from the heap, where fragmentation leaves freed pages resident: with
    all-MiniLM-L6-v2 (48 BBC articles a batch, 128 tokens) each batch's peak resident set wandered
    between 713 and 778 MiB over 30 batches, against 683-705 MiB with the threshold fixed at
    1 MiB (the resident set after each batch plateaus at ~635 MiB either way; docs/scaling.md).
    Setting the threshold turns glibc's dynamic adjustment off for the whole process (as the
    ``MALLOC_MMAP_THRESHOLD_`` environment variable does), so large buffers go back to the OS
    when freed. :func:`mapped_large_buffers` applies it to a block of work only (what
    :meth:`gem_assets.lib.teacher.embed.SentenceEncoder.encode` does).

    Parameters
    ----------
    threshold_bytes : int
        Allocations of this size or more are mmapped (glibc caps it at 32 MiB on 64-bit).

    Returns
    -------
    bool
        Whether glibc accepted the setting (False off glibc: nothing changes).

    Raises
    ------
    ValueError
        If ``threshold_bytes`` is not in [4096, 32 MiB].
    """
    import ctypes

    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int) or \
            not 4096 <= threshold_bytes <= 32 << 20:
        raise ValueError(f"threshold_bytes must be an int in [4096, 33554432] (32 MiB), got {threshold_bytes!r}")
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))


@contextlib.contextmanager
def mapped_large_buffers(threshold_bytes: int = 1 << 20):
    """Within the block, allocations of ``threshold_bytes`` or more get their own mmap; afterwards
    glibc serves buffers up to 32 MiB from its heap again.

    For a transformer's forward passes (the sentence encoder's batches): their multi-MiB activations
    are then unmapped when freed instead of fragmenting the heap (see :func:`fix_mmap_threshold`).
    Left in place for the rest of the process, the 1 MiB threshold makes every later large tensor
    a fresh mapping whose pages fault in on first touch: proxy-LM training (d_model 128, context
    256, batch 32, 60 steps) ran 1.4x slower with it (100.6 and 102.7 s against 68.8 and 73.1 s,
    9.6 million page faults against 0.2-0.3 million; 2026-11-27, machine shared) and a fresh
    100,000 x 64 float32 matrix took ~16 ms against ~2 ms. So on exit the thresholds become those
    glibc's own dynamic adjustment reaches after freeing a 32 MiB block: mmap threshold 32 MiB, trim
    threshold 64 MiB (glibc has no call that turns the dynamic adjustment back on).

    Yields whether glibc accepted the settings (False off glibc: nothing changes).
    """
    ok = fix_mmap_threshold(threshold_bytes)
    try:
        yield ok
    finally:
        if ok:
            libc = _glibc()
            libc.mallopt(_M_MMAP_THRESHOLD, _DYNAMIC_MMAP_CEILING)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _DYNAMIC_MMAP_CEILING)


def release_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``).

    A long-lived process that runs one shard after another (``make run`` in process, a Dagster
    worker) frees each shard's buffers, but glibc keeps freed pages in its arenas, and their
    fragmentation made the resident set creep up by a few MiB per shard run with the MiniLM
    embedder (measured: 692 -> 724 MiB over 20 batches of 48 articles without, 619 -> 634 MiB
    with a trim after each; docs/scaling.md). The shard-level library calls end with this.

    Returns
    -------
    bool
        Whether ``malloc_trim`` ran (False off glibc: then only the garbage collection happened).
    """
    import ctypes
    import gc

    gc.collect()
    libc = _glibc()
    if libc is None:  # not glibc (musl, macOS): nothing to trim
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim(0)
    return True
