"""The code location of the distributed tests, loadable from this file by worker processes.

Executors other than ``in_process`` run steps in other processes (multiprocess, Dask workers),
which load the definitions again from a code pointer to this file: resources come from the
``GEM_*`` environment the test sets (smoke profile, a temporary ``GEM_HOME``), the embedder is
the deterministic hashing embedder of conftest.py, and MLflow is off.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import HashingEmbedder  # noqa: E402
from gem_assets.definitions import build_definitions  # noqa: E402
from gem_assets.resources import GemConfig, MlflowTracker  # noqa: E402

defs = build_definitions(gem=GemConfig.from_env(), embedder=HashingEmbedder(), mlflow=MlflowTracker(enabled=False))
