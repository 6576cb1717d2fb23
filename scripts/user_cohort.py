"""A cohort built from the shared data to look like a user's, and the score of its completion.

``make`` takes the val patients (never used in training) of three cancer types and writes:

- ``user/``: what a user would have. RNA as log2-scale expression (each gene's z-scores mapped
  to its own level and spread, plus a per-cancer-type offset: the between-type differences
  that the shared z-scores had removed), on a random 500-gene panel; 60% of the RPPA
  antibodies, named the way R's ``make.names`` writes them (``-`` becomes ``.``); copy number
  as log2 ratios. Each patient lacks one or two modalities at random. ``cohort.json``
  declares ``rnaseq: log2_expression``.
- ``truth/``: the withheld tables of the same patients, as in the shared cohort.

``score`` compares a completed cohort (``cohere complete ... --keep-draws K``) with the truth
on the withheld cells, per target and pattern, in the target encoder's feature space: the R^2
of the mean (1 - SSE/SST around each feature's mean) and the energy score of the K draws,
beside ridge regression (and ridge + a bootstrapped training residual for the energy) fitted
on the shared cohort's train split from the same features the user has (the 500 genes as
z-scores, the 60% antibodies, copy number), to the target's features.

    python scripts/user_cohort.py make --cohort ../shared/data/tcga-pancan --out /tmp/user
    cohere complete --cohort /tmp/user/user --out /tmp/user/done --keep-draws 20
    python scripts/user_cohort.py score --cohort ../shared/data/tcga-pancan --dir /tmp/user
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

TYPES = ("BRCA", "KIRC", "HNSC")
MODS = ("cna", "rnaseq", "rppa")
SEED = 0


def make(cohort_dir: Path, out: Path, models: Path | None) -> None:
    from cohere.cohort import Cohort
    from cohere.generation import ModelSource

    rng = np.random.default_rng(SEED)
    c = Cohort.read(cohort_dir, list(MODS))
    source = ModelSource.folder(models) if models else ModelSource.installed()
    feats = {m: source.encoder(m).preprocessor_.features_ for m in MODS}
    val = c.samples(list(MODS)).intersection(c.ids_in("val"))
    types = c.clinical["cancer_type"].reindex(val)
    ids = pd.Index(sorted(val[types.isin(TYPES).to_numpy()]), name="sample")
    truth = {m: c.tables[m].loc[ids] for m in MODS}
    Cohort(truth, c.clinical.loc[ids]).write(out / "truth")

    genes = sorted(rng.choice(feats["rnaseq"], 500, replace=False))
    z = truth["rnaseq"][genes]
    level, spread = rng.uniform(4, 12, len(genes)), rng.uniform(0.5, 2.5, len(genes))
    offset = {t: rng.normal(0, 0.5, len(genes)) for t in TYPES}
    shift = np.stack([offset[t] for t in c.clinical.loc[ids, "cancer_type"]])
    rna = pd.DataFrame(level + spread * z.to_numpy() + shift, index=ids, columns=genes)
    abs_ = sorted(rng.choice(feats["rppa"], int(round(0.6 * len(feats["rppa"]))), replace=False))
    rppa = truth["rppa"][abs_].rename(columns=lambda a: a.replace("-", "."))
    patterns = [p for k in (1, 2) for p in itertools.combinations(MODS, k)]
    has = {p: patterns[rng.integers(len(patterns))] for p in ids}
    tables = {"cna": truth["cna"], "rnaseq": rna, "rppa": rppa}
    tables = {m: t.loc[[p for p in ids if m in has[p]]] for m, t in tables.items()}
    user = Cohort(tables, c.clinical.loc[ids, ["cancer_type", "stage", "os_time", "os_event", "age", "gender"]],
                  input_forms={"cna": "log2_ratio", "rnaseq": "log2_expression", "rppa": "normalized"})
    user.write(out / "user")
    (out / "panel.json").write_text(json.dumps({"rnaseq": genes, "rppa": abs_}, indent=1))
    counts = pd.Series(["+".join(h) for h in has.values()]).value_counts().sort_index()
    print(f"{len(ids)} val patients of {', '.join(TYPES)} -> {out / 'user'}; patterns: {counts.to_dict()}; "
          f"rnaseq {len(genes)} of {len(feats['rnaseq'])} genes, rppa {len(abs_)} of {len(feats['rppa'])} antibodies")


def score(cohort_dir: Path, d: Path, models: Path | None) -> pd.DataFrame:
    from cohere.cohort import Cohort
    from cohere.evaluation.baselines import ResidualBootstrapSampler
    from cohere.generation import ModelSource
    from cohere.modalities.builtin import zscore_within
    from cohere.scores import energy_score, observed_r2

    c = Cohort.read(cohort_dir, list(MODS))
    source = ModelSource.folder(models) if models else ModelSource.installed()
    enc = {m: source.encoder(m) for m in MODS}
    panel = json.loads((d / "panel.json").read_text())
    done = Cohort.read(d / "done")
    truth = Cohort.read(d / "truth")
    prov = pd.read_csv(d / "done" / "provenance.csv", dtype={"sample": str})
    copies = sorted((d / "done" / "draws").iterdir())
    draws = [Cohort.read(p) for p in copies]
    train = c.ids_in("train")

    def features(m, table):           # the values on the encoder's modelled scale, its features
        table = table.rename(columns=enc[m].preprocessor_.match(table.columns))   # the user's spellings
        return enc[m].target_features(table).to_numpy(np.float64)

    def inputs(m, table):              # what the user has of m, as the training data holds it
        cols = {"rnaseq": panel["rnaseq"], "rppa": panel["rppa"], "cna": enc["cna"].preprocessor_.features_}[m]
        return features(m, table).astype(np.float64)[:, [enc[m].preprocessor_.features_.index(f) for f in cols]]

    rows = []
    for (t, have), g in prov.groupby(["modality", "available"]):
        ids = list(g["sample"])
        have = have.split("+")
        y = features(t, truth.tables[t].loc[ids])
        mean = features(t, done.tables[t].loc[ids])
        x = np.stack([features(t, k.tables[t].loc[ids]) for k in draws])      # (K, n, F)
        both = c.samples([*have, t]).intersection(train)
        Xtr = np.hstack([inputs(m, c.tables[m].loc[both]) for m in have])
        med = np.nanmedian(Xtr, axis=0)
        Xtr = np.where(np.isnan(Xtr), med, Xtr)
        Ytr = features(t, c.tables[t].loc[both])
        Ytr = np.where(np.isnan(Ytr), np.nanmean(Ytr, axis=0), Ytr)
        # the user's conditions in the same space: rnaseq converted from log2 to z (as cohere does)
        Xte = []
        for m in have:
            table = truth.tables[m].loc[ids]  # the truth of the conditions = what the user has, in TCGA form
            if m == "rnaseq":
                user = Cohort.read(d / "user").tables["rnaseq"].loc[ids]
                groups = Cohort.read(d / "user").clinical["cancer_type"].reindex(user.index).to_numpy()
                table = pd.DataFrame(zscore_within(user.to_numpy(np.float64), groups), index=ids, columns=user.columns)
                table = table.reindex(columns=enc["rnaseq"].preprocessor_.features_)
            Xte.append(inputs(m, table))
        Xte = np.hstack(Xte)
        Xte = np.where(np.isnan(Xte), med, Xte)
        rb = ResidualBootstrapSampler().fit(Xtr, Ytr)
        ridge = rb.predict(Xte)
        obs = ~np.isnan(y)
        yf = np.where(obs, y, np.nanmean(y, axis=0))
        rows.append({"target": t, "from": "+".join(have), "patients": len(ids),
                     "cohere_r2_mean": round(observed_r2(y, mean), 3), "ridge_r2": round(observed_r2(y, ridge), 3),
                     "cohere_energy": round(energy_score(yf, x), 2),
                     "resboot_energy": round(energy_score(yf, rb.sample(Xte, n_draws=len(draws), seed=SEED)), 2),
                     "draws": len(draws)})
        print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(d / "score.csv", index=False)
    print(df.to_string(index=False))
    return df


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=("make", "score"))
    ap.add_argument("--cohort", type=Path, required=True, help="the shared cohort")
    ap.add_argument("--out", "--dir", dest="dir", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=None, help="models folder (default: the installed ones)")
    a = ap.parse_args(argv)
    if a.stage == "make":
        make(a.cohort, a.dir, a.models)
    else:
        score(a.cohort, a.dir, a.models)


if __name__ == "__main__":
    main()
