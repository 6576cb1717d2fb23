"""Autoencoder vs PCA (32 components, same training rows, same preprocessing) on a cohort.

Prints validation reconstruction R^2 in feature space (variance weighted, observed cells)
and training time per modality. Usage:

    python scripts/benchmark_encoders.py [--cohort ../shared/data/tcga-pancan] [--modalities cna,rnaseq,rppa]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cohere.cohort import Cohort
from cohere.encoders import make_encoder
from cohere.plugins import get_modality

DEFAULT_COHORT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga-pancan"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default=str(DEFAULT_COHORT))
    ap.add_argument("--modalities", default="cna,rnaseq,rppa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    mods = args.modalities.split(",")
    cohort = Cohort.read(args.cohort, modalities=mods)
    train, val = cohort.ids_in("train"), cohort.ids_in("val")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cohort {args.cohort}")
    print(f"{'modality':9} {'n_train':>7} {'n_val':>5} {'features':>8} {'AE R2':>7} {'PCA R2':>7} "
          f"{'AE s':>6} {'PCA s':>6} {'epochs':>6}")
    rows = []
    for m in mods:
        table = cohort.tables[m]
        tr, va = table.loc[table.index.intersection(train)], table.loc[table.index.intersection(val)]
        form = cohort.input_forms.get(m)
        ae = make_encoder(get_modality(m), form, "autoencoder", seed=args.seed).fit(tr)
        pca = make_encoder(get_modality(m), form, "pca", seed=args.seed).fit(tr)
        row = {"modality": m, "n_train": len(tr), "n_val": len(va),
               "features": len(ae.preprocessor_.features_),
               "ae_r2": ae.reconstruction_r2(va), "pca_r2": pca.reconstruction_r2(va),
               "ae_seconds": ae.fit_seconds_, "pca_seconds": pca.fit_seconds_, "ae_epochs": ae.epochs_}
        rows.append(row)
        print(f"{m:9} {row['n_train']:7d} {row['n_val']:5d} {row['features']:8d} {row['ae_r2']:7.3f} "
              f"{row['pca_r2']:7.3f} {row['ae_seconds']:6.1f} {row['pca_seconds']:6.1f} {row['ae_epochs']:6d}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
