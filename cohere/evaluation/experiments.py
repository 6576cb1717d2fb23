"""The paper's experiments on a cohort and a models folder, each a function returning tables.

    data = EvalData.load("data/tcga-pancan", "models/")        # report on the cohort's val split
    recon = reconstruction(data, draws=10)                       # Table 1 + baselines
    priv = privacy(data, runs=10)                                # Table 3 + distance to closest record
    sig = signal(data, runs=10)                                  # real vs generated, RF classifiers
    down = DownstreamModels(data).fit(); completion(data, down)  # Table 2 (stage F1, OS C-index)
    cf = counterfactual(data, down, modality="rnaseq")           # prioritisation curves and AUCs

Every number comes from :mod:`cohere.evaluation.metrics`; generated latents come from
:func:`cohere.generation.generate_missing` (Coherent Denoising and the masked multi-condition
model), so what is evaluated is exactly what ``cohere generate`` produces. Models are trained
on the training split only; everything is reported on *complete* test patients (the cohort's
``val`` split, or every complete patient of a held-out cohort). A "run" is one of the K
independent draws per patient (K = ``draws``); classifiers are trained once per experiment
with a fixed seed, so run-to-run spread is the generator's.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..cohort import Cohort
from ..completion import complete
from ..errors import CohereError
from ..generation import ModelSource, consensus_weights, decoded_draws, generate_missing
from ..sampling import generate
from . import metrics as M
from .baselines import (GaussianResidualSampler, IterativeImputer, KNNRegressorImputer, MeanImputer,
                        MICESampler, MOFAImputer, RandomNeighbourSampler, ResidualBootstrapSampler, RidgeImputer,
                        mofa_available)

DAYS_PER_MONTH = 30.4375


def label(mods) -> str:
    """A conditioning / removed set as text: ``("cna", "rppa")`` -> ``"cna+rppa"``."""
    return "+".join(mods) if mods else "none"


def nonempty_subsets(items: list[str]) -> list[tuple[str, ...]]:
    return [s for r in range(1, len(items) + 1) for s in itertools.combinations(items, r)]


# ----------------------------------------------------------------------------- data


@dataclass
class EvalData:
    """Latents of the training patients and of the complete test patients, plus clinical data.

    ``train[m]``: (n_m, d) latents of the training patients that have ``m``; ``test[m]``:
    (n_test, d) latents of the test patients (complete: all of ``modalities``), same row order
    as ``test_ids``. ``clinical``: clinical table indexed by every sample (train and test).
    """

    cohort: Cohort
    test_cohort: Cohort
    source: ModelSource
    modalities: list[str]
    train: dict[str, pd.DataFrame]
    test: dict[str, pd.DataFrame]
    train_ids: pd.Index
    test_ids: pd.Index
    clinical: pd.DataFrame
    cache: dict = field(default_factory=dict, repr=False)
    timings: dict = field(default_factory=dict)

    @classmethod
    def load(cls, cohort, models, modalities: list[str] | None = None, test_cohort=None,
             max_test: int | None = None, max_train: int | None = None, seed: int = 0) -> "EvalData":
        """``cohort``/``test_cohort``: folders or :class:`Cohort`; ``models``: a models folder or
        :class:`ModelSource`. Without ``test_cohort`` the test patients are the complete patients
        of ``cohort``'s val split. ``max_test`` / ``max_train`` subsample patients (quick runs)."""
        c = cohort if isinstance(cohort, Cohort) else Cohort.read(cohort, modalities)
        t = c if test_cohort is None else (test_cohort if isinstance(test_cohort, Cohort)
                                           else Cohort.read(test_cohort, modalities, split=False))
        source = models if isinstance(models, ModelSource) else ModelSource.folder(models)
        mods = list(modalities or c.modalities)
        for m in mods:
            if m not in c.tables or m not in t.tables:
                raise CohereError(f"modality {m!r} is missing from the training or the test cohort")
        if c.clinical is None or t.clinical is None:
            raise CohereError("the evaluation needs clinical.csv (cancer_type, stage, os_time, os_event)")
        rng = np.random.default_rng(seed)
        train_ids = c.ids_in("train", seed)
        if max_train and len(train_ids) > max_train:
            train_ids = pd.Index(sorted(rng.choice(train_ids, max_train, replace=False)), name="sample")
        complete = t.samples(mods)
        test_ids = complete.intersection(t.ids_in("val", seed)) if test_cohort is None else complete
        if test_cohort is not None:
            test_ids = test_ids.difference(train_ids)
        if max_test and len(test_ids) > max_test:
            test_ids = pd.Index(sorted(rng.choice(test_ids, max_test, replace=False)), name="sample")
        if len(test_ids) < 20:
            raise CohereError(f"only {len(test_ids)} complete test patients (with all of {label(mods)}); "
                              "at least 20 are needed")
        encoders = {m: source.encoder(m) for m in mods}
        train, test = {}, {}
        for m in mods:
            ids = c.tables[m].index.intersection(train_ids)
            train[m] = encoders[m].encode_cohort(c, ids)
            test[m] = encoders[m].encode_cohort(t, test_ids)
        clinical = pd.concat([c.clinical, t.clinical[~t.clinical.index.isin(c.clinical.index)]])
        data = cls(c, t, source, mods, train, test, train_ids, test_ids, clinical)
        data.cache["encoders"] = encoders
        return data

    # -- generated latents, cached per (target, conditions, method, draws, seed)

    def generated(self, target: str, have, method: str, draws: int, seed: int = 0) -> np.ndarray:
        """(K, n_test, d) latents of ``target`` generated from ``have`` for the test patients."""
        key = (target, tuple(have), method, draws, seed)
        if key not in self.cache:
            t0 = time.perf_counter()
            res = generate_missing(self.test_cohort, target, list(have), self.source, method=method,
                                   patients=list(self.test_ids), draws=draws, seed=seed)
            self.cache[key] = res.draws
            self.cache[("shift", *key)] = res.shift
            self.cache[("fstack", *key)] = res.fstack
            self.timings[f"generate {method} {label(have)}->{target}"] = round(time.perf_counter() - t0, 2)
        return self.cache[key]

    def completed(self, removed, method: str, draws: int, seed: int = 0) -> dict[str, np.ndarray]:
        """{m: (K, n_test, d)} latents of each removed modality for the test patients, from
        ``cohere complete`` (:func:`cohere.completion.complete`) run on the test cohort with
        the ``removed`` tables taken out: what a user completing such a cohort receives."""
        key = ("completed", tuple(removed), method, draws, seed)
        if key not in self.cache:
            t0 = time.perf_counter()
            kept = [m for m in self.modalities if m not in removed]
            clinical = self.test_cohort.clinical  # the cancer type, which the stacking may use
            ablated = Cohort({m: self.test_cohort.tables[m].loc[self.test_ids] for m in kept},
                             None if clinical is None else clinical[clinical.index.isin(self.test_ids)],
                             input_forms={m: f for m, f in self.test_cohort.input_forms.items() if m in kept})
            done = complete(ablated, self.source, method=method, targets=list(removed), draws=draws, seed=seed)
            out = {}
            for m in removed:   # the test patients are complete: one presence pattern, one group
                (ids, x), = [v for (t, _), v in done.latents.items() if t == m]
                out[m] = x[:, pd.Index(ids).get_indexer(self.test_ids)]
            self.cache[key] = out
            self.timings[f"complete {method} {label(removed)} from {label(kept)}"] = round(time.perf_counter() - t0, 2)
        return self.cache[key]

    def paired_ids(self, have, target) -> pd.Index:
        """The training patients with all of ``have`` and ``target``."""
        ids = self.train[target].index
        for m in have:
            ids = ids.intersection(self.train[m].index)
        return ids

    def train_pairs(self, have, target) -> tuple[np.ndarray, np.ndarray]:
        """Training patients with all of ``have`` and ``target``: (X_cond, Y) for the baselines."""
        ids = self.paired_ids(have, target)
        X = np.hstack([self.train[m].loc[ids].to_numpy() for m in have])
        return X, self.train[target].loc[ids].to_numpy()

    def test_matrix(self, mods) -> np.ndarray:
        return np.hstack([self.test[m].to_numpy() for m in mods])


# ----------------------------------------------------------------------------- 1. reconstruction


# the distributional baselines a generator must beat on the proper scores (goal of issue 10)
STOCHASTIC_BASELINES = ("gauss", "resboot", "MICE draws")


def _baselines(iterative: bool, views, k: int = 10, seed: int = 0) -> dict:
    out = {"mean": MeanImputer(), "knn": KNNRegressorImputer(k), "ridge": RidgeImputer()}
    if iterative:
        out["iterative (MICE)"] = IterativeImputer()
    if mofa_available():
        out["MOFA+"] = MOFAImputer(views, seed=seed)
    out["random neighbour"] = RandomNeighbourSampler(k)
    out["gauss"] = GaussianResidualSampler()
    out["resboot"] = ResidualBootstrapSampler()
    if iterative:
        out["MICE draws"] = MICESampler(random_state=seed)
    return out


def score_draws(y: np.ndarray, draws: np.ndarray) -> dict:
    """Every reconstruction score of K draws (K, n, d) against the truth y (n, d): R^2 of single
    draws (mean, sd), of the mean of the first 10 and of all K draws, the calibrated
    single-draw line, output variance, energy score, CRPS, and the coverage of the central 50%
    and 90% intervals beside what a calibrated sampler with K draws covers."""
    runs = M.r2_runs(y, draws)
    k = draws.shape[0]
    point = bool(np.allclose(draws, draws[:1]))
    out = {"r2": runs.mean, "r2_sd": runs.sd, "r2_of_mean": runs.of_mean,
           "r2_of_mean10": M.r2(y, draws[:10].mean(0)),
           "calibrated_single_draw_r2": runs.calibrated_single_draw,
           "var_pct": 0.0 if point else M.output_variance_pct(y, draws),
           "energy_score": M.energy_score(y, draws), "crps": M.crps(y, draws), "draws": k}
    for level in (0.5, 0.9):
        out[f"cov{int(level * 100)}"] = float("nan") if point else M.interval_coverage(y, draws, level)
        out[f"cov{int(level * 100)}_calibrated"] = M.calibrated_coverage(level, k)
    return out


def reconstruction(data: EvalData, draws: int = 50, seed: int = 0, baselines: bool = True,
                   iterative: bool = True, histograms: dict | None = None) -> pd.DataFrame:
    """Every target x non-empty conditioning set x {expert, multi, coherent, baselines}.

    One row per (target, conditions, method) with :func:`score_draws` of K = ``draws`` draws
    (R^2 of single draws as the paper's Table 1, R^2 of the mean of 10 and of K draws, output
    variance, energy score, CRPS, interval coverage). ``histograms``, if given, receives the
    rank histogram (:func:`~cohere.evaluation.metrics.rank_histogram`) of every stochastic
    method, keyed by (target, conditions, method).
    """
    if draws < 2:
        raise CohereError("reconstruction needs draws >= 2 (output variance and energy score)")
    rows = []
    for target in data.modalities:
        y = data.test[target].to_numpy()
        others = [m for m in data.modalities if m != target]
        for have in nonempty_subsets(others):
            methods = [("expert" if len(have) == 1 else "coherent", "coherent"), ("multi", "multi")]
            for name, method in methods:
                t0 = time.perf_counter()
                x = data.generated(target, have, method, draws, seed)
                rows.append({"target": target, "conditions": label(have), "method": name,
                             **score_draws(y, x), "seconds": round(time.perf_counter() - t0, 2)})
                if histograms is not None:
                    histograms[(target, label(have), name)] = M.rank_histogram(y, x)
            if not baselines:
                continue
            X, Y = data.train_pairs(have, target)
            Xt = data.test_matrix(have)
            views = [data.train[m].shape[1] for m in have]
            for name, model in _baselines(iterative, views, seed=seed).items():
                t0 = time.perf_counter()
                x = model.fit(X, Y).sample(Xt, n_draws=draws, seed=seed)
                seconds = round(time.perf_counter() - t0, 2)
                data.timings[f"baseline {name} {label(have)}->{target}"] = seconds
                rows.append({"target": target, "conditions": label(have), "method": name,
                             **score_draws(y, x), "seconds": seconds})
                if histograms is not None and name in STOCHASTIC_BASELINES:
                    histograms[(target, label(have), name)] = M.rank_histogram(y, x)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- 1b. feature space


def feature_space(data: EvalData, draws: int = 50, seed: int = 0, method: str = "coherent") -> pd.DataFrame:
    """What a user receives: decoded features against the real preprocessed ones.

    Per target x conditioning set: the feature-space R^2 (over observed cells) of
    - ``decoded mean``: what ``generate --decode --aggregate`` and ``cohere complete`` return:
      the mean of ``draws`` generated latents (``method``), each decoded, plus the experts'
      residual shift when they have residual heads (:func:`cohere.generation.residual_shift`),
      stacked with their ridge to the features when they have the feature stacking
      (:func:`cohere.generation.feature_stacking`);
    - ``decoded mean, no feature stacking``: the same without the feature stacking;
    - ``decoded latent mean``: the same without the residual shift either;
    - ``mean latent, decoded``: decode(the mean latent) plus the residual shift. The decoder
      is not linear, so this is not the mean of the decoded draws; kept to show what the
      choice is worth;
    - ``ridge -> features``: ridge fitted on the training patients straight from the condition
      latents to the target's preprocessed features (missing cells filled with the training
      column mean for the fit only);
    - ``ridge -> latent, decoded``: ridge to the target latent, then decoded;
    - ``decoded latent mean + joint residual ridge``: the decoded latent mean plus one ridge
      from all the condition latents together to what the encoder cannot represent (features
      minus decode(encode(features))) on the training patients (the residual heads are
      fitted per expert, one condition each, and composed);
    - ``ceiling``: decode(encode(truth)), the encoder's own reconstruction.
    """
    rows = []
    for target in data.modalities:
        enc = data.cache["encoders"][target]
        test_truth = enc.target_features(data.test_cohort.tables[target].loc[data.test_ids]).to_numpy(np.float64)
        y_lat = data.test[target].to_numpy()
        ceiling = M.observed_r2(test_truth, enc.decode(y_lat).to_numpy(np.float64))
        others = [m for m in data.modalities if m != target]
        for have in nonempty_subsets(others):
            X, Y = data.train_pairs(have, target)
            ids = data.paired_ids(have, target)
            train_truth = enc.target_features(data.cohort.tables[target].loc[ids]).to_numpy(np.float64)
            filled = np.where(np.isnan(train_truth), np.nanmean(train_truth, axis=0), train_truth)
            Xt = data.test_matrix(have)
            direct = RidgeImputer().fit(X, filled).predict(Xt)
            lat = RidgeImputer().fit(X, Y).predict(Xt)
            residual = filled - enc.decode(Y).to_numpy(np.float64)
            correction = RidgeImputer().fit(X, residual).predict(Xt)
            gen = data.generated(target, have, method, draws, seed)
            shift = data.cache.get(("shift", target, tuple(have), method, draws, seed))
            fstack = data.cache.get(("fstack", target, tuple(have), method, draws, seed))
            output = decoded_draws(enc, gen, shift, fstack).mean(0, dtype=np.float64)
            decoded = decoded_draws(enc, gen).mean(0, dtype=np.float64)
            shift = 0.0 if shift is None else shift
            rows.append({"target": target, "conditions": label(have), "draws": draws,
                         "decoded mean": M.observed_r2(test_truth, output),
                         "decoded mean, no feature stacking": M.observed_r2(test_truth, decoded + shift),
                         "decoded latent mean": M.observed_r2(test_truth, decoded),
                         "mean latent, decoded": M.observed_r2(
                             test_truth, enc.decode(gen.mean(0)).to_numpy(np.float64) + shift),
                         "decoded latent mean + joint residual ridge": M.observed_r2(test_truth, decoded + correction),
                         "ridge -> features": M.observed_r2(test_truth, direct),
                         "ridge -> latent, decoded": M.observed_r2(test_truth, enc.decode(lat).to_numpy(np.float64)),
                         "ceiling": ceiling, "features": test_truth.shape[1]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- 6. privacy


def expert_ensemble_unconditional(data: EvalData, target: str, n: int, seed: int = 0,
                                  steps: int = 20) -> np.ndarray:
    """(n, d): Coherent Denoising of ``target`` with every expert ``m->target`` given an
    all-zero condition vector (the training mean of its standardised source latent).

    Experts are conditional models: there is no "no condition" input. A zero vector is the
    closest well-defined stand-in (an average patient's condition), so these samples are
    expected to concentrate near the conditional distribution of an average patient.
    """
    enc = data.cache["encoders"]
    experts = [data.source.model(f"{m}->{target}", enc) for m in data.modalities if m != target]
    w = consensus_weights(experts)
    members = [e.member({e.source: torch.zeros(n, e.model.config.cond_dims[0])}, weight=wi)
               for e, wi in zip(experts, w)]
    gen = generate(members, experts[0].schedule, n, draws=1, method="ddim", steps=steps, eta=1.0, seed=seed)
    return gen.draws[0].cpu().numpy()


def multi_unconditional(data: EvalData, target: str, n: int, seed: int = 0) -> np.ndarray:
    """(n, d): the multi-condition model with every condition masked."""
    res = generate_missing(data.test_cohort, target, [], data.source, method="multi", draws=1,
                           seed=seed, allow_unconditional=True, n_unconditional=n)
    return res.draws[0]


@dataclass
class PrivacyResult:
    table: pd.DataFrame  # per (target, method, run): precision, recall, density, coverage, f1, energy_distance
    dcr: pd.DataFrame  # per (target, method): distance-to-closest-record check (first run)
    samples: dict  # {(target, method): (n, d) first run's samples} for figures
    reference: dict  # {target: (n, d) training latents used as the reference}


def privacy(data: EvalData, runs: int = 10, seed: int = 0, max_reference: int | None = 2000,
            k: int = 10) -> PrivacyResult:
    """Unconditional generation against the training set: precision/recall (k-NN) F1, the
    square root of the energy distance, and the distance-to-closest-record check against the
    test patients. Each run generates as many samples as the reference has rows. Rows
    "held-out real" score the real test patients the same way (what a generator that learned
    the distribution without copying anyone should reach)."""
    rng = np.random.default_rng(seed)
    rows, dcr_rows, samples, refs = [], [], {}, {}
    for target in data.modalities:
        ref = data.train[target].to_numpy()
        if max_reference and len(ref) > max_reference:
            ref = ref[rng.choice(len(ref), max_reference, replace=False)]
        refs[target] = ref
        holdout = data.test[target].to_numpy()
        gens = {"multi (all masked)": lambda s: multi_unconditional(data, target, len(ref), s),
                "experts (zero condition)": lambda s: expert_ensemble_unconditional(data, target, len(ref), s)}
        for method, fn in gens.items():
            for run in range(runs):
                t0 = time.perf_counter()
                x = fn(seed + run)
                pr = M.precision_recall(ref, x, k=k)
                rows.append({"target": target, "method": method, "run": run, "precision": pr.precision,
                             "recall": pr.recall, "density": pr.density, "coverage": pr.coverage,
                             "f1": pr.f1, "energy_distance": float(np.sqrt(M.energy_distance(ref, x))),
                             "seconds": round(time.perf_counter() - t0, 2)})
                if run == 0:
                    samples[(target, method)] = x
                    dcr_rows.append(_dcr_row(target, method, x, data.train[target].to_numpy(), holdout))
        if len(holdout) > k:
            pr = M.precision_recall(ref, holdout, k=k)
            rows.append({"target": target, "method": "held-out real", "run": 0, "precision": pr.precision,
                         "recall": pr.recall, "density": pr.density, "coverage": pr.coverage, "f1": pr.f1,
                         "energy_distance": float(np.sqrt(M.energy_distance(ref, holdout))), "seconds": 0.0})
    return PrivacyResult(pd.DataFrame(rows), pd.DataFrame(dcr_rows), samples, refs)


def _dcr_row(target, method, x, train, holdout) -> dict:
    d = M.distance_to_closest_record(x, train, holdout)
    return {"target": target, "method": method, "median_dcr_generated": d.median_generated,
            "median_dcr_holdout": d.median_holdout, "median_ratio": d.median_ratio,
            "frac_below_holdout_q05": d.frac_below, "tolerance": d.tolerance,
            "frac_copies": d.frac_copies, "passes": d.passes}


# ----------------------------------------------------------------------------- 3. signal


def _forest(trees: int, seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)


def _labels(data: EvalData, ids, task: str) -> pd.Series:
    col = {"cancer type": "cancer_type", "stage": "stage"}[task]
    return data.clinical[col].reindex(ids)


def signal(data: EvalData, runs: int = 10, trees: int = 500, seed: int = 0,
           methods=("multi", "coherent")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per modality, random forests for cancer type and stage trained on real training latents,
    tested on the real vs the generated (from all other modalities) test latents.

    Returns (per-run scores, summary with mean, sd and a paired Wilcoxon test of real vs
    generated over the runs). The forest is trained once (seed ``seed``); run k scores the
    k-th generated draw, so the real score is the same in every run.
    """
    import warnings

    with warnings.catch_warnings():  # generated data may be predicted as a class the truth lacks
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        per_run = _signal_runs(data, runs, trees, seed, methods)
    return per_run, _signal_summary(per_run)


def _signal_runs(data: EvalData, runs: int, trees: int, seed: int, methods) -> pd.DataFrame:
    rows = []
    for m in data.modalities:
        others = tuple(x for x in data.modalities if x != m)
        for task in ("cancer type", "stage"):
            y_tr = _labels(data, data.train[m].index, task)
            ok = y_tr.notna().to_numpy()
            y_te = _labels(data, data.test_ids, task)
            te = y_te.notna().to_numpy()
            if ok.sum() < 20 or te.sum() < 5:
                continue
            t0 = time.perf_counter()
            rf = _forest(trees, seed).fit(data.train[m].to_numpy()[ok], y_tr.to_numpy()[ok].astype(str))
            data.timings[f"signal rf {m} {task}"] = round(time.perf_counter() - t0, 1)
            truth = y_te.to_numpy()[te].astype(str)
            real_pred = rf.predict(data.test[m].to_numpy()[te])
            for run in range(runs):
                rows.append({"modality": m, "task": task, "data": "real", "run": run,
                             "macro_f1": M.macro_f1(truth, real_pred),
                             "balanced_accuracy": M.balanced_accuracy(truth, real_pred)})
            for method in methods:
                x = data.generated(m, others, method, max(runs, 2), seed)
                for run in range(runs):
                    pred = rf.predict(x[run][te])
                    rows.append({"modality": m, "task": task, "data": method, "run": run,
                                 "macro_f1": M.macro_f1(truth, pred),
                                 "balanced_accuracy": M.balanced_accuracy(truth, pred)})
    return pd.DataFrame(rows)


def _signal_summary(per_run: pd.DataFrame) -> pd.DataFrame:
    from scipy.stats import wilcoxon

    summary = []
    for (m, task, d), g in per_run.groupby(["modality", "task", "data"], sort=False):
        real = per_run[(per_run.modality == m) & (per_run.task == task) & (per_run.data == "real")]
        row = {"modality": m, "task": task, "data": d}
        for metric in ("macro_f1", "balanced_accuracy"):
            row[metric] = g[metric].mean()
            row[f"{metric}_sd"] = g[metric].std(ddof=1) if len(g) > 1 else float("nan")
        if d != "real":
            diff = g["macro_f1"].to_numpy() - real["macro_f1"].to_numpy()
            row["p_wilcoxon_f1"] = (float(wilcoxon(diff).pvalue) if len(diff) > 1 and np.any(diff != 0)
                                    else float("nan"))
        summary.append(row)
    return pd.DataFrame(summary)


# ----------------------------------------------------------------------------- 2. manifold


@dataclass
class Manifold:
    """2-d embeddings of real and generated patients (all modalities side by side)."""

    method: str  # "umap" or "pca" (when umap-learn is not installed)
    embeddings: dict  # {"real" | "multi" | "coherent": (n_test, 2)}
    cancer_type: np.ndarray  # (n_test,)


def manifold(data: EvalData, seed: int = 0, draws: int = 10, methods=("multi", "coherent"),
             reducer: str = "auto") -> Manifold:
    """Real test patients vs generated ones, every modality concatenated: a generated patient
    has each modality generated from all the others (the first draw). The map (UMAP with
    default settings, or PCA without umap-learn) is fitted on the real patients and the
    generated ones are projected with it. ``reducer``: "umap", "pca" or "auto" (UMAP if
    installed)."""
    if reducer not in ("auto", "umap", "pca"):
        raise CohereError(f"reducer {reducer!r}: expected auto, umap or pca")
    real = data.test_matrix(data.modalities)
    umap = None
    if reducer != "pca":
        try:
            import umap
        except ImportError:
            if reducer == "umap":
                raise CohereError("reducer 'umap' needs umap-learn: pip install umap-learn") from None
    if umap is not None:
        fit, name = umap.UMAP(random_state=seed, n_jobs=1), "umap"
    else:
        from sklearn.decomposition import PCA

        fit, name = PCA(2, random_state=seed), "pca"
    emb = {"real": fit.fit_transform(real)}
    for method in methods:
        parts = [data.generated(m, tuple(x for x in data.modalities if x != m), method, max(draws, 2), seed)[0]
                 for m in data.modalities]
        emb[method] = fit.transform(np.hstack(parts))
    types = data.clinical["cancer_type"].reindex(data.test_ids).astype(str).to_numpy()
    return Manifold(name, emb, types)


# ----------------------------------------------------------------------------- 4. downstream


@dataclass
class ForestSettings:
    """Downstream forests. The survival forest is sized to fit 2 cores and a few GB: times in
    whole months (a coarse grid), ``low_memory=True`` (risk scores only), leaves of at least
    ``rsf_min_leaf`` patients, each tree on a bootstrap of ``rsf_max_samples`` patients."""

    rf_trees: int = 500
    rsf_trees: int = 100
    rsf_min_leaf: int = 15
    rsf_max_samples: float = 0.5
    seed: int = 0

    def describe(self) -> str:
        return (f"stage: RandomForestClassifier(n_estimators={self.rf_trees}); survival: "
                f"RandomSurvivalForest(n_estimators={self.rsf_trees}, low_memory=True, "
                f"min_samples_leaf={self.rsf_min_leaf}, max_samples={self.rsf_max_samples}, "
                f"bootstrap=True), survival times ceil(days / {DAYS_PER_MONTH}) months; seed {self.seed}")


class DownstreamModels:
    """A multimodal stage classifier and a random survival forest trained on the real training
    patients: features = every modality's latents (NaN where the patient lacks it) + one-hot
    cancer type. Both forests handle NaN natively (sklearn >= 1.4, scikit-survival >= 0.23)."""

    def __init__(self, data: EvalData, settings: ForestSettings | None = None):
        self.data = data
        self.settings = settings or ForestSettings()

    def features(self, latents: dict[str, np.ndarray], ids) -> np.ndarray:
        """(n, d * modalities + types): ``latents[m]`` (n, d) or absent (all NaN)."""
        n = len(ids)
        d = next(iter(self.data.train.values())).shape[1]
        blocks = [np.asarray(latents[m], dtype=np.float64) if m in latents else np.full((n, d), np.nan)
                  for m in self.data.modalities]
        types = self.data.clinical["cancer_type"].reindex(ids).astype(str).to_numpy()
        onehot = (types[:, None] == np.asarray(self.types_)[None, :]).astype(np.float64)
        return np.hstack([*blocks, onehot])

    def fit(self) -> "DownstreamModels":
        from sklearn.ensemble import RandomForestClassifier
        from sksurv.ensemble import RandomSurvivalForest

        data, s = self.data, self.settings
        ids = data.train_ids
        clin = data.clinical.reindex(ids)
        self.types_ = sorted(clin["cancer_type"].dropna().astype(str).unique())
        X = self.features({m: data.train[m].reindex(ids).to_numpy() for m in data.modalities}, ids)
        stage = clin["stage"].to_numpy()
        ok = np.isfinite(stage)
        t0 = time.perf_counter()
        self.stage_ = RandomForestClassifier(n_estimators=s.rf_trees, random_state=s.seed, n_jobs=1).fit(
            X[ok], stage[ok].astype(int))
        data.timings["downstream stage rf fit"] = round(time.perf_counter() - t0, 1)
        time_, event = clin["os_time"].to_numpy(), clin["os_event"].to_numpy()
        ok = np.isfinite(time_) & (time_ > 0) & np.isfinite(event)
        y = M.surv_array(months(time_[ok]), event[ok])
        t0 = time.perf_counter()
        self.rsf_ = RandomSurvivalForest(n_estimators=s.rsf_trees, min_samples_leaf=s.rsf_min_leaf,
                                         max_samples=s.rsf_max_samples, bootstrap=True, low_memory=True,
                                         random_state=s.seed, n_jobs=1).fit(X[ok], y)
        data.timings["downstream rsf fit"] = round(time.perf_counter() - t0, 1)
        self.n_stage_, self.n_surv_ = int(np.isfinite(stage).sum()), int(ok.sum())
        return self

    # -- the test patients' targets

    def stage_targets(self) -> tuple[np.ndarray, np.ndarray]:
        """(mask over test patients with a stage, their stage)."""
        s = self.data.clinical["stage"].reindex(self.data.test_ids).to_numpy()
        ok = np.isfinite(s)
        return ok, s[ok].astype(int)

    def surv_targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        clin = self.data.clinical.reindex(self.data.test_ids)
        t, e = clin["os_time"].to_numpy(), clin["os_event"].to_numpy()
        ok = np.isfinite(t) & (t > 0) & np.isfinite(e)
        return ok, months(t[ok]), e[ok]

    def scores(self, X) -> dict:
        """Macro F1 of stage and C-index of survival on the test patients given features X.

        ``X`` may be a list of K completed copies (multiple imputation): the forests'
        predictions are then pooled over the copies (mean class probabilities, mean risk score)
        before scoring, the way an analyst combines multiply-imputed data sets."""
        label, risk = self.predict(X)
        return self.score_predictions(label, risk)

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(the predicted stage of the test patients with a stage, the risk score of those with a
        survival time), pooled over the copies when ``X`` is a list (see :meth:`scores`)."""
        copies = X if isinstance(X, list) else [X]
        ok, _ = self.stage_targets()
        oks, _, _ = self.surv_targets()
        proba = np.mean([self.stage_.predict_proba(x[ok]) for x in copies], axis=0)
        risk = np.mean([self.rsf_.predict(x[oks]) for x in copies], axis=0)
        return self.stage_.classes_[proba.argmax(1)], risk

    def score_predictions(self, label, risk, stage_rows=None, surv_rows=None,
                          metrics=("stage_f1", "os_cindex")) -> dict:
        """Macro F1 and C-index (or only those of ``metrics``) of :meth:`predict`'s output, on all
        its patients or on the (resampled) positions ``stage_rows`` / ``surv_rows`` into them."""
        out = {}
        if "stage_f1" in metrics:
            _, stage = self.stage_targets()
            a = slice(None) if stage_rows is None else stage_rows
            out["stage_f1"] = M.macro_f1(stage[a], label[a])
        if "os_cindex" in metrics:
            _, t, e = self.surv_targets()
            b = slice(None) if surv_rows is None else surv_rows
            out["os_cindex"] = M.concordance_index(t[b], e[b], risk[b])
        return out

    def paired_difference(self, X_a, X_b, n_resamples: int = 2000, seed: int = 0) -> dict:
        """{metric: (difference, 95% low, 95% high)}: stage macro F1 and OS C-index of the
        test patients completed as ``X_a`` minus completed as ``X_b`` (each a feature matrix or
        a list of completed copies), with a paired percentile bootstrap interval
        (``scipy.stats.bootstrap``, ``n_resamples`` resamples of the patients, the same
        patients for both). It says whether a difference between two completions is larger
        than what the choice of test patients alone moves."""
        from scipy.stats import bootstrap

        pa, pb = self.predict(X_a), self.predict(X_b)
        out = {}
        for metric, n in (("stage_f1", len(pa[0])), ("os_cindex", len(pa[1]))):
            def diff(rows, metric=metric):
                rows = np.asarray(rows, dtype=np.intp)
                kw = {"stage_rows": rows} if metric == "stage_f1" else {"surv_rows": rows}
                kw["metrics"] = (metric,)
                return self.score_predictions(*pa, **kw)[metric] - self.score_predictions(*pb, **kw)[metric]

            ci = bootstrap((np.arange(n),), diff, vectorized=False, n_resamples=n_resamples, method="percentile",
                           random_state=np.random.default_rng(seed)).confidence_interval
            out[metric] = (diff(np.arange(n)), float(ci.low), float(ci.high))
        return out


def months(days) -> np.ndarray:
    """Survival times on a coarse grid: whole months, at least 1."""
    return np.maximum(1.0, np.ceil(np.asarray(days, dtype=np.float64) / DAYS_PER_MONTH))


def imputed(data: EvalData, kept, removed, imputer) -> dict[str, np.ndarray]:
    """{m: (n_test, d)} each modality of ``removed`` imputed for the test patients from the
    ``kept`` ones by ``imputer`` (a baseline class), fitted on the training patients."""
    out = {}
    for m in removed:
        X, Y = data.train_pairs(kept, m)
        out[m] = imputer().fit(X, Y).predict(data.test_matrix(kept))
    return out


def pooled_draws(runs: int, draws: int | None = None) -> int:
    """The draws per generated cell that :func:`completion` pools: ``draws`` (default ``runs``),
    at least ``runs``, since run k completes with draw k."""
    return max(runs, draws or runs)


def generated_completions(data: EvalData, models: DownstreamModels, base: dict, removed, method: str, draws: int,
                          seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The test patients' features with ``base`` {m: latents} kept and ``removed`` completed by
    ``method`` (:meth:`EvalData.completed`, ``draws`` draws per generated cell): the ``draws``
    completed copies (draw k in copy k) and the one completed with the mean of the draws."""
    ids = data.test_ids
    gens = data.completed(removed, method, max(draws, 2), seed)
    copies = [models.features({**base, **{m: g[k] for m, g in gens.items()}}, ids) for k in range(draws)]
    mean = models.features({**base, **{m: g[:draws].mean(0) for m, g in gens.items()}}, ids)  # cohere complete
    return copies, mean


def completion(data: EvalData, models: DownstreamModels, runs: int = 10, seed: int = 0,
               methods=("multi", "coherent"), draws: int | None = None) -> pd.DataFrame:
    """For every non-empty set R of removed modalities: full, ablated (R missing), generated
    (the test cohort without R completed by :func:`cohere.completion.complete` with ``draws``
    draws per generated cell (default ``runs``; at least ``runs``), each modality of R
    generated from the remaining ones: "run k" completes with draw k, for the first ``runs``;
    "MI pooled": the forests' predictions averaged over all ``draws`` completed copies;
    "mean of draws": completed once with the mean of the ``draws`` draws, which is what
    ``cohere complete`` writes), mean- and KNN-imputed (from the remaining ones), and cancer
    type only. One row per (removed, condition, run) with stage macro F1 and OS C-index."""
    draws = pooled_draws(runs, draws)
    ids = data.test_ids
    real = {m: data.test[m].to_numpy() for m in data.modalities}
    rows = [{"removed": "none", "condition": "full", "run": 0, **models.scores(models.features(real, ids))},
            {"removed": label(data.modalities), "condition": "cancer type only", "run": 0,
             **models.scores(models.features({}, ids))}]
    for removed in nonempty_subsets(data.modalities):
        kept = [m for m in data.modalities if m not in removed]
        base = {m: real[m] for m in kept}
        rows.append({"removed": label(removed), "condition": "ablated", "run": 0,
                     **models.scores(models.features(base, ids))})
        if not kept:
            continue
        for method in methods:
            copies, mean = generated_completions(data, models, base, removed, method, draws, seed)
            for run, X in enumerate(copies[:runs]):
                rows.append({"removed": label(removed), "condition": method, "run": run, **models.scores(X)})
            rows.append({"removed": label(removed), "condition": f"{method} (MI pooled)", "run": 0,
                         **models.scores(copies)})
            rows.append({"removed": label(removed), "condition": f"{method} (mean of draws)", "run": 0,
                         **models.scores(mean)})
        for name, imputer in (("mean-imputed", MeanImputer), ("knn-imputed", KNNRegressorImputer)):
            lat = {**base, **imputed(data, kept, removed, imputer)}
            rows.append({"removed": label(removed), "condition": name, "run": 0,
                         **models.scores(models.features(lat, ids))})
    return pd.DataFrame(rows)


def completion_against_knn(data: EvalData, models: DownstreamModels, runs: int = 10, seed: int = 0,
                           method: str = "coherent", n_resamples: int = 2000, draws: int | None = None) -> pd.DataFrame:
    """For every removed set with something kept: the completions of :func:`completion` from
    ``method`` (MI pooled over the ``draws`` copies, and the mean of the draws) minus KNN
    imputation, in stage macro F1 and OS C-index, with paired bootstrap 95% intervals over the
    test patients (:meth:`DownstreamModels.paired_difference`). Reuses the completions that
    :func:`completion` generated (the same cache, runs, draws and seed)."""
    draws = pooled_draws(runs, draws)
    ids = data.test_ids
    real = {m: data.test[m].to_numpy() for m in data.modalities}
    rows = []
    for removed in nonempty_subsets(data.modalities):
        kept = [m for m in data.modalities if m not in removed]
        if not kept:
            continue
        base = {m: real[m] for m in kept}
        knn = models.features({**base, **imputed(data, kept, removed, KNNRegressorImputer)}, ids)
        copies, mean = generated_completions(data, models, base, removed, method, draws, seed)
        for name, X in ((f"{method} (MI pooled)", copies), (f"{method} (mean of draws)", mean)):
            d = models.paired_difference(X, knn, n_resamples, seed)
            for metric, (diff, lo, hi) in d.items():
                rows.append({"removed": label(removed), "completion": name, "metric": metric,
                             "minus knn": diff, "95% low": lo, "95% high": hi})
    return pd.DataFrame(rows)


def completion_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2 layout: per removed set, full / ablated / drop, and for each
    completion the score and its gain over the ablated one (means over runs)."""
    mean = per_run.groupby(["removed", "condition"], sort=False)[["stage_f1", "os_cindex"]].mean()
    full = mean.loc[("none", "full")]
    out = []
    for removed in dict.fromkeys(per_run["removed"]):
        if removed == "none" or (removed, "ablated") not in mean.index:
            continue
        abl = mean.loc[(removed, "ablated")]
        for metric in ("stage_f1", "os_cindex"):
            row = {"removed": removed, "metric": metric, "full": full[metric], "ablated": abl[metric],
                   "drop": abl[metric] - full[metric]}
            for cond in ("multi", "coherent", "multi (MI pooled)", "coherent (MI pooled)", "multi (mean of draws)",
                         "coherent (mean of draws)", "mean-imputed", "knn-imputed"):
                if (removed, cond) in mean.index:
                    row[cond] = mean.loc[(removed, cond)][metric]
                    row[f"gain {cond}"] = mean.loc[(removed, cond)][metric] - abl[metric]
            out.append(row)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- 5. counterfactual


def _tv(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(p - q).sum(axis=-1)


def counterfactual_scores(models: DownstreamModels, ablated: np.ndarray, generated: list[np.ndarray]) -> dict:
    """Per patient: how much acquiring the modality could change the prediction.

    ``ablated``: (n, p) features without the modality; ``generated``: K feature matrices with
    the modality generated. Stage: mean over the K versions of the total-variation distance
    between the class probabilities and the ablated ones (0 = every version agrees with the
    ablated prediction). Survival: mean squared change of the risk score.
    """
    p0 = models.stage_.predict_proba(ablated)
    r0 = models.rsf_.predict(ablated)
    stage = np.mean([_tv(models.stage_.predict_proba(g), p0) for g in generated], axis=0)
    surv = np.mean([(models.rsf_.predict(g) - r0) ** 2 for g in generated], axis=0)
    return {"stage": stage, "survival": surv}


def _curve(order: np.ndarray, fractions: np.ndarray, metric, pred_real, pred_abl) -> np.ndarray:
    """Metric as the first f of ``order`` get the real modality (row-wise predictions mix)."""
    out = []
    for f in fractions:
        chosen = np.zeros(len(order), dtype=bool)
        chosen[order[:int(round(f * len(order)))]] = True
        mix = np.where(chosen.reshape(-1, *([1] * (pred_real.ndim - 1))), pred_real, pred_abl)
        out.append(metric(mix))
    return np.asarray(out)


def counterfactual(data: EvalData, models: DownstreamModels, modality: str = "rnaseq", repeats: int = 10,
                   orders: int = 30, draws: int = 10, n_fractions: int = 21, method: str = "coherent",
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counterfactual prioritisation of ``modality`` on the complete test patients.

    Each repeat generates K versions of the modality (from all the others) with a new seed,
    scores every patient, and traces the test metric (stage macro F1, OS C-index) as the
    observed fraction goes 0 -> 100% in score order (informed) and in ``orders`` random orders
    (averaged). Predictions of each patient with and without the modality are computed once,
    so every point of a curve mixes them row-wise. Returns (curves, areas under the curves).
    """
    if modality not in data.modalities:
        raise CohereError(f"--modality {modality!r}: not one of {label(data.modalities)}")
    ids = data.test_ids
    others = tuple(m for m in data.modalities if m != modality)
    real = {m: data.test[m].to_numpy() for m in data.modalities}
    X_real = models.features(real, ids)
    X_abl = models.features({m: real[m] for m in others}, ids)
    ok_s, stage = models.stage_targets()
    ok_t, t, e = models.surv_targets()
    tasks = {
        "stage": (ok_s, models.stage_.predict(X_real[ok_s]), models.stage_.predict(X_abl[ok_s]),
                  lambda p: M.macro_f1(stage, p)),
        "survival": (ok_t, models.rsf_.predict(X_real[ok_t]), models.rsf_.predict(X_abl[ok_t]),
                     lambda r: M.concordance_index(t, e, r)),
    }
    fractions = np.linspace(0, 1, n_fractions)
    curves, areas = [], []
    rng = np.random.default_rng(seed)
    random_orders = {task: [rng.permutation(int(ok.sum())) for _ in range(orders)]
                     for task, (ok, *_rest) in tasks.items()}
    random_curves = {task: np.mean([_curve(o, fractions, fn, pr, pa) for o in random_orders[task]], axis=0)
                     for task, (ok, pr, pa, fn) in tasks.items()}
    for rep in range(repeats):
        g = data.generated(modality, others, method, draws, seed + 1000 + rep)
        gen = [models.features({**{m: real[m] for m in others}, modality: g[k]}, ids) for k in range(len(g))]
        score = counterfactual_scores(models, X_abl, gen)
        for task, (ok, pr, pa, fn) in tasks.items():
            order = np.argsort(-score[task][ok], kind="stable")
            informed = _curve(order, fractions, fn, pr, pa)
            for f, a, b in zip(fractions, informed, random_curves[task]):
                curves.append({"task": task, "repeat": rep, "fraction": f, "informed": a, "random": b})
            areas.append({"task": task, "repeat": rep, "auc_informed": np.trapezoid(informed, fractions),
                          "auc_random": np.trapezoid(random_curves[task], fractions)})
    return pd.DataFrame(curves), pd.DataFrame(areas)


def prioritize(cohort: Cohort, source: ModelSource, modality: str, task: str = "stage", draws: int = 10,
               settings: ForestSettings | None = None, method: str = "coherent", seed: int = 0,
               modalities: list[str] | None = None) -> pd.DataFrame:
    """Rank the patients of ``cohort`` who lack ``modality`` (and have every other modality) by
    how much acquiring it could change the ``task`` prediction ("stage" or "survival").

    Trains the downstream forests on the cohort's training split, generates K versions of the
    modality per patient, and returns a table sorted by the counterfactual score, highest first.
    """
    if task not in ("stage", "survival"):
        raise CohereError(f"--task {task!r}: expected stage or survival")
    mods = list(modalities or cohort.modalities)
    if modality not in mods:
        raise CohereError(f"--modality {modality!r}: the cohort has {label(mods)}")
    others = [m for m in mods if m != modality]
    if not others:
        raise CohereError("prioritisation needs at least one other modality to generate from")
    ids = cohort.samples(others).difference(cohort.tables[modality].index)
    if len(ids) == 0:
        raise CohereError(f"no patient has {label(others)} but lacks {modality}; nothing to prioritise")
    encoders = {m: source.encoder(m) for m in mods}
    train_ids = cohort.ids_in("train", seed)
    train = {m: encoders[m].encode_cohort(cohort, cohort.tables[m].index.intersection(train_ids)) for m in mods}
    if cohort.clinical is None:
        raise CohereError("prioritisation needs clinical.csv (stage, os_time, os_event, cancer_type)")
    data = EvalData(cohort, cohort, source, mods, train, {}, train_ids, ids, cohort.clinical)
    models = DownstreamModels(data, settings).fit()
    have = {m: encoders[m].encode_cohort(cohort, ids).to_numpy() for m in others}
    res = generate_missing(cohort, modality, others, source, method=method, patients=list(ids),
                           draws=draws, seed=seed)
    X_abl = models.features(have, ids)
    gen = [models.features({**have, modality: res.draws[k]}, ids) for k in range(draws)]
    score = counterfactual_scores(models, X_abl, gen)[task]
    clin = cohort.clinical.reindex(ids)
    out = pd.DataFrame({"sample": ids, "cancer_type": clin["cancer_type"].to_numpy(), "score": score})
    out = out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out
