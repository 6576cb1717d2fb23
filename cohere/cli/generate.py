"""``cohere generate``: the main job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import CohereError
from .common import check_choice, check_device, check_modalities, check_paths, note_imputation, progress, read_cohort

# the library's defaults (cohere.generation.DEFAULT_*), shown in --help without importing it
# (and torch) to build the app; tests/test_cli.py checks that they agree
SHOWN_DEFAULTS = {"sampler": "ddim", "steps": 10, "eta": 1.0, "weighting": "inverse", "consensus": "product",
                  "variance": "analytic"}


def _split(value: Optional[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def generate(
    target: str = typer.Option(..., help="Modality to generate, e.g. cna."),
    have: str = typer.Option("", help="Conditioning modalities, comma-separated, e.g. rnaseq,rppa."),
    cohort: Path = typer.Option(..., help="Cohort folder with the conditioning tables."),
    out: Path = typer.Option(..., help="Output table: .parquet, .csv or .tsv (written atomically)."),
    models: Optional[Path] = typer.Option(None, help="Models folder (default: the installed store)."),
    method: str = typer.Option("coherent", help="coherent (ensemble of experts) or multi (masked multi-condition model)."),
    draws: int = typer.Option(1, min=1, help="Draws per patient (K)."),
    steps: Optional[int] = typer.Option(None, min=1, show_default=str(SHOWN_DEFAULTS["steps"]),
                                        help="Reverse steps for ddim / dpmpp2m (ddpm runs all T); by default "
                                             "the count the models' spread was calibrated at (their config's "
                                             "sampling.steps: 10 for models trained by this version, 12 or 20 before)."),
    sampler: Optional[str] = typer.Option(None, show_default=SHOWN_DEFAULTS["sampler"],
                                          help="ddim, dpmpp2m, or ddpm (the paper's T = 1000 steps)."),
    eta: Optional[float] = typer.Option(None, min=0.0, show_default=str(SHOWN_DEFAULTS["eta"]),
                                        help="DDIM eta: 0 deterministic, 1 ancestral."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives identical output."),
    patients: Optional[str] = typer.Option(None, help="Only these sample ids (comma-separated)."),
    experts: Optional[str] = typer.Option(None, help="Explicit expert ids, e.g. rnaseq->cna,rppa->cna."),
    weighting: Optional[str] = typer.Option(None, show_default=SHOWN_DEFAULTS["weighting"],
                                            help="Consensus weights: inverse, softmax or uniform (of validation loss)."),
    weights: Optional[str] = typer.Option(None, help='Explicit weights as JSON, e.g. \'{"rnaseq->cna": 2, "rppa->cna": 1}\'.'),
    consensus: Optional[str] = typer.Option(None, show_default=SHOWN_DEFAULTS["consensus"],
                                            help="product (combine the experts' information) or average (the paper's "
                                                 "weighted average of noise predictions)."),
    variance: Optional[str] = typer.Option(None, show_default=SHOWN_DEFAULTS["variance"],
                                           help="DDIM reverse variance: analytic (calibrated from the models' "
                                                "recorded errors) or fixed (DDIM's own, too narrow at few steps)."),
    stacking: Optional[bool] = typer.Option(None, "--stacking/--no-stacking", show_default="stacking",
                                            help="Stack the mean of each patient's draws with the experts' ridge "
                                                 "prediction, by the weight each expert chose on held-out rows "
                                                 "(coherent, 2+ draws; the spread is kept)."),
    residual: Optional[bool] = typer.Option(None, "--residual/--no-residual", show_default="residual",
                                            help="With --decode: add the experts' ridge prediction of the features "
                                                 "outside the target's latent (coherent)."),
    paper: bool = typer.Option(False, "--paper", help="The paper's exact method: DDPM with all T steps, "
                               "softmax(1/loss) weights, their average, no x0 clamp, no stacking, no residual. Not "
                               "combinable with --sampler/--steps/--eta/--weighting/--consensus/--variance/"
                               "--stacking/--residual."),
    threshold: float = typer.Option(1.0, min=0.0, help="Coherence threshold (weighted mean pairwise cosine distance)."),
    fraction: float = typer.Option(0.10, min=0.0, max=1.0, help="Reject a trajectory incoherent on more than this fraction of steps."),
    attempts: int = typer.Option(10, min=1, help="Trajectories per draw at most (rejected ones are regenerated)."),
    decode: bool = typer.Option(False, help="Write decoded features instead of latents."),
    aggregate: bool = typer.Option(False, help="Write one row per patient: the mean of the draws."),
    diagnostics: Optional[Path] = typer.Option(None, help="Also write per-patient diagnostics (acceptance, attempts, variance)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    min_feature_coverage: float = typer.Option(0.3, min=0.0, max=1.0, help="Refuse a condition table with less "
                                               "than this share of its encoder's features (the absent ones are "
                                               "imputed from the present ones)."),
    allow_unconditional: bool = typer.Option(False, help="Allow generation without any condition (privacy risk)."),
    n_samples: Optional[int] = typer.Option(None, min=1, help="Rows to generate unconditionally."),
):
    """Generate a missing modality for every patient that has the --have modalities.

    Example: cohere generate --target cna --have rnaseq,rppa --cohort data/ --models models/ --out cna.parquet
    """
    # every option and path is checked before any work starts: nothing is read, run or written
    # first, and what needs no torch is checked before torch is imported (seconds)
    have_list = _split(have)
    check_paths(cohort=cohort, inputs={"--models": models}, tables={"--out": out, "--diagnostics": diagnostics})
    check_modalities(target=target, have=have_list)
    check_choice("--method", method, ("coherent", "multi"))
    try:
        explicit = json.loads(weights) if weights else None
    except json.JSONDecodeError as e:
        explicit = e
    if explicit is not None and not isinstance(explicit, dict):
        raise CohereError(f"--weights {weights!r}: expected a JSON object of expert ids and weights, "
                          "e.g. '{\"rnaseq->cna\": 2, \"rppa->cna\": 1}'")
    from ..generation import PAPER_MODE, WEIGHTINGS, ModelSource, prepare_generation
    from ..sampling import CONSENSUS, METHODS, VARIANCES

    check_choice("--sampler", sampler, METHODS)
    check_choice("--weighting", weighting, WEIGHTINGS)
    check_choice("--consensus", consensus, CONSENSUS)
    check_choice("--variance", variance, VARIANCES)
    check_device(device)
    chosen = dict(sampler=sampler, steps=steps, eta=eta, weighting=weighting, consensus=consensus, variance=variance,
                  stacking=stacking, residual=residual)
    if paper:
        clash = [f"--{k}" for k, v in chosen.items() if v is not None]
        if clash:
            raise CohereError(f"--paper fixes the sampler and the consensus; drop {', '.join(clash)} or --paper")
        chosen = dict(PAPER_MODE)

    c = read_cohort(cohort, [*have_list] or None)
    source = ModelSource.folder(models) if models else ModelSource.store()
    defaults = {k: v for k, v in chosen.items() if v is not None}  # the others: the library's defaults
    job = prepare_generation(
        c, target, have_list, source, method=method, patients=_split(patients) or None, weights=explicit,
        experts=_split(experts) or None, threshold=threshold, fraction=fraction, attempts=attempts, device=device,
        allow_unconditional=allow_unconditional, n_unconditional=n_samples, min_coverage=min_feature_coverage,
        **defaults)
    for record in job.imputation.values():
        note_imputation(record)
    if job.settings.get("cancer_type"):  # the stacking uses it: say for how many it was known
        typer.echo(f"cancer type: {job.settings['cancer_type']}", err=True)
    _check_room(job, draws, out, decode, aggregate)
    stream(job, draws, seed, out, diagnostics, decode, aggregate)
    typer.echo(f"generated {target} for {len(job.samples)} patients x {draws} draws with "
               f"{method} ({', '.join(f'{m} w={w:.2f}' for m, w in zip(job.models, job.weights))}) -> {out}")


def _check_room(job, draws: int, out: Path, decode: bool, aggregate: bool) -> None:
    """Refuse up front an output that cannot fit on its disk (rough size: 12 bytes a value as
    text, 5 in Parquet), with the size and what to do instead."""
    import shutil

    rows = len(job.samples) * (1 if aggregate else draws)
    cols = (len(job.target_encoder.preprocessor_.features_) if decode else job.target_encoder.latent_dim) + 2
    need = rows * cols * (5 if out.suffix == ".parquet" else 12)
    free = shutil.disk_usage(out.resolve().parent).free
    if need > free:
        raise CohereError(f"--out: {rows:,} rows x {cols:,} columns take about {need / 1024**3:.1f} GB, more than the "
                          f"{free / 1024**3:.1f} GB free in {out.resolve().parent}; use --aggregate (one row per "
                          "patient), fewer --draws, or another disk")


def stream(job, draws: int, seed: int, out: Path, diagnostics: Optional[Path], decode: bool, aggregate: bool) -> None:
    """Run the generation batch by batch (bounded memory) and append each batch's rows to
    ``out`` (or, with ``aggregate``, keep per-patient sums only); both outputs are written
    atomically and together: nothing is left if anything fails."""
    import contextlib

    import numpy as np

    from ..atomic import writing
    from ..cohort import stream_table, write_table_as
    from ..generation import Accumulator, aggregate_frame, decoded_draws, draws_frame

    samples = job.samples.to_numpy()
    enc = job.target_encoder
    acc = Accumulator(len(samples), enc.latent_dim, len(enc.preprocessor_.features_) if decode and aggregate else 0)
    batches = len(job.batches(draws))
    with contextlib.ExitStack() as stack:
        table = stack.enter_context(stream_table(out))
        diag_tmp = stack.enter_context(writing(diagnostics)) if diagnostics else None
        with progress(f"generating {job.target} ({job.method})", batches) as update:
            for i, (first, rows, gen) in enumerate(job.chunks(draws, seed), 1):
                x = gen.draws.cpu().numpy()
                shift, fstack = job.decoding(rows)
                acc.add(rows, gen, decoded_draws(enc, x, shift, fstack) if acc.feature_total is not None else None)
                if not aggregate:
                    table.write(draws_frame(job.target, enc, samples[rows], x, np.arange(first, first + x.shape[0]),
                                            decode, shift, fstack).set_index("sample"))
                update(i)
        diag = acc.diagnostics(job.samples, job.imputation)
        if aggregate:
            table.write(aggregate_frame(job.target, enc, job.samples, acc.feature_mean if decode else acc.mean,
                                        diag, decode).set_index("sample"))
        if diag_tmp is not None:
            write_table_as(diag, diag_tmp, diagnostics.suffix)
    typer.echo(f"accepted {diag['accepted'].mean():.1%} of the draws, mean attempts {diag['attempts'].mean():.2f}",
               err=True)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
