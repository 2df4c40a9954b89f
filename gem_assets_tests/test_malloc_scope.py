"""glibc's mmap threshold is lowered only around the sentence encoder's forward passes: inside the
block every large buffer is its own mapping (handed back on free), after it large buffers are reused
from the heap again (later work, e.g. proxy-LM training, must not fault in fresh pages per tensor)."""

from __future__ import annotations

import subprocess
import sys

from conftest import glibc_default_env

_PROBE = """
import resource
import torch
from gem_assets.lib import streaming

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def cycle():  # ten times: allocate, touch and free a 24 MiB tensor
    f = faults()
    for _ in range(10):
        a = torch.ones(6 << 20)
        del a
    return faults() - f

with streaming.mapped_large_buffers() as ok:
    inside = cycle()
after = cycle()
print(ok, inside, after)
"""


def test_large_buffers_are_mapped_inside_the_block_and_reused_after_it():
    from gem_assets.lib import streaming

    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env=glibc_default_env()).stdout.split()
    glibc = streaming._glibc() is not None
    assert out[0] == str(glibc)           # off glibc the block changes nothing and says so
    if not glibc:
        return
    inside, after = int(out[1]), int(out[2])
    # inside, every one of the ten allocations faults in fresh pages; after it, the first one or two
    # (growing the heap), then the freed block is reused. Compared as a ratio, so that the page size
    # (4 KiB, or 2 MiB under transparent huge pages) does not matter: measured 61,497 vs 12,208 faults.
    assert inside > 0 and after * 3 <= inside, (inside, after)


def test_the_encoder_lowers_the_threshold_only_while_it_encodes(monkeypatch):
    """SentenceEncoder.encode runs its batches inside mapped_large_buffers, and loading the model
    no longer touches glibc's settings."""
    from gem_assets.lib import embed, streaming

    calls = []

    class Ctx:
        def __enter__(self):
            calls.append("enter")
            return True

        def __exit__(self, *exc):
            calls.append("exit")
            return False

    class Model:
        def encode(self, texts, **kwargs):
            calls.append(len(texts))
            import numpy as np

            return np.ones((len(texts), 3), np.float32)

        def get_sentence_embedding_dimension(self):
            return 3

    monkeypatch.setattr(streaming, "mapped_large_buffers", lambda *a, **k: Ctx())
    monkeypatch.setattr(streaming, "fix_mmap_threshold", lambda *a, **k: calls.append("fixed") or True)
    monkeypatch.setattr(embed, "_load_model", lambda *a, **k: Model())
    enc = embed.SentenceEncoder("unused", batch_size=2, device="cpu")
    enc.load()
    assert calls == []
    vecs = enc.encode(["a", "bb", "ccc"], progress=False)
    assert vecs.shape == (3, 3) and calls == ["enter", 2, 1, "exit"]
