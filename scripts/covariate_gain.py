"""What the patients' cancer type adds to each conditional: cohere's generators (whose experts'
stacking sees the type, cohere.experts.TypedStackMean, where their artifacts record it) beside
baselines given the type too.

On the complete val patients (K draws each), for every target and conditioning set, fitted on
the training patients with that target and those conditions:
  - ridge, gauss and resboot (cohere.evaluation.baselines) from the condition latents, as in
    the report, and the same three from the condition latents plus the one-hot cancer type
    (``+ type``), and ridge from the cancer type alone;
  - ``ridge + residual of same type``: the ridge mean plus the residual of a random training
    patient of the same cancer type (resboot within types);
  - cohere's default draws (Coherent Denoising / the single expert, the models of --models),
    and the same draws recentred on ridge + type: every draw of a patient moved by
    alpha (ridge_type - mean of the draws), for alpha in ALPHAS. The draws keep their spread.

Scores as in the report (cohere.evaluation.experiments.score_draws). A second table gives the
same in feature space (what ``generate --decode`` returns; the report's feature-space R²):
cohere's decoded 50-draw mean (residual heads and feature stacking included), ridge from the
condition latents straight to the target's features, and the same ridge given the one-hot
type too. The alphas are a grid on
val, a diagnostic, not a chosen weight (the experts' own stacking weight is chosen on their
held-out training rows).

With ``--without-type`` cohere generates as for test patients whose cancer type is unknown
(what a user without it in clinical.csv gets: the experts' typed ridges predict the type from
the condition); the baselines keep the type.

    python scripts/covariate_gain.py --models plugins/cohere-tcga-pancan/cohere_tcga_pancan/artifacts --out cov.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cohere.evaluation.baselines import GaussianResidualSampler, ResidualBootstrapSampler, RidgeImputer
from cohere.evaluation import metrics as M
from cohere.evaluation.experiments import EvalData, label, nonempty_subsets, score_draws
from cohere.generation import decoded_draws

SHARED = Path(os.environ.get("COHERE_SHARED_COHORT", Path(__file__).resolve().parents[2] / "shared" / "data" / "tcga-pancan"))
ALPHAS = (0.5, 1.0)
COLUMNS = ["r2_of_mean", "energy_score", "crps", "cov50", "cov90"]


def onehot(types: pd.Series, ids, vocab: list[str]) -> np.ndarray:
    """(n, len(vocab)) one-hot cancer type of ``ids`` (all zeros for a type outside ``vocab``)."""
    t = types.reindex(ids).astype(str).to_numpy()
    return (t[:, None] == np.asarray(vocab)[None, :]).astype(np.float64)


def same_type_resboot(mean, residuals, train_types, test_types, draws: int, seed: int) -> np.ndarray:
    """(K, n, d): ``mean`` plus the residual of a random training patient of the same type (of
    any training patient where the type has none)."""
    rng = np.random.default_rng(seed)
    pick = np.empty((draws, len(mean)), dtype=np.intp)
    for t in np.unique(test_types):
        rows = np.flatnonzero(test_types == t)
        pool = np.flatnonzero(train_types == t)
        pool = pool if len(pool) else np.arange(len(train_types))
        pick[:, rows] = pool[rng.integers(0, len(pool), size=(draws, len(rows)))]
    return mean[None] + residuals[pick]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", type=Path, default=SHARED)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--modalities", default="cna,rnaseq,rppa")
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="CSV of every row")
    ap.add_argument("--without-type", action="store_true",
                    help="generate as for test patients whose cancer type is unknown (their clinical.csv rows "
                         "without it): the experts' typed ridges then predict the type from the condition; "
                         "the baselines keep the type")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = EvalData.load(a.cohort, a.models, modalities=a.modalities.split(","), seed=a.seed)
    if a.without_type:  # what cohere's generation sees; the baselines below read data.clinical, which keeps it
        blank = data.test_cohort.clinical.copy()
        blank.loc[blank.index.isin(data.test_ids), "cancer_type"] = np.nan
        data.test_cohort = dataclasses.replace(data.test_cohort, clinical=blank)
    types = data.clinical["cancer_type"]
    vocab = sorted(types.reindex(data.train_ids).dropna().astype(str).unique())
    z_test = onehot(types, data.test_ids, vocab)
    rows, feature_rows = [], []
    for target in data.modalities:
        y = data.test[target].to_numpy()
        enc = data.cache["encoders"][target]
        truth = enc.target_features(data.test_cohort.tables[target].loc[data.test_ids]).to_numpy(np.float64)
        for have in nonempty_subsets([m for m in data.modalities if m != target]):
            X, Y = data.train_pairs(have, target)
            ids = data.paired_ids(have, target)
            Xt, z = data.test_matrix(have), onehot(types, ids, vocab)
            Xz, Xtz = np.hstack([X, z]), np.hstack([Xt, z_test])
            draws = {}
            for name, cls in (("ridge", RidgeImputer), ("gauss", GaussianResidualSampler),
                              ("resboot", ResidualBootstrapSampler)):
                for suffix, (fit_x, test_x) in (("", (X, Xt)), (" + type", (Xz, Xtz))):
                    model = cls().fit(fit_x, Y)
                    draws[name + suffix] = (np.repeat(model.predict(test_x)[None], 2, 0) if name == "ridge"
                                            else model.sample(test_x, n_draws=a.draws, seed=a.seed))
            draws["ridge, type only"] = np.repeat(RidgeImputer().fit(z, Y).predict(z_test)[None], 2, 0)
            rb = ResidualBootstrapSampler().fit(X, Y)
            draws["ridge + residual of same type"] = same_type_resboot(
                rb.predict(Xt), rb.residuals_, types.reindex(ids).astype(str).to_numpy(),
                types.reindex(data.test_ids).astype(str).to_numpy(), a.draws, a.seed)
            ours = data.generated(target, have, "coherent", a.draws, a.seed)
            draws["cohere"] = ours
            typed = draws["ridge + type"][0]
            for alpha in ALPHAS:
                shift = alpha * (typed - ours.mean(0))
                draws[f"cohere recentred on ridge + type, alpha {alpha}"] = ours + shift[None]
            for method, x in draws.items():
                s = score_draws(y, x)
                point = method.startswith("ridge") and "residual" not in method
                rows.append({"target": target, "from": label(have), "method": method,
                             **{c: (np.nan if point and c not in ("r2_of_mean",) else s[c]) for c in COLUMNS}})
            # feature space, as the report's feature-space experiment
            train_truth = enc.target_features(data.cohort.tables[target].loc[ids]).to_numpy(np.float64)
            filled = np.where(np.isnan(train_truth), np.nanmean(train_truth, axis=0), train_truth)
            key = (target, tuple(have), "coherent", a.draws, a.seed)
            decoded = decoded_draws(enc, ours, data.cache.get(("shift", *key)), data.cache.get(("fstack", *key)))
            feature_rows.append({"target": target, "from": label(have),
                                 "cohere decoded mean": M.observed_r2(truth, decoded.mean(0, dtype=np.float64)),
                                 "ridge -> features": M.observed_r2(truth, RidgeImputer().fit(X, filled).predict(Xt)),
                                 "ridge + type -> features": M.observed_r2(
                                     truth, RidgeImputer().fit(Xz, filled).predict(Xtz))})
            print(f"[{time.perf_counter() - t0:.0f} s] {target} <- {label(have)}", file=sys.stderr, flush=True)
    out = pd.DataFrame(rows)
    if a.out:
        out.to_csv(a.out, index=False)
    best = out[out.method.isin(["gauss", "resboot"])].groupby(["target", "from"])["energy_score"].min()
    best_t = out[out.method.isin(["gauss + type", "resboot + type"])].groupby(["target", "from"])["energy_score"].min()
    out["energy / best type-free baseline"] = out.energy_score / best.reindex(
        pd.MultiIndex.from_frame(out[["target", "from"]])).to_numpy()
    out["energy / best type-aware baseline"] = out.energy_score / best_t.reindex(
        pd.MultiIndex.from_frame(out[["target", "from"]])).to_numpy()
    with pd.option_context("display.width", 250, "display.max_rows", 500):
        print(out.round(3).to_string(index=False))
        print("\nfeature space, variance-weighted R² over observed cells:")
        print(pd.DataFrame(feature_rows).round(3).to_string(index=False))
    print(f"{len(data.test_ids)} test patients, {len(vocab)} cancer types, K = {a.draws}; "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
