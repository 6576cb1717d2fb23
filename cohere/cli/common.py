"""Options and helpers shared by the command modules.

Every command that writes files calls :func:`check_paths` first, before any work starts,
and writes several tables with :func:`write_tables` (all or none). Long steps show
:func:`progress`. Heavy modules (pandas, torch) are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import CohereError
from ..modalities import registry

if TYPE_CHECKING:
    import pandas as pd

    from ..cohort import Cohort


def parse_forms(values: list[str] | None) -> dict[str, str]:
    """``["cna=absolute", ...]`` -> ``{"cna": "absolute"}``."""
    forms = {}
    for v in values or []:
        if "=" not in v:
            raise CohereError(f"--input-form {v!r}: expected MODALITY=FORM, e.g. cna=absolute")
        m, f = v.split("=", 1)
        forms[m.strip()] = f.strip()
    return forms


def read_cohort(path: Path, modalities: list[str] | None = None, forms: dict | None = None) -> "Cohort":
    from ..cohort import Cohort

    cohort = Cohort.read(path, modalities=modalities)
    for name in cohort.ignored:       # a table file name, or "mod 'x'" of an .h5mu file
        modality = name[5:-1] if name.startswith("mod '") else Path(name).stem
        typer.echo(f"note: ignoring {name} (no installed plugin provides modality {modality!r})", err=True)
    for m, f in (forms or {}).items():
        if m not in cohort.tables:
            raise CohereError(f"--input-form names {m!r}, but the cohort has no {m!r} table")
        cohort.input_forms[m] = f
    return cohort


def resolve_form(cohort: "Cohort", modality: str) -> str:
    """The input form of a table: --input-form, else cohort.json, else the documented default."""
    mod = registry.get(modality)
    given = cohort.input_forms.get(modality)
    form = mod.resolve_form(given)
    source = "given" if given else "default; set another with --input-form or cohort.json"
    typer.echo(f"{modality}: input form {form!r} ({source})", err=True)
    return form


def note_imputation(record) -> None:
    """Print what encoding a table imputed (an ``Imputation``), if anything, on stderr."""
    note = record.note()
    if note:
        typer.echo(f"note: {note}", err=True)


def check_modalities(**flags: str | list[str] | None) -> None:
    """Every modality named by a flag (``target="cna"``, ``have=["rnaseq"]``) is registered;
    otherwise one line naming the flag and the known modalities."""
    for flag, names in flags.items():
        for name in [names] if isinstance(names, str) else names or []:
            try:
                registry.get(name)
            except CohereError as e:
                raise CohereError(f"--{flag.replace('_', '-')}: {e}") from None


def check_choice(flag: str, value: str | None, allowed) -> None:
    """``value`` (unless None: not given) is one of ``allowed``."""
    if value is not None and value not in allowed:
        raise CohereError(f"{flag} {value!r}: expected one of {', '.join(allowed)}")


def check_device(device: str) -> str:
    """``--device``: cpu, or cuda where a CUDA GPU is available."""
    check_choice("--device", device, ("cpu", "cuda"))
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CohereError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is "
                              "False); use --device cpu")
    return device


# ---------------------------------------------------------------- paths, before any work


def check_paths(*, cohort: Path | None = None, inputs: dict[str, Path | None] | None = None,
                tables: dict[str, Path | None] | None = None,
                folders: dict[str, Path | None] | None = None) -> None:
    """Refuse, before any work starts, a path that the command could not use.

    ``cohort`` must be an existing folder or .h5mu file, ``inputs`` ({flag: folder}) existing
    folders. ``tables`` ({flag: output table}) need a .parquet, .csv or .tsv name and must not
    be an existing folder, the same file as another output, or a file that cohere reads from
    ``cohort`` (its modality tables, clinical.csv, split.csv, cohort.json, or the .h5mu file:
    never overwrite the input). ``folders`` ({flag: output folder}) must not be a file or the
    cohort folder itself. Every output needs a writable folder above it. ``None`` values
    (options not given) are skipped.
    """
    ins = {"--cohort": cohort, **(inputs or {})}
    for flag, path in ins.items():
        h5mu = flag == "--cohort"  # the cohort may also be one MuData file
        if path is None or Path(path).is_dir() or (h5mu and Path(path).suffix == ".h5mu" and Path(path).is_file()):
            continue
        what = "exists but is not a folder" if Path(path).exists() else "does not exist"
        raise CohereError(f"{flag} {str(path)!r} {what}; expected a folder" + (" or an .h5mu file" if h5mu else ""))
    seen: dict[Path, str] = {}
    outs = {flag: (Path(p), "table") for flag, p in (tables or {}).items() if p is not None}
    outs |= {flag: (Path(p), "folder") for flag, p in (folders or {}).items() if p is not None}
    for flag, (path, kind) in outs.items():
        target = path.resolve()
        if target in seen:
            raise CohereError(f"{flag} and {seen[target]} name the same path {str(path)!r}; give "
                              "each output its own path")
        seen[target] = flag
        if kind == "table":
            _check_table_out(flag, path, cohort)
        elif path.exists() and not path.is_dir():
            raise CohereError(f"{flag} {str(path)!r} is a file; expected a folder (it is created if needed)")
        elif cohort is not None and target == Path(cohort).resolve():
            raise CohereError(f"{flag} {str(path)!r} is the cohort folder; write outputs to another "
                              "folder so that they do not mix with the cohort's tables")
        _check_writable(flag, path)


def _check_table_out(flag: str, path: Path, cohort: Path | None) -> None:
    from ..cohort import TABLE_SUFFIXES

    if path.is_dir():
        raise CohereError(f"{flag} {str(path)!r} is a folder; expected a file name such as "
                          f"{str(path / 'out.parquet')!r}")
    if path.suffix not in TABLE_SUFFIXES:
        raise CohereError(f"{flag} {str(path)!r}: expected a .parquet, .csv or .tsv file name "
                          f"(e.g. {str(path.with_suffix('.parquet'))!r})")
    own = _cohort_file(Path(cohort), path) if cohort is not None else None
    if own is not None:
        raise CohereError(f"{flag} {str(path)!r} is the cohort's own {own}; refusing to overwrite "
                          "an input: write the output outside the cohort folder")


def _cohort_file(cohort: Path, path: Path) -> str | None:
    """The name of the cohort file that ``path`` is (or, if written, would become): a table of
    a registered modality, clinical.csv, split.csv or cohort.json; else None."""
    from ..cohort import RESERVED, TABLE_SUFFIXES

    names = {*registry.names(), *RESERVED}

    def read(f: Path) -> bool:
        return f.name == "cohort.json" or (f.suffix in TABLE_SUFFIXES and f.stem in names)

    target = path.resolve()
    if cohort.is_file():  # an .h5mu cohort: only the file itself is an input
        same = target == cohort.resolve() or (target.exists() and os.path.samefile(cohort, target))
        return cohort.name if same else None
    if target.parent == cohort.resolve() and read(target):
        return target.name
    for f in cohort.iterdir():  # also an input reached through a link, or a hard link to one
        if read(f) and (f.resolve() == target or (target.exists() and os.path.samefile(f, target))):
            return f.name
    return None


def _check_writable(flag: str, path: Path) -> None:
    """The nearest existing folder above ``path`` must be a folder we may write in."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CohereError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CohereError(f"{flag} {str(path)!r}: cannot write in {str(parent)!r} (permission denied); "
                          "choose a writable location")


def write_tables(tables: dict[Path, "pd.DataFrame"]) -> None:
    """Write every output table or none: each is written beside its destination under a
    hidden name first, then all are moved into place."""
    from ..cohort import atomic_write_table

    staged: dict[Path, Path] = {}
    try:
        for path, frame in tables.items():
            path = Path(path)
            staged[path] = atomic_write_table(frame, path.with_name(f".{path.stem}.{os.getpid()}.staged{path.suffix}"))
        for path, tmp in staged.items():
            os.replace(tmp, path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- progress


@contextlib.contextmanager
def progress(label: str, total: int | None = None):
    """A progress bar on stderr for a step that takes more than a few seconds: done / total,
    elapsed time and ETA, or a spinner and the elapsed time when ``total`` is unknown.

    Yields ``update(done)``. Drawn only when stderr is a terminal, so logs, pipes and tests
    see only the commands' own lines; stdout is left alone (``--json`` stays clean).
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = Console(stderr=True)
    columns = ([TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn()] if total else
               [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()])
    with Progress(*columns, console=console, disable=not console.is_terminal, transient=False,
                  redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)
        if total:
            bar.update(task, completed=total)


# what a user can judge a model by (its held-out rows, the default sampler), beside ridge on the
# same rows; the single-draw val_r2 reads as failure although a draw is meant to scatter
QUALITY = {"r2_mean": "r2_mean", "ridge_r2": "ridge_r2", "energy": "energy",
           "ridge_resboot_energy": "resboot_energy", "coverage90": "cov90"}


def quality(held: dict | None) -> dict:
    """The quality columns from a model's ``metrics["held_out"]`` (empty strings where not
    recorded: a model trained before they were)."""
    held = dict(held or {})
    if "stacked_energy" in held:  # what generation gives: the draws with their mean stacked with ridge's
        held["r2_mean"], held["energy"] = held["stacked_r2_mean"], held["stacked_energy"]
        if "stacked_coverage90" in held:  # calibrated on the stacked draws
            held["coverage90"] = held["stacked_coverage90"]
    return {name: (f"{held[key]:.3f}" if isinstance(held.get(key), (int, float)) else "")
            for key, name in QUALITY.items()}


def quality_line(metrics: dict) -> str:
    """``held-out: r2_mean=0.31 (ridge 0.26) energy=2.99 (resboot 3.23) cov90=0.86``, or ''."""
    q = quality((metrics or {}).get("held_out"))
    if not q["r2_mean"]:
        return ""
    alpha = (metrics or {}).get("held_out", {}).get("stack_alpha")
    return (f"held-out: r2_mean={q['r2_mean']} (ridge {q['ridge_r2']})  energy={q['energy']} "
            f"(ridge+resboot {q['resboot_energy']})  cov90={q['cov90']}"
            + ("" if alpha is None else f"  stacking alpha={alpha}"))
