"""Shared fixtures: the real shared cohort (read in place, never written) and temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# the networks in tests are small: one thread is as fast and immune to oversubscription
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_COHORT = Path(os.environ.get("COHERE_SHARED_COHORT",
                                    REPO.parent / "shared" / "data" / "tcga-pancan"))


@pytest.fixture(scope="session")
def real_path() -> Path:
    if not (SHARED_COHORT / "split.csv").exists():
        pytest.fail(f"the shared TCGA cohort is missing at {SHARED_COHORT}; set COHERE_SHARED_COHORT")
    return SHARED_COHORT


@pytest.fixture(scope="session")
def real(real_path):
    """The real cohort restricted to the small tables (rppa, rnaseq) to keep tests fast."""
    from cohere.cohort import Cohort

    return Cohort.read(real_path, modalities=["rnaseq", "rppa"])


@pytest.fixture(scope="session")
def real_cna(real_path):
    from cohere.cohort import Cohort

    return Cohort.read(real_path, modalities=["cna"])


@pytest.fixture(scope="session")
def sim():
    from cohere.simulate import simulate_cohort

    return simulate_cohort(n_patients=400, seed=3)


TINY_MODS = ["cna", "rnaseq", "rppa"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(root, cohort): a simulated cohort of 1,000 patients (root/cohort) and tiny encoders
    plus the 9 models trained on it (root/models). Trained once per test session: the xdist
    workers share one folder under a file lock. Tests must not write into it."""
    from filelock import FileLock

    from cohere.simulate import simulate_cohort

    cohort, _ = simulate_cohort(n_patients=1000, seed=3, features={"cna": 60, "rnaseq": 60, "rppa": 40, "wsi": 0})
    base = tmp_path_factory.getbasetemp()
    # under xdist every worker's basetemp sits in this run's folder; without it, the run's own
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "tiny-models"
    with FileLock(str(shared / "tiny-models.lock")):
        if not (root / "done").exists():
            from cohere.diffusion.train import TrainConfig
            from cohere.evaluation.pipeline import train_models

            config = TrainConfig(steps=300, eval_every=100, batch_size=128, hidden=64, layers=2, time_dim=16,
                                 val_steps=5, ema_decay=0.95)
            cohort.write(root / "cohort")
            train_models(cohort, root / "models", TINY_MODS, config, {"max_epochs": 5, "hidden": (64,)},
                         log=lambda s: None)
            (root / "done").write_text("")
    return root, cohort


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    """Run the test under each of these umasks (restored afterwards)."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture(autouse=True)
def _builtin_plugins_only(monkeypatch):
    """Installed plugins (e.g. cohere-mirna in CI) stay out unless a test opts in."""
    from cohere import plugins

    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "")
    plugins.reset()
    yield
    plugins.reset()
