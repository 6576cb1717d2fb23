"""What a downstream forest reads from a filled-in modality: point fills of different spread
beside multiple imputation, in the report's downstream experiment.

The report's stage forest and survival forest (cohere.evaluation.experiments.DownstreamModels,
trained on the real training latents) score the complete val patients with one modality
removed and filled in by:
  - KNN means of 10 neighbours (the report's KNN imputation) and of 50 neighbours;
  - the ridge mean from the remaining modalities;
  - cohere's completion (``cohere complete``, K draws per cell): the mean of the draws (what it
    writes into its tables), the same mean rescaled per latent dimension to the training
    patients' SD (the spread of real latents with the same direction), and the forests'
    outputs pooled over the K completed copies (multiple imputation, ``--keep-draws K``).
Each fill's variance is given as a share of the real test latents' total variance. It asks
whether a fill loses for being shrunk (a mean of draws is narrower than real latents) or for
what it holds.

    python scripts/completion_fill.py --models plugins/cohere-tcga-pancan/cohere_tcga_pancan/artifacts
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from cohere.evaluation.baselines import KNNRegressorImputer, RidgeImputer
from cohere.evaluation.experiments import DownstreamModels, EvalData, ForestSettings, imputed

SHARED = Path(os.environ.get("COHERE_SHARED_COHORT", Path(__file__).resolve().parents[2] / "shared" / "data" / "tcga-pancan"))


def fills(data: EvalData, removed: str, draws: int, seed: int) -> dict[str, np.ndarray | list[np.ndarray]]:
    """{name: (n_test, d) fill of ``removed`` for the test patients, or a (K, n_test, d) stack
    for multiple imputation}."""
    kept = [m for m in data.modalities if m != removed]
    out = {name: imputed(data, kept, (removed,), imputer)[removed] for name, imputer in (
        ("KNN, 10 neighbours", partial(KNNRegressorImputer, 10)), ("KNN, 50 neighbours", partial(KNNRegressorImputer, 50)),
        ("ridge mean", RidgeImputer))}
    g = data.completed((removed,), "coherent", draws, seed)[removed]
    mean = g.mean(0)
    train = data.train[removed].to_numpy()
    out[f"cohere, mean of {draws} draws"] = mean
    out["cohere, mean rescaled to the training SD"] = (train.mean(0) + (mean - mean.mean(0)) / mean.std(0)
                                                        * train.std(0))
    out[f"cohere, MI pooled over {draws} copies"] = g
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", type=Path, default=SHARED)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--modalities", default="cna,rnaseq,rppa")
    ap.add_argument("--removed", default="", help="modalities to remove one at a time (default: each)")
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--trees", type=int, default=ForestSettings.rf_trees, help="trees of the stage forest")
    ap.add_argument("--rsf-trees", type=int, default=ForestSettings.rsf_trees, help="trees of the survival forest")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="CSV of every row")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = EvalData.load(a.cohort, a.models, modalities=a.modalities.split(","), seed=a.seed)
    models = DownstreamModels(data, ForestSettings(rf_trees=a.trees, rsf_trees=a.rsf_trees, seed=a.seed)).fit()
    ids = data.test_ids
    real = {m: data.test[m].to_numpy() for m in data.modalities}
    rows = []
    for removed in [m.strip() for m in a.removed.split(",") if m.strip()] or data.modalities:
        base = {m: real[m] for m in data.modalities if m != removed}
        total = real[removed].var(0).sum()
        for name, fill in fills(data, removed, a.draws, a.seed).items():
            if fill.ndim == 3:
                X = [models.features({**base, removed: f}, ids) for f in fill]
                share = fill.var(1).sum(-1).mean() / total  # one copy's spread over the patients
            else:
                X, share = models.features({**base, removed: fill}, ids), fill.var(0).sum() / total
            rows.append({"removed": removed, "fill": name, "variance share": share, **models.scores(X)})
    df = pd.DataFrame(rows)
    if a.out:
        df.to_csv(a.out, index=False)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\n{len(ids)} test patients; {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
