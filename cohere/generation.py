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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import read_config
from .cohort import Cohort
from .encoders import Encoder, latent_columns, load_encoder
from .errors import CohereError
from .experts import (COVARIATE, SAMPLER_STEPS, Expert, MultiConditionModel, TypedRidge, covariate_values,
                      list_models, load_model)
from .modalities import Imputation, registry
from .modalities.base import DEFAULT_MIN_COVERAGE
from .sampling import CONSENSUS, METHODS, VARIANCES, Generation, generate, recenter

WEIGHTINGS = ("inverse", "softmax", "uniform")
DEFAULT_WEIGHTING = "inverse"
DEFAULT_CONSENSUS = "product"
DEFAULT_VARIANCE = "analytic"
# the paper's exact method (its code, r-marchesi/coherent-genAI, trajectory by trajectory):
# DDPM over all T steps, softmax(1 / validation loss) weights, their weighted average, no x0 clamp
PAPER_MODE = {"sampler": "ddpm", "weighting": "softmax", "consensus": "average", "variance": "fixed", "clip": False,
              "stacking": False, "residual": False}
DEFAULT_SAMPLER = "ddim"
# the reverse steps of models trained by this version; by default (steps=None) every generation
# runs at the step count its models' spread was calibrated at (older artifacts: 20)
DEFAULT_STEPS = SAMPLER_STEPS
DEFAULT_ETA = 1.0


# ---------------------------------------------------------------- where models come from


@dataclass
class ModelSource:
    """A models folder (``MODELS/encoders/<m>``, ``MODELS/experts/<id>``) or the store."""

    name: str
    encoder_folders: dict[str, Path]
    model_folders: dict[str, Path]
    hint: str
    expected: dict = field(default_factory=dict)   # folder -> {file: sha256} to check before loading (None: refuse)

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

    @classmethod
    def installed(cls) -> "ModelSource":
        """Everything installed: the store's artifacts and those that plugins register
        (pip packages such as cohere-tcga-pancan). Before loading, every file is checked
        against its recorded sha256: the store's manifest, or the registry index entry of
        the package that ships it (an artifact of a package without one is refused)."""
        from . import hub, plugins
        from .store import GROUPS, Store

        store = Store()
        expected: dict[Path, dict | None] = {store.home / e["folder"]: dict(e["files"])
                                             for g in GROUPS for e in store.entries(g)}
        entries = {(e["id"], plugins.canonical(e["package"])): e for e in hub.load_index() if "package" in e}
        for group in GROUPS:
            for art_id, (folder, dist) in plugins.packaged(group).items():
                entry = entries.get((art_id, plugins.canonical(dist)))
                expected[folder] = None if entry is None else dict(entry["files"])
        return cls("the installed models (store and plugins)", plugins.encoders(), plugins.experts(),
                   "cohere experts add ID", expected)

    def _checked(self, folder: Path) -> Path:
        """``folder``, once its files match the recorded sha256 (if any are recorded)."""
        folder = Path(folder)
        if folder not in self.expected:
            return folder
        files = self.expected[folder]
        if files is None:
            raise CohereError(f"{folder}: a plugin registers this artifact but the registry index has no entry "
                              "with the sha256 of its files; add its entry to the index (COHERE_REGISTRY) or "
                              "install it into the store with 'cohere experts add ID --from FOLDER'")
        from .artifacts import sha256_file

        for name, digest in sorted(files.items()):
            path = folder / name
            if not path.is_file() or sha256_file(path) != digest:
                state = "is missing" if not path.is_file() else "changed since it was built"
                raise CohereError(f"{path} {state} (expected sha256 {digest[:12]}); reinstall the package or "
                                  "the artifact")
        return folder

    def encoder(self, modality: str) -> Encoder:
        if modality not in self.encoder_folders:
            raise CohereError(f"no {modality!r} encoder in {self.name}; train or install it first "
                              f"(have: {', '.join(self.encoder_folders) or 'none'})")
        return load_encoder(self._checked(self.encoder_folders[modality]))

    def model(self, model_id: str, encoders: dict[str, Encoder]):
        if model_id not in self.model_folders:
            raise CohereError(f"no model {model_id!r} in {self.name}; get it with "
                              f"'{self.hint.replace('ID', model_id)}'")
        return load_model(self._checked(self.model_folders[model_id]), encoders)


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


def product_weights(experts: list[Expert], explicit: dict[str, float] | None = None) -> list[float]:
    """The product consensus's weights, from each expert's measured informativeness: g_i, how
    much its condition improves the energy score of its held-out rows over its own
    unconditional branch, relative to the most informative expert's, w_i = g_i / max_j g_j.

    With w_i = 1 the product is exact when the conditions are independent given the target.
    They are not, here: on a development split of the TCGA training patients, the exact
    product lost to its stronger expert alone in two of three targets, because a weakly
    informative expert adds mostly its estimation noise (and information the stronger one
    already carries, such as the cancer type). The measured weights kept the strongest expert
    at 1, gave 0.2-0.55 to the weaker one, and beat the better single expert in every target.
    ``explicit`` {expert id: weight >= 0} is used as given (not normalised)."""
    if explicit is None:
        gains = [e.informativeness for e in experts]
        if len(experts) == 1 or any(g is None for g in gains) or max(gains) <= 0:
            return [1.0] * len(experts)  # nothing measured to tell them apart: the plain product
        top = max(gains)
        return [max(g, 0.0) / top for g in gains]
    missing = [e.id for e in experts if e.id not in explicit]
    if missing:
        raise CohereError(f"explicit weights lack expert {missing[0]!r}; give one per expert")
    w = [float(explicit[e.id]) for e in experts]
    if any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise CohereError("explicit weights must be finite, >= 0 and not all zero")
    return w


@dataclass
class Consensus:
    """The members of Coherent Denoising for one batch of patients (see :func:`expert_consensus`)."""

    members: list  # one Member per expert with a positive weight
    prior: list  # the unconditional member (eps_u) of the product consensus: [] for one expert or "average"
    models: list[str]  # their ids
    weights: list[float]
    schedule: object
    bounds: tuple  # the x_0 clamp: the widest training range of the target among the experts
    stack: tuple | None = None  # (point (n, d), alpha): the mean stacking (see stacked_mean), or None
    shift: torch.Tensor | None = None  # (n, F) added to decoded draws (see residual_shift), or None
    fstack: tuple | None = None  # (point (n, F), beta): the feature stacking (see feature_stacking), or None


def residual_shift(experts: list[Expert], conds: dict, weights: list[float]) -> torch.Tensor | None:
    """(n, F) what generation adds to every decoded draw of a patient, or None when an expert
    has no residual head (artifacts before it): each expert's prediction h_i(c_i) of the part
    of the target's features outside its latent (:func:`cohere.experts.fit_head`), composed as
    the consensus composes the noise predictions, m + sum_i w_i (h_i - m) with m the training
    mean of the residuals (h_1 for one expert; the weighted mean for the average)."""
    if any(e.head is None for e in experts):
        return None
    return _compose_ridges([e.head for e in experts], experts, conds, weights)


def _compose_ridges(ridges: list, experts: list[Expert], conds: dict, weights: list[float],
                    types=None) -> torch.Tensor:
    """(n, F) the experts' ridge predictions r_i(c_i) (``ridges``: one RidgeMean each),
    composed as the consensus composes the noise predictions: m + sum_i w_i (r_i - m), m the
    mean of their training means. When every ridge also sees the cancer type
    (:class:`cohere.experts.TypedRidge`; ``types``: the patients' types, "" where unknown), m
    is the mean of their predictions from the type alone: each r_i already holds the type's
    effect, and a type-free m would count it once per expert."""
    n = len(next(iter(conds.values())))
    types = [""] * n if types is None else list(types)
    r = torch.stack([ridge([torch.as_tensor(conds[e.source], dtype=torch.float32)], types=types)
                     for ridge, e in zip(ridges, experts)])
    if all(isinstance(ridge, TypedRidge) for ridge in ridges):
        m = torch.stack([ridge.prior_mean(types) for ridge in ridges]).mean(0)  # (n, F)
    else:
        m = torch.stack([ridge.prior for ridge in ridges]).mean(0)
    w = torch.tensor(weights, dtype=torch.float32)
    return m + (w[:, None, None] * (r - m)).sum(0)


def feature_stacking(experts: list[Expert], conds: dict, weights: list[float], types=None) -> tuple | None:
    """(point (n, F), beta) that the mean of every patient's decoded draws is stacked with
    (:func:`decoded_draws`), or None when an expert has none (artifacts before it). Each expert
    records ridge from its condition to the target's features, f_i(c_i), and the weight beta_i
    it chose on its held-out rows (:func:`cohere.experts.feature_stack_weight`). The point
    composes them as the residual heads are composed (:func:`residual_shift`),
    m + sum_i w_i (f_i - m) with m the training mean of the features; beta is the weighted
    mean of the beta_i. ``types``: the patients' cancer types, for feature stackings that see
    them (:class:`cohere.experts.TypedRidge`; m is then the features' mean given the type)."""
    if any(e.fstack is None for e in experts):
        return None
    beta = float(sum(wi * e.fstack_beta for wi, e in zip(weights, experts)) / float(sum(weights)))
    return _compose_ridges([e.fstack for e in experts], experts, conds, weights, types), beta


def stacked_mean(experts: list[Expert], conds: dict, weights: list[float], types=None) -> tuple | None:
    """(point (n, d), alpha) that the mean of every patient's draws is stacked with
    (:func:`cohere.sampling.recenter`), or None when an expert has no stacking (artifacts
    before it). Each expert records ridge's prediction r_i(c_i) with the covariance S_i of its
    training residuals, the target's training mean m and covariance S_0
    (:class:`cohere.experts.StackMean`), and its weight alpha_i, chosen on its held-out rows
    (:func:`cohere.experts.stack_weight`). The point composes the Gaussians N(r_i, S_i) the
    way the consensus composes the noise predictions, a product of experts over the prior
    N(m, S_0) with the consensus weights w_i: precision P = P_0 + sum_i w_i (P_i - P_0) and
    mean P^-1 (P_0 m + sum_i w_i (P_i r_i - P_0 m)), with P_i = S_i^-1. With one expert it is
    r_1; for the average (weights summing to one) the precision-weighted mean of the r_i;
    for sources independent given a Gaussian target, the exact posterior mean. alpha is the
    weighted mean of the alpha_i.

    ``types``: the patients' cancer types (n,), "" where unknown, for experts whose stacking
    also sees them (:class:`cohere.experts.TypedStackMean`). When every expert's does, the
    prior is the target given the type alone, N(m(z), S_0(z)): each r_i already holds the
    type's effect, and a type-free prior would count it once per expert."""
    if any(e.stack is None for e in experts):
        return None
    n = len(next(iter(conds.values())))
    types = [""] * n if types is None else list(types)
    w = torch.tensor(weights, dtype=torch.float64)
    r = torch.stack([e.stack_point([torch.as_tensor(conds[e.source], dtype=torch.float32)], types).double()
                     for e in experts])  # (k, n, d)
    prec = torch.linalg.inv(torch.stack([e.stack.residual_cov for e in experts]).double())  # (k, d, d)
    if all(e.covariate_types is not None for e in experts):
        m = torch.stack([e.stack.prior_mean(types) for e in experts]).double().mean(0)  # (n, d)
    else:
        m = torch.stack([e.stack.prior for e in experts]).double().mean(0).expand(n, -1)  # (n, d)
    p0 = torch.linalg.inv(torch.stack([e.stack.prior_cov for e in experts]).double().mean(0))  # (d, d)
    total = p0 + (w[:, None, None] * (prec - p0)).sum(0)  # (d, d)
    p0m = m @ p0.T  # (n, d)
    rhs = p0m + (w[:, None, None] * (torch.einsum("kde,kne->knd", prec, r) - p0m)).sum(0)  # (n, d)
    point = torch.linalg.solve(total, rhs.T).T.float()
    alpha = float(sum(wi * e.stack_alpha for wi, e in zip(weights, experts)) / float(w.sum()))
    return point, alpha


def expert_consensus(experts: list[Expert], conds: dict, consensus: str = DEFAULT_CONSENSUS,
                     weighting: str = DEFAULT_WEIGHTING, weights: dict[str, float] | None = None,
                     device: str = "cpu", stacking: bool = True, residual: bool = True,
                     types=None) -> Consensus:
    """Experts ``source->X`` as consensus members for the rows of ``conds`` {source: (n, c)
    latents}: weights by :func:`product_weights` ("product") or :func:`consensus_weights`
    ("average"), experts of weight 0 left out, the unconditional member the product needs (that
    of the expert trained on the most rows), (``stacking``) the :func:`stacked_mean` and
    (``residual``) the :func:`residual_shift`, and (``stacking``) the :func:`feature_stacking`.
    ``types``: the rows' cancer types, for the stacking (:func:`stacked_mean`)."""
    w = product_weights(experts, weights) if consensus == "product" else consensus_weights(experts, weighting, weights)
    kept = [e for e, wi in zip(experts, w) if wi > 0]   # a zero weight has no effect
    kept_w = [wi for wi in w if wi > 0]
    members = [e.to(device).member({e.source: torch.as_tensor(conds[e.source])}, weight=wi)
               for e, wi in zip(kept, kept_w)]
    n = len(members[0].conds[0])
    # eps_u (unused by "average"): the unconditional prediction of one expert, the one trained on the most
    # target rows. Every expert's unconditional branch models the same p(x); averaging all of them cost one
    # network evaluation per expert per step and changed the energy score by at most 0.002 on val
    prior = [max(kept, key=lambda e: e.n_train).prior_member(n)] if consensus == "product" and len(kept) > 1 else []
    bounds = (torch.stack([e.x0_bounds[0] for e in kept]).amin(0), torch.stack([e.x0_bounds[1] for e in kept]).amax(0))
    stack = stacked_mean(kept, conds, kept_w, types) if stacking else None
    shift = residual_shift(kept, conds, kept_w) if residual else None
    fstack = feature_stacking(kept, conds, kept_w, types) if stacking else None
    return Consensus(members, prior, [e.id for e in kept], kept_w, kept[0].schedule, bounds, stack, shift, fstack)


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
    shift: np.ndarray | None = None  # (n, F) added to decoded draws (residual_shift), or None
    fstack: tuple | None = None  # (point (n, F), beta) the decoded draws' mean is stacked with, or None

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
        acc = Accumulator(len(self.samples), self.draws.shape[2])
        acc.add(np.arange(len(self.samples)), self.generation)
        return acc.diagnostics(self.samples, self.imputation)

    def to_frame(self, decode: bool = False, aggregate: bool = False) -> pd.DataFrame:
        """One row per (sample, draw) — or per sample with ``aggregate`` (the mean of the
        draws) — with latent columns ``<target>.zNN`` or, with ``decode``, the target's features."""
        if aggregate:
            return aggregate_frame(self.target, self.target_encoder, self.samples,
                                   self.decoded().mean(0, dtype=np.float64) if decode else self.mean,
                                   self.diagnostics(), decode)
        K = self.draws.shape[0]
        return draws_frame(self.target, self.target_encoder, self.samples.to_numpy(), self.draws, np.arange(K),
                           decode, self.shift, self.fstack)

    def decoded(self) -> np.ndarray:
        """(K, n, F) every draw decoded into the target's features, the residual shift added
        and the feature stacking applied."""
        return decoded_draws(self.target_encoder, self.draws, self.shift, self.fstack)


def decoded_draws(encoder: Encoder, draws: np.ndarray, shift: np.ndarray | None = None,
                  fstack: tuple | None = None) -> np.ndarray:
    """(K, n, F): latent ``draws`` (K, n, d) decoded into the target's features (float32), plus
    each patient's ``shift`` (n, F) when given (:func:`residual_shift`); with ``fstack`` =
    (point (n, F), beta) (:func:`feature_stacking`) and two draws or more, every decoded draw
    of a patient is moved by the same vector so that their mean becomes (1 - beta) * their
    mean + beta * point (their spread is kept; as :func:`cohere.sampling.recenter` in the
    latent)."""
    K, n, d = draws.shape
    x = encoder.decode(draws.reshape(K * n, d)).to_numpy(np.float32).reshape(K, n, -1)
    if shift is not None:
        x = x + np.asarray(shift, np.float32)[None]
    if fstack is not None and K >= 2 and fstack[1] > 0:
        point, beta = fstack
        x = x + np.float32(beta) * (np.asarray(point, np.float32)[None] - x.mean(0, keepdims=True))
    return x


def _latent_frame(target: str, x: np.ndarray) -> pd.DataFrame:
    """Latent rows ``x`` (m, d) as columns ``<target>.zNN``."""
    return pd.DataFrame(x, columns=[f"{target}.{c}" for c in latent_columns(x.shape[1])])


def draws_frame(target: str, encoder: Encoder, samples: np.ndarray, values: np.ndarray, draw_ids: np.ndarray,
                decode: bool, shift=None, fstack=None) -> pd.DataFrame:
    """Rows (sample, draw) for ``values`` (k, r, d), the draws ``draw_ids`` (k,) of the
    patients ``samples`` (r,): latent columns, or the decoded features with ``decode``
    (:func:`decoded_draws`: plus each patient's ``shift`` (r, F), and the feature stacking
    ``fstack`` = (point (r, F), beta), when given)."""
    k, r, d = values.shape
    if decode:
        x = decoded_draws(encoder, values, shift, fstack).reshape(k * r, -1)
        table = pd.DataFrame(x, columns=encoder.preprocessor_.features_)
    else:
        table = _latent_frame(target, values.reshape(-1, d))
    table.insert(0, "sample", np.tile(samples, k))
    table.insert(1, "draw", np.repeat(np.asarray(draw_ids), r))
    return table


def aggregate_frame(target: str, encoder: Encoder, samples: pd.Index, mean: np.ndarray, diagnostics: pd.DataFrame,
                    decoded: bool) -> pd.DataFrame:
    """One row per patient: the mean of its draws, its acceptance and latent variance.

    ``mean`` is the mean of the latent draws (n, d), or with ``decoded`` the mean of the
    decoded draws (n, F), residual shift included. The decoder is not linear, so the latter is
    not decode(mean latent): it is the posterior mean of the features, what minimises their
    expected squared error, and what ``cohere complete`` fills in."""
    if decoded:
        table = pd.DataFrame(mean, columns=encoder.preprocessor_.features_)
    else:
        table = _latent_frame(target, mean)
    table.insert(0, "sample", samples.to_numpy())
    for col in ("accepted", "latent_variance"):
        table[col] = diagnostics[col].to_numpy()
    return table


class Accumulator:
    """Per-patient running sums over the draws of a chunked generation (float64): the mean and
    variance of the latents and the rejection diagnostics, in memory of size patients x d."""

    def __init__(self, n: int, d: int, features: int = 0):
        self.count = np.zeros(n)
        self.total, self.squares = np.zeros((n, d)), np.zeros((n, d))
        self.accepted, self.attempts, self.bad = np.zeros(n), np.zeros(n), np.zeros(n)
        self.feature_total = np.zeros((n, features)) if features else None

    def add(self, rows: np.ndarray, gen: Generation, decoded: np.ndarray | None = None) -> None:
        """Add a batch: its latent draws and, when the accumulator sums features, the same
        draws ``decoded`` (k, r, F)."""
        x = gen.draws.cpu().double().numpy()  # (k, r, d)
        self.count[rows] += x.shape[0]
        self.total[rows] += x.sum(0)
        self.squares[rows] += (x ** 2).sum(0)
        self.accepted[rows] += gen.accepted.float().sum(0).cpu().numpy()
        self.attempts[rows] += gen.attempts.float().sum(0).cpu().numpy()
        self.bad[rows] += gen.bad_fraction.sum(0).cpu().numpy()
        if self.feature_total is not None:
            self.feature_total[rows] += np.asarray(decoded, np.float64).sum(0)

    @property
    def mean(self) -> np.ndarray:  # (n, d)
        return self.total / self.count[:, None]

    @property
    def feature_mean(self) -> np.ndarray:  # (n, F): the mean of the decoded draws
        return self.feature_total / self.count[:, None]

    @property
    def variance(self) -> np.ndarray:  # (n, d) across draws (ddof 0)
        return np.maximum(self.squares / self.count[:, None] - self.mean ** 2, 0.0)

    def diagnostics(self, samples: pd.Index, imputation: dict) -> pd.DataFrame:
        return pd.DataFrame({
            "accepted": self.accepted / self.count, "attempts": self.attempts / self.count,
            "bad_step_fraction": self.bad / self.count, "latent_variance": self.variance.mean(1),
            **{f"{m}_imputed": r.fraction_per_sample.reindex(samples).to_numpy() for m, r in imputation.items()},
        }, index=samples)


# ---------------------------------------------------------------- the job

# rows (patients x draws) of one batch of the reverse loop: memory stays bounded (about 100 MB
# of activations for the default networks) whatever the cohort size and the number of draws
MAX_BATCH_ROWS = 32_768
# generate_missing keeps every draw in memory; beyond this it refuses (stream instead)
MAX_RESULT_BYTES = 2 * 1024**3


@dataclass
class GenerationJob:
    """A validated generation, ready to run: the encoded conditions of ``samples`` as consensus
    members (one row per patient), the models, weights and sampler settings. :meth:`chunks`
    runs it in batches of bounded size; :func:`generate_missing` collects them."""

    target: str
    samples: pd.Index
    method: str
    models: list[str]
    weights: list[float]
    target_encoder: Encoder
    members: list
    prior: list
    schedule: object
    options: dict  # keyword arguments of cohere.sampling.generate
    settings: dict = field(default_factory=dict)
    imputation: dict[str, Imputation] = field(default_factory=dict)
    stack: tuple | None = None  # (point (n, d), alpha) of the mean stacking, or None
    shift: np.ndarray | None = None  # (n, F) added to decoded draws (residual_shift), or None
    fstack: tuple | None = None  # (point (n, F), beta) of the feature stacking, or None

    def decoding(self, rows: np.ndarray) -> tuple:
        """(shift, fstack) of the patients ``rows``: what :func:`decoded_draws` takes."""
        return (None if self.shift is None else self.shift[rows],
                None if self.fstack is None else (self.fstack[0][rows], self.fstack[1]))

    def batches(self, draws: int) -> list[tuple[int, int, np.ndarray]]:
        """(first draw, number of draws, patient indices) of each batch, at most
        ``MAX_BATCH_ROWS`` rows each: blocks of patients with all of their draws (the mean
        stacking needs every draw of a patient at once), or, for more draws than a batch
        holds, one patient at a time in near-equal blocks of draws. The layout depends only on
        the cohort size and ``draws``."""
        n = len(self.samples)
        if draws <= MAX_BATCH_ROWS:
            per = max(1, MAX_BATCH_ROWS // draws)
            return [(0, draws, np.arange(i, min(i + per, n))) for i in range(0, n, per)]
        size = -(-draws // -(-draws // MAX_BATCH_ROWS))
        return [(k, min(size, draws - k), np.array([p])) for p in range(n) for k in range(0, draws, size)]

    def chunks(self, draws: int, seed: int = 0) -> Iterator[tuple[int, np.ndarray, Generation]]:
        """Yield (first draw, patient indices, :class:`~cohere.sampling.Generation` of their
        draws) batch by batch. Batch b is seeded with ``seed`` (b = 0) or a seed derived from
        (``seed``, b), so the same seed gives the same draws, and a run that fits one batch is
        exactly one call of :func:`cohere.sampling.generate`."""
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise CohereError(f"draws must be a positive int, got {draws!r}")
        for b, (first, count, rows) in enumerate(self.batches(draws)):
            index = torch.from_numpy(rows)
            whole = len(rows) == len(self.samples)
            members = self.members if whole else [m.take(index) for m in self.members]
            prior = self.prior if whole else [m.take(index) for m in self.prior]
            batch_seed = seed if b == 0 else int(np.random.SeedSequence([seed, b]).generate_state(1)[0])
            gen = generate(members, self.schedule, len(rows), draws=count, seed=batch_seed, prior=prior,
                           **self.options)
            if self.stack is not None:
                point, alpha = self.stack
                gen.draws = recenter(gen.draws, point[index.to(point.device)], alpha)
            yield first, rows, gen

    def result_bytes(self, draws: int) -> int:
        """Memory that keeping every draw takes: draws x patients x latent dimensions (float32)."""
        return draws * len(self.samples) * int(self.target_encoder.latent_dim) * 4


def prepare_generation(
    cohort: Cohort,
    target: str,
    have: list[str],
    source: ModelSource,
    method: str = "coherent",
    patients: list[str] | None = None,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    eta: float = DEFAULT_ETA,
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
    consensus: str = DEFAULT_CONSENSUS,
    variance: str = DEFAULT_VARIANCE,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    stacking: bool = True,
    residual: bool = True,
) -> GenerationJob:
    """Check everything, encode the conditions and load the models of a generation of
    ``target`` for every patient that has all of ``have`` (or ``patients``); nothing is
    sampled yet. Arguments as :func:`generate_missing`."""
    if consensus not in CONSENSUS:
        raise CohereError(f"unknown consensus {consensus!r}; expected one of {', '.join(CONSENSUS)}")
    if variance not in VARIANCES:
        raise CohereError(f"unknown variance {variance!r}; expected one of {', '.join(VARIANCES)}")
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
        conds = {m: torch.tensor(encoders[m].encode_cohort(cohort, ids, min_coverage).to_numpy())
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
        types = covariate_values(cohort.clinical, ids)
        c = expert_consensus(models, {m: conds[m] for m in have}, consensus, weighting, weights, device, stacking,
                             residual, types)
        members, prior, used, w, schedule, bounds = (c.members, c.prior, c.models, c.weights, c.schedule, c.bounds)
        stack, shift, fstack = c.stack, c.shift, c.fstack
    else:
        multi = source.model(f"multi->{target}", encoders)
        if not isinstance(multi, MultiConditionModel):
            raise CohereError(f"multi->{target} is not a multi-condition model")
        extra = sorted(set(have) - set(multi.sources))
        if extra:
            raise CohereError(f"multi->{target} was not trained with {extra[0]!r} as a condition")
        members = [multi.to(device).member(conds, n=len(ids))]
        used, w, schedule, bounds, prior = [multi.id], [1.0], multi.schedule, multi.x0_bounds, []
        stack = shift = fstack = None  # the multi-condition model has none of them
    if sampler == "ddpm":
        steps = None
    elif steps is None:  # the step count the models' spread was calibrated at
        steps = max(m.sampler_steps for m in (models if method == "coherent" else [multi]))
    variance = variance if sampler == "ddim" else "fixed"
    options = dict(method=sampler, steps=steps, eta=eta, threshold=threshold, fraction=fraction, attempts=attempts,
                   x0_bounds=None if not clip else bounds, consensus=consensus, variance=variance)
    settings = {"sampler": sampler, "steps": steps, "eta": eta, "threshold": threshold, "fraction": fraction,
                "attempts": attempts, "clip": clip,
                "consensus": consensus if method == "coherent" else None,
                "variance": variance if sampler == "ddim" else None,
                "weighting": ("explicit" if weights is not None else
                              "informativeness" if consensus == "product" else weighting),
                "stacking": None if stack is None else round(stack[1], 4),
                "residual": shift is not None,
                "feature_stacking": None if fstack is None else round(fstack[1], 4),
                "cancer_type": _type_note(models, stack, types) if method == "coherent" else None,
                "imputation": {m: r.to_dict() for m, r in imputation.items()}}
    if stack is not None:
        stack = (stack[0].to(device), stack[1])
    return GenerationJob(target, ids, method, used, w, encoders[target], members, prior, schedule.to(device),
                         options, settings, imputation, stack, None if shift is None else shift.cpu().numpy(),
                         None if fstack is None else (fstack[0].cpu().numpy(), fstack[1]))


def _type_note(models: list, stack, types) -> str | None:
    """What the settings of a coherent generation record of the cancer type: None where the
    stacking does not use it, else how many patients' types were known to it."""
    if stack is None or not any(e.covariate_types for e in models):
        return None
    known = set().union(*(e.covariate_types or [] for e in models))
    n = sum(1 for t in types if t in known)
    return f"known for {n} of {len(types)} patients (clinical.csv {COVARIATE}); the others get the types' average"


def generate_missing(cohort: Cohort, target: str, have: list[str], source: ModelSource, method: str = "coherent",
                     patients: list[str] | None = None, draws: int = 1, seed: int = 0, **options) -> GenerationResult:
    """Generate ``target`` for every patient that has all of ``have`` (or ``patients``):
    ``draws`` draws each, all kept in memory (refused beyond ``MAX_RESULT_BYTES``; the CLI
    streams larger requests to its output instead).

    Options (see :func:`prepare_generation`): ``sampler`` ("ddim", "dpmpp2m" or "ddpm", the
    paper's T steps), ``steps`` (default: the DDIM step count the models' spread was
    calibrated at, ``DEFAULT_STEPS`` for models trained by this version), ``eta``; ``clip``
    clamps the x_0 estimate at every step to the target's training range recorded in the
    models (without it about 1% of few-step trajectories run away). ``consensus`` (Coherent
    Denoising): "product" combines the experts as a product, eps_u + sum_i w_i (eps_i - eps_u)
    with every w_i = 1 unless ``weights`` are given (eps_u the unconditional prediction of the
    expert trained on the most rows); "average" is the paper's weighted average, with weights
    from ``weighting`` or ``weights`` normalised to sum to one (see :mod:`cohere.sampling`).
    ``variance`` (the DDIM sampler): "analytic", the optimal reverse variance from the models'
    recorded noise-prediction errors, or "fixed", DDIM's own (too narrow at few steps).
    ``threshold``, ``fraction``, ``attempts``: coherence rejection.
    ``min_coverage``: a condition table must have at least this share of its encoder's
    features (the rest are imputed from them; see :class:`cohere.modalities.Preprocessor`).
    ``stacking`` (Coherent Denoising, two draws or more): move the mean of each patient's draws
    to alpha * (their mean) + (1 - alpha) * the experts' composed ridge prediction, with the
    weight alpha each expert chose on its held-out rows (:func:`stacked_mean`); the spread of
    the draws is kept. ``residual`` (Coherent Denoising): decoded draws get the experts'
    prediction of the features outside the target's latent added (:func:`residual_shift`;
    ``GenerationResult.shift``); with ``stacking``, the mean of each patient's decoded draws is
    also stacked with the experts' ridge prediction of the features, with the weight beta each
    chose on its held-out rows (:func:`feature_stacking`). ``PAPER_MODE`` holds the options of the paper's exact method.
    """
    job = prepare_generation(cohort, target, have, source, method, patients, **options)
    size = job.result_bytes(draws) if isinstance(draws, int) and draws > 0 else 0
    if size > MAX_RESULT_BYTES:
        raise CohereError(f"{draws} draws of {len(job.samples)} patients take {size / 1024**3:.1f} GB in memory "
                          f"(limit {MAX_RESULT_BYTES / 1024**3:.0f} GB); ask for fewer draws or fewer patients, or "
                          "use 'cohere generate', which streams them to its output")
    n, d = len(job.samples), int(job.target_encoder.latent_dim)
    x = torch.empty(draws, n, d)
    tries = torch.empty(draws, n, dtype=torch.long)
    bad, ok = torch.empty(draws, n), torch.empty(draws, n, dtype=torch.bool)
    t0 = time.perf_counter()
    for first, rows, gen in job.chunks(draws, seed):
        k, r = slice(first, first + gen.draws.shape[0]), torch.from_numpy(rows)
        x[k, r], tries[k, r], bad[k, r], ok[k, r] = gen.draws.cpu(), gen.attempts.cpu(), gen.bad_fraction.cpu(), \
            gen.accepted.cpu()
    settings = {"sampling_seconds": time.perf_counter() - t0, "seed": seed, "draws": draws, **job.settings}
    return GenerationResult(target, job.samples, Generation(x, tries, bad, ok), method, job.models, job.weights,
                            job.target_encoder, settings, job.imputation, job.shift, job.fstack)
