"""Training a set of models: one :class:`Job` per model, run by an executor, each artifact
written atomically into the models folder as soon as its model is trained.

    pairs = plan(["rnaseq->cna"], False, ["cna", "rnaseq", "rppa"])   # or plan([], True, ...) for --all
    jobs = make_jobs(pairs, latents, encoders, config)
    outcome = train_jobs(jobs, "models/", SerialExecutor())          # cohere.executors

A job holds everything its model is fitted from (the training latents, the encoders'
digests, the recipe), so that it runs in this process or in a worker on another machine with
the same result: the weights depend on the job only, never on where or in what order it runs
(each job sets torch's threads to its recipe's ``threads`` for all of its work). A worker
returns the packed artifact (bytes); the process that owns the models folder writes it, so
workers need no access to that folder, a failed or killed worker leaves nothing behind, and
the models finished before a failure are kept.

A job's *request* (its recipe, the search size and a sha256 of its training data) is
recorded in the artifact (``training.request``). A re-run skips every model whose artifact
loads cleanly, was trained with the same encoders and holds the same request: it trains only
what is missing or differs.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .artifacts import load_artifact, write_artifact
from .diffusion.train import TrainConfig, cpu_threads
from .errors import CohereError
from .experts import Expert, MultiConditionModel, covariate_values, covariates_digest, model_dir, parse_id, residuals_digest

MIN_PAIRED = 20  # training samples with both modalities that an expert needs at least


def plan(ids: Sequence[str], all_: bool, modalities: Sequence[str]) -> list[tuple[str, str]]:
    """(source or 'multi', target) pairs to train: the given model ids, or with ``all_`` every
    ordered pair of ``modalities`` and one multi-condition model per target."""
    modalities = list(modalities)
    if all_ == bool(ids):
        raise CohereError("give model ids (e.g. rnaseq->cna, multi->cna) or --all")
    if all_:
        if len(modalities) < 2:
            raise CohereError(f"--all needs at least two modalities with encoders; found {', '.join(modalities) or 'none'}")
        pairs = [(s, t) for t in modalities for s in modalities if s != t]
        return pairs + [("multi", t) for t in modalities]
    out = []
    for i in ids:
        s, t = parse_id(i)
        for m in ([t] if s == "multi" else [s, t]):
            if m not in modalities:
                raise CohereError(f"{i}: no {m!r} in the cohort with an encoder (available: "
                                  f"{', '.join(modalities)}); train it with 'cohere encoders train'")
        if s == "multi" and len(modalities) < 2:
            raise CohereError(f"{i}: a multi-condition model needs at least one other modality with an encoder")
        if (s, t) not in out:
            out.append((s, t))
    return out


def versions() -> dict[str, str]:
    """The versions a model's weights depend on; a worker's must equal this process's."""
    import torch

    return {"cohere": __version__, "torch": torch.__version__, "numpy": np.__version__}


@dataclass
class Job:
    """One model to train. ``latents``: the training latents it needs, {modality: DataFrame};
    for a multi-condition model (``source == "multi"``) the target's and every source's, the
    sources reindexed to the target's samples (a row of NaN where a sample lacks one)."""

    source: str  # a modality, or "multi"
    target: str
    latents: dict[str, pd.DataFrame]
    encoders: dict[str, str]  # {modality: digest}
    config: TrainConfig
    search: int = 0  # random search over this many configurations (0 or 1: none)
    training: dict = field(default_factory=dict)  # recorded in the artifact (cohort, seed, description)
    residuals: pd.DataFrame | None = None  # experts: the target's feature_residuals on the same rows, or None
    target_encoder: object = None  # experts with residuals: the target's encoder, for the feature stacking
    covariates: np.ndarray | None = None  # experts: the rows' cancer types ("" = unknown), for the stacking, or None

    @property
    def id(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def sources(self) -> list[str]:
        return sorted(m for m in self.latents if m != self.target) if self.source == "multi" else [self.source]

    @property
    def budget(self) -> int:
        """Optimizer steps at most (all configurations of a search)."""
        return self.config.steps * max(1, self.search)

    def request(self) -> dict:
        """What the model is a function of, beside its encoders: the recipe, the search size and
        a sha256 of the training latents (samples, values, in order)."""
        h = hashlib.sha256()
        for m in [self.target, *self.sources]:
            frame = self.latents[m]
            h.update(f"{m}\0{len(frame)}\0".encode())
            h.update("\0".join(map(str, frame.index)).encode())
            h.update(np.ascontiguousarray(frame.to_numpy(np.float32)).tobytes())
        out = {"recipe": self.config.to_dict(), "search": self.search if self.search > 1 else 0,
               "data_sha256": h.hexdigest()}
        if self.source != "multi":
            out["stacking"] = True  # experts fit the stacking of their mean (artifacts before it: retrained)
        if self.residuals is not None:
            out["residuals_sha256"] = residuals_digest(self.residuals)
            if self.target_encoder is not None:
                out["feature_stacking"] = True
        if self.covariates is not None and self.source != "multi":
            out["covariates_sha256"] = covariates_digest(self.covariates)
        return out

    def fit(self, progress: Callable | None = None, run_trials: Callable | None = None):
        """Train the model (in this process, with torch's threads set to the recipe's)."""
        info = {**self.training, "request": self.request()}
        with cpu_threads(self.config):  # the post-fit calibration too, not only train_denoiser's loop
            if self.source == "multi":
                return MultiConditionModel.fit(self.target, self.latents[self.target],
                                               {m: self.latents[m] for m in self.sources}, self.encoders,
                                               self.config, search=self.search, progress=progress, training=info,
                                               run_trials=run_trials)
            return Expert.fit(self.source, self.target, self.latents[self.source], self.latents[self.target],
                              self.encoders, self.config, search=self.search, progress=progress, training=info,
                              run_trials=run_trials, target_residuals=self.residuals,
                              target_encoder=self.target_encoder, covariates=self.covariates)


def feature_residuals(encoder, table: pd.DataFrame, latents: pd.DataFrame) -> pd.DataFrame:
    """What ``encoder``'s latent cannot represent, on the rows of ``latents`` (its encoding of
    them): the features of ``table`` on the modelled scale, a missing cell filled with its
    column's mean over these rows (0 where a column has none), minus decode(latents). Experts
    fit their residual head to it (:func:`cohere.experts.fit_head`)."""
    truth = encoder.target_features(table.loc[latents.index])
    filled = truth.fillna(truth.mean()).fillna(0.0).to_numpy(np.float64)
    return pd.DataFrame((filled - encoder.decode(latents).to_numpy(np.float64)).astype(np.float32),
                        index=latents.index, columns=truth.columns)


def make_jobs(pairs: Iterable[tuple[str, str]], latents: Mapping[str, pd.DataFrame], encoders: Mapping,
              config: TrainConfig, search: int = 0, cohort_name: str = "",
              tables: Mapping[str, pd.DataFrame] | None = None,
              clinical: pd.DataFrame | None = None) -> list[Job]:
    """One job per (source or 'multi', target) pair, from the training split's latents
    {modality: DataFrame} and the encoders ({modality: encoder or digest}). Every pair is
    checked before any job is made: an expert needs ``MIN_PAIRED`` samples with both. With the
    cohort's ``tables`` {modality: DataFrame} (and encoder objects), experts also get the
    target's :func:`feature_residuals` on their rows, for their residual head, and the
    target's encoder, for their feature stacking. With the cohort's ``clinical`` table and a
    known ``cancer_type`` for any of an expert's rows, its stacking also sees the type
    (:class:`cohere.experts.TypedStackMean`)."""
    digest = {m: (e if isinstance(e, str) else e.digest) for m, e in encoders.items()}
    residuals: dict[str, pd.DataFrame] = {}

    def residual(t: str) -> pd.DataFrame | None:
        enc = encoders.get(t)
        if tables is None or t not in tables or isinstance(enc, str) or enc is None:
            return None
        if t not in residuals:
            residuals[t] = feature_residuals(enc, tables[t], latents[t])
        return residuals[t]

    jobs = []
    for s, t in pairs:
        info = {"cohort": cohort_name, "seed": config.seed}
        if s == "multi":
            target = latents[t]
            sources = sorted(m for m in latents if m != t)
            if not sources:
                raise CohereError(f"multi->{t}: a multi-condition model needs the latents of at least one other modality")
            data = {t: target, **{m: latents[m].reindex(target.index) for m in sources}}
            info["description"] = (f"{len(target)} training samples of cohort '{cohort_name}' with {t}; "
                                   f"sources {', '.join(sources)} with their real missingness.")
        else:
            both = latents[s].index.intersection(latents[t].index)
            if len(both) < MIN_PAIRED:
                raise CohereError(f"{s}->{t}: only {len(both)} training samples have both {s} and {t}; "
                                  f"at least {MIN_PAIRED} are needed")
            data = {s: latents[s].loc[both], t: latents[t].loc[both]}
            info["description"] = f"{len(both)} training samples of cohort '{cohort_name}' with both {s} and {t}."
        r = residual(t) if s != "multi" else None
        types = covariate_values(clinical, data[t].index) if s != "multi" and clinical is not None else None
        if types is not None and not (types != "").any():
            types = None
        jobs.append(Job(s, t, data, {m: digest[m] for m in data}, config, search, info,
                        None if r is None else r.loc[data[t].index], None if r is None else encoders[t], types))
    return jobs


def longest_first(jobs: Sequence[Job]) -> list[int]:
    """The order, longest first, in which an executor with several workers starts ``jobs``
    (indices into them), so that the last model to finish is a short one. Early stopping makes
    a model's length unknown in advance; this guesses it from what sets the cost of each
    optimizer step and evaluation: the search size, then multi-condition models (several
    conditions, every presence pattern calibrated) before experts, then the training rows.
    On the 9 TCGA models the multi-condition models' fits took 184-341 s (the longest of all
    is one) and the experts' 86-260 s."""
    def cost(i: int) -> tuple:
        job = jobs[i]
        return (max(1, job.search), job.source == "multi", len(job.latents[job.target]))
    return sorted(range(len(jobs)), key=cost, reverse=True)


@dataclass
class Trained:
    """What a job sends back: the packed artifact, its metrics and where it was trained."""

    id: str
    digest: str
    files: dict[str, bytes]
    metrics: dict
    n_train: int
    seconds: float
    versions: dict[str, str]


def run_job(job: Job, progress: Callable | None = None, run_trials: Callable | None = None) -> Trained:
    """Train one job and pack its artifact (what an executor runs, here or in a worker)."""
    model = job.fit(progress, run_trials)
    digest, files = model.pack()
    return Trained(job.id, digest, files, model.metrics, int(model.training["n_train"]), float(model.fit_seconds or 0),
                   versions())


def up_to_date(job: Job, models: str | Path) -> str | None:
    """The digest of the job's artifact in ``models`` if it loads cleanly, was trained on the
    same encoders and records the same request; else None."""
    folder = model_dir(models, job.id)
    if not (folder / "config.json").is_file():
        return None
    try:
        art = load_artifact(folder, kind="multi" if job.source == "multi" else "expert")
    except CohereError:
        return None
    cfg = art.config
    same = cfg.get("encoders") == job.encoders and cfg.get("training", {}).get("request") == job.request()
    return art.digest if same else None


@dataclass
class Outcome:
    saved: dict[str, str] = field(default_factory=dict)  # {id: digest} trained and written by this run
    skipped: dict[str, str] = field(default_factory=dict)  # {id: digest} already up to date
    failed: dict[str, str] = field(default_factory=dict)  # {id: one-line reason}
    seconds: dict[str, float] = field(default_factory=dict)  # {id: training wall time}

    def check(self, models: str | Path) -> None:
        """Raise one line naming the failures (what was saved stays)."""
        if self.failed:
            n = len(self.saved) + len(self.skipped)
            kept = f"{n} other model(s) are saved in {models}; " if n else ""
            reasons = "; ".join(f"{i}: {why}" for i, why in self.failed.items())
            raise CohereError(f"{len(self.failed)} model(s) failed ({reasons}); {kept}re-run the same command to "
                              "train only what is missing")


def train_jobs(jobs: Sequence[Job], models: str | Path, executor, force: bool = False,
               log: Callable[[str], None] = print, progress=None, describe: Callable | None = None) -> Outcome:
    """Run the jobs that are not up to date (all with ``force``) on ``executor`` and write each
    artifact into ``models`` as it arrives. ``progress(label, total)``: a context manager
    yielding ``update(done)`` (cohere.cli.common.progress), driven in models (a fraction of one
    while a model trains here). ``describe(metrics)``: extra text for a model's line. Failures
    are collected in the outcome, not raised: call :meth:`Outcome.check`."""
    out, todo = Outcome(), []
    for job in jobs:
        digest = None if force else up_to_date(job, models)
        if digest:
            out.skipped[job.id] = digest
            log(f"{job.id}: up to date (same encoders, recipe and training data), digest {digest[:12]}; skipped")
        else:
            todo.append(job)
    if not todo:
        return out
    here = versions()
    done = [0.0] * len(todo)
    bar = progress(f"training {len(todo)} model(s) on {executor.name}", len(todo)) if progress else (
        contextlib.nullcontext(lambda _: None))
    with bar as update:
        def report(i: int, fraction: float) -> None:
            done[i] = max(done[i], min(fraction, 1.0))
            update(sum(done))

        for i, result in executor.run(todo, report):
            job = todo[i]
            report(i, 1.0)
            if isinstance(result, Trained) and result.versions != here:
                result = (f"trained with {result.versions} on the worker, but this process has {here}; install "
                          "the same versions on every worker")
            if not isinstance(result, Trained):
                out.failed[job.id] = str(result)
                log(f"{job.id}: failed: {result}")
                continue
            folder = model_dir(models, job.id)
            write_artifact(folder, result.files)
            out.saved[job.id], out.seconds[job.id] = result.digest, result.seconds
            extra = describe(result.metrics) if describe else ""
            log(f"{job.id}: trained  n_train={result.n_train}  {result.seconds:.0f}s  saved {folder}  "
                f"digest {result.digest[:12]}  {extra}".rstrip())
    return out
