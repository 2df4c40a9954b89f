"""Mixing assets: proxy corpus, DoReMi and RegMix weights, the curated mixture.

- ``proxy_corpus``: every document of the shards that ``domain_stats`` counted, with its student
  domain, split per domain by document (seeded) into train and validation byte streams; the
  target stream (RegMix's objective) is the held-out documents of the whole corpus, or of one
  source label (``GEM_MIX_TARGET``). ``work/proxy_corpus/``.
- ``doremi_weights``: DoReMi on the train streams -> ``outputs/weights/doremi.json``.
- ``regmix_runs``: RegMix's proxy runs (mixtures and target losses) -> ``work/regmix_runs/``.
- ``regmix_weights``: the regressor and the proposed mixture -> ``outputs/weights/regmix.json``.
- ``curated_mixture``: documents sampled per the weights of ``GEM_MIXER`` to the token budget
  (``GEM_MIXTURE_TOKENS``), never beyond the epoch cap -> ``outputs/mixture/`` (Parquet shards
  and ``manifest.json``).

Proxy models (``GEM_PROXY``, resolved by ``Settings.effective_proxy``): ``ngram`` counts an
interpolated byte n-gram model per mixture (``lib/mixing/count_proxy.py``; about a second a proxy on a
CPU), and DoReMi is played in rounds on them; ``transformer`` trains small byte transformers
(``lib/mixing/regmix.py``, ``lib/mixing/doremi.py``; online Group DRO), which needs a GPU to learn enough for
its losses to rank mixtures. ``auto`` is ``transformer`` when CUDA is available, else ``ngram``.

Tokens are UTF-8 bytes (plus one separator per document), the proxy models' vocabulary.
Fingerprints chain: proxy corpus <- ``domain_stats`` fingerprint + split parameters; each
weight asset <- proxy corpus (or runs) + its parameters; curated mixture <- ``domain_stats``,
the chosen weights and the mixture parameters. ``make run`` reruns ``mixing_job`` when one is stale.
"""

from gem_assets.defs.mixing.common import MIXING_EXPERIMENT, mixing_fingerprints
from gem_assets.defs.mixing.curated import curated_mixture
from gem_assets.defs.mixing.doremi import doremi_weights
from gem_assets.defs.mixing.proxy import proxy_corpus
from gem_assets.defs.mixing.regmix import regmix_runs, regmix_weights

__all__ = ["proxy_corpus", "doremi_weights", "regmix_runs", "regmix_weights", "curated_mixture", "MIXING_ASSETS",
           "MIXING_EXPERIMENT", "mixing_fingerprints"]

MIXING_ASSETS = [proxy_corpus, doremi_weights, regmix_runs, regmix_weights, curated_mixture]
