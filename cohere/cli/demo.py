"""``cohere demo``: the whole job on the embedded simulated cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from ..encoders import make_encoder
from ..plugins import get_modality
from ..simulate import simulate_cohort


def demo(
    out: Path = typer.Option(Path("cohere-demo"), help="Folder for the simulated cohort and models."),
    patients: int = typer.Option(800, help="Simulated patients."),
    seed: int = typer.Option(0, help="Random seed."),
    max_epochs: int = typer.Option(60, help="Autoencoder epochs at most."),
):
    """Simulate a TCGA-like cohort with known structure, train its encoders, and report
    how well each modality is reconstructed from its 32-d latent on held-out patients."""
    cohort, truth = simulate_cohort(n_patients=patients, seed=seed)
    cohort.write(out / "cohort")
    typer.echo(f"simulated {len(cohort.samples())} patients -> {out / 'cohort'}")
    presence = cohort.presence()
    typer.echo("modality coverage: " + ", ".join(f"{m} {presence[m].mean():.0%}" for m in presence))
    train, val = cohort.ids_in("train", seed), cohort.ids_in("val", seed)
    typer.echo(f"\n{'modality':9} {'form':11} {'encoder':12} {'features':>8} {'val R2':>7} {'seconds':>7}")
    for m in cohort.modalities:
        table = cohort.tables[m]
        mod = get_modality(m)
        extra = {"max_epochs": max_epochs} if mod.encoder == "autoencoder" else {}
        enc = make_encoder(mod, cohort.input_forms.get(m), seed=seed, **extra)
        enc.fit(table.loc[table.index.intersection(train)])
        enc.save(out / "models" / "encoders" / m, training={"cohort": "simulated", "seed": seed})
        r2 = enc.reconstruction_r2(table.loc[table.index.intersection(val)])
        typer.echo(f"{m:9} {enc.preprocessor_.form:11} {enc.kind:12} {len(enc.preprocessor_.features_):8d} "
                   f"{r2:7.3f} {enc.fit_seconds_:7.1f}")
    typer.echo(f"\nencoders saved under {out / 'models' / 'encoders'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
