"""Train what the evaluation needs, then run every experiment and write one report folder.

    train_models(cohort, "models/", ["cna", "rnaseq", "rppa"])     # encoders, 6 experts, 3 multi
    run_all(EvalData.load(cohort, "models/"), "reports/x", Plan())  # report.md, figures, CSV/JSON

Training uses the training split only (``Cohort.ids_in("train")``), the modality's default
encoder and the given :class:`~cohere.diffusion.train.TrainConfig` (default: the library's
recipe), exactly as ``cohere encoders train`` and ``cohere experts train --all`` do.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..cohort import Cohort
from ..diffusion.train import TrainConfig
from ..encoders import make_encoder
from ..executors import SerialExecutor
from ..plugins import get_modality
from ..training import make_jobs, plan, train_jobs
from . import experiments as E


def train_models(cohort: Cohort, models: str | Path, modalities: list[str], config: TrainConfig | None = None,
                 encoder_kwargs: dict | None = None, max_train: int | None = None, seed: int = 0,
                 log=print, executor=None) -> dict:
    """Fit encoders + every expert ``s->t`` + one multi model per target on the training split.
    ``max_train`` subsamples the training patients (quick runs). ``executor``: where the
    models train (cohere.executors; default serial). Returns seconds per artifact."""
    models = Path(models)
    config = config or TrainConfig(seed=seed)
    train_ids = cohort.ids_in("train", seed)
    if max_train and len(train_ids) > max_train:
        rng = np.random.default_rng(seed)
        train_ids = pd.Index(sorted(rng.choice(train_ids, max_train, replace=False)), name="sample")
    seconds, encoders, latents = {}, {}, {}
    for m in modalities:
        t0 = time.perf_counter()
        mod = get_modality(m)
        table = cohort.tables[m]
        tr = table.loc[table.index.intersection(train_ids)]
        extra = dict(encoder_kwargs or {}) if mod.encoder == "autoencoder" else {}
        enc = make_encoder(mod, cohort.input_forms.get(m), seed=seed, **extra).fit(tr)
        enc.save(models / "encoders" / m, {"train_r2": round(enc.reconstruction_r2(tr), 4)},
                 {"n_train": len(tr), "seed": seed})
        encoders[m], latents[m] = enc, enc.encode(tr)
        seconds[f"encoder {m}"] = round(time.perf_counter() - t0, 1)
        log(f"encoder {m}: {len(tr)} training samples, {seconds[f'encoder {m}']}s")
    jobs = make_jobs(plan([], True, modalities), latents, encoders, config,
                     cohort_name=cohort.path.name if cohort.path else "", tables=cohort.tables, clinical=cohort.clinical)
    outcome = train_jobs(jobs, models, executor or SerialExecutor(), force=True, log=log)
    outcome.check(models)
    seconds |= {i: round(s_, 1) for i, s_ in outcome.seconds.items()}
    return seconds


@dataclass
class Plan:
    """What :func:`run_all` runs and how big. ``skip``: experiment names to leave out."""

    draws: int = 10  # generation runs (draws per patient) of the signal, downstream and counterfactual experiments
    recon_draws: int = 50  # draws per patient of the reconstruction table (coverage, R^2 of the mean of K)
    completion_draws: int = 50  # draws per generated cell of the downstream completions (cohere complete's default):
    # MI pooled over all of them and the mean of all of them; the single-draw runs are the first ``draws``
    resamples: int = 2000  # paired bootstrap resamples of the test patients (downstream: generated minus KNN)
    privacy_runs: int = 10
    privacy_reference: int | None = 2000
    signal_trees: int = 500
    forests: E.ForestSettings = field(default_factory=E.ForestSettings)
    cf_modality: str = "rnaseq"
    cf_repeats: int = 10
    cf_orders: int = 30
    iterative: bool = True
    reducer: str = "auto"  # manifold map: umap (if installed) | pca
    seed: int = 0
    skip: tuple[str, ...] = ()


EXPERIMENTS = ("reconstruction", "feature_space", "manifold", "privacy", "signal", "downstream", "counterfactual")


def run_all(data: E.EvalData, out: str | Path, plan: Plan | None = None, context: dict | None = None,
            log=print) -> dict:
    """Run every experiment of ``plan`` and write ``out``/report.md, figures and raw numbers."""
    from . import report as R

    plan = plan or Plan()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, seconds = {}, {}
    t_start = time.perf_counter()

    def meta():
        return {"context": context or {}, "plan": _jsonable(asdict(plan)), "seconds": seconds,
                "n_test": len(data.test_ids), "n_train": {m: len(v) for m, v in data.train.items()},
                "forests": plan.forests.describe(), "timings": data.timings}

    def timed(name, fn):
        if name in plan.skip:
            return None
        t0 = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {seconds[name]}s")
        if name != "downstream forests":  # the report so far: a late failure loses nothing
            R.write_report(out, {**results, name: value}, meta())
        return value

    results["rank_histograms"] = {}
    results["reconstruction"] = timed("reconstruction", lambda: E.reconstruction(
        data, draws=plan.recon_draws, seed=plan.seed, iterative=plan.iterative, histograms=results["rank_histograms"]))
    results["feature_space"] = timed("feature_space", lambda: E.feature_space(data, draws=plan.recon_draws,
                                                                           seed=plan.seed))
    results["manifold"] = timed("manifold", lambda: E.manifold(data, seed=plan.seed, draws=plan.draws,
                                                                    reducer=plan.reducer))
    results["privacy"] = timed("privacy", lambda: E.privacy(
        data, runs=plan.privacy_runs, seed=plan.seed, max_reference=plan.privacy_reference))
    results["signal"] = timed("signal", lambda: E.signal(
        data, runs=plan.draws, trees=plan.signal_trees, seed=plan.seed))
    need_forests = "downstream" not in plan.skip or "counterfactual" not in plan.skip
    models = timed("downstream forests", lambda: E.DownstreamModels(data, plan.forests).fit()) \
        if need_forests else None
    results["downstream"] = timed("downstream", lambda: E.completion(data, models, runs=plan.draws, seed=plan.seed,
                                                                    draws=plan.completion_draws))
    if results["downstream"] is not None:
        results["downstream_ci"] = timed("downstream intervals", lambda: E.completion_against_knn(
            data, models, runs=plan.draws, seed=plan.seed, draws=plan.completion_draws, n_resamples=plan.resamples))
    if plan.cf_modality in data.modalities:
        results["counterfactual"] = timed("counterfactual", lambda: E.counterfactual(
            data, models, plan.cf_modality, repeats=plan.cf_repeats, orders=plan.cf_orders, draws=plan.draws,
            seed=plan.seed))
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    info = {**meta(), "downstream_train": {"stage": getattr(models, "n_stage_", None),
                                          "survival": getattr(models, "n_surv_", None)}}
    R.write_report(out, results, info)
    return {"results": results, "meta": info}


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))
