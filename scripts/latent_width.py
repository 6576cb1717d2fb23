"""How much of a target's predictable features a latent of each width lets through (goal (f)
of issue 10: "if the 32-d latent is what limits us, show it").

    python scripts/latent_width.py [--cohort DIR] [--target rppa] [--dims 32,64,128]
                                   [--encoders FOLDER] [--work DIR] [--out F.json]

For every width it fits the target's encoder on the training split (the default recipe,
``cohere encoders train --latent-dim D``; 32 is taken from ``--encoders``, the package's by
default) and keeps the other modalities' encoders. On the complete val patients it then scores,
in feature space (variance-weighted R^2 over observed cells, as the report's feature_space.csv):
- ``ceiling``: decode(encode(truth));
- ``ridge -> features``: ridge from the condition latents straight to the preprocessed features
  (the same in every width: the conditions do not change);
- ``ridge -> latent, decoded``: ridge to the target latent, then decoded: what a perfect
  linear model in the latent delivers;
- ``+ residual ridge``: that plus a ridge to what the encoder cannot represent (the residual
  heads' correction).
No diffusion model is trained: this measures what the latent lets through, not a generator.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tcga-pancan"
PACKAGE = ROOT / "plugins" / "cohere-tcga-pancan" / "cohere_tcga_pancan" / "artifacts" / "encoders"
MODALITIES = ["cna", "rnaseq", "rppa"]


def models_folder(cohort, target: str, dim: int, encoders: Path, work: Path) -> Path:
    """A models folder with the other modalities' encoders from ``encoders`` and the target's
    at width ``dim`` (copied when ``encoders`` has that width, else fitted on the train split)."""
    from cohere.encoders import load_encoder, make_encoder
    from cohere.modalities import registry

    folder = work / f"{target}{dim}"
    if (folder / "encoders" / target).exists():
        return folder
    (folder / "encoders").mkdir(parents=True, exist_ok=True)
    for m in MODALITIES:
        shutil.copytree(encoders / m, folder / "encoders" / m, dirs_exist_ok=True)
    if load_encoder(encoders / target).latent_dim != dim:
        table = cohort.tables[target]
        tr = table.loc[table.index.intersection(cohort.ids_in("train", 0))]
        va = table.loc[table.index.intersection(cohort.ids_in("val", 0))]
        t0 = time.perf_counter()
        enc = make_encoder(registry.get(target), None, None, seed=0, latent_dim=dim).fit(tr)
        metrics = {"train_r2": round(enc.reconstruction_r2(tr), 4), "val_r2": round(enc.reconstruction_r2(va), 4)}
        shutil.rmtree(folder / "encoders" / target)
        enc.save(folder / "encoders" / target, metrics,
                 {"cohort": cohort.path.name, "n_train": len(tr), "n_val": len(va), "seed": 0,
                  "epochs": enc.epochs_, "description": f"{target} at {dim}-d (scripts/latent_width.py)"})
        print(f"{target} {dim}-d encoder: {metrics}, {enc.epochs_} epochs, {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def scores(cohort, folder: Path, target: str, dim: int) -> list[dict]:
    from cohere.evaluation import metrics as M
    from cohere.evaluation.baselines import RidgeImputer
    from cohere.evaluation.experiments import EvalData

    data = EvalData.load(cohort, folder, MODALITIES)
    enc = data.cache["encoders"][target]
    truth = enc.target_features(data.test_cohort.tables[target].loc[data.test_ids]).to_numpy(np.float64)
    ceiling = M.observed_r2(truth, enc.decode(data.test[target].to_numpy()).to_numpy(np.float64))
    others = [m for m in MODALITIES if m != target]
    rows = []
    for have in ([others[0]], [others[1]], others):
        X, Y = data.train_pairs(have, target)
        train_truth = enc.target_features(data.cohort.tables[target].loc[data.paired_ids(have, target)])
        train_truth = train_truth.to_numpy(np.float64)
        filled = np.where(np.isnan(train_truth), np.nanmean(train_truth, axis=0), train_truth)
        Xt = data.test_matrix(have)
        decoded = enc.decode(RidgeImputer().fit(X, Y).predict(Xt)).to_numpy(np.float64)
        correction = RidgeImputer().fit(X, filled - enc.decode(Y).to_numpy(np.float64)).predict(Xt)
        rows.append({"target": target, "width": dim, "conditions": "+".join(have), "patients": len(data.test_ids),
                     "ceiling": round(ceiling, 4),
                     "ridge -> features": round(M.observed_r2(truth, RidgeImputer().fit(X, filled).predict(Xt)), 4),
                     "ridge -> latent, decoded": round(M.observed_r2(truth, decoded), 4),
                     "+ residual ridge": round(M.observed_r2(truth, decoded + correction), 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", type=Path, default=SHARED)
    ap.add_argument("--target", default="rppa", choices=MODALITIES)
    ap.add_argument("--dims", default="32,64,128", help="comma-separated latent widths")
    ap.add_argument("--encoders", type=Path, default=PACKAGE, help="folder with cna/, rnaseq/, rppa/ encoders")
    ap.add_argument("--work", type=Path, default=Path("latent_width"), help="where the wider encoders are written")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    a = ap.parse_args()
    from cohere.cohort import Cohort

    cohort = Cohort.read(a.cohort, MODALITIES)
    rows = []
    for dim in (int(d) for d in a.dims.split(",")):
        for row in scores(cohort, models_folder(cohort, a.target, dim, a.encoders, a.work), a.target, dim):
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
