"""Benchmark the default expert recipe on the real cohort: time and quality, vs a 10x longer run.

Trains the 6 experts among cna / rnaseq / rppa and the 3 multi-condition models on the
cohort's training split (latents from the encoders in MODELS/encoders), then generates the
cohort's ``val`` patients (complete: every modality) and prints per model: wall time,
the validation metrics of checkpoint selection (held-out rows of the training split), and on
the val patients the R^2 of single draws (mean over draws), of the mean of the draws, the
energy score and the generated variance as % of the real variance. With ``--long-factor
F`` each model is trained again with F times the step budget (``--long`` to pick which).

    python scripts/benchmark_experts.py --models /tmp/models-real --no-long
    python scripts/benchmark_experts.py --models /tmp/models-real --only rppa->rnaseq,multi->cna --long-factor 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from cohere.cohort import Cohort
from cohere.diffusion.train import TrainConfig
from cohere.scores import energy_score, r2 as r2_score
from cohere.encoders import load_encoder
from cohere.experts import Expert, MultiConditionModel, parse_id

DEFAULT_COHORT = os.environ.get("COHERE_SHARED_COHORT",
                                str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga-pancan"))
MODALITIES = ["cna", "rnaseq", "rppa"]


def all_ids(mods):
    return [f"{s}->{t}" for t in mods for s in mods if s != t] + [f"multi->{t}" for t in mods]


def fit(model_id, latents, encoders, config):
    s, t = parse_id(model_id)
    tr = latents["train"]
    if s == "multi":
        target = tr[t].dropna(how="all")
        src = {m: tr[m].reindex(target.index) for m in MODALITIES if m != t}
        return MultiConditionModel.fit(t, target, src, encoders, config)
    both = tr[s].dropna(how="all").index.intersection(tr[t].dropna(how="all").index)
    return Expert.fit(s, t, tr[s].loc[both], tr[t].loc[both], encoders, config)


def evaluate(model, latents, draws, steps, seed):
    va = latents["val"]
    y = va[model.target].to_numpy(np.float32)
    conds = {m: va[m] for m in model.sources} if model.kind == "multi" else va[model.source]
    t0 = time.perf_counter()
    x = model.sample(conds, n_draws=draws, steps=steps, seed=seed)  # (K, n, d)
    return {"r2_single": float(np.mean([r2_score(y, d) for d in x])), "r2_mean": r2_score(y, x.mean(0)),
            "energy": energy_score(y, x),
            "var_pct": float(100 * x.var(0).mean() / y.var(0).mean()), "sample_s": time.perf_counter() - t0}


def row(model_id, run, model, secs, ev):
    tr, mt = model.training, model.metrics
    return {"id": model_id, "run": run, "seconds": round(secs, 1), "steps": tr["steps_run"],
            "best_step": tr["best_step"], "n_train": tr["n_train"], "val_mse": mt["val_loss"],
            "val_energy": mt.get("val_energy"), "val_r2": mt["val_r2"],
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.items()}}


HEADER = (f"{'model':14} {'run':6} {'sec':>6} {'steps':>6} {'best':>6} {'n_train':>7} {'valMSE':>7} {'valES':>6} "
          f"{'R2 1draw':>8} {'R2 mean':>8} {'ES':>6} {'var%':>5}")


def fmt(r):
    return (f"{r['id']:14} {r['run']:6} {r['seconds']:6.1f} {r['steps']:6d} {r['best_step']:6d} {r['n_train']:7d} "
            f"{r['val_mse']:7.4f} {r['val_energy'] or float('nan'):6.3f} {r['r2_single']:8.4f} {r['r2_mean']:8.4f} "
            f"{r['energy']:6.3f} {r['var_pct']:5.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", default=DEFAULT_COHORT, help="cohort folder (default: the shared tcga-pancan)")
    ap.add_argument("--models", default="models-real", help="models folder with encoders/<modality>/")
    ap.add_argument("--only", default="", help="comma-separated model ids (default: all 9)")
    ap.add_argument("--long-factor", type=int, default=10, help="step budget multiplier of the long runs")
    ap.add_argument("--long", default="", help="comma-separated ids that get a long run (default: all trained)")
    ap.add_argument("--no-long", action="store_true", help="skip the long runs")
    ap.add_argument("--draws", type=int, default=10, help="draws per val patient")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps for the val generations (DDIM, eta=1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides")
    ap.add_argument("--save", default="", help="also save the default-recipe models under SAVE/experts/")
    ap.add_argument("--json", default="", help="write all rows to this JSON file")
    a = ap.parse_args()

    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    over = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        over[k] = {"int": int, "float": float, "str": str}[types[k]](v)
    config = TrainConfig(seed=a.seed, **over)
    ids = [i.strip() for i in a.only.split(",") if i.strip()] or all_ids(MODALITIES)
    long_ids = [] if a.no_long else ([i.strip() for i in a.long.split(",") if i.strip()] or ids)

    t0 = time.perf_counter()
    cohort = Cohort.read(a.cohort, modalities=MODALITIES)
    encoders, latents = {}, {"train": {}, "val": {}}
    for split in latents:
        ids_split = cohort.ids_in(split, a.seed)
        for m in MODALITIES:
            encoders[m] = encoders.get(m) or load_encoder(Path(a.models) / "encoders" / m)
            z = encoders[m].encode(cohort.tables[m])
            latents[split][m] = z.reindex(ids_split)
    complete = latents["val"]["cna"].dropna().index
    for m in MODALITIES:
        complete = complete.intersection(latents["val"][m].dropna().index)
    latents["val"] = {m: z.loc[complete] for m, z in latents["val"].items()}
    print(f"encoded cohort in {time.perf_counter() - t0:.0f}s; val patients: {len(complete)}; "
          f"recipe: {json.dumps(config.to_dict())}", flush=True)
    print(f"torch threads during training: {config.threads or torch.get_num_threads()}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    rows = []
    print(HEADER, flush=True)
    runs = [("default", config, i) for i in ids]
    runs += [(f"x{a.long_factor}", dataclasses.replace(config, steps=config.steps * a.long_factor), i) for i in long_ids]
    for run, cfg, model_id in runs:
        t1 = time.perf_counter()
        model = fit(model_id, latents, encoders, cfg)
        secs = time.perf_counter() - t1
        ev = evaluate(model, latents, a.draws, a.steps, a.seed + 7)
        rows.append(row(model_id, run, model, secs, ev))
        print(fmt(rows[-1]), flush=True)
        if a.save and run == "default":
            model.save(Path(a.save) / "experts" / model.folder_name)
    default = [r for r in rows if r["run"] == "default"]
    print(f"\ndefault recipe: {len(default)} models, training {sum(r['seconds'] for r in default):.0f}s; "
          f"whole script {time.perf_counter() - t0:.0f}s; load average now {os.getloadavg()[0]:.1f}")
    for r in rows:
        if r["run"] != "default":
            d = next((x for x in default if x["id"] == r["id"]), None)
            if d:
                print(f"{r['id']:14} {r['run']} - default: R2 1draw {r['r2_single'] - d['r2_single']:+.4f}  "
                      f"R2 mean {r['r2_mean'] - d['r2_mean']:+.4f}  ES {r['energy'] - d['energy']:+.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
