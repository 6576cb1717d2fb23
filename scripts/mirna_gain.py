"""Does adding miRNA as a condition change the validation R^2 of generated RNA-seq?

Needs the plugin: ``pip install -e plugins/cohere-mirna``. On the shared TCGA cohort:

1. Hold out evaluation patients that have all four modalities (cna, rppa, rnaseq, mirna):
   the validation split's (31) plus a seeded ``--dev-fraction`` of the training split's
   (never used for training; the README asks us not to tune on anything else).
2. Fit encoders on the remaining training patients (PCA by default: fast and linear, so the
   comparison is about the conditions, not the decoders; ``--encoder default`` uses each
   modality's own) and train the experts cna->rnaseq, rppa->rnaseq, mirna->rnaseq on every
   remaining training patient that has both modalities.
3. Generate rnaseq for the held-out patients with Coherent Denoising (weights proportional
   to 1 / validation loss, DDIM 50 steps, eta 1) from {cna, rppa} and {cna, rppa, mirna}
   (and each expert alone), ``--draws`` draws per patient.
4. Report feature-space R^2 (variance weighted over observed genes, the modelled scale) of
   a single draw (mean over draws, the paper's metric) and of the mean of the draws, latent
   R^2, and a paired bootstrap 95% interval over patients for the change from adding mirna.

    python scripts/mirna_gain.py --out mirna_gain.json           # ~10 min on 2 CPU cores
    python scripts/mirna_gain.py --steps 1500 --draws 4          # quicker, noisier
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cohere import plugins
from cohere.cohort import read_table
from cohere.diffusion.train import TrainConfig
from cohere.encoders import make_encoder
from cohere.experts import Expert
from cohere.sampling import sample_latents

SHARED = Path(os.environ.get("COHERE_SHARED_COHORT", Path(__file__).resolve().parents[2] / "shared" / "data" / "tcga-pancan"))
SETS = {"cna": ["cna"], "rppa": ["rppa"], "mirna": ["mirna"], "cna+rppa": ["cna", "rppa"],
        "cna+rppa+mirna": ["cna", "rppa", "mirna"]}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def r2(pred: np.ndarray, truth: np.ndarray, axis_mean: np.ndarray | None = None) -> float:
    """Variance-weighted R^2 over observed cells (NaN in ``truth`` = unobserved)."""
    obs = ~np.isnan(truth)
    mean = np.nanmean(truth, axis=0) if axis_mean is None else axis_mean
    sse = ((truth - pred) ** 2)[obs].sum()
    sst = ((truth - mean) ** 2)[obs].sum()
    return float(1 - sse / sst)


def per_patient(pred: np.ndarray, truth: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient SSE and SST (for the paired bootstrap)."""
    obs = ~np.isnan(truth)
    t = np.where(obs, truth, 0.0)
    sse = np.where(obs, (t - pred) ** 2, 0.0).sum(1)
    sst = np.where(obs, (t - mean) ** 2, 0.0).sum(1)
    return sse, sst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", type=Path, default=SHARED)
    ap.add_argument("--encoder", choices=["pca", "default"], default="pca")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimizer steps per expert")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--dev-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    os.environ.setdefault("COHERE_LOAD_PLUGINS", "cohere-mirna")
    plugins.reset()
    if "mirna" not in plugins.modality_names():
        sys.exit("the mirna plugin is not installed: pip install -e plugins/cohere-mirna")

    t0 = time.time()
    tables = {m: read_table(args.cohort / f"{m}.parquet") for m in ("cna", "rppa", "rnaseq", "mirna")}
    split = pd.read_csv(args.cohort / "split.csv", index_col=0)["split"]
    split.index = split.index.astype(str)
    complete = tables["mirna"].index
    for t in tables.values():
        complete = complete.intersection(t.index)
    lab = split.reindex(complete)
    val = complete[lab.eq("val").to_numpy()]
    rng = np.random.default_rng(args.seed)
    pool = complete[lab.eq("train").to_numpy()]
    dev = pool[np.sort(rng.choice(len(pool), int(round(args.dev_fraction * len(pool))), replace=False))]
    held = val.union(dev)
    train_ids = split.index[split.eq("train")].difference(held)
    log(f"read in {time.time() - t0:.0f}s; held out {len(val)} val + {len(dev)} dev patients with all four "
        f"modalities; training on the other {len(train_ids)} training patients")

    encoders, latents = {}, {}
    for m, t in tables.items():
        rows = t.loc[t.index.intersection(train_ids)]
        kind = "pca" if args.encoder == "pca" else None
        t1 = time.time()
        enc = make_encoder(plugins.get_modality(m), None, kind, seed=args.seed).fit(rows)
        enc.digest = f"{m}-{enc.kind}-{args.seed}"  # not saved: a run-local contract id
        encoders[m] = enc
        keep = t.index.intersection(train_ids.union(held))
        latents[m] = enc.encode(t.loc[keep])
        log(f"{m}: {enc.kind} encoder on {len(rows)} patients ({time.time() - t1:.0f}s), "
            f"held-out reconstruction R^2 {enc.reconstruction_r2(t.loc[held]):.3f}")

    config = dataclasses.replace(TrainConfig(seed=args.seed), steps=args.steps)
    experts = {}
    for s in ("cna", "rppa", "mirna"):
        both = latents[s].index.intersection(latents["rnaseq"].index).intersection(train_ids)
        t1 = time.time()
        ex = Expert.fit(s, "rnaseq", latents[s].loc[both], latents["rnaseq"].loc[both], encoders, config)
        experts[s] = ex
        log(f"{s}->rnaseq: {len(both)} patients, val_loss {ex.val_loss:.4f}, val_r2 {ex.metrics['val_r2']:.3f}, "
            f"best step {ex.training['best_step']} ({time.time() - t1:.0f}s)")

    rna = encoders["rnaseq"]
    truth_feat = rna.target_features(tables["rnaseq"].loc[held]).to_numpy(np.float64)   # (n, genes)
    truth_lat = latents["rnaseq"].loc[held].to_numpy(np.float64)                      # (n, 32)
    train_mean = np.nanmean(rna.target_features(tables["rnaseq"].loc[tables["rnaseq"].index.intersection(train_ids)])
                            .to_numpy(np.float64), axis=0)
    n, K = len(held), args.draws
    results, errors = {}, {}
    for name, conds in SETS.items():
        members = [experts[c].member({c: latents[c].loc[held]}, weight=1 / experts[c].val_loss, n_draws=K)
                   for c in conds]
        g = torch.Generator().manual_seed(args.seed)
        x = sample_latents(members, experts[conds[0]].schedule, n=K * n, method="ddim", steps=50, eta=1.0,
                           generator=g)
        z = x.view(K, n, -1).numpy().astype(np.float64)                                 # (K, n, 32)
        feats = np.stack([rna.decode(pd.DataFrame(z[k], index=held)).to_numpy(np.float64) for k in range(K)])
        mean_feat = feats.mean(0)                                                        # (n, genes)
        out = {}
        for part, idx in (("all", np.arange(n)), ("val", np.flatnonzero(held.isin(val))),
                          ("dev", np.flatnonzero(held.isin(dev)))):
            out[part] = {
                "n": int(len(idx)),
                "r2_single_draw": float(np.mean([r2(feats[k][idx], truth_feat[idx], train_mean) for k in range(K)])),
                "r2_mean_of_draws": r2(mean_feat[idx], truth_feat[idx], train_mean),
                "latent_r2_mean_of_draws": r2(z.mean(0)[idx], truth_lat[idx], np.zeros(truth_lat.shape[1])),
            }
        results[name] = out
        errors[name] = {"mean": per_patient(mean_feat, truth_feat, train_mean),
                        "draw": per_patient(feats[0], truth_feat, train_mean)}
        log(f"{name:>15}: R^2 single draw {out['all']['r2_single_draw']:.3f}, mean of {K} draws "
            f"{out['all']['r2_mean_of_draws']:.3f} (val {out['val']['r2_mean_of_draws']:.3f}, "
            f"dev {out['dev']['r2_mean_of_draws']:.3f})")

    # paired bootstrap over patients: R^2(cna+rppa+mirna) - R^2(cna+rppa)
    boot = {}
    for which in ("mean", "draw"):
        (a_sse, a_sst), (b_sse, _) = errors["cna+rppa"][which], errors["cna+rppa+mirna"][which]
        diffs = []
        for _ in range(args.bootstrap):
            i = rng.integers(0, n, n)
            diffs.append((1 - b_sse[i].sum() / a_sst[i].sum()) - (1 - a_sse[i].sum() / a_sst[i].sum()))
        boot[which] = {"delta": float((1 - b_sse.sum() / a_sst.sum()) - (1 - a_sse.sum() / a_sst.sum())),
                       "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}
    report = {"settings": {**vars(args), "cohort": str(args.cohort), "out": str(args.out)},
              "experts": {s: {"n_train": ex.training["n_train"], **ex.metrics} for s, ex in experts.items()},
              "results": results, "delta_adding_mirna": boot, "seconds": round(time.time() - t0)}
    print("| conditions | R^2 single draw | R^2 mean of draws | val (n=%d) | dev (n=%d) |" % (len(val), len(dev)))
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['all']['r2_single_draw']:.3f} | {r['all']['r2_mean_of_draws']:.3f} | "
              f"{r['val']['r2_mean_of_draws']:.3f} | {r['dev']['r2_mean_of_draws']:.3f} |")
    for which, b in boot.items():
        print(f"adding mirna, R^2 of the {'mean of draws' if which == 'mean' else 'single draw'}: "
              f"{b['delta']:+.3f} (95% CI {b['ci95'][0]:+.3f} .. {b['ci95'][1]:+.3f}, n={n} patients)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
