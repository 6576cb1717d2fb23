"""``cohere demo``: the whole job on the embedded simulated cohort (4 to 10 minutes on 2 CPU cores)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..modalities import registry
from .common import check_paths, progress, write_tables

# small and quick: the demo shows the whole job, not the best achievable numbers (half the steps
# would save about a third of the time but cost 0.04-0.16 of the coherent feature R^2)
DEMO_RECIPE = dict(hidden=128, layers=3, time_dim=32, steps=1500, batch_size=128, eval_every=500,
                   ema_decay=0.99, val_steps=10)
DEMO_ENCODER_EPOCHS = 60


def demo(
    out: Path = typer.Option(Path("cohere-demo"), help="Folder for the simulated cohort, models and outputs."),
    patients: int = typer.Option(2000, min=100, help="Simulated patients."),
    seed: int = typer.Option(0, help="Random seed."),
    draws: int = typer.Option(5, min=1, help="Draws per patient."),
):
    """Simulate a TCGA-like cohort with known structure, train encoders and experts, generate
    every missing modality of every patient, and score it against the simulated truth."""
    t0 = time.perf_counter()
    check_paths(folders={"--out": out})
    import numpy as np
    import pandas as pd

    from ..diffusion.train import TrainConfig
    from ..encoders import make_encoder
    from ..evaluation.metrics import observed_r2, r2
    from ..executors import SerialExecutor
    from ..generation import ModelSource, generate_missing
    from ..simulate import simulate_cohort
    from ..training import make_jobs, plan, train_jobs

    cohort, truth = simulate_cohort(n_patients=patients, seed=seed)
    cohort.write(out / "cohort")
    presence = cohort.presence()
    typer.echo(f"simulated {len(presence)} patients -> {out / 'cohort'}; coverage: "
               + ", ".join(f"{m} {presence[m].mean():.0%}" for m in presence))
    models = out / "models"
    train = cohort.ids_in("train", seed)

    typer.echo("\n1. encoders (fit on the training patients)")
    t1 = time.perf_counter()
    encoders, latents = {}, {}
    for m in cohort.modalities:
        table = cohort.tables[m]
        mod = registry.get(m)
        extra = {"max_epochs": DEMO_ENCODER_EPOCHS} if mod.encoder == "autoencoder" else {}
        enc = make_encoder(mod, cohort.input_forms.get(m), seed=seed, **extra)
        with progress(f"   {m} encoder, epochs", extra.get("max_epochs")) as update:
            enc.fit(table.loc[table.index.intersection(train)], progress=lambda epoch, total: update(epoch))
        enc.save(models / "encoders" / m, training={"cohort": "simulated", "seed": seed})
        encoders[m] = enc
        latents[m] = enc.encode(table.loc[table.index.intersection(train)])
        typer.echo(f"   {m:7} {enc.kind:12} {len(enc.preprocessor_.features_):4d} features -> 32-d")
    typer.echo(f"   {time.perf_counter() - t1:.0f} s")

    typer.echo("\n2. experts C->X for every pair, and one multi-condition model per target")
    t2 = time.perf_counter()
    cfg = TrainConfig(seed=seed, **DEMO_RECIPE)
    model_jobs = make_jobs(plan([], True, cohort.modalities), latents, encoders, cfg, cohort_name="simulated",
                           tables=cohort.tables, clinical=cohort.clinical)
    train_jobs(model_jobs, models, SerialExecutor(), force=True, log=lambda line: None, progress=progress).check(models)
    for target in cohort.modalities:
        typer.echo(f"   {target}: {len(cohort.modalities) - 1} experts + multi->{target}")
    typer.echo(f"   {time.perf_counter() - t2:.0f} s")

    typer.echo("\n3. generate every missing modality (conditioned on all the patient has)")
    t3 = time.perf_counter()
    source = ModelSource.folder(models)
    jobs = []  # (target, have, patients) for every pattern of what the patients missing target have
    for target in cohort.modalities:
        missing = presence.index[~presence[target]]
        patterns = presence.loc[missing].drop(columns=target)
        for pattern, group in patterns.groupby(list(patterns.columns)):
            have = [m for m, present in zip(patterns.columns, pattern) if present]
            if have:
                jobs.append((target, have, list(group.index)))
    methods = ("coherent", "multi")
    generated = {(t, method): [] for t in cohort.modalities for method in methods}
    with progress("   generation runs", len(jobs) * len(methods)) as update:
        for i, (target, have, ids) in enumerate(jobs):
            for j, method in enumerate(methods):
                res = generate_missing(cohort, target, have, source, method=method, patients=ids,
                                       draws=draws, seed=seed)
                features = pd.DataFrame(res.decoded().mean(0), index=res.samples,
                                        columns=encoders[target].preprocessor_.features_)
                generated[target, method].append((pd.DataFrame(res.mean, index=res.samples), features))
                update(i * len(methods) + j + 1)
    rows, tables = [], {}
    for target in cohort.modalities:
        if not generated[target, "coherent"]:
            continue
        real = encoders[target].encode(truth.complete[target])
        row = {"modality": target, "patients": 0}
        for method in methods:
            gen = pd.concat([g for g, _ in generated[target, method]]).sort_index()
            decoded = pd.concat([f for _, f in generated[target, method]]).loc[gen.index]  # mean of decoded draws
            row["patients"] = len(gen)
            row[method] = r2(real.loc[gen.index].to_numpy(), gen.to_numpy())
            truth_features = encoders[target].target_features(truth.complete[target].loc[gen.index])
            row[f"{method}_features"] = observed_r2(truth_features.to_numpy(np.float64), decoded.to_numpy(np.float64))
            if method == "coherent":
                tables[out / "generated" / f"{target}.parquet"] = decoded
        rows.append(row)
    write_tables(tables)
    typer.echo(f"   {time.perf_counter() - t3:.0f} s")

    typer.echo(f"\nR^2 against the simulated truth for the patients missing each modality ({draws} draws),\n"
               "in feature space (the mean of the decoded draws) and on the 32 standardised latents (their mean):\n")
    typer.echo(f"{'modality':9} {'patients':>8} {'coherent':>9} {'multi':>7}   {'latent: coherent':>16} {'multi':>7}")
    for r in rows:
        typer.echo(f"{r['modality']:9} {r['patients']:8d} {r['coherent_features']:9.3f} {r['multi_features']:7.3f}   "
                   f"{r['coherent']:16.3f} {r['multi']:7.3f}")
    typer.echo(f"\ngenerated features (coherent) in {out / 'generated'}; models in {models}; "
               f"{time.perf_counter() - t0:.0f} s in all")
    typer.echo("cna is deliberately hard to predict in the simulation (as in the paper).")
    typer.echo(f"\nnext: cohere experts list --models {models}\n"
               f"      cohere generate --target rppa --have rnaseq --cohort {out / 'cohort'} --models {models} "
               f"--out rppa.parquet")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
