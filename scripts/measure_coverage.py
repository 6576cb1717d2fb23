"""How encoding a partial feature panel degrades latents and generation (the README's table).

On the complete val patients of a cohort, for each modality and each coverage (100, 90, 70,
50, 30% of the encoder's features), the table is cut to a feature subset and encoded (absent
features imputed from the present ones, see ``cohere.modalities.Preprocessor``):

- ``latent_r2``: R^2 of encode(partial) against encode(full) over all latent dimensions
  (1 - SSE / SST around each dimension's mean), the mean over ``--repeats`` random subsets;
- ``gen_r2`` / ``energy``: each other modality generated from the partial one alone
  (Coherent Denoising, K = 50 draws): R^2 of the draws' mean against the true latents and
  the energy score, beside the same from the full table (coverage 100%); mean over targets.

Two kinds of subset: ``random`` features, and a ``panel``: for rnaseq the genes a 500-gene
expression panel keeps (the 500 with the highest training variance: what a panel designed
for these tumours would measure), for rppa the antibodies measured on every RPPA panel
version (the ones with < 1% missing values across the cohort), then random ones down to the
coverage; cna has no panel row (copy number is measured genome-wide).

    python scripts/measure_coverage.py --cohort ../shared/data/tcga-pancan --models M --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

LEVELS = (1.0, 0.9, 0.7, 0.5, 0.3)


def latent_r2(full: np.ndarray, part: np.ndarray) -> float:
    return float(1 - ((part - full) ** 2).sum() / ((full - full.mean(0)) ** 2).sum())


def subset(features: list[str], level: float, seed: int, first: list[str] | None = None) -> list[str]:
    """``level`` of ``features``: ``first`` (a panel, in its order) then random others."""
    n = int(round(level * len(features)))
    rng = np.random.default_rng(seed)
    first = [f for f in (first or []) if f in set(features)][:n]
    rest = [f for f in features if f not in set(first)]
    return first + [rest[i] for i in sorted(rng.choice(len(rest), n - len(first), replace=False))]


def panels(cohort, encoders) -> dict[str, list[str]]:
    out = {}
    if "rnaseq" in encoders:
        tr = cohort.tables["rnaseq"].loc[cohort.tables["rnaseq"].index.intersection(cohort.ids_in("train"))]
        var = tr[encoders["rnaseq"].preprocessor_.features_].var().sort_values(ascending=False)
        out["rnaseq"] = list(var.index[:500])
    if "rppa" in encoders:
        miss = cohort.tables["rppa"][encoders["rppa"].preprocessor_.features_].isna().mean()
        out["rppa"] = list(miss.index[miss < 0.01])
    return out


def main(argv=None) -> None:
    import torch

    from cohere.cohort import Cohort
    from cohere.evaluation.experiments import score_draws
    from cohere.generation import ModelSource, generate_missing

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modalities", default="cna,rnaseq,rppa")
    ap.add_argument("--repeats", type=int, default=3, help="random subsets per level for latent_r2")
    ap.add_argument("--draws", type=int, default=50)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    mods = a.modalities.split(",")
    cohort = Cohort.read(a.cohort, mods)
    source = ModelSource.folder(a.models)
    encoders = {m: source.encoder(m) for m in mods}
    ids = cohort.samples(mods).intersection(cohort.ids_in("val"))
    truth = {m: encoders[m].encode(cohort.tables[m].loc[ids]).to_numpy() for m in mods}
    panel = panels(cohort, encoders)
    rows, t0 = [], time.perf_counter()
    for m in mods:
        feats = encoders[m].preprocessor_.features_
        table = cohort.tables[m].loc[ids]
        for scheme in ["random"] + (["panel"] if m in panel else []):
            for level in LEVELS:
                if scheme == "panel" and level == 1.0:
                    continue
                seeds = range(a.repeats) if scheme == "random" else [0]
                r2s = []
                for s in seeds:
                    keep = subset(feats, level, s, panel.get(m) if scheme == "panel" else None)
                    part = encoders[m].encode(table[keep], min_coverage=0.0).to_numpy()
                    r2s.append(latent_r2(truth[m], part))
                keep = subset(feats, level, 0, panel.get(m) if scheme == "panel" else None)
                partial = Cohort({m: table[keep]})
                gen = {}
                for t in mods:
                    if t == m:
                        continue
                    res = generate_missing(partial, t, [m], source, patients=list(ids), draws=a.draws, seed=0,
                                           min_coverage=0.0)
                    gen[t] = score_draws(truth[t], res.draws)
                row = {"modality": m, "scheme": scheme, "coverage": level, "features": len(keep),
                       "latent_r2": round(float(np.mean(r2s)), 4),
                       "gen_r2": round(float(np.mean([g["r2_of_mean"] for g in gen.values()])), 4),
                       "energy": round(float(np.mean([g["energy_score"] for g in gen.values()])), 4),
                       **{f"gen_r2_{t}": round(g["r2_of_mean"], 4) for t, g in gen.items()}}
                rows.append(row)
                print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / "coverage.csv", index=False)
    lines = ["| modality | subset | coverage | features | latent R^2 vs full | R^2 of the 50-draw mean (other targets) "
             "| energy score |", "|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        targets = ", ".join(f"{c[7:]} {getattr(r, c):.3f}" for c in df.columns if c.startswith("gen_r2_")
                            and not pd.isna(getattr(r, c)))
        lines.append(f"| {r.modality} | {r.scheme} | {r.coverage:.0%} | {r.features} | {r.latent_r2:.3f} | "
                     f"{targets} | {r.energy:.3f} |")
    (a.out / "coverage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{len(ids)} complete val patients, K = {a.draws}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
