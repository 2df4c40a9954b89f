"""glibc's mmap threshold is lowered only around the sentence encoder's forward passes: inside the
block every large buffer is its own mapping (handed back on free), after it large buffers are reused
from the heap again (later work, e.g. proxy-LM training, must not fault in fresh pages per tensor)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import glibc_default_env

_PROBE = """
import ctypes
from gem_assets.lib.util import allocator

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
info = getattr(libc, "mallinfo2", None) or libc.mallinfo   # mallinfo2 from glibc 2.33
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t if info is getattr(libc, "mallinfo2", None) else ctypes.c_int)
                for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
info.restype = Info

def mapped(size):  # how many more bytes glibc holds in mmapped blocks while a block of `size` bytes is live
    before = info().hblkhd
    p = libc.malloc(size)
    held = info().hblkhd - before
    libc.free(p)
    return held

with allocator.mapped_large_buffers() as ok:
    inside = [mapped(s) for s in (2 << 20, 24 << 20)]
after = [mapped(s) for s in (2 << 20, 24 << 20)]
print(ok, *inside, *after)
"""


def test_large_buffers_are_mapped_inside_the_block_and_come_from_the_heap_after_it():
    from gem_assets.lib.util import allocator

    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env=glibc_default_env()).stdout.split()
    glibc = allocator._glibc() is not None
    assert out[0] == str(glibc)           # off glibc the block changes nothing and says so
    if not glibc:
        pytest.skip("not glibc: mapped_large_buffers is a no-op (checked above); the rest measures glibc's malloc")
    in_2m, in_24m, after_2m, after_24m = map(int, out[1:])
    # inside: a 2 MiB and a 24 MiB block are each their own mapping (handed back to the OS on free);
    # after: both come from the heap again (glibc's threshold is 32 MiB), so later large tensors
    # reuse freed heap pages instead of faulting in a fresh mapping each time.
    assert in_2m >= 2 << 20 and in_24m >= 24 << 20, out
    assert after_2m == 0 and after_24m == 0, out


def test_the_encoder_lowers_the_threshold_only_while_it_encodes(monkeypatch):
    """SentenceEncoder.encode runs the real model's batches inside mapped_large_buffers, and loading the
    model does not touch glibc's settings. The model is the suite's offline teacher (all-MiniLM-L6-v2,
    loaded as test_defs_e2e loads it: the same arguments hit the loader's cache)."""
    from gem_assets.lib.util import allocator
    from gem_assets.lib.teacher import embed

    calls = []

    class Ctx:
        def __enter__(self):
            calls.append("enter")
            return True

        def __exit__(self, *exc):
            calls.append("exit")
            return False

    monkeypatch.setattr(allocator, "mapped_large_buffers", lambda *a, **k: Ctx())
    monkeypatch.setattr(allocator, "fix_mmap_threshold", lambda *a, **k: calls.append("fixed") or True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = embed.SentenceEncoder(batch_size=2, max_seq_length=128, device="cpu")
    enc.load()
    embed._load_model.__wrapped__(enc.model_path, enc.device, enc.max_seq_length)  # the loader itself, cached or not
    assert calls == []
    model = enc._model
    forward = model.encode   # the model's own encode, recorded batch by batch
    monkeypatch.setattr(model, "encode", lambda texts, **kw: calls.append(len(texts)) or forward(texts, **kw))
    texts = ["the match ended in a late goal", "bread from the oven", "shares fell"]
    vecs = enc.encode(texts, progress=False)
    assert calls == ["enter", 2, 1, "exit"]
    # the vectors are the model's own, in input order, unit norm
    want = forward(texts, convert_to_numpy=True, normalize_embeddings=True)
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(vecs, want, atol=1e-5)
