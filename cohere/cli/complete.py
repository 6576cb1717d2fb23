"""``cohere complete``: fill every gap of a cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import CohereError
from .common import check_choice, check_device, check_modalities, check_paths, parse_forms, read_cohort


def _split(value: Optional[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def complete(
    cohort: Path = typer.Option(..., help="Cohort: a folder (one table per modality) or a MuData .h5mu file."),
    out: Path = typer.Option(..., help="Completed cohort: a folder, or a file ending in .h5mu (written atomically)."),
    models: Optional[Path] = typer.Option(None, help="Models folder (default: everything installed: the store and "
                                          "plugin packages such as cohere-tcga-pancan)."),
    method: str = typer.Option("coherent", help="coherent (the experts of every modality a patient has) or multi "
                               "(the masked multi-condition model)."),
    target: Optional[str] = typer.Option(None, help="Modalities to complete, comma-separated (default: the cohort's)."),
    draws: int = typer.Option(50, min=1, help="Draws per generated cell: their mean fills the table, their SD is "
                              "the uncertainty."),
    keep_draws: int = typer.Option(0, min=0, help="Also write K completed cohorts, one per draw (multiple imputation)."),
    min_feature_coverage: float = typer.Option(0.3, min=0.0, max=1.0, help="Use a table as a condition only if it "
                                               "has at least this share of its encoder's features."),
    input_form: list[str] = typer.Option(None, help="MODALITY=FORM, e.g. rnaseq=log2_count (repeatable)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives identical output."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
):
    """Generate, for every patient, each modality it lacks from all the modalities it has.

    Patients are grouped by what they have; a patient with nothing to condition on is left
    empty and reported. Writes the real tables with the generated rows filled in,
    provenance.csv (which cells are generated, from what, with which models),
    uncertainty/<m>.sd.parquet (per generated cell, the SD of each feature across draws) and
    summary.json; with --keep-draws K, draws/draw_001 ... K completed cohorts.

    Example: cohere complete --cohort my_cohort/ --out completed/ --keep-draws 5
    """
    targets = _split(target)
    check_modalities(target=targets)
    check_choice("--method", method, ("coherent", "multi"))
    if keep_draws > draws:
        raise CohereError(f"--keep-draws {keep_draws} exceeds --draws {draws}; keep at most as many as are drawn")
    out_is_file = out.suffix == ".h5mu"
    check_paths(cohort=cohort, inputs={"--models": models}, folders=None if out_is_file else {"--out": out})
    if out.exists() and (out_is_file or any(out.iterdir())):
        raise CohereError(f"--out {str(out)!r} already exists{' and is not empty' if not out_is_file else ''}; "
                          "give a new path (nothing is overwritten)")
    if out_is_file and not out.parent.is_dir():
        raise CohereError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    check_device(device)
    c = read_cohort(cohort, None, parse_forms(input_form))
    from ..completion import complete as run, write_completion
    from ..generation import ModelSource

    source = ModelSource.folder(models) if models else ModelSource.installed()
    done = run(c, source, method=method, targets=targets or None, draws=draws, keep_draws=keep_draws, seed=seed,
               min_coverage=min_feature_coverage, device=device,
               progress=lambda i, n, msg: typer.echo(f"[{i}/{n}] {msg}", err=True))
    for m, rec in done.coverage.items():
        extra = f"; {rec['renamed']} matched up to case and '-', '_', '.', space" if rec.get("renamed") else ""
        extra += f"; {rec['converted']}" if rec.get("converted") else ""
        typer.echo(f"{m}: {rec['features'] - rec['absent']} of the encoder's {rec['features']} features present "
                   f"(coverage {rec['coverage']:.0%}){extra}", err=True)
    for m, why in done.refused.items():
        typer.echo(f"warning: {m} is not used as a condition: {why}", err=True)
    write_completion(done, out)
    s = done.summary
    for r in s.itertuples():
        what = f"from {r[2]}" if r.generated else f"not generated: {r.note}"
        typer.echo(f"{r.target}: {r.patients} patient(s) {what}")
    if done.empty:
        typer.echo(f"{len(done.empty)} patient(s) have nothing to condition on and stay empty (first: "
                   f"{', '.join(done.empty[:3])})")
    typer.echo(f"completed {len(done.provenance)} cell(s) of {done.provenance['sample'].nunique()} patient(s) with "
               f"{method}, {draws} draws each -> {out}")


def register(app: typer.Typer) -> None:
    app.command("complete")(complete)
