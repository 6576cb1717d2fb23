"""A seeded, TCGA-like synthetic cohort whose structure is known.

It is the embedded default for the demo (train encoders and experts on it, generate missing
modalities, score them against the ground truth) and the stand-in for slide embeddings,
of which no real data exists here.

The generative story, per patient:

1. A cancer type (unequal group sizes) shifts the mean of ``K_SHARED`` *shared* factors.
   Each modality also has ``K_PRIVATE`` *private* factors that no other modality sees.
2. Each modality is a smooth nonlinear function (tanh or sigmoid of random linear maps) of
   its weighted ``[shared, private]`` factors, plus noise. RNA-seq and RPPA see mostly the
   shared factors (strongly dependent pair); CNA sees mostly its private ones (hard to predict,
   as in the paper); WSI sits in between and carries cancer-type offsets.
3. Modalities are emitted in the *raw* input forms the paper preprocesses (``INPUT_FORMS``):
   absolute copy number in segments, log2(count + 1) with varying library sizes and some
   low-expressed genes, RPPA with per-antibody offsets and panel gaps, 768-d embeddings.
4. Clinical labels: stage from shared factors and type, survival from a Weibull model whose
   hazard depends on shared factors, stage and age, with uniform censoring.
5. Missingness is correlated across modalities (a per-patient "profiling depth") and with
   cancer type; one type has no RNA-seq at all (real RNA covers only some cohorts).

Every random component draws from its own stream of one ``SeedSequence(seed)``, so the same
seed gives identical tables, and changing one modality's size leaves the others unchanged.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cohort import Cohort, stratified_split
from .errors import CohereError

MODALITIES = ("cna", "rnaseq", "rppa", "wsi")
INPUT_FORMS = {"cna": "absolute", "rnaseq": "log2_count", "rppa": "raw", "wsi": "embedding"}
DEFAULT_FEATURES = {"cna": 200, "rnaseq": 300, "rppa": 60}  # wsi: the ``wsi_dim`` argument
PRESENCE = {"cna": 0.95, "rnaseq": 0.55, "rppa": 0.65, "wsi": 0.60}  # fraction of patients
K_SHARED = 8
K_PRIVATE = 4
# (weight of the shared factors, weight of the private factors) in each modality's input
MIXING = {"cna": (0.5, 1.0), "rnaseq": (1.0, 0.35), "rppa": (1.0, 0.35), "wsi": (0.8, 0.6)}
MIN_PATIENTS = 50
# one independent random stream per component (order fixed: never reorder, only append)
STREAMS = ("types", "latent", "clinical", "cna", "rnaseq", "rppa", "wsi", "missing")


@dataclass
class SimulationTruth:
    """What generated the cohort; every frame is indexed by all sample ids.

    ``complete`` holds every modality for every sample before missingness, in the same input
    form as the tables (RPPA without its NaN cells): the ground truth for generated modalities.
    """

    shared: pd.DataFrame
    private: dict[str, pd.DataFrame]
    complete: dict[str, pd.DataFrame]


def simulate_cohort(n_patients: int = 800, seed: int = 0, *, n_cancer_types: int = 6,
                    wsi_dim: int = 768, features: dict[str, int] | None = None,
                    missing: bool = True) -> tuple[Cohort, SimulationTruth]:
    """Simulate a cohort and return it with the truth that generated it.

    ``features`` overrides per-modality feature counts (e.g. ``{"cna": 50}``; a ``"wsi"``
    entry overrides ``wsi_dim``); a modality given 0 features is omitted. With
    ``missing=False`` every patient has every modality. The split is
    :func:`cohere.cohort.stratified_split` with the same seed.
    """
    counts = _check_arguments(n_patients, seed, n_cancer_types, wsi_dim, features)
    rngs = dict(zip(STREAMS, (np.random.default_rng(s)
                              for s in np.random.SeedSequence(seed).spawn(len(STREAMS)))))
    width = max(4, len(str(n_patients)))
    ids = pd.Index([f"SIM-{i:0{width}d}" for i in range(1, n_patients + 1)], name="sample")

    types = _cancer_types(rngs["types"], n_patients, n_cancer_types)
    shared, private = _latent_factors(rngs["latent"], types, n_cancer_types)
    clinical = _clinical(rngs["clinical"], ids, types, shared, n_cancer_types)

    generators = {"cna": _cna, "rnaseq": _rnaseq, "rppa": _rppa, "wsi": _wsi}
    complete = {}
    for m, n_features in counts.items():
        w_shared, w_private = MIXING[m]
        inputs = np.hstack([w_shared * shared, w_private * private[m]])  # (n, K_SHARED + K_PRIVATE)
        values, columns = generators[m](rngs[m], inputs, types, n_features)
        complete[m] = pd.DataFrame(values.astype(np.float32), index=ids, columns=columns)

    present = _presence(rngs["missing"], types, list(counts), n_cancer_types, missing)
    tables = {m: complete[m][present[m]].copy() for m in counts}
    if "rppa" in tables:
        tables["rppa"] = _rppa_gaps(rngs["rppa"], tables["rppa"])

    cohort = Cohort(tables, clinical, input_forms={m: INPUT_FORMS[m] for m in counts})
    cohort.split = stratified_split(cohort, seed=seed)
    truth = SimulationTruth(
        shared=pd.DataFrame(shared, index=ids, columns=[f"shared{j}" for j in range(K_SHARED)]),
        private={m: pd.DataFrame(private[m], index=ids,
                                 columns=[f"private{j}" for j in range(K_PRIVATE)])
                 for m in counts},
        complete=complete,
    )
    return cohort, truth


# ---------------------------------------------------------------- arguments


def _check_arguments(n_patients, seed, n_cancer_types, wsi_dim, features) -> dict[str, int]:
    """Validate the arguments; return the feature count of each included modality."""
    def is_int(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not is_int(n_patients) or n_patients < MIN_PATIENTS:
        raise CohereError(f"n_patients must be an integer >= {MIN_PATIENTS}, got {n_patients!r}")
    if not is_int(seed) or seed < 0:
        raise CohereError(f"seed must be a non-negative integer, got {seed!r}")
    if not is_int(n_cancer_types) or not 2 <= n_cancer_types <= 26:
        raise CohereError(f"n_cancer_types must be an integer from 2 to 26, got {n_cancer_types!r}")
    if n_patients < 5 * n_cancer_types:
        raise CohereError(f"n_patients={n_patients} is too small for {n_cancer_types} cancer "
                          f"types; give at least {5 * n_cancer_types} patients")
    if features is not None and not isinstance(features, dict):
        raise CohereError(f"features must be a dict of modality -> feature count, got {features!r}")
    counts = {**DEFAULT_FEATURES, "wsi": wsi_dim, **(features or {})}
    for m, k in counts.items():
        if m not in MODALITIES:
            raise CohereError(f"features: unknown modality {m!r}; expected some of "
                              f"{', '.join(MODALITIES)}")
        if not is_int(k) or k < 0:
            raise CohereError(f"feature count of {m!r} must be a non-negative integer, got {k!r}")
    counts = {m: int(counts[m]) for m in MODALITIES if counts[m] > 0}
    if not counts:
        raise CohereError("every modality has 0 features; give at least one a positive count")
    return counts


# ---------------------------------------------------------------- patients and latents


def _cancer_types(rng, n: int, k: int) -> np.ndarray:
    """Type index per patient, shuffled; sizes fall off like (1 + t)^-0.8, at least 3 each."""
    weights = (1.0 + np.arange(k)) ** -0.8
    sizes = 3 + np.floor(weights / weights.sum() * (n - 3 * k)).astype(int)
    sizes[: n - sizes.sum()] += 1  # the rounding remainder goes to the largest types
    return rng.permutation(np.repeat(np.arange(k), sizes))


def _type_names(k: int) -> list[str]:
    return [f"SIM{string.ascii_uppercase[t]}" for t in range(k)]


def _latent_factors(rng, types, k: int):
    """Shared factors = type mean + N(0, 1); private factors N(0, 1) for every modality."""
    type_means = rng.normal(0.0, 1.0, size=(k, K_SHARED))
    shared = type_means[types] + rng.normal(size=(len(types), K_SHARED))
    private = {m: rng.normal(size=(len(types), K_PRIVATE)) for m in MODALITIES}
    return shared, private


def _clinical(rng, ids, types, shared, k: int) -> pd.DataFrame:
    """cancer_type, stage (1-4, ~15% NaN), Weibull os_time/os_event, age, gender."""
    n = len(types)
    age = np.clip(np.round(60 + rng.normal(0, 5, k)[types] + rng.normal(0, 11, n)), 20, 90)
    p_female = rng.uniform(0.3, 0.7, k)
    p_female[0] = 0.99  # a breast-cancer-like type
    gender = np.where(rng.random(n) < p_female[types], "FEMALE", "MALE")

    # stage: an ordinal cut of shared factors + type effect + logistic noise
    v_stage = rng.normal(0, 0.5, K_SHARED)
    score = shared @ v_stage + rng.normal(0, 0.7, k)[types] + rng.logistic(size=n)
    stage = 1.0 + np.searchsorted(np.quantile(score, [0.30, 0.60, 0.87]), score)

    # survival: Weibull(shape 1.3) with proportional hazards; uniform administrative censoring.
    # The shared-factor direction of the hazard is orthogonal to that of stage, so the two
    # effects add up instead of possibly cancelling.
    shape = 1.3
    v_hazard = rng.normal(0, 0.2, K_SHARED)
    v_hazard -= (v_hazard @ v_stage) / (v_stage @ v_stage) * v_stage
    log_hazard = shared @ v_hazard + 0.8 * (stage - 1) + 0.02 * (age - 60)
    log_hazard -= log_hazard.mean()  # fixes the overall event rate across seeds
    event_time = 1700.0 * np.exp(-log_hazard / shape) * rng.exponential(size=n) ** (1 / shape)
    censor_time = rng.uniform(100, 4000, n)
    os_time = np.maximum(1.0, np.round(np.minimum(event_time, censor_time)))
    os_event = (event_time <= censor_time).astype(np.int64)

    stage[rng.random(n) < 0.15] = np.nan
    return pd.DataFrame({"cancer_type": np.array(_type_names(k))[types], "stage": stage,
                         "os_time": os_time, "os_event": os_event, "age": age,
                         "gender": gender}, index=ids)


# ---------------------------------------------------------------- modalities
# Each generator maps (rng, inputs (n, K_SHARED + K_PRIVATE), types, n_features) to
# (values (n, n_features), column names) in the modality's raw input form.


def _cna(rng, inputs, types, n_genes: int):
    """Absolute integer copy number: 2 + gains/losses in contiguous segments of genes.

    Recurrent events (arm-level or focal) fire with a sigmoid probability of the inputs;
    passenger events at random places come at a rate set by a "genomic instability" factor.
    """
    n, d = inputs.shape
    # genes ordered along 22 chromosomes of roughly human relative sizes
    sizes = np.array([250, 243, 198, 190, 181, 171, 159, 146, 141, 136, 135,
                      133, 114, 107, 102, 90, 83, 80, 59, 64, 47, 51], dtype=float)
    bounds = np.unique(np.round(np.cumsum(np.r_[0, sizes]) / sizes.sum() * n_genes).astype(int))
    chromosomes = list(zip(bounds[:-1], bounds[1:]))  # [start, end) per non-empty chromosome
    p_chrom = np.array([e - s for s, e in chromosomes], dtype=float)
    p_chrom /= p_chrom.sum()

    def random_segment(focal: bool):
        s, e = chromosomes[rng.choice(len(chromosomes), p=p_chrom)]
        if not focal:  # one arm
            mid = (s + e) // 2
            return (s, max(mid, s + 1)) if rng.random() < 0.5 else (mid, e)
        length = max(1, int(rng.integers(1, max(2, (e - s) // 3 + 1))))
        start = int(rng.integers(s, e - length + 1))
        return start, start + length

    def delta(gain: bool, size: int):
        if gain:
            return rng.choice([1, 2, 3, 4], size=size, p=[0.6, 0.25, 0.1, 0.05])
        return np.full(size, -1)

    copies = np.full((n, n_genes), 2, dtype=np.int64)
    deleted = np.zeros((n, n_genes), dtype=bool)  # homozygous deletions: copy number 0
    for _ in range(40):  # recurrent, factor-driven events
        focal = rng.random() < 0.4
        start, end = random_segment(focal)
        gain = rng.random() < 0.5
        logit = rng.uniform(-2.5, 0.0) + 3.0 * inputs @ rng.normal(0, d ** -0.5, d)
        hit = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
        copies[hit, start:end] += delta(gain, hit.sum())[:, None]
        if focal and not gain:
            deleted[hit & (rng.random(n) < 0.05), start:end] = True
    rate = 0.4 * np.exp(0.5 * inputs @ rng.normal(0, d ** -0.5, d))  # passenger events
    for i, n_events in enumerate(rng.poisson(rate)):
        for _ in range(n_events):
            start, end = random_segment(focal=rng.random() < 0.7)
            copies[i, start:end] += delta(rng.random() < 0.5, 1)[0]
    copies = np.where(deleted, 0, np.clip(copies, 1, 6))
    return copies, [f"GENE{g:04d}" for g in range(1, n_genes + 1)]


def _rnaseq(rng, inputs, types, n_genes: int):
    """log2(count + 1): Poisson counts of a nonlinear expression profile, per-sample library
    sizes (log-normal, ~5x spread) and ~12% low-expressed genes (mostly CPM < 1).

    Gene names match the CNA table's, but there is no dosage link: a gene's copy number does
    not drive its expression (that would leak CNA's private factors into RNA).
    """
    n, d = inputs.shape
    low = rng.random(n_genes) < 0.12
    # relative log2 abundance: typical genes spread around 0 (CPM ~ 1e6 / n_genes);
    # low genes sit near CPM 0.25 or below
    base = np.where(low, -np.log2(1e6 / n_genes) - 2.0, rng.normal(0, 1.5, n_genes))
    amplitude = np.where(low, 0.3, rng.uniform(0.7, 2.5, n_genes))
    profile = base + amplitude * np.tanh(inputs @ rng.normal(0, d ** -0.5, (d, n_genes))
                                         + rng.normal(0, 0.5, n_genes))
    profile += rng.normal(0, 0.25, (n, n_genes))  # biological noise, log2 units
    p = 2.0 ** (profile - profile.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    library = 3e7 * np.exp(rng.normal(0, 0.5, n))
    counts = rng.poisson(library[:, None] * p)
    return np.log2(counts + 1.0), [f"GENE{g:04d}" for g in range(1, n_genes + 1)]


def _rppa(rng, inputs, types, n_antibodies: int):
    """Raw protein levels: per-antibody offset + scale * tanh(linear map) + noise."""
    n, d = inputs.shape
    offset = rng.normal(0, 2.0, n_antibodies)
    scale = rng.uniform(0.5, 1.5, n_antibodies)
    signal = np.tanh(inputs @ rng.normal(0, d ** -0.5, (d, n_antibodies))
                     + rng.normal(0, 0.3, n_antibodies))
    values = offset + scale * signal + rng.normal(0, 0.25, (n, n_antibodies))
    return values, [f"AB{a:04d}" for a in range(1, n_antibodies + 1)]


def _rppa_gaps(rng, table: pd.DataFrame) -> pd.DataFrame:
    """NaN the ~5% of antibodies a batch (~30%) of samples' panel lacks, and ~1% of cells."""
    n, n_antibodies = table.shape
    values = table.to_numpy(copy=True)
    batch = rng.random(n) < 0.30
    lacking = rng.choice(n_antibodies, size=round(0.05 * n_antibodies), replace=False)
    gaps = rng.random((n, n_antibodies)) < 0.01
    gaps[np.ix_(batch, lacking)] = True
    gaps[gaps.all(axis=1)] = False  # never blank a whole row (it would read as "absent")
    values[gaps] = np.nan
    return pd.DataFrame(values, index=table.index, columns=table.columns)


def _wsi(rng, inputs, types, dim: int, rank: int = 16):
    """Slide embeddings: cancer-type offset + low-rank nonlinear signal + isotropic noise."""
    n, d = inputs.shape
    type_offset = rng.normal(0, 0.2, (int(types.max()) + 1, dim))
    hidden = np.tanh(inputs @ rng.normal(0, d ** -0.5, (d, rank)) + rng.normal(0, 0.3, rank))
    signal = hidden @ rng.normal(0, 0.5, (rank, dim))  # (n, rank) -> (n, dim)
    values = type_offset[types] + signal + rng.normal(0, 1.0, (n, dim))
    return values, [f"EMB{j:04d}" for j in range(1, dim + 1)]


# ---------------------------------------------------------------- missingness


def _presence(rng, types, modalities, k: int, missing: bool) -> dict[str, np.ndarray]:
    """Boolean mask per modality: which patients have it.

    A Gaussian score per patient and modality = cancer-type effect + a shared "profiling
    depth" (correlating the modalities, so many patients are complete) + noise; the top
    ``PRESENCE[m]`` fraction of patients by score have modality m. The smallest cancer type
    has no RNA-seq. Patients left with nothing get the modality they were closest to having.
    """
    n = len(types)
    if not missing:
        return {m: np.ones(n, dtype=bool) for m in modalities}
    rho = 0.8
    depth = rng.normal(size=n)
    scores = {}
    for m in MODALITIES:  # draw for all four so omitting one leaves the others unchanged
        noise = np.sqrt(1 - rho**2) * rng.normal(size=n)
        scores[m] = rng.normal(0, 0.5, k)[types] + rho * depth + noise
    scores["rnaseq"][types == k - 1] = -np.inf
    margins = {}
    for m in modalities:
        n_present = int(round(PRESENCE[m] * n))
        threshold = np.sort(scores[m])[::-1][n_present - 1]
        margins[m] = scores[m] - threshold  # >= 0 means present
    margin = np.column_stack([margins[m] for m in modalities])
    present = margin >= 0
    none = ~present.any(axis=1)
    present[none, np.argmax(margin[none], axis=1)] = True
    return {m: present[:, j] for j, m in enumerate(modalities)}


# ---------------------------------------------------------------- latents with a known posterior


@dataclass
class GaussianSources:
    """Latent-level data whose conditional distributions are known exactly: a target
    x ~ N(0, I_d) and sources c_s = x A_s + noise_s, independent given x (the assumption of a
    product of experts). ``posterior(names, conds)`` is the exact Gaussian posterior of x
    given any subset of the sources, for the oracle's scores."""

    x: np.ndarray  # (n, d)
    sources: dict[str, np.ndarray]  # name -> (n, d_s)
    maps: dict[str, np.ndarray]  # name -> A_s (d, d_s)
    noise: dict[str, float]  # name -> noise sd

    def posterior(self, names: list[str], conds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(mean (n, d), covariance (d, d)) of x given the sources ``names`` with values ``conds``."""
        d = self.x.shape[1]
        precision = np.eye(d) + sum(self.maps[s] @ self.maps[s].T / self.noise[s] ** 2 for s in names)
        cov = np.linalg.inv(precision)
        mean = sum(conds[s] @ self.maps[s].T / self.noise[s] ** 2 for s in names) @ cov
        return mean, cov

    def oracle_draws(self, names: list[str], conds: dict[str, np.ndarray], k: int, seed: int = 0) -> np.ndarray:
        """(k, n, d) exact posterior draws."""
        mean, cov = self.posterior(names, conds)
        rng = np.random.default_rng(seed)
        return mean[None] + rng.multivariate_normal(np.zeros(len(cov)), cov, size=(k, len(mean)))


def simulate_gaussian_sources(n: int, d: int = 8, signal: dict[str, float] | None = None, seed: int = 0
                              ) -> GaussianSources:
    """``n`` rows of :class:`GaussianSources`. ``signal`` {source name: strength}: source s is
    x A_s (A_s a random d x d map of unit-scale columns times the strength) plus N(0, 1) noise;
    strength 0 makes an uninformative source. Default: two equally informative sources."""
    signal = {"a": 1.0, "b": 1.0} if signal is None else dict(signal)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or not signal:
        raise CohereError("simulate_gaussian_sources needs n >= 2 rows and at least one source")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    maps = {s: float(w) * rng.standard_normal((d, d)) / np.sqrt(d) for s, w in signal.items()}
    sources = {s: (x @ maps[s] + rng.standard_normal((n, d))).astype(np.float32) for s in signal}
    return GaussianSources(x.astype(np.float32), sources, maps, {s: 1.0 for s in signal})
