"""Generate a target modality for patients from the modalities they have.

Assembles what is available (a models folder, or the store of installed artifacts): the
encoders of the conditioning modalities and of the target, then either the experts
``m->target`` for every available ``m`` (Coherent Denoising) or the masked multi-condition
model ``multi->target``, and runs :func:`cohere.sampling.generate`.

    result = generate_missing(cohort, target="cna", have=["rnaseq", "rppa"],
                              source=ModelSource.folder("models/"), draws=10, seed=0)
    result.to_frame()                   # one row per (sample, draw), latent columns
    result.to_frame(decode=True)        # features on the target's modelled scale
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import read_config
from .cohort import Cohort
from .encoders import Encoder, latent_columns, load_encoder
from .errors import CohereError
from .experts import Expert, MultiConditionModel, list_models, load_model
from .modalities import Imputation, registry
from .sampling import METHODS, Generation, generate

WEIGHTINGS = ("inverse", "softmax", "uniform")
DEFAULT_WEIGHTING = "inverse"
DEFAULT_SAMPLER = "ddim"
DEFAULT_STEPS = 20
DEFAULT_ETA = 1.0


# ---------------------------------------------------------------- where models come from


@dataclass
class ModelSource:
    """A models folder (``MODELS/encoders/<m>``, ``MODELS/experts/<id>``) or the store."""

    name: str
    encoder_folders: dict[str, Path]
    model_folders: dict[str, Path]
    hint: str

    @classmethod
    def folder(cls, models: str | os.PathLike) -> "ModelSource":
        models = Path(models)
        enc = {p.name: p for p in sorted((models / "encoders").glob("*")) if (p / "config.json").is_file()}
        exp = {read_config(p)["id"]: p for p in list_models(models)}
        return cls(str(models), enc, exp, f"cohere experts train ID --cohort DIR --models {models}")

    @classmethod
    def store(cls, home: str | os.PathLike | None = None) -> "ModelSource":
        from .store import Store

        s = Store(home)
        return cls(f"the store {s.home}", dict(s.encoders()), dict(s.experts()),
                   "cohere experts add ID")

    def encoder(self, modality: str) -> Encoder:
        if modality not in self.encoder_folders:
            raise CohereError(f"no {modality!r} encoder in {self.name}; train or install it first "
                              f"(have: {', '.join(self.encoder_folders) or 'none'})")
        return load_encoder(self.encoder_folders[modality])

    def model(self, model_id: str, encoders: dict[str, Encoder]):
        if model_id not in self.model_folders:
            raise CohereError(f"no model {model_id!r} in {self.name}; get it with "
                              f"'{self.hint.replace('ID', model_id)}'")
        return load_model(self.model_folders[model_id], encoders)


# ---------------------------------------------------------------- weights


def consensus_weights(experts: list[Expert], weighting: str = DEFAULT_WEIGHTING,
                      explicit: dict[str, float] | None = None) -> list[float]:
    """Non-negative weights summing to one, from each expert's validation loss.

    "inverse": w_i proportional to 1 / loss_i (the paper's text); "softmax": softmax of
    1 / loss_i (the paper's code); "uniform"; or ``explicit`` {expert id: weight}.
    """
    if explicit is not None:
        missing = [e.id for e in experts if e.id not in explicit]
        if missing:
            raise CohereError(f"explicit weights lack expert {missing[0]!r}; give one per expert")
        w = np.array([float(explicit[e.id]) for e in experts])
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise CohereError("explicit weights must be finite, >= 0 and not all zero")
        return list(w / w.sum())
    if weighting not in WEIGHTINGS:
        raise CohereError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    if weighting == "uniform":
        return [1.0 / len(experts)] * len(experts)
    losses = np.array([e.val_loss for e in experts], dtype=float)
    if not (np.isfinite(losses).all() and (losses > 0).all()):
        raise CohereError("an expert has no positive validation loss recorded; use --weighting uniform")
    inv = 1.0 / losses
    w = inv if weighting == "inverse" else np.exp(inv - inv.max())
    return list(w / w.sum())


# ---------------------------------------------------------------- the result


@dataclass
class GenerationResult:
    """Generated target latents for ``samples``: K draws each, their mean and variance."""

    target: str
    samples: pd.Index
    generation: Generation
    method: str
    models: list[str]
    weights: list[float]
    target_encoder: Encoder
    settings: dict = field(default_factory=dict)
    imputation: dict[str, Imputation] = field(default_factory=dict)   # per condition: what was imputed

    @property
    def draws(self) -> np.ndarray:          # (K, n, d)
        return self.generation.draws.cpu().numpy()

    @property
    def mean(self) -> np.ndarray:           # (n, d)
        return self.generation.mean.cpu().numpy()

    @property
    def variance(self) -> np.ndarray:       # (n, d)
        return self.generation.variance.cpu().numpy()

    def diagnostics(self) -> pd.DataFrame:
        """Per sample: draws accepted, mean attempts, mean incoherent-step fraction, variance,
        and per condition ``<m>_imputed``, the fraction of its encoder's features imputed."""
        g = self.generation
        return pd.DataFrame({
            "accepted": g.accepted.float().mean(0).cpu().numpy(),
            "attempts": g.attempts.float().mean(0).cpu().numpy(),
            "bad_step_fraction": g.bad_fraction.mean(0).cpu().numpy(),
            "latent_variance": self.variance.mean(1),
            **{f"{m}_imputed": r.fraction_per_sample.reindex(self.samples).to_numpy()
               for m, r in self.imputation.items()},
        }, index=self.samples)

    def to_frame(self, decode: bool = False, aggregate: bool = False) -> pd.DataFrame:
        """One row per (sample, draw) — or per sample with ``aggregate`` (the mean of the
        draws) — with latent columns ``<target>.zNN`` or, with ``decode``, the target's features."""
        K, n, d = self.draws.shape
        values = self.mean[None] if aggregate else self.draws                     # (K', n, d)
        flat = values.reshape(-1, d)
        if decode:
            table = self.target_encoder.decode(flat)
        else:
            table = pd.DataFrame(flat, columns=[f"{self.target}.{c}" for c in latent_columns(d)])
        k = values.shape[0]
        table.insert(0, "sample", np.tile(self.samples.to_numpy(), k))
        if not aggregate:
            table.insert(1, "draw", np.repeat(np.arange(k), n))
        diag = self.diagnostics()
        for col in ("accepted", "latent_variance") if aggregate else ():
            table[col] = diag[col].to_numpy()
        return table


# ---------------------------------------------------------------- the job


def generate_missing(
    cohort: Cohort,
    target: str,
    have: list[str],
    source: ModelSource,
    method: str = "coherent",
    patients: list[str] | None = None,
    draws: int = 1,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = DEFAULT_STEPS,
    eta: float = DEFAULT_ETA,
    seed: int = 0,
    weighting: str = DEFAULT_WEIGHTING,
    weights: dict[str, float] | None = None,
    experts: list[str] | None = None,
    threshold: float = 1.0,
    fraction: float = 0.10,
    attempts: int = 10,
    device: str = "cpu",
    allow_unconditional: bool = False,
    n_unconditional: int | None = None,
    clip: bool = True,
) -> GenerationResult:
    """Generate ``target`` for every patient that has all of ``have`` (or ``patients``).

    ``clip`` clamps the x_0 estimate at every step to the target's training range recorded
    in the models (without it about 1% of few-step trajectories run away).
    """
    if method not in ("coherent", "multi"):
        raise CohereError(f"unknown method {method!r}; expected coherent or multi")
    if sampler not in METHODS:
        raise CohereError(f"unknown sampler {sampler!r}; expected one of {', '.join(METHODS)}")
    have = list(dict.fromkeys(have))
    registry.get(target)  # an unknown modality is named as such, with the known ones
    if target in have:
        raise CohereError(f"--have includes the target {target!r}; condition on other modalities")
    if not have and not allow_unconditional:
        raise CohereError("no conditioning modality given: unconditional generation can reproduce "
                          "training patients' data; pass --allow-unconditional to do it anyway")
    if not have and method == "coherent":
        raise CohereError("Coherent Denoising needs at least one condition (experts are conditional); "
                          "use --method multi for unconditional generation")
    for m in have:
        if m not in cohort.tables:
            raise CohereError(f"--have {m!r}: the cohort has no {m!r} table (it has "
                              f"{', '.join(cohort.modalities)})")
    encoders = {m: source.encoder(m) for m in [*have, target]}

    if have:
        ids = cohort.samples(have)
        if patients is not None:
            unknown = [p for p in patients if p not in set(ids)]
            if unknown:
                raise CohereError(f"patient {unknown[0]!r} does not have all of {', '.join(have)} "
                                  f"({len(unknown)} such); drop it or change --have")
            ids = pd.Index(list(dict.fromkeys(patients)), name="sample")
        if len(ids) == 0:
            raise CohereError(f"no patient has all of {', '.join(have)}")
        conds = {m: torch.tensor(encoders[m].encode_cohort(cohort, ids).to_numpy())
                 for m in have}
        imputation = {m: encoders[m].imputation_ for m in have}
    else:
        n = n_unconditional or (len(patients) if patients else None)
        if not n:
            raise CohereError("unconditional generation needs a number of samples (--n-samples)")
        ids = pd.Index([f"synthetic-{i:05d}" for i in range(n)], name="sample")
        conds, imputation = {}, {}

    if method == "coherent":
        ids_wanted = experts or [f"{m}->{target}" for m in have]
        models = [source.model(i, encoders) for i in ids_wanted]
        for e in models:
            if not isinstance(e, Expert) or e.target != target or e.source not in have:
                raise CohereError(f"{e.id}: not an expert from one of {', '.join(have)} to {target}")
        w = consensus_weights(models, weighting, weights)
        keep = [(e, wi) for e, wi in zip(models, w) if wi > 0]   # a zero weight has no effect
        members = [e.to(device).member({e.source: conds[e.source]}, weight=wi) for e, wi in keep]
        used, w = [e.id for e, _ in keep], [wi for _, wi in keep]
        schedule = keep[0][0].schedule
        # the x_0 clamp: the widest training range of the target among the experts
        bounds = (torch.stack([e.x0_bounds[0] for e, _ in keep]).amin(0),
                  torch.stack([e.x0_bounds[1] for e, _ in keep]).amax(0))
    else:
        multi = source.model(f"multi->{target}", encoders)
        if not isinstance(multi, MultiConditionModel):
            raise CohereError(f"multi->{target} is not a multi-condition model")
        extra = sorted(set(have) - set(multi.sources))
        if extra:
            raise CohereError(f"multi->{target} was not trained with {extra[0]!r} as a condition")
        members = [multi.to(device).member(conds, n=len(ids))]
        used, w, schedule, bounds = [multi.id], [1.0], multi.schedule, multi.x0_bounds
    schedule = schedule.to(device)
    steps = None if sampler == "ddpm" else steps
    t0 = time.perf_counter()
    gen = generate(members, schedule, len(ids), draws=draws, method=sampler, steps=steps, eta=eta,
                   seed=seed, threshold=threshold, fraction=fraction, attempts=attempts,
                   x0_bounds=None if not clip else bounds)
    settings = {"sampling_seconds": time.perf_counter() - t0, "sampler": sampler, "steps": steps, "eta": eta, "seed": seed, "draws": draws,
                "threshold": threshold, "fraction": fraction, "attempts": attempts, "clip": clip,
                "weighting": weighting if weights is None else "explicit",
                "imputation": {m: r.to_dict() for m, r in imputation.items()}}
    return GenerationResult(target, ids, gen, method, used, w, encoders[target], settings, imputation)
