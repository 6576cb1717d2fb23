"""Diffusion experts C -> X and the masked multi-condition model multi -> X, as artifacts.

An ``Expert`` generates the standardised latent of a target modality X from the latent of
one source modality C (id ``"rnaseq->cna"``); a ``MultiConditionModel`` generates X from
any subset of its sources, absent ones masked (id ``"multi->cna"``). Both wrap a trained
``Denoiser`` and the ``NoiseSchedule`` it was trained with, and are saved as artifact folders
``MODELS/experts/<source>_to_<target>/`` (``multi_to_<target>`` for the multi model) whose
``config.json`` records the digests of the encoders whose latents they were trained on: the
latent-space contract, checked by :meth:`check_encoders`.

    expert = Expert.fit("rnaseq", "cna", rna_latents, cna_latents, encoders)
    expert.save(models / "experts" / expert.folder_name)
    draws = load_model(folder, encoders).sample(rna_latents_new, n_draws=10, seed=0)  # (10, n, 32)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import load_artifact, pack_artifact, read_config, render_card, write_artifact
from .atomic import is_temp
from .diffusion import Denoiser, DenoiserConfig, NoiseSchedule
from .diffusion.train import TrainConfig, TrainResult, random_search, split_validation, train_denoiser
from .errors import CohereError
from .ids import ARROW, parse_id
from .sampling import Member, recenter, sample_latents
from . import scores


def folder_name(model_id: str) -> str:
    """``"rnaseq->cna"`` -> ``"rnaseq_to_cna"``; ``"multi->cna"`` -> ``"multi_to_cna"``."""
    source, target = parse_id(model_id)
    return f"{source}_to_{target}"


def _digests(encoders: Mapping, modalities: Sequence[str]) -> dict[str, str]:
    out = {}
    for m in modalities:
        enc = encoders.get(m) if isinstance(encoders, Mapping) else None
        if enc is None:
            raise CohereError(f"no encoder given for modality {m!r}; the model records the digest of "
                              "every encoder whose latents it uses")
        out[m] = enc if isinstance(enc, str) else enc.digest
    return out


def _to_tensor(x, name: str, rows: int | None = None, dim: int | None = None) -> torch.Tensor:
    a = x.to_numpy(np.float32) if isinstance(x, pd.DataFrame) else np.asarray(x, np.float32)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim) or (rows is not None and a.shape[0] != rows):
        want = f"({rows if rows is not None else 'n'}, {dim if dim is not None else 'd'})"
        raise CohereError(f"{name}: expected latents of shape {want}, got {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a))


class RidgeMean:
    """The mean an expert's network is trained around (CARD, Han et al. 2022): a ridge
    regression of the target latent on the condition latent, x ~ W c + b, fitted on the
    expert's training rows (penalty by leave-one-out, ``sklearn.linear_model.RidgeCV``), and
    the training mean of the target where the condition is masked (the unconditional branch).
    The diffusion then only models the residual, so the mean of its draws starts from ridge's
    and the network spends its capacity on what a linear map cannot say (non-linear means,
    heteroscedastic and non-Gaussian spread). Tensors: ``mean.weight`` (d, c), ``mean.bias``
    (d,), ``mean.prior`` (d,)."""

    ALPHAS = tuple(np.logspace(-3, 3, 13))

    def __init__(self, weight, bias, prior):
        # contiguous: sklearn's coef_ is Fortran-ordered, and a matmul with a strided weight rounds
        # differently from one with the contiguous tensor that loading gives back
        self.weight, self.bias, self.prior = (torch.as_tensor(t, dtype=torch.float32).contiguous()
                                              for t in (weight, bias, prior))

    @classmethod
    def fit(cls, c: np.ndarray, x: np.ndarray) -> "RidgeMean":
        from sklearn.linear_model import RidgeCV

        m = RidgeCV(alphas=np.asarray(cls.ALPHAS)).fit(np.asarray(c, np.float64), np.asarray(x, np.float64))
        return cls(m.coef_.reshape(x.shape[1], c.shape[1]), m.intercept_, np.asarray(x, np.float64).mean(0))

    def __call__(self, conds, mask=None, types=None) -> torch.Tensor:
        """(n, d) offsets for the condition ``conds[0]`` (n, c) and the 0/1 mask (n, 1), None =
        present. ``types`` (the rows' cancer types) is for the typed ridges (:class:`TypedRidge`,
        :class:`TypedStackMean`) and does not matter here."""
        c = conds[0]
        w, b, p = (t.to(c.device) for t in (self.weight, self.bias, self.prior))
        mean = c @ w.T + b  # (n, d)
        return mean if mask is None else torch.where(mask[:, :1] > 0, mean, p)

    def tensors(self, prefix: str = "mean") -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": self.weight, f"{prefix}.bias": self.bias, f"{prefix}.prior": self.prior}

    @staticmethod
    def shapes(d: int, c: int, prefix: str = "mean") -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.weight": (d, c), f"{prefix}.bias": (d,), f"{prefix}.prior": (d,)}


class StackMean(RidgeMean):
    """The ridge regression an expert's mean is stacked with (:func:`stack_weight`): a
    :class:`RidgeMean` fitted on the expert's training rows, plus the covariance of its
    training residuals and of the target, with which the ridge predictions of several experts
    are composed as a product of Gaussian experts (:func:`cohere.generation.stacked_mean`).
    Tensors ``stack.weight`` (d, c), ``stack.bias`` (d,), ``stack.prior`` (d,),
    ``stack.residual_cov`` (d, d), ``stack.prior_cov`` (d, d)."""

    def __init__(self, weight, bias, prior, residual_cov, prior_cov):
        super().__init__(weight, bias, prior)
        self.residual_cov, self.prior_cov = (torch.as_tensor(t, dtype=torch.float32).contiguous()
                                             for t in (residual_cov, prior_cov))

    @classmethod
    def fit(cls, c: np.ndarray, x: np.ndarray) -> "StackMean":
        base = RidgeMean.fit(c, x)
        c, x = np.asarray(c, np.float64), np.asarray(x, np.float64)
        resid = x - (c @ base.weight.double().numpy().T + base.bias.double().numpy())
        return cls(base.weight, base.bias, base.prior, np.atleast_2d(np.cov(resid, rowvar=False)),
                   np.atleast_2d(np.cov(x, rowvar=False)))

    def tensors(self, prefix: str = "stack") -> dict[str, torch.Tensor]:
        return {**super().tensors(prefix), f"{prefix}.residual_cov": self.residual_cov,
                f"{prefix}.prior_cov": self.prior_cov}

    @staticmethod
    def shapes(d: int, c: int, prefix: str = "stack") -> dict[str, tuple[int, ...]]:
        return {**RidgeMean.shapes(d, c, prefix), f"{prefix}.residual_cov": (d, d), f"{prefix}.prior_cov": (d, d)}


# the clinical covariate the stacking may use: every TCGA-like cohort records it (clinical.csv)
COVARIATE = "cancer_type"


def covariate_values(clinical: pd.DataFrame | None, ids) -> np.ndarray:
    """(n,) the patients' ``COVARIATE`` as strings, "" where unknown (no clinical table, no such
    column, a missing value or a patient absent from it)."""
    if clinical is None or COVARIATE not in clinical.columns:
        return np.full(len(ids), "", dtype=object)
    v = clinical[COVARIATE].reindex(pd.Index(ids))
    return np.where(v.isna().to_numpy(), "", v.astype(str).to_numpy()).astype(object)


def _covariates(covariates, n: int | None = None) -> np.ndarray | None:
    """``covariates`` as (n,) strings ("" = unknown), or None; refused if not one per row
    (``n``: the rows, None: any number)."""
    if covariates is None:
        return None
    v = np.asarray(covariates, dtype=object).reshape(-1)
    if n is not None and len(v) != n:
        raise CohereError(f"covariates: expected one cancer type per row ({n}), got {len(v)}")
    return np.array(["" if t is None or (isinstance(t, float) and math.isnan(t)) else str(t) for t in v],
                    dtype=object)


class _TypeColumns:
    """The cancer type as one-hot columns beside the condition, for a ridge x ~ W [c, z] + b
    (``types``: the training rows' types, sorted), and the ridge of the target on the type
    alone (``type_weight``, ``type_bias``): the prior mean over which several experts'
    predictions are composed (:mod:`cohere.generation`), so that the type is counted once, not
    once per expert. A patient of unknown type gets, instead of a one-hot, its type predicted
    from the condition (``type_from``: ridge from the condition latent to the one-hot type, on
    the training rows of known type), so the ridge gives what a ridge without the type would:
    for least squares fitted on the same rows exactly (W_c c + W_z (G c + g) is the type-free
    regression, the omitted-variable identity). Artifacts from before it give such a patient
    the training frequencies of the types (``type_freq``), which loses what the condition says
    about the type."""

    def _init_types(self, type_weight, type_bias, type_freq, types, from_weight=None, from_bias=None) -> None:
        self.type_weight, self.type_bias, self.type_freq = (torch.as_tensor(t, dtype=torch.float32).contiguous()
                                                            for t in (type_weight, type_bias, type_freq))
        self.types = [str(t) for t in types]
        self.type_from = None if from_weight is None else RidgeMean(from_weight, from_bias, self.type_freq)

    @classmethod
    def _type_from(cls, c: np.ndarray, z: np.ndarray, types) -> "RidgeMean":
        """Ridge from the condition ``c`` (n, c) to the one-hot type ``z`` (n, T) on the rows of known type."""
        known = np.isin(np.asarray(types, dtype=object), cls.vocabulary(types))
        return RidgeMean.fit(np.asarray(c, np.float64)[known], z[known])

    @classmethod
    def _fit_parts(cls, base, c: np.ndarray, x: np.ndarray, types):
        """The ``base`` ridge (a RidgeMean class) of x on [c, z] and on z alone, the training
        frequencies and sorted types, and the ridge from c to z: what a typed class is built from."""
        z, freq, vocab = cls._design(c, x, types)
        joint = base.fit(np.hstack([np.asarray(c, np.float64), z]), x)
        return joint, base.fit(z, x), freq, vocab, cls._type_from(c, z, types)

    @staticmethod
    def vocabulary(types) -> list[str]:
        """The sorted known types (non-empty strings) of ``types``."""
        return sorted({str(t) for t in types if isinstance(t, str) and t})

    @classmethod
    def _design(cls, c: np.ndarray, x: np.ndarray, types) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(one-hot z (n, T), training frequencies (T,), the sorted types) of the rows' ``types``."""
        types = np.asarray(types, dtype=object)
        vocab = cls.vocabulary(types)
        if len(types) != len(x) or not vocab:
            raise CohereError(f"covariates: expected {len(x)} cancer types with at least one known, got "
                              f"{len(types)} ({len(vocab)} known)")
        known = np.isin(types, vocab)
        z = (types[:, None] == np.asarray(vocab, dtype=object)[None, :]).astype(np.float64)  # (n, T)
        freq = z[known].mean(0)
        z[~known] = freq
        return z, freq, vocab

    def onehot(self, types, c: torch.Tensor | None = None) -> torch.Tensor:
        """(n, T) one-hot rows of ``types`` (n,) strings; where a type is unknown ("" or not
        among :attr:`types`), the type predicted from the condition ``c`` (n, c) when given and
        the artifact has ``type_from``, else the training frequencies."""
        index = {t: i for i, t in enumerate(self.types)}
        if c is not None and self.type_from is not None and any(t not in index for t in types):
            z = self.type_from([c.float().cpu()]).clone()
        else:  # every type known (each row is overwritten below), or no condition / no type_from
            z = self.type_freq.repeat(len(types), 1)
        rows = [(r, index[t]) for r, t in enumerate(types) if t in index]
        if rows:
            r, j = zip(*rows)
            z[list(r)] = 0.0
            z[list(r), list(j)] = 1.0
        return z

    def _with_types(self, conds, types) -> list[torch.Tensor]:
        c = conds[0]
        z = self.onehot([""] * len(c) if types is None else list(types), c).to(c.device)
        return [torch.cat([c, z.to(c.dtype)], dim=1)]

    def prior_mean(self, types) -> torch.Tensor:
        """(n, d) the target's mean given the type alone (the composition's prior mean)."""
        return self.onehot(list(types)) @ self.type_weight.T + self.type_bias

    PREFIX = ""  # the artifact's tensor prefix of the ridge (each typed class sets its own)

    def __call__(self, conds, mask=None, types=None) -> torch.Tensor:
        """The ridge's prediction from the condition ``conds[0]`` and the rows' one-hot ``types`` (:meth:`onehot`)."""
        return super().__call__(self._with_types(conds, types), mask)

    def tensors(self, prefix: str | None = None) -> dict[str, torch.Tensor]:
        prefix = prefix or self.PREFIX
        return {**super().tensors(prefix), **self._type_tensors(prefix)}

    def _type_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.type_weight": self.type_weight, f"{prefix}.type_bias": self.type_bias,
               f"{prefix}.type_freq": self.type_freq}
        if self.type_from is not None:
            out |= {f"{prefix}.type_from_weight": self.type_from.weight, f"{prefix}.type_from_bias": self.type_from.bias}
        return out

    @staticmethod
    def _type_shapes(d: int, c: int, prefix: str, n_types: int, predicted: bool) -> dict[str, tuple[int, ...]]:
        out = {f"{prefix}.type_weight": (d, n_types), f"{prefix}.type_bias": (d,), f"{prefix}.type_freq": (n_types,)}
        if predicted:
            out |= {f"{prefix}.type_from_weight": (n_types, c), f"{prefix}.type_from_bias": (n_types,)}
        return out


class TypedStackMean(_TypeColumns, StackMean):
    """A :class:`StackMean` whose ridge also sees the patient's cancer type, one-hot
    (:class:`_TypeColumns`): x ~ W [c, z] + b. Why: in TCGA the cancer type alone predicts the
    rppa latent better (R^2 0.13) than the cna latent does (0.035), and neither ridge nor the
    networks recover it from the latents (``scripts/covariate_gain.py``). The covariance of the
    residuals of the type-alone ridge (``prior_cov``) is the prior of the product of Gaussians
    (:func:`cohere.generation.stacked_mean`). Tensors as :class:`StackMean`'s (``stack.weight``
    (d, c + T)) plus ``stack.type_weight`` (d, T), ``stack.type_bias`` (d,), ``stack.type_freq`` (T,)
    and, where ``unknown_type`` is predicted, ``stack.type_from_weight`` (T, c), ``stack.type_from_bias`` (T,)."""

    PREFIX = "stack"

    def __init__(self, weight, bias, prior, residual_cov, prior_cov, type_weight, type_bias, type_freq, types,
                 from_weight=None, from_bias=None):
        super().__init__(weight, bias, prior, residual_cov, prior_cov)
        self._init_types(type_weight, type_bias, type_freq, types, from_weight, from_bias)

    @classmethod
    def fit(cls, c: np.ndarray, x: np.ndarray, types=None) -> "TypedStackMean":
        joint, alone, freq, vocab, g = cls._fit_parts(StackMean, c, x, types)
        return cls(joint.weight, joint.bias, joint.prior, joint.residual_cov, alone.residual_cov, alone.weight,
                   alone.bias, freq, vocab, g.weight, g.bias)

    @staticmethod
    def shapes(d: int, c: int, prefix: str = "stack", n_types: int = 1,
               predicted: bool = True) -> dict[str, tuple[int, ...]]:
        return {**StackMean.shapes(d, c + n_types, prefix), **_TypeColumns._type_shapes(d, c, prefix, n_types, predicted)}


class TypedRidge(_TypeColumns, RidgeMean):
    """A :class:`RidgeMean` that also sees the patient's cancer type, one-hot
    (:class:`_TypeColumns`): an expert's ridge from its condition to the target's features
    (the feature stacking, :func:`add_feature_stacking`). Why: given the type, ridge to the
    features beats the decoded mean of the draws for TCGA rppa (R^2 0.32-0.40 against
    0.29-0.38 on val, ``scripts/covariate_gain.py``), while ridge without it is far worse
    (0.03-0.17), so a type-free feature stacking has nothing to add. Tensors as
    :class:`RidgeMean`'s (``fstack.weight`` (F, c + T)) plus ``fstack.type_weight`` (F, T),
    ``fstack.type_bias`` (F,), ``fstack.type_freq`` (T,) and, where ``unknown_type`` is predicted,
    ``fstack.type_from_weight`` (T, c), ``fstack.type_from_bias`` (T,)."""

    PREFIX = "fstack"

    def __init__(self, weight, bias, prior, type_weight, type_bias, type_freq, types, from_weight=None, from_bias=None):
        super().__init__(weight, bias, prior)
        self._init_types(type_weight, type_bias, type_freq, types, from_weight, from_bias)

    @classmethod
    def fit(cls, c: np.ndarray, x: np.ndarray, types=None) -> "TypedRidge":
        joint, alone, freq, vocab, g = cls._fit_parts(RidgeMean, c, x, types)
        return cls(joint.weight, joint.bias, joint.prior, alone.weight, alone.bias, freq, vocab, g.weight, g.bias)

    @staticmethod
    def shapes(d: int, c: int, prefix: str = "fstack", n_types: int = 1,
               predicted: bool = True) -> dict[str, tuple[int, ...]]:
        return {**RidgeMean.shapes(d, c + n_types, prefix), **_TypeColumns._type_shapes(d, c, prefix, n_types, predicted)}


# the grid of stacking weights alpha (1 = the network's mean alone, 0 = ridge's)
STACK_ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))


def stack_weight(y: np.ndarray, draws: np.ndarray, point: np.ndarray) -> float:
    """The stacking weight alpha of an expert's mean (Breiman 1996, "Stacked regressions"): the
    one of ``STACK_ALPHAS`` whose recentred draws (:func:`~cohere.sampling.recenter`: their mean
    moved to alpha * mean + (1 - alpha) * ridge) have the lowest energy score against the
    held-out truth ``y`` (n, d); ``draws`` (K, n, d) are the network's draws for those rows and
    ``point`` (n, d) ridge's prediction, fitted on the training rows only. Ties keep the larger
    alpha (the network's own mean).

    Why: on ~3,500 training pairs the network's mean carries estimation noise of its own and
    ridge's carries the linear map's bias; their errors are far from perfectly correlated, so
    a blend beats both. The recentring moves the draws, not their spread, so the calibration
    of the intervals is kept."""
    x, p = torch.from_numpy(np.asarray(draws, np.float64)), torch.from_numpy(np.asarray(point, np.float64))
    best = (math.inf, 1.0)
    for a in sorted(STACK_ALPHAS, reverse=True):
        e = scores.energy_score(y, recenter(x, p, a).numpy())
        if e < best[0] - 1e-9:
            best = (e, a)
    return float(best[1])


@torch.no_grad()
def noise_error_profile(model: Denoiser, schedule: NoiseSchedule, val, offset=None, every: int = 10,
                        repeats: int = 4, seed: int = 0, patterns=None) -> torch.Tensor:
    """(2^k, T): the network's noise-prediction error E||eps - eps_theta(x_t, t, C, mask)||^2 / d
    on the held-out rows ``val`` = (x0, conds, mask) at every ``every``-th timestep (linearly
    interpolated in between), for each presence pattern of its k conditions (row sum_i mask_i
    2^i; the rows used for a pattern are those that have its conditions). It sets the
    analytic reverse variance of the sampler (:mod:`cohere.sampling`): measured on rows the
    network never saw, it carries the model's real error, overfitting included.
    ``patterns``: only these presence patterns are measured (the others stay at 1, the error
    of a network that knows nothing), for a caller that samples no other (checkpoint scoring)."""
    x0, conds, mask = val
    k, T, n = len(conds), schedule.num_train_timesteps, len(x0)
    grid = torch.arange(0, T, every).tolist()
    if grid[-1] != T - 1:
        grid.append(T - 1)
    g = torch.Generator(x0.device).manual_seed(seed + 2)
    out = torch.ones(2**k, T)
    for p in range(2**k):
        if patterns is not None and p not in patterns:
            continue
        bits = torch.tensor([(p >> i) & 1 for i in range(k)], dtype=torch.float32, device=x0.device)  # (k,)
        rows = (mask[:, bits > 0] > 0).all(1) if k else torch.ones(n, dtype=torch.bool, device=x0.device)
        if not rows.any():
            continue
        x, c = x0[rows], [ci[rows] for ci in conds]
        m = bits.expand(len(x), k)  # (n_p, k)
        target = x if offset is None else x - offset(c, m)  # (n_p, d)
        err = []
        for t in grid:
            tt = torch.full((len(x),), t, dtype=torch.long, device=x0.device)
            total = 0.0
            for _ in range(repeats):
                noise = torch.randn(x.shape, generator=g, device=x0.device)
                total += float(((model(schedule.add_noise(target, noise, tt), tt, c, m) - noise) ** 2).mean())
            err.append(total / repeats)
        out[p] = torch.from_numpy(np.interp(np.arange(T), grid, err)).float()
    return out.clamp(0.0, 1.0)


REPORT_DRAWS = 20
# the default sampler's reverse steps: every model's spread is calibrated at this count (and the
# count recorded in its config, ``sampling.steps``), and generation runs each model at the count
# it was calibrated at. 10 steps keep a pair of experts (3 network evaluations a step) above 50x
# the paper's DDPM-1000 (2 a step) in throughput with room for the rest of a step's work: 2000 / 30
# = 67x in network evaluations (12 steps gave 56x, and 47-61x measured on an AVX2 machine); one
# expert 1000 / 10 = 100x.
SAMPLER_STEPS = 10
LEGACY_STEPS = 20  # what artifacts whose config records no step count were calibrated at
# factors on the noise-error profile, a quarter octave apart: 0.5 (a few steps draw wider than
# the analytic variance says) to 4 (the analytic variance alone is too narrow)
SPREADS = tuple(round(2 ** (k / 4), 4) for k in range(-4, 9))
# what a model's spread was calibrated on (its config's sampling.spread_on): its network's own
# draws ("network": multi-condition models, and experts of versions before this one), or its
# draws recentred on its stacked mean, as generation delivers them ("stacked": experts)
SPREAD_ON = ("network", "stacked")


def _held_out_draws(model, schedule, x0, conds, mask_value, offset, noise_error, bounds, draws, seed) -> np.ndarray:
    """(draws, n, d) generations of the held-out rows with the default sampler (DDIM,
    ``SAMPLER_STEPS`` steps, eta 1, analytic variance from ``noise_error`` when given), every
    condition set to ``mask_value``."""
    n, k = len(x0), len(conds)
    m = torch.full((n, k), mask_value)
    member = Member(model, conds, m, offset=None if offset is None else offset(conds, m),
                    noise_error=noise_error).tile(draws)
    g = torch.Generator().manual_seed(seed + 3)
    return sample_latents([member], schedule, draws * n, method="ddim", steps=SAMPLER_STEPS, eta=1.0,
                          generator=g, x0_bounds=bounds, variance="analytic" if noise_error is not None else "fixed"
                          ).view(draws, n, -1).double().numpy()


def _complete(val):
    x0, conds, mask = val
    full = (mask > 0).all(1)
    return x0[full], [c[full] for c in conds]


@torch.no_grad()
def calibrate_spread(model: Denoiser, schedule: NoiseSchedule, val, bounds, noise_error: torch.Tensor, offset=None,
                     seed: int = 0, draws: int = REPORT_DRAWS, point: np.ndarray | None = None) -> float:
    """The factor (from ``SPREADS``) on the noise-error profile that calibrates the model's
    central 50% and 90% intervals on its held-out rows ``val``: the one whose coverage is
    closest (summed absolute error) to what a calibrated sampler with ``draws`` draws covers.
    With ``point`` (n, d), the stacked mean of the complete held-out rows (an expert's
    :class:`StackMean`), the draws are scored as generation delivers them: recentred on it
    (:func:`~cohere.sampling.recenter`) with the stacking weight (:func:`stack_weight`) chosen
    on the same draws. A better mean leaves less error for the draws to cover, so the spread
    that calibrates the network's own draws over-covers the delivered ones.
    The analytic variance alone leaves the draws of some experts a little too narrow (90%
    intervals covering 0.81-0.84 instead of 0.865 on held-out TCGA patients), and a few steps
    leave others a little too wide; a factor above 1 widens every reverse step's noise, one
    below 1 narrows it. The energy score is flat over these factors, so
    calibrating costs nothing on the proper score.

    The search walks the grid from 1 towards the lower miss, one factor at a time, and stops
    where neither neighbour is better (ties: the smaller factor). Both coverages grow with the
    factor, so the miss falls to the calibrated factor and rises after it: the walk finds the
    grid's best in 3-5 generations of the held-out rows instead of 13."""
    x0, conds = _complete(val)
    if len(x0) < 10:
        return 1.0
    y = x0.double().numpy()
    target = {p: scores.calibrated_coverage(p, draws) for p in (0.5, 0.9)}
    misses: dict[int, float] = {}

    def miss(i: int) -> float:
        if i not in misses:
            x = _held_out_draws(model, schedule, x0, conds, 1.0, offset, (noise_error * SPREADS[i]).clamp(max=1.0),
                                bounds, draws, seed)
            if point is not None:
                x = recenter(torch.from_numpy(x), torch.from_numpy(point), stack_weight(y, x, point)).numpy()
            misses[i] = sum(abs(scores.interval_coverage(y, x, p) - c) for p, c in target.items())
        return misses[i]

    i = SPREADS.index(1.0)
    miss(i)
    while True:
        j = min((j for j in (i - 1, i + 1) if 0 <= j < len(SPREADS)), key=lambda j: (miss(j), j))
        if miss(j) < miss(i) - 1e-9 or (j < i and miss(j) <= miss(i) + 1e-9):
            i = j
        else:
            return SPREADS[i]


@torch.no_grad()
def held_out_report(model: Denoiser, schedule: NoiseSchedule, val, train, bounds, offset=None,
                    noise_error=None, unconditional: bool = False, seed: int = 0, draws: int = REPORT_DRAWS,
                    stack: StackMean | None = None, types=None) -> dict:
    """What a user can judge a model by, on its held-out rows ``val`` = (x0, conds, mask)
    with every condition present: ``draws`` generations per row with the default sampler
    (DDIM, ``SAMPLER_STEPS`` steps, analytic variance) scored by the R^2 of their mean, the
    energy score and the coverage of the central 90% interval, beside ridge regression fitted on the training
    rows ``train`` = (x0, conds) (the R^2 of its prediction, and the energy score of ridge plus
    a bootstrapped training residual) and beside the model's own unconditional branch (how
    much the condition is worth), when it has one. With ``stack`` (the ridge mean of the
    training rows) it also chooses the stacking weight (:func:`stack_weight`) on these rows and
    scores the stacked draws: ``stack_alpha``, ``stacked_r2_mean``, ``stacked_energy``,
    ``stacked_coverage50`` / ``90`` (what generation delivers; the
    other scores stay those of the network's own draws, which set its consensus weight).
    ``types``: the rows' cancer types, for a :class:`TypedStackMean`."""
    from sklearn.linear_model import RidgeCV

    x0, conds = _complete(val)
    n = len(x0)
    if n < 10:
        return {}
    y = x0.double().numpy()

    def sample(mask_value: float) -> np.ndarray:
        return _held_out_draws(model, schedule, x0, conds, mask_value, offset, noise_error, bounds, draws, seed)

    x = sample(1.0)
    X_tr = np.hstack([c.numpy() for c in train[1]])
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(X_tr, train[0])
    resid = train[0] - ridge.predict(X_tr)
    point = ridge.predict(np.hstack([c.numpy() for c in conds]))
    boot = point[None] + resid[np.random.default_rng(seed).integers(0, len(resid), (draws, n))]
    out = {"r2_mean": scores.r2(y, x.mean(0)), "energy": scores.energy_score(y, x),
           "coverage50": scores.interval_coverage(y, x, 0.5), "coverage90": scores.interval_coverage(y, x, 0.9),
           "coverage50_calibrated": scores.calibrated_coverage(0.5, draws),
           "coverage90_calibrated": scores.calibrated_coverage(0.9, draws),
           "ridge_r2": scores.r2(y, point), "ridge_resboot_energy": scores.energy_score(y, boot)}
    if unconditional:
        out["unconditional_energy"] = scores.energy_score(y, sample(0.0))
    if stack is not None:
        p = stack(conds, types=types).double().numpy()
        out["stack_alpha"] = stack_weight(y, x, p)
        xs = recenter(torch.from_numpy(x), torch.from_numpy(p), out["stack_alpha"]).numpy()
        out["stacked_r2_mean"], out["stacked_energy"] = scores.r2(y, xs.mean(0)), scores.energy_score(y, xs)
        out["stacked_coverage50"] = scores.interval_coverage(y, xs, 0.5)
        out["stacked_coverage90"] = scores.interval_coverage(y, xs, 0.9)
    return {key: round(float(v), 4) for key, v in out.items()} | {"n": n, "draws": draws}


# the checkpoint scorer's noise-error profile measures every 50th timestep (21 of 1,000, linearly
# interpolated; the profile an artifact stores, every 10th). At every 25th and of every presence
# pattern it took 0.39 s an evaluation for an expert's 390 held-out rows and 1.5 s for a
# multi-condition model's 860, against 4.1 s for the 500 training steps in between (one core)
SCORING_PROFILE_EVERY = 50


def validation_scorer(schedule: NoiseSchedule, cfg: TrainConfig, bounds, offset=None):
    """The checkpoint score of :func:`~cohere.diffusion.train.train_denoiser`: ``cfg.val_draws``
    generations per validation row with the fast sampler (``cfg.val_method``, ``val_steps``,
    ``val_eta``, ``val_variance``: the analytic one from a coarse :func:`noise_error_profile` of
    the checkpoint on the same rows; x_0 clamped to ``bounds``; the same noise at every call), scored by
    :mod:`cohere.scores`: MSE of single draws (``val_loss``, the paper's criterion), R^2 of
    single draws and of their mean, and the energy score."""

    def score(model: Denoiser, val) -> dict:
        x0, conds, mask = val
        K, n = cfg.val_draws, len(x0)
        g = torch.Generator(x0.device).manual_seed(cfg.seed + 1)
        analytic = cfg.val_variance == "analytic" and cfg.val_method == "ddim"
        member = Member(model, conds, mask, offset=None if offset is None else offset(conds, mask))
        if analytic:  # a coarse profile, of the presence patterns these rows have only (an expert's: 1 of 2)
            used = set(member.patterns(n).tolist())
            member.noise_error = noise_error_profile(model, schedule, val, offset, every=SCORING_PROFILE_EVERY,
                                                     repeats=1, seed=cfg.seed, patterns=used)
        member = member.tile(K)
        pred = sample_latents([member], schedule, K * n, method=cfg.val_method, steps=cfg.val_steps,
                              eta=cfg.val_eta, generator=g, x0_bounds=bounds,
                              variance="analytic" if analytic else "fixed").view(K, n, -1)  # (K, n, d)
        if not torch.isfinite(pred).all():  # a diverged checkpoint: never selected
            return {"val_loss": float("nan"), "val_r2": float("nan"), "val_r2_mean": float("nan"),
                    "val_energy": float("nan")}
        y, p = x0.cpu().double().numpy(), pred.cpu().double().numpy()
        out = {"val_loss": float(((p - y[None]) ** 2).mean()),
               "val_r2": float(np.mean([scores.r2(y, pk) for pk in p])),
               "val_r2_mean": scores.r2(y, p.mean(0))}
        if K >= 2:
            out["val_energy"] = scores.energy_score(y, p)
        return out

    return score


def _recorded_types(folder, block: str, cfg) -> list[str] | None:
    """The cancer types a config block (``stacking``, ``feature_stacking``) records in its
    ``covariates``, or None (a block without them, from before them); refused if malformed."""
    covs = cfg.get("covariates") if isinstance(cfg, dict) else None
    types = covs.get(COVARIATE) if isinstance(covs, dict) else None
    if covs is not None and (not isinstance(covs, dict) or set(covs) != {COVARIATE} or not isinstance(types, list)
                             or not types or not all(isinstance(t, str) and t for t in types)
                             or types != sorted(set(types))):
        raise CohereError(f"{folder}: unsupported {block} covariates {covs!r}; cohere experts record "
                          f"{{'{COVARIATE}': [the sorted distinct cancer types, non-empty strings]}}")
    return types


# how a typed ridge treats a patient of unknown type (its config block's ``unknown_type``);
# artifacts that record none use the training frequencies
UNKNOWN_TYPE = {"predicted from the condition": True, "training frequencies": False}


def _unknown_type_label(ridge) -> str:
    return next(k for k, v in UNKNOWN_TYPE.items() if v == (ridge.type_from is not None))


def _predicts_unknown_type(folder, block: str, cfg: dict) -> bool:
    """Whether a config block's typed ridge predicts an unknown type from the condition
    (tensors ``PREFIX.type_from_*``); refused if the block records anything else."""
    value = cfg.get("unknown_type", "training frequencies")
    if not isinstance(value, str) or value not in UNKNOWN_TYPE:
        raise CohereError(f"{folder}: unsupported {block}.unknown_type {value!r}; cohere experts record one of "
                          f"{', '.join(map(repr, UNKNOWN_TYPE))}")
    return UNKNOWN_TYPE[value]


def _typed_args(tensors: dict, shapes: dict, prefix: str) -> list:
    """The tensors of a typed ridge's ``shapes`` in order, less its ``type_from_*`` (popped from ``tensors``)."""
    return [tensors.pop(k) for k in shapes if not k.startswith(f"{prefix}.type_from_")]


def _type_from_args(tensors: dict, prefix: str) -> tuple:
    """(weight, bias) of a typed ridge's ``type_from`` ridge, or (None, None) (popped from ``tensors``)."""
    return tuple(tensors.pop(f"{prefix}.type_from_{k}", None) for k in ("weight", "bias"))


class _DiffusionModel:
    """What experts and multi-condition models share: the network, its schedule, the
    contract, the metrics, saving, loading and sampling."""

    kind = ""
    card_template = ""

    def __init__(self, sources: Sequence[str], target: str, model: Denoiser, schedule: NoiseSchedule,
                 encoders: Mapping[str, str], train_config: TrainConfig | None = None,
                 metrics: Mapping | None = None, training: Mapping | None = None,
                 x0_bounds: tuple | None = None, mean: RidgeMean | None = None,
                 noise_error: torch.Tensor | None = None, spread: float = 1.0, stack: StackMean | None = None,
                 stack_alpha: float = 1.0, head: RidgeMean | None = None, sampler_steps: int = SAMPLER_STEPS,
                 fstack: RidgeMean | None = None, fstack_beta: float = 0.0, spread_on: str = "network"):
        d = model.config.latent_dim
        if x0_bounds is None:
            x0_bounds = (torch.full((d,), -torch.inf), torch.full((d,), torch.inf))
        self.x0_bounds = tuple(torch.as_tensor(b, dtype=torch.float32).reshape(d) for b in x0_bounds)
        self.sources = list(sources)
        self.target = target
        self.model = model.eval()
        self.schedule = schedule
        self.encoders = dict(encoders)  # {modality: digest}
        self.train_config = train_config
        self.metrics = dict(metrics or {})
        self.training = dict(training or {})
        self.mean = mean
        self.noise_error = noise_error  # (2^k, T) or None (see noise_error_profile)
        self.spread = float(spread)  # factor on noise_error that calibrates the draws (calibrate_spread)
        self.sampler_steps = int(sampler_steps)  # the DDIM step count that spread was calibrated at
        self.spread_on = spread_on  # SPREAD_ON: the draws it was calibrated on (the network's own, or stacked)
        self.stack = stack  # the ridge mean the draws' mean is stacked with (experts), or None
        self.stack_alpha = float(stack_alpha)  # its stacking weight (stack_weight); 1 = none
        self.head = head  # ridge from the condition to the target's features outside its latent (experts), or None
        self.fstack = fstack  # ridge from the condition to the target's features (experts), or None
        self.fstack_beta = float(fstack_beta)  # the decoded draws' stacking weight with it (feature_stack_weight)
        self.fit_seconds: float | None = None  # wall time of fit (not saved: the digest must be reproducible)
        self.digest: str | None = None
        self.path: Path | None = None

    # -- identity

    @property
    def id(self) -> str:
        raise NotImplementedError

    @property
    def folder_name(self) -> str:
        return folder_name(self.id)

    @property
    def val_loss(self) -> float:
        return float(self.metrics.get("val_loss", float("nan")))

    def __repr__(self) -> str:
        r2 = self.metrics.get("val_r2")
        return f"{type(self).__name__}({self.id!r}, val_r2={r2 if r2 is None else round(r2, 4)})"

    # -- the latent-space contract

    def check_encoders(self, encoders: Mapping) -> None:
        """Refuse encoders other than the ones this model was trained with.

        ``encoders``: {modality: encoder (with ``.digest``) or digest string}. Every modality
        in both must carry the recorded digest; modalities the model uses but that are not
        given are not checked.
        """
        for m, recorded in self.encoders.items():
            if m not in encoders:
                continue
            given = encoders[m] if isinstance(encoders[m], str) else getattr(encoders[m], "digest", None)
            if given != recorded:
                raise CohereError(
                    f"{self.id}: was trained on latents of the {m} encoder with digest {recorded}, but the "
                    f"given {m} encoder has digest {given}; use the encoder the model was trained with or "
                    "retrain the model on the new encoder's latents")

    # -- config and persistence

    def _config(self) -> dict:
        s = self.schedule
        cfg = {
            "kind": self.kind, "id": self.id, "sources": self.sources, "target": self.target,
            "encoders": self.encoders, "latent_dim": self.model.config.latent_dim,
            "schedule": {"num_train_timesteps": s.num_train_timesteps, "beta_start": s.beta_start,
                         "beta_end": s.beta_end, "beta_schedule": "linear", "prediction_type": "epsilon"},
            "architecture": {"hidden": self.model.config.hidden, "layers": self.model.config.layers,
                             "time_dim": self.model.config.time_dim,
                             "cond_emb_dim": self.model.config.cond_emb_dim,
                             "cond_dims": list(self.model.config.cond_dims)},
            "training": {**({"recipe": self.train_config.to_dict()} if self.train_config else {}), **self.training},
            "metrics": self.metrics,
            "n_train": self.n_train,
            "sampling": {"method": "ddim", "steps": self.sampler_steps, "eta": 1.0, "variance": "analytic",
                         "spread": self.spread, "spread_on": self.spread_on,
                         "x0_clamp": "per-dimension training range of the target (tensors x0_bounds.low/high)"},
            "mean": "none" if self.mean is None else "ridge",
            "unconditional": self.unconditional,
        }
        if self.head is not None:
            cfg["residual_head"] = {"features": int(self.head.weight.shape[0]),
                                    "what": "ridge from the condition latent to the target's features minus "
                                            "decode(latent) on the training rows (tensors residual.*), added to "
                                            "decoded draws"}
        if self.fstack is not None:
            cfg["feature_stacking"] = {"beta": self.fstack_beta, "features": int(self.fstack.weight.shape[0]),
                                       "what": "ridge from the condition latent to the target's features (tensors "
                                               "fstack.*) fitted on the training rows; the mean of a patient's "
                                               "decoded draws is moved by beta towards its prediction",
                                       "chosen_on": "the held-out rows, by the features' squared error "
                                                    "(metrics.held_out_features)"}
            if isinstance(self.fstack, TypedRidge):
                cfg["feature_stacking"]["covariates"] = {COVARIATE: list(self.fstack.types)}
                cfg["feature_stacking"]["unknown_type"] = _unknown_type_label(self.fstack)
                cfg["feature_stacking"]["what"] = (
                    "ridge from the condition latent and the one-hot cancer type to the target's features (tensors "
                    "fstack.*; fstack.type_*: ridge on the type alone and the types' training frequencies; "
                    "fstack.type_from_*: ridge from the condition to the type, for a patient whose type is unknown: "
                    "unknown_type) fitted on the training rows; the mean of a patient's "
                    "decoded draws is moved by beta towards its prediction")
        if self.stack is not None:
            cfg["stacking"] = {"alpha": self.stack_alpha, "mean": "ridge (tensors stack.*: coefficients, training "
                                                                  "mean, residual and target covariances) fitted on "
                                                                  "the training rows",
                               "chosen_on": "the held-out rows, by the energy score (metrics.held_out)"}
            if isinstance(self.stack, TypedStackMean):
                cfg["stacking"]["covariates"] = {COVARIATE: list(self.stack.types)}
                cfg["stacking"]["unknown_type"] = _unknown_type_label(self.stack)
                cfg["stacking"]["mean"] = ("ridge on the condition latent and the one-hot cancer type (tensors "
                                           "stack.*; stack.type_*: ridge on the type alone and the types' "
                                           "training frequencies; stack.type_from_*: ridge from the condition "
                                           "to the type, for a patient whose type is unknown: unknown_type)")
        if self.kind == "expert":
            cfg["source"] = self.sources[0]
        return cfg

    def pack(self) -> tuple[str, dict[str, bytes]]:
        """The artifact's files as bytes and its digest (:func:`~cohere.artifacts.pack_artifact`)."""
        config = self._config()
        card = render_card(self.card_template, config=config)
        tensors = {**self.model.state_dict(), "x0_bounds.low": self.x0_bounds[0], "x0_bounds.high": self.x0_bounds[1],
                   **({} if self.mean is None else self.mean.tensors()),
                   **({} if self.stack is None else self.stack.tensors()),
                   **({} if self.head is None else self.head.tensors("residual")),
                   **({} if self.fstack is None else self.fstack.tensors("fstack")),
                   **({} if self.noise_error is None else {"noise_error": self.noise_error})}
        return pack_artifact(config, tensors, card)

    def save(self, folder: str | os.PathLike) -> str:
        """Write the artifact folder (config.json, model.safetensors, README.md); return the digest."""
        self.digest, files = self.pack()
        write_artifact(folder, files)
        self.path = Path(folder)
        return self.digest

    @classmethod
    def _from_artifact(cls, folder, encoders: Mapping | None):
        art = load_artifact(folder, kind=cls.kind)
        cfg = art.config
        try:
            arch, sch = cfg["architecture"], cfg["schedule"]
            sources, target = list(cfg["sources"]), cfg["target"]
            dcfg = DenoiserConfig(latent_dim=int(cfg["latent_dim"]), cond_dims=tuple(arch["cond_dims"]),
                                  hidden=arch["hidden"], layers=arch["layers"], time_dim=arch["time_dim"],
                                  cond_emb_dim=arch["cond_emb_dim"])
            schedule = NoiseSchedule(int(sch["num_train_timesteps"]), float(sch["beta_start"]), float(sch["beta_end"]))
            recorded = dict(cfg["encoders"])
        except (KeyError, TypeError) as e:
            raise CohereError(f"{folder}: config.json lacks or mangles {e}; re-download or re-train the model") from None
        if sch.get("beta_schedule", "linear") != "linear" or sch.get("prediction_type", "epsilon") != "epsilon":
            raise CohereError(f"{folder}: unsupported schedule {sch}; cohere models use linear betas and epsilon prediction")
        if len(dcfg.cond_dims) != len(sources):
            raise CohereError(f"{folder}: {len(sources)} sources but {len(dcfg.cond_dims)} condition inputs")
        mean_kind = cfg.get("mean", "none")  # artifacts before the ridge mean have none
        if mean_kind not in ("none", "ridge") or (mean_kind == "ridge" and len(sources) != 1):
            raise CohereError(f"{folder}: unsupported mean {mean_kind!r}; cohere models use 'none', or 'ridge' "
                              "for single-condition experts")
        sampling = cfg.get("sampling") if isinstance(cfg.get("sampling"), dict) else {}
        steps = sampling.get("steps", LEGACY_STEPS)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= schedule.num_train_timesteps:
            raise CohereError(f"{folder}: unsupported sampling.steps {steps!r}; cohere models record the DDIM step "
                              f"count their spread was calibrated at (an int in 1..{schedule.num_train_timesteps})")
        spread_on = sampling.get("spread_on", "network")  # before stacked calibration: the network's draws
        if spread_on not in SPREAD_ON:
            raise CohereError(f"{folder}: unsupported sampling.spread_on {spread_on!r}; cohere models record one of "
                              f"{', '.join(map(repr, SPREAD_ON))} (the draws their spread was calibrated on)")
        model = Denoiser(dcfg)
        state = model.state_dict()
        d = dcfg.latent_dim
        mean_shapes = RidgeMean.shapes(d, dcfg.cond_dims[0]) if mean_kind == "ridge" else {}
        stacking = cfg.get("stacking")  # artifacts before mean stacking have none
        alpha = stacking.get("alpha") if isinstance(stacking, dict) else None
        if stacking is not None and (len(sources) != 1 or isinstance(alpha, bool)
                                     or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1):
            raise CohereError(f"{folder}: unsupported stacking {stacking!r}; cohere experts record "
                              "{'alpha': a number in [0, 1], ...}")
        types = _recorded_types(folder, "stacking", stacking)
        if stacking is None:
            stack_shapes = {}
        elif types is None:
            stack_shapes = StackMean.shapes(d, dcfg.cond_dims[0])
        else:
            stack_shapes = TypedStackMean.shapes(d, dcfg.cond_dims[0], n_types=len(types),
                                                 predicted=_predicts_unknown_type(folder, "stacking", stacking))
        features = cfg.get("residual_head", {}).get("features") if isinstance(cfg.get("residual_head"), dict) else None
        if "residual_head" in cfg and (len(sources) != 1 or isinstance(features, bool) or not isinstance(features, int)
                                       or features < 1):
            raise CohereError(f"{folder}: unsupported residual_head {cfg['residual_head']!r}; cohere experts record "
                              "{'features': a positive int, ...}")
        head_shapes = RidgeMean.shapes(features, dcfg.cond_dims[0], "residual") if features else {}
        fst = cfg.get("feature_stacking")  # artifacts before feature stacking have none
        ffeat, beta = (fst.get("features"), fst.get("beta")) if isinstance(fst, dict) else (None, None)
        if fst is not None and (len(sources) != 1 or isinstance(ffeat, bool) or not isinstance(ffeat, int) or ffeat < 1
                                or isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1):
            raise CohereError(f"{folder}: unsupported feature_stacking {fst!r}; cohere experts record "
                              "{'beta': a number in [0, 1], 'features': a positive int, ...}")
        ftypes = _recorded_types(folder, "feature_stacking", fst)
        if fst is None:
            fstack_shapes = {}
        elif ftypes is None:
            fstack_shapes = RidgeMean.shapes(ffeat, dcfg.cond_dims[0], "fstack")
        else:
            fstack_shapes = TypedRidge.shapes(ffeat, dcfg.cond_dims[0], n_types=len(ftypes),
                                              predicted=_predicts_unknown_type(folder, "feature_stacking", fst))
        art.expect({**{k: tuple(v.shape) for k, v in state.items()}, "x0_bounds.low": (d,), "x0_bounds.high": (d,),
                    **mean_shapes, **stack_shapes, **head_shapes, **fstack_shapes,
                    "noise_error": (2 ** len(sources), schedule.num_train_timesteps)})
        tensors = dict(art.tensors)
        bounds = (tensors.pop("x0_bounds.low"), tensors.pop("x0_bounds.high"))
        mean = RidgeMean(*(tensors.pop(k) for k in mean_shapes)) if mean_shapes else None
        stack = None
        if stack_shapes:
            stack = StackMean(*(tensors.pop(k) for k in stack_shapes)) if types is None else \
                TypedStackMean(*_typed_args(tensors, stack_shapes, "stack"), types, *_type_from_args(tensors, "stack"))
        head = RidgeMean(*(tensors.pop(k) for k in head_shapes)) if head_shapes else None
        fstack = None
        if fstack_shapes:
            fstack = RidgeMean(*(tensors.pop(k) for k in fstack_shapes)) if ftypes is None else \
                TypedRidge(*_typed_args(tensors, fstack_shapes, "fstack"), ftypes, *_type_from_args(tensors, "fstack"))
        noise_error = tensors.pop("noise_error")
        # num_batches_tracked is an integer buffer that save_artifact stores as float: cast back
        model.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()}, strict=True)
        training = dict(cfg.get("training", {}))
        recipe = training.pop("recipe", None)
        obj = cls.__new__(cls)
        _DiffusionModel.__init__(obj, sources, target, model, schedule, recorded,
                                 TrainConfig.from_dict(recipe) if recipe else None, cfg.get("metrics", {}), training,
                                 bounds, mean, noise_error, float(sampling.get("spread", 1.0)),
                                 stack, 1.0 if alpha is None else float(alpha), head, steps, fstack,
                                 0.0 if beta is None else float(beta), spread_on)
        obj._unconditional = bool(cfg.get("unconditional", False))
        if obj.id != cfg.get("id"):
            raise CohereError(f"{folder}: config id {cfg.get('id')!r} does not match its sources and target ({obj.id!r})")
        obj.digest, obj.path = art.digest, Path(folder)
        if encoders is not None:
            obj.check_encoders(encoders)
        return obj

    @classmethod
    def load(cls, folder: str | os.PathLike, encoders: Mapping | None = None):
        """Load with strict checks (sha256, tensor names and shapes); with ``encoders``
        ({modality: encoder}) also check the latent-space contract."""
        return cls._from_artifact(folder, encoders)

    # -- sampling

    @property
    def clamps(self) -> bool:
        """Whether the model has finite x_0 bounds to clamp to during sampling."""
        return bool(torch.isfinite(self.x0_bounds[0]).any() or torch.isfinite(self.x0_bounds[1]).any())

    def to(self, device) -> "_DiffusionModel":
        self.model.to(device)
        return self

    def _member_inputs(self, conds, n: int | None) -> tuple[list[torch.Tensor], torch.Tensor | None, int]:
        raise NotImplementedError

    @property
    def calibrated_error(self) -> torch.Tensor | None:
        """The noise-error profile times the calibrated spread factor, as the sampler uses it."""
        return None if self.noise_error is None else (self.noise_error * self.spread).clamp(max=1.0)

    @property
    def informativeness(self) -> float | None:
        """How much the condition improves the held-out energy score over the model's own
        unconditional branch (``held_out`` metrics), or None when not recorded."""
        h = self.metrics.get("held_out", {})
        if "unconditional_energy" not in h or "energy" not in h:
            return None
        return float(h["unconditional_energy"]) - float(h["energy"])

    @property
    def n_train(self) -> int:
        """The training rows the network was fitted on (0 when the artifact does not record them)."""
        return int(self.training.get("n_train", 0))

    @property
    def unconditional(self) -> bool:
        """Whether the network also learned the target's unconditional distribution (its
        prediction with every condition masked): experts trained with ``uncond_prob`` > 0, and
        multi-condition models, which are trained with the empty set. The product-of-experts
        consensus needs it."""
        if hasattr(self, "_unconditional"):
            return self._unconditional
        cfg = self.train_config
        return cfg is not None and (self.kind == "multi" or cfg.uncond_prob > 0)

    def member(self, conds, weight: float = 1.0, n_draws: int = 1, n: int | None = None) -> Member:
        """This model as a member of a consensus for ``n_draws`` draws per row (draw-major).
        ``n``: the number of rows, needed only when no condition is given (multi model)."""
        c, mask, n = self._member_inputs(conds, n)
        offset = None if self.mean is None else self.mean(c, mask)
        return Member(self.model, c, mask, weight, offset, self.calibrated_error).tile(n_draws)

    def prior_member(self, n: int, weight: float = 1.0) -> Member:
        """The model's unconditional prediction for ``n`` rows (every condition masked): the
        eps_u of the product consensus. Refused for a model that never learned it."""
        if not self.unconditional:
            raise CohereError(f"{self.id} was trained without the unconditional branch that the product "
                              "consensus needs; retrain it with the current recipe (uncond_prob > 0) or use "
                              "--consensus average")
        dims = self.model.config.cond_dims
        conds = [torch.zeros(n, c) for c in dims]
        mask = torch.zeros(n, len(dims))
        return Member(self.model, conds, mask, weight, None if self.mean is None else self.mean(conds, mask),
                      self.calibrated_error)

    def sample(self, conds, n_draws: int = 1, steps: int | None = None, method: str = "ddim",
               seed: int = 0, eta: float = 1.0, n: int | None = None, clip: bool = True) -> np.ndarray:
        """Generate ``n_draws`` target latents per row: array (n_draws, n, latent_dim).

        Defaults: DDIM with eta = 1 (stochastic, like DDPM's ancestral sampling) and the
        ``sampler_steps`` its spread was calibrated at; ``method="ddpm"`` runs the paper's
        full T-step sampler. ``n``: rows to generate when no condition is given (multi model,
        unconditional). ``clip``: clamp the x_0 estimate at every step to the training range
        of the target (``x0_bounds``).
        These are the network's own draws: the stacking of their mean with ridge's
        (``stack_alpha``) is applied by :mod:`cohere.generation`, over all draws of a patient.
        """
        if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
            raise CohereError(f"n_draws must be a positive int, got {n_draws!r}")
        mem = self.member(conds, n_draws=n_draws, n=n)
        n = len(mem.conds[0]) if mem.conds else len(mem.mask)
        steps = self.sampler_steps if steps is None and method != "ddpm" else steps
        device = next(self.model.parameters()).device
        g = torch.Generator(device).manual_seed(int(seed))
        x = sample_latents([mem], self.schedule.to(device), n, method=method, steps=steps, eta=eta, generator=g,
                           x0_bounds=self.x0_bounds if clip and self.clamps else None)
        return x.view(n_draws, n // n_draws, -1).cpu().numpy()

    # -- training helpers

    def head_shift(self, conds: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """(n, F) the residual head's prediction for the condition latents ``conds`` (a list of
        one (n, c) tensor), added to every decoded draw; None for a model without one."""
        return None if self.head is None else self.head(conds)

    def stack_point(self, conds: Sequence[torch.Tensor], types=None) -> torch.Tensor | None:
        """(n, d) ridge's prediction for the condition latents ``conds`` (a list of one (n, c)
        tensor) and, when the stacking uses it, the rows' cancer ``types`` (n,) (None or "":
        unknown), the point the draws' mean is stacked with; None for a model without stacking."""
        return None if self.stack is None else self.stack(conds, types=types)

    @property
    def covariate_types(self) -> list[str] | None:
        """The cancer types the stacking knows (:class:`TypedStackMean`), or None."""
        return self.stack.types if isinstance(self.stack, TypedStackMean) else None

    @staticmethod
    def _train(x0, conds, mask, config, schedule, search: int, progress, mean: bool = False, run_trials=None,
               stack: bool = False, covariates=None):
        """Carve out the validation rows, fit the ridge mean on the others (``mean``), and
        train (or search) with checkpoints scored by :func:`validation_scorer`; then
        :meth:`_finish`. Returns (result, search trials or None, RidgeMean or None,
        noise-error profile, its :func:`calibrate_spread` factor, :func:`held_out_report`,
        the stacking RidgeMean or None)."""
        presence = torch.ones(len(x0), len(conds)) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
        tr, va = split_validation(presence, config.val_fraction, config.seed)
        ridge = RidgeMean.fit(conds[0][tr], x0[tr]) if mean else None
        bounds = tuple(torch.from_numpy(np.ascontiguousarray(b, np.float32)).to(config.device)
                       for b in (x0[tr].min(0), x0[tr].max(0)))
        score = validation_scorer(schedule, config, bounds, ridge)
        val_mask = np.ones((len(va), len(conds)), np.float32) if mask is None else mask[va]
        if search and search > 1:
            res = random_search(search, x0, conds, mask, base=config, schedule=schedule, seed=config.seed,
                                progress=progress, offset=ridge, score=score, val_rows=va, run_trials=run_trials)
            res, trials = res.best, res.trials
        else:
            res = train_denoiser(x0[tr], [c[tr] for c in conds], None if mask is None else mask[tr], config,
                                 schedule, val=(x0[va], [c[va] for c in conds], val_mask), progress=progress,
                                 offset=ridge, score=score)
            trials = None
        return (res, trials, ridge, *_DiffusionModel._finish(res.model, x0, conds, mask, config, schedule, ridge,
                                                              stack, (tr, va), covariates=covariates))

    @staticmethod
    def _finish(model, x0, conds, mask, config, schedule, ridge, stack: bool, split=None, check_profile=None,
                covariates=None):
        """What follows the training of the network, on its held-out rows (``split`` = (train
        rows, held-out rows); by default the recipe's :func:`split_validation`): the
        noise-error profile, the stacking ridge (``stack``: fitted on the training rows), the
        spread calibrated on the draws recentred on it (experts) or on the network's own draws,
        and the :func:`held_out_report` that also chooses the stacking weight.
        ``check_profile(profile)`` runs on the profile before the rest (the slow part), and may
        refuse. ``covariates``: the rows' cancer types (:func:`covariate_values`); with a known
        one among the training rows the stacking ridge also sees it (:class:`TypedStackMean`).
        Returns (profile, spread, report, stacking StackMean or None)."""
        if split is None:
            presence = torch.ones(len(x0), len(conds)) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
            split = split_validation(presence, config.val_fraction, config.seed)
        tr, va = split
        val_mask = np.ones((len(va), len(conds)), np.float32) if mask is None else mask[va]
        bounds = tuple(torch.from_numpy(np.ascontiguousarray(b, np.float32)) for b in (x0[tr].min(0), x0[tr].max(0)))
        tensor = (lambda a: torch.from_numpy(np.nan_to_num(np.ascontiguousarray(a, np.float32))))  # masked NaN -> 0
        val = (tensor(x0[va]), [tensor(c[va]) for c in conds], tensor(val_mask))
        profile = noise_error_profile(model, schedule, val, ridge, seed=config.seed)
        if check_profile is not None:
            check_profile(profile)
        full = tr if mask is None else tr[(mask[tr] > 0).all(1)]  # training rows with every condition
        types = None if covariates is None else np.asarray(covariates, dtype=object)
        if types is not None and not _TypeColumns.vocabulary(types[tr]):
            types = None  # no training row of known type: the type-free stacking
        if not stack:
            stacking = None
        elif types is None:
            stacking = StackMean.fit(conds[0][tr], x0[tr])
        else:
            stacking = TypedStackMean.fit(conds[0][tr], x0[tr], types[tr])
        point = None  # experts (every held-out row complete): the spread is calibrated on the stacked draws
        if stacking is not None:
            point = stacking(val[1], types=None if types is None else types[va]).double().numpy()
        spread = calibrate_spread(model, schedule, val, bounds, profile, ridge, seed=config.seed, point=point)
        report = held_out_report(model, schedule, val, (x0[full], [tensor(c[full]) for c in conds]), bounds,
                                 ridge, (profile * spread).clamp(max=1.0),
                                 unconditional=mask is not None or config.uncond_prob > 0, seed=config.seed,
                                 stack=stacking, types=None if types is None else types[va])
        return profile, spread, report, stacking

    @staticmethod
    def _record(result: TrainResult, trials, extra: Mapping | None, report: Mapping | None = None) -> tuple[dict, dict]:
        cfg = result.config
        metrics = {k: round(v, 6) for k, v in result.metrics.items()}  # val_loss, val_r2, val_r2_mean, val_energy
        metrics |= {"selected_by": "energy score" if cfg.select == "energy" else "mse",
                    "val_sampler": f"{cfg.val_method}, {cfg.val_steps} steps, eta {cfg.val_eta}, "
                                   f"{cfg.val_variance} variance, {cfg.val_draws} draws per row",
                    "n_val": result.n_val}
        if report:
            metrics["held_out"] = dict(report)
        # no wall-clock times here: the config is sealed into the digest, which must not change
        # between two trainings of the same model (the time is printed, and kept in fit_seconds)
        training = {"n_train": result.n_train, "best_step": result.best_step, "steps_run": result.steps_run,
                    **dict(extra or {})}
        if trials:
            training["search"] = trials
        return metrics, training


class Expert(_DiffusionModel):
    """A single-condition diffusion model C -> X (id ``"rnaseq->cna"``)."""

    kind = "expert"
    card_template = "expert.md.j2"

    def __init__(self, source: str, target: str, model: Denoiser, schedule: NoiseSchedule,
                 encoders: Mapping[str, str], train_config: TrainConfig | None = None,
                 metrics: Mapping | None = None, training: Mapping | None = None, x0_bounds: tuple | None = None,
                 mean: RidgeMean | None = None, noise_error: torch.Tensor | None = None, spread: float = 1.0,
                 stack: StackMean | None = None, stack_alpha: float = 1.0, head: RidgeMean | None = None,
                 fstack: RidgeMean | None = None, fstack_beta: float = 0.0, spread_on: str = "network"):
        if model.num_conds != 1:
            raise CohereError(f"an expert has one condition; the denoiser has {model.num_conds}")
        super().__init__([source], target, model, schedule, encoders, train_config, metrics, training, x0_bounds,
                         mean, noise_error, spread, stack, stack_alpha, head, fstack=fstack, fstack_beta=fstack_beta,
                         spread_on=spread_on)

    @property
    def source(self) -> str:
        return self.sources[0]

    @property
    def id(self) -> str:
        return f"{self.source}{ARROW}{self.target}"

    @classmethod
    def fit(cls, source: str, target: str, source_latents, target_latents, encoders: Mapping,
            config: TrainConfig | None = None, schedule: NoiseSchedule | None = None, search: int = 0,
            progress: Callable | None = None, training: Mapping | None = None,
            run_trials: Callable | None = None, target_residuals=None, target_encoder=None,
            covariates=None) -> "Expert":
        """Train on paired rows (training split only): ``source_latents`` and
        ``target_latents`` (n, d) of the same samples; ``encoders`` {modality: encoder or
        digest} for source and target. ``search`` > 1: random search over that many configs,
        trained by ``run_trials`` (see :func:`~cohere.diffusion.train.random_search`).
        ``target_residuals`` (n, F), the same samples' target features minus the decoded
        target latents (:func:`cohere.training.feature_residuals`): the residual head is fitted
        to them (:func:`fit_head`); with the ``target_encoder`` too, the feature stacking
        (:func:`add_feature_stacking`). ``covariates``: the samples' cancer types (n,), ""
        where unknown (:func:`covariate_values`): the stacking ridge then also sees the type
        (:class:`TypedStackMean`)."""
        config = TrainConfig() if config is None else config
        schedule = NoiseSchedule() if schedule is None else schedule
        if source == target:
            raise CohereError(f"source and target must differ, got {source!r} twice")
        digests = _digests(encoders, [source, target])
        c = _to_tensor(source_latents, f"{source} latents")
        x = _to_tensor(target_latents, f"{target} latents", rows=len(c))
        if isinstance(source_latents, pd.DataFrame) and isinstance(target_latents, pd.DataFrame):
            if not source_latents.index.equals(target_latents.index):
                raise CohereError(f"{source} and {target} latents must have the same samples in the same order")
        covariates = _covariates(covariates, len(c))
        res, trials, mean, profile, spread, report, stack = cls._train(
            x.numpy(), [c.numpy()], None, config, schedule, search, progress, mean=config.mean == "ridge",
            run_trials=run_trials, stack=True, covariates=covariates)
        metrics, train_info = cls._record(res, trials, training, report)
        head = None if target_residuals is None else fit_head(c.numpy(), target_residuals)
        obj = cls(source, target, res.model, schedule, digests, res.config, metrics, train_info, res.x0_bounds,
                  mean, profile, spread, stack, report.get("stack_alpha", 1.0), head,
                  spread_on="network" if stack is None else "stacked")
        if head is not None and target_encoder is not None:
            obj = add_feature_stacking(obj, target_encoder, c.numpy(), x.numpy(), target_residuals, record=False,
                                       covariates=covariates)
        obj.fit_seconds = res.seconds
        return obj

    def _member_inputs(self, conds, n):
        if isinstance(conds, Mapping):
            if set(conds) != {self.source}:
                raise CohereError(f"{self.id}: expected conditions for {self.source!r} only, got {sorted(conds)}")
            conds = conds[self.source]
        c = _to_tensor(conds, f"{self.id}: {self.source} latents", rows=n, dim=self.model.config.cond_dims[0])
        if not torch.isfinite(c).all():
            raise CohereError(f"{self.id}: {self.source} latents contain NaN; pass only samples that have {self.source}")
        return [c], None, len(c)


def add_stacking(expert: Expert, source_latents, target_latents) -> Expert:
    """The ``expert`` with the stacking of its mean fitted, for an artifact trained before
    cohere fitted it: :func:`recalibrate` with the stacking added (the latents it was trained
    on, in the same order). The network is not touched."""
    return recalibrate(expert, target_latents, {expert.source: source_latents}, stacking=True)


def _fitted_after(expert: Expert, request: dict, **changes) -> Expert:
    """A copy of ``expert`` with ``changes`` to its attributes and ``request`` added to its
    recorded training request (what a training with the current code records); unsaved."""
    new = copy.copy(expert)
    new.__dict__.update(changes)
    new.training = dict(expert.training)
    if isinstance(new.training.get("request"), dict):
        new.training["request"] = {**new.training["request"], **request}
    new.digest = new.path = None
    return new


def fit_head(source_latents, target_residuals) -> RidgeMean:
    """The residual head of an expert: ridge (:class:`RidgeMean`, penalty by leave-one-out)
    from its condition latents (n, c) to what the target's latent cannot represent (n, F): the
    target features minus decode(target latent), on its training rows. Generation adds its
    prediction to every decoded draw (the decoded mean of a 32-d latent misses the part of
    the features outside the latent: 60% of RNA-seq's variance here)."""
    c = _to_tensor(source_latents, "condition latents").numpy()
    r = np.asarray(target_residuals, np.float64)
    if r.ndim != 2 or len(r) != len(c) or not np.isfinite(r).all():
        raise CohereError(f"residuals: expected a finite array of shape ({len(c)}, F), got {r.shape}")
    return RidgeMean.fit(c, r)


def add_head(expert: Expert, source_latents, target_residuals) -> Expert:
    """The ``expert`` with the residual head fitted (:func:`fit_head`), for an artifact
    trained before cohere fitted it; ``source_latents`` and ``target_residuals`` of the rows it
    was trained on, in the same order."""
    return _fitted_after(expert, {"residuals_sha256": residuals_digest(target_residuals)},
                         head=fit_head(source_latents, target_residuals))


# the grid of feature-stacking weights beta (0 = the decoded draws' own mean, 1 = ridge's features)
FEATURE_BETAS = tuple(round(b, 2) for b in np.linspace(0.0, 1.0, 11))


def feature_stack_weight(y: np.ndarray, decoded_mean: np.ndarray, point: np.ndarray) -> float:
    """The feature-stacking weight beta of an expert: the one of ``FEATURE_BETAS`` for which
    (1 - beta) * ``decoded_mean`` + beta * ``point`` has the lowest squared error against the
    held-out features ``y`` (n, F), where ``decoded_mean`` is the mean of the expert's decoded
    draws for those rows and ``point`` ridge's prediction of the features, fitted on the
    training rows only. Ties keep the smaller beta (the draws' own mean).

    Why: the latent stacking (:func:`stack_weight`) weighs the 32 standardised latent
    dimensions alike, but a user receives features, where each dimension counts by what the
    decoder makes of it, and the decoded mean of a low-dimensional latent misses what lies
    outside it. Ridge fitted straight from the condition to the features has neither limit
    and its own linear bias; stacking the two in feature space, on rows neither saw, keeps the
    better of each (Breiman 1996)."""
    y, m, p = (np.asarray(a, np.float64) for a in (y, decoded_mean, point))
    best = (math.inf, 0.0)
    for b in FEATURE_BETAS:
        e = float(np.mean(((1.0 - b) * m + b * p - y) ** 2))
        if e < best[0] - 1e-12:
            best = (e, b)
    return float(best[1])


def add_feature_stacking(expert: Expert, target_encoder, source_latents, target_latents, target_residuals,
                         record: bool = True, covariates=None) -> Expert:
    """The ``expert`` with its feature stacking fitted, on the rows it was trained on (the
    ``source_latents`` and ``target_latents`` (n, d) and the target's
    :func:`cohere.training.feature_residuals` (n, F), in the same order; the target's
    features are the residuals plus decode(target latents)): ridge from the condition latent
    to the features (:class:`RidgeMean`; :class:`TypedRidge`, which also sees the cancer type,
    with ``covariates`` of which a training row's is known), fitted on the training rows of its recipe's split,
    and its weight beta (:func:`feature_stack_weight`) on the held-out rows, where
    ``REPORT_DRAWS`` draws per row are generated as :mod:`cohere.generation` does (mean
    stacking and residual head included) and decoded. Generation then moves the mean of a
    patient's decoded draws by beta towards ridge's features (every draw by the same vector,
    so their spread is kept). ``record``: add it to the recorded training request (an artifact
    upgraded after its training). ``covariates``: the rows' cancer types, for a stacking that
    uses them. The network is not touched."""
    cfg = expert.train_config
    if cfg is None:
        raise CohereError(f"{expert.id}: the artifact records no training recipe; retrain it")
    if expert.head is None:
        raise CohereError(f"{expert.id}: feature stacking needs the residual head; add it first (add_head)")
    x = _to_tensor(target_latents, f"{expert.target} latents").numpy()
    c = _to_tensor(source_latents, f"{expert.source} latents", rows=len(x)).numpy()
    r = np.asarray(target_residuals, np.float64)
    if r.shape != (len(x), expert.head.weight.shape[0]) or not np.isfinite(r).all():
        raise CohereError(f"residuals: expected a finite array of shape ({len(x)}, {expert.head.weight.shape[0]}), "
                          f"got {r.shape}")
    features = r + target_encoder.decode(x).to_numpy(np.float64)
    tr, va = split_validation(torch.ones(len(x), 1), cfg.val_fraction, cfg.seed)
    types = _covariates(covariates, len(x))
    if types is not None and not TypedRidge.vocabulary(types[tr]):
        types = None  # no training row of known type: the type-free ridge
    ridge = RidgeMean.fit(c[tr], features[tr]) if types is None else TypedRidge.fit(c[tr], features[tr], types[tr])
    tva = None if types is None else types[va]
    cv = torch.from_numpy(np.ascontiguousarray(c[va]))
    with torch.no_grad():
        draws = torch.from_numpy(expert.sample(cv, n_draws=REPORT_DRAWS, seed=cfg.seed + 4))
        if expert.stack is not None:
            draws = recenter(draws, expert.stack_point([cv], tva), expert.stack_alpha)
        K, n, d = draws.shape
        decoded = target_encoder.decode(draws.reshape(K * n, d).numpy()).to_numpy(np.float64).reshape(K, n, -1)
        decoded = decoded + expert.head_shift([cv]).double().numpy()[None]  # decode may return a read-only view
        point = ridge([cv], types=tva).double().numpy()
    mean = decoded.mean(0)
    beta = feature_stack_weight(features[va], mean, point)
    report = {"beta": beta, "r2_decoded_mean": scores.r2(features[va], mean), "r2_ridge": scores.r2(features[va], point),
              "r2_stacked": scores.r2(features[va], (1 - beta) * mean + beta * point)}
    metrics = {**expert.metrics, "held_out_features": {k: round(float(v), 4) for k, v in report.items()}
               | {"n": int(n), "draws": int(K)}}
    request = {"feature_stacking": True} | ({} if types is None else {"covariates_sha256": covariates_digest(covariates)})
    return _fitted_after(expert, request if record else {}, fstack=ridge, fstack_beta=beta, metrics=metrics)


def recalibrate(model: "_DiffusionModel", target_latents, source_latents: Mapping[str, object],
                stacking: bool | None = None, covariates=None) -> "_DiffusionModel":
    """The ``model`` (an expert or a multi-condition model) recalibrated for this version's
    default sampler (``SAMPLER_STEPS`` steps, the ``SPREADS`` grid): the same
    :meth:`~_DiffusionModel._finish` as training, on the held-out rows its recipe carves out of
    the latents it was trained on (``target_latents`` (n, d) and ``source_latents``
    {modality: (n, d)}, in the same order; for a multi-condition model NaN rows where a sample
    lacks the source). The network is not touched. The rows are proved the same by the
    noise-error profile, which does not depend on the sampler: recomputed on them it must
    equal the recorded one, checked before the calibration runs. The spread, the held-out
    report and (experts that have it) the stacking weight are chosen anew; the result is the
    artifact a training with this version gives. ``stacking`` (experts): fit the stacking of
    the mean (True), or keep it as the artifact has it (None: refitted where it has one);
    ``covariates`` (experts): the rows' cancer types, for a stacking that also sees them
    (:class:`TypedStackMean`)."""
    cfg = model.train_config
    if cfg is None:
        raise CohereError(f"{model.id}: the artifact records no training recipe; retrain it")
    missing = [m for m in model.sources if source_latents.get(m) is None]
    if missing:
        raise CohereError(f"{model.id}: give the {missing[0]} latents it was trained on")
    x = _to_tensor(target_latents, f"{model.target} latents")
    if isinstance(model, MultiConditionModel):
        conds, mask = MultiConditionModel._conds_and_mask(source_latents, model.sources, len(x), model.id)
        if stacking:
            raise CohereError(f"{model.id}: multi-condition models have no stacking")
        conds, mask, stack = [c.numpy() for c in conds], mask.numpy(), False
    else:
        conds = [_to_tensor(source_latents[model.source], f"{model.source} latents", rows=len(x)).numpy()]
        mask, stack = None, model.stack is not None if stacking is None else bool(stacking)
    from .diffusion.train import cpu_threads

    def same_rows(profile) -> None:  # checked before the calibration, which takes minutes on a real cohort
        if model.noise_error is None or not torch.allclose(profile, model.noise_error, rtol=1e-4, atol=1e-6):
            raise CohereError(f"{model.id}: the held-out rows of these latents do not reproduce the recorded "
                              "noise-error profile; give the latents it was trained on, or retrain it")

    with cpu_threads(cfg):
        _, spread, report, fitted = _DiffusionModel._finish(model.model, x.numpy(), conds, mask, cfg, model.schedule,
                                                            model.mean, stack, check_profile=same_rows,
                                                            covariates=_covariates(covariates, len(x)))
    changes = dict(spread=spread, sampler_steps=SAMPLER_STEPS, metrics={**model.metrics, "held_out": report},
                   spread_on="stacked" if stack else "network")
    request = {}
    if stack:
        changes |= dict(stack=fitted, stack_alpha=report["stack_alpha"])
        request["stacking"] = True
        if isinstance(fitted, TypedStackMean):
            request["covariates_sha256"] = covariates_digest(covariates)
    return _fitted_after(model, request, **changes)


def covariates_digest(covariates) -> str:
    """sha256 of the rows' cancer types (in order, "" = unknown): part of a job's request."""
    import hashlib

    v = _covariates(covariates)
    return hashlib.sha256("\0".join(v).encode()).hexdigest()


def residuals_digest(residuals) -> str:
    """sha256 of residual features (values as float32, in order): part of a job's request."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(np.asarray(residuals, np.float32)).tobytes()).hexdigest()


class MultiConditionModel(_DiffusionModel):
    """One diffusion model per target conditioned on any subset of its sources (id ``"multi->cna"``)."""

    kind = "multi"
    card_template = "multi.md.j2"

    def __init__(self, sources: Sequence[str], target: str, model: Denoiser, schedule: NoiseSchedule,
                 encoders: Mapping[str, str], train_config: TrainConfig | None = None,
                 metrics: Mapping | None = None, training: Mapping | None = None, x0_bounds: tuple | None = None,
                 noise_error: torch.Tensor | None = None, spread: float = 1.0):
        if model.num_conds != len(sources):
            raise CohereError(f"{len(sources)} sources but the denoiser has {model.num_conds} conditions")
        super().__init__(sources, target, model, schedule, encoders, train_config, metrics, training, x0_bounds,
                         noise_error=noise_error, spread=spread)

    @property
    def id(self) -> str:
        return f"multi{ARROW}{self.target}"

    @classmethod
    def fit(cls, target: str, target_latents, source_latents: Mapping[str, object], encoders: Mapping,
            config: TrainConfig | None = None, schedule: NoiseSchedule | None = None, search: int = 0,
            progress: Callable | None = None, training: Mapping | None = None,
            run_trials: Callable | None = None) -> "MultiConditionModel":
        """Train on every training sample that has the target: ``target_latents`` (n, d);
        ``source_latents`` {modality: (n, d)} aligned with it, a row all NaN where that sample
        lacks the modality (the real missingness). Extra random masking per ``config``."""
        config = TrainConfig() if config is None else config
        # the ridge mean and the condition dropout are expert settings: the multi-condition model
        # is trained on the real missingness with its own masking (mask_prob, empty_prob)
        config = dataclasses.replace(config, mean="none", uncond_prob=0.0)
        schedule = NoiseSchedule() if schedule is None else schedule
        sources = sorted(source_latents)
        if not sources or target in sources:
            raise CohereError(f"multi->{target}: give at least one source modality other than the target")
        digests = _digests(encoders, [*sources, target])
        x = _to_tensor(target_latents, f"{target} latents")
        conds, mask = cls._conds_and_mask(source_latents, sources, len(x), f"multi->{target}")
        if isinstance(target_latents, pd.DataFrame):
            for m in sources:
                s = source_latents[m]
                if isinstance(s, pd.DataFrame) and not s.index.equals(target_latents.index):
                    raise CohereError(f"multi->{target}: {m} latents must be aligned with the target's samples "
                                      "(reindex them, NaN rows where missing)")
        res, trials, _, profile, spread, report, _ = cls._train(x.numpy(), [c.numpy() for c in conds], mask.numpy(),
                                                             config, schedule, search, progress,
                                                             run_trials=run_trials)
        presence = {m: int(mask[:, i].sum()) for i, m in enumerate(sources)}
        metrics, train_info = cls._record(res, trials, {"n_with_source": presence, **dict(training or {})}, report)
        obj = cls(sources, target, res.model, schedule, digests, res.config, metrics, train_info, res.x0_bounds,
                  noise_error=profile, spread=spread)
        obj.fit_seconds = res.seconds
        return obj

    @staticmethod
    def _conds_and_mask(source_latents: Mapping, sources: Sequence[str], n: int | None, where: str):
        conds, mask = [], []
        for m in sources:
            v = source_latents.get(m)
            if v is None:
                conds.append(None)
                mask.append(None)
                continue
            c = _to_tensor(v, f"{where}: {m} latents", rows=n)
            n = len(c) if n is None else n
            present = torch.isfinite(c).all(1)  # (n,)
            partial = ~present & ~torch.isnan(c).all(1)
            if partial.any():
                raise CohereError(f"{where}: {m} latents have rows that are partly NaN; a missing modality "
                                  "is a row entirely NaN")
            conds.append(torch.where(present[:, None], c, torch.zeros(())))
            mask.append(present.float())
        if n is None:
            raise CohereError(f"{where}: give at least one source's latents (a row of NaN where missing), "
                              "or the number of rows n to generate unconditionally")
        conds = [torch.zeros(n, 32) if c is None else c for c in conds]
        mask = torch.stack([torch.zeros(n) if m_ is None else m_ for m_ in mask], dim=1)  # (n, k)
        return conds, mask

    def _member_inputs(self, conds, n):
        if not isinstance(conds, Mapping):
            raise CohereError(f"{self.id}: conditions must be a dict {{modality: latents}} over "
                              f"{', '.join(self.sources)} (absent ones omitted or NaN rows)")
        unknown = sorted(set(conds) - set(self.sources))
        if unknown:
            raise CohereError(f"{self.id}: unknown source modality {unknown[0]!r}; this model takes "
                              f"{', '.join(self.sources)}")
        c, mask = self._conds_and_mask(conds, self.sources, n, self.id)
        dims = self.model.config.cond_dims
        for i, m in enumerate(self.sources):
            if c[i].shape[1] != dims[i]:
                if m in conds and conds[m] is not None:
                    raise CohereError(f"{self.id}: {m} latents must have {dims[i]} columns, got {c[i].shape[1]}")
                c[i] = torch.zeros(len(c[i]), dims[i])
        return c, mask, len(mask)


MODEL_CLASSES = {"expert": Expert, "multi": MultiConditionModel}


def load_model(folder: str | os.PathLike, encoders: Mapping | None = None) -> Expert | MultiConditionModel:
    """Load an expert or multi-condition artifact folder (the class its config records)."""
    kind = read_config(folder).get("kind")
    if kind not in MODEL_CLASSES:
        raise CohereError(f"{folder}: is a {kind!r} artifact, expected an expert or a multi-condition model")
    return MODEL_CLASSES[kind].load(folder, encoders)


def model_dir(models: str | os.PathLike, model_id: str) -> Path:
    """``MODELS/experts/<source>_to_<target>/``."""
    return Path(models) / "experts" / folder_name(model_id)


def list_models(models: str | os.PathLike) -> list[Path]:
    """The expert / multi artifact folders under ``MODELS/experts``, sorted (not the temporary
    folder of one being written)."""
    root = Path(models) / "experts"
    return sorted(p for p in root.glob("*") if not is_temp(p.name) and (p / "config.json").is_file()) if (
        root.is_dir()) else []
