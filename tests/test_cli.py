"""The CLI as a user meets it: commands, outputs, one-line errors with exit code 1."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cohere.encoders import load_encoder
from clihelp import run


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory, sim):
    cohort, _ = sim
    small = type(cohort)({m: t for m, t in cohort.tables.items() if m != "wsi"}, cohort.clinical,
                         cohort.split, {m: f for m, f in cohort.input_forms.items() if m != "wsi"})
    return small.write(tmp_path_factory.mktemp("sim") / "cohort")


def test_help_has_a_worked_example(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "cohere encoders train --all --cohort" in out


def test_train_then_encode(tmp_path, sim_dir, capsys):
    models = tmp_path / "models"
    code, out, err = run(["encoders", "train", "--all", "--cohort", str(sim_dir), "--models", str(models),
                          "--max-epochs", "3"], capsys)
    assert code in (0, None), err
    assert "rnaseq: input form 'log2_count' (given)" in err
    for m in ("cna", "rnaseq", "rppa"):
        enc = load_encoder(models / "encoders" / m)
        assert "val_r2" in enc.config["metrics"]
    code, out, err = run(["encode", "--models", str(models), "--cohort", str(sim_dir),
                          "--out", str(tmp_path / "z.parquet")], capsys)
    assert code in (0, None), err
    z = pd.read_parquet(tmp_path / "z.parquet")
    assert z.shape[1] == 3 * 32 and "rppa.z00" in z.columns
    present = pd.read_parquet(sim_dir / "rppa.parquet").index
    assert z.loc[present, "rppa.z00"].notna().all()
    assert z.loc[z.index.difference(present), "rppa.z00"].isna().all()


def test_encoders_train_latent_dim_sets_the_width(tmp_path, sim_dir, capsys):
    models = tmp_path / "models"
    code, _, err = run(["encoders", "train", "--modality", "rppa", "--cohort", str(sim_dir), "--models", str(models),
                        "--max-epochs", "2", "--latent-dim", "12"], capsys)
    assert code in (0, None), err
    enc = load_encoder(models / "encoders" / "rppa")
    assert enc.latent_dim == 12 and enc.config["latent_dim"] == 12
    code, _, err = run(["encode", "--models", str(models), "--cohort", str(sim_dir),
                        "--out", str(tmp_path / "z.parquet")], capsys)
    assert code in (0, None), err
    assert list(pd.read_parquet(tmp_path / "z.parquet").columns) == [f"rppa.z{i:02d}" for i in range(12)]
    n = pd.read_parquet(sim_dir / "rppa.parquet").shape[1]
    code, _, err = run(["encoders", "train", "--modality", "rppa", "--cohort", str(sim_dir),
                        "--models", str(tmp_path / "wide"), "--max-epochs", "2", "--latent-dim", str(n + 1)], capsys)
    assert code == 1 and re.search(rf"rppa: \d+ features after preprocessing, fewer than the {n + 1}-d latent", err)
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.splitlines()[-1]]
    assert not (tmp_path / "wide" / "encoders").exists()


def test_user_errors_are_one_line(tmp_path, sim_dir, capsys):
    code, out, err = run(["encode", "--models", str(tmp_path), "--cohort", str(sim_dir),
                          "--out", str(tmp_path / "z.csv")], capsys)
    assert code == 1 and err.startswith("error: no encoders in") and err.count("\n") == 1
    assert not (tmp_path / "z.csv").exists()
    code, _, err = run(["encoders", "train", "--cohort", str(sim_dir), "--models", str(tmp_path)], capsys)
    assert code == 1 and "give either --modality M (repeatable) or --all" in err
    code, _, err = run(["encoders", "train", "--modality", "rppa", "--cohort", str(sim_dir),
                        "--models", str(tmp_path), "--input-form", "rppa"], capsys)
    assert code == 1 and "expected MODALITY=FORM" in err
    code, _, err = run(["encoders", "train", "--modality", "cna", "--cohort", str(sim_dir),
                        "--models", str(tmp_path), "--input-form", "cna=log2_ratio"], capsys)
    assert code == 1 and "implausible for log2 ratios" in err
    assert not (tmp_path / "encoders").exists()


def test_console_script_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cohere", "encode", "--models", str(tmp_path),
                           "--cohort", str(tmp_path / "missing"), "--out", str(tmp_path / "o.csv")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- usage errors: click's message, exit 2


def console_script() -> str:
    """The installed ``cohere`` console script of this environment (not ``python -m``)."""
    here = Path(sys.executable).with_name("cohere")
    found = str(here) if here.is_file() else shutil.which("cohere")
    if not found:
        pytest.fail("the 'cohere' console script is not installed; pip install -e . first")
    return found


USAGE_ERRORS = [  # (arguments, the usage line's start, click's error line: a regex, as click's wording varies)
    (["generate", "--target", "cna"], "Usage: cohere generate [OPTIONS]", "Error: Missing option '--cohort'."),
    (["plugins", "--bogus"], "Usage: cohere plugins [OPTIONS]", "Error: No such option:? '?--bogus"),
    (["generate", "--target", "cna", "--cohort", ".", "--out", "o.csv", "--draws", "abc"],
     "Usage: cohere generate [OPTIONS]", "Error: Invalid value for '--draws'"),
    (["generate", "--target", "cna", "--cohort", ".", "--out", "o.csv", "--draws", "0"],
     "Usage: cohere generate [OPTIONS]", "Error: Invalid value for '--draws'"),  # the wording varies by typer
    (["nosuch"], "Usage: cohere [OPTIONS] COMMAND [ARGS]...", "Error: No such command 'nosuch'."),
    (["experts", "nosuch"], "Usage: cohere experts [OPTIONS] COMMAND [ARGS]...", "Error: No such command 'nosuch'."),
    (["experts", "info"], "Usage: cohere experts info [OPTIONS]", "Error: Missing argument 'ID'."),
]


@pytest.mark.parametrize("args,usage,error", USAGE_ERRORS, ids=[" ".join(a) for a, _, _ in USAGE_ERRORS])
def test_usage_errors_of_the_installed_console_script_are_short(tmp_path, args, usage, error):
    proc = subprocess.run([console_script(), *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "COHERE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(usage) and re.search(error, lines[-1]) and len(lines) <= 5, proc.stderr


def test_no_arguments_prints_the_help(tmp_path):
    proc = subprocess.run([console_script()], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cohere encoders train --all --cohort" in proc.stdout + proc.stderr


def test_usage_errors_in_process_exit_2(capsys):
    code, out, err = run(["generate", "--target", "cna"], capsys)
    assert code == 2 and "Error: Missing option '--cohort'." in err


# ---------------------------------------------------------------- start-up: no heavy imports


def test_building_the_app_imports_neither_torch_nor_sklearn():
    code = ("import sys, cohere.cli; cohere.cli.make_app(); "
            "print(' '.join(m for m in ('torch', 'sklearn', 'scipy', 'pandas', 'rich') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "COHERE_LOAD_PLUGINS"}  # every installed plugin
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def test_the_defaults_shown_in_help_are_the_librarys():
    import dataclasses

    from cohere import generation
    from cohere.cli import experts, generate
    from cohere.diffusion.train import TrainConfig

    assert generate.SHOWN_DEFAULTS == {"sampler": generation.DEFAULT_SAMPLER, "steps": generation.DEFAULT_STEPS,
                                       "eta": generation.DEFAULT_ETA, "weighting": generation.DEFAULT_WEIGHTING,
                                       "consensus": generation.DEFAULT_CONSENSUS,
                                       "variance": generation.DEFAULT_VARIANCE}
    recipe = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert experts.SHOWN_RECIPE == {k: recipe[k] for k in experts.SHOWN_RECIPE}
    # checkpoints are scored with the sampler that generation runs them with
    assert (recipe["val_method"], recipe["val_steps"], recipe["val_eta"], recipe["val_variance"]) == (
        generation.DEFAULT_SAMPLER, generation.DEFAULT_STEPS, generation.DEFAULT_ETA, generation.DEFAULT_VARIANCE)


# ---------------------------------------------------------------- every option checked before any work


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command starts work (reads a cohort, simulates one) before refusing."""
    from cohere import simulate
    from cohere.cohort import Cohort

    def started(*args, **kwargs):
        pytest.fail("the command started work before it checked its options")

    monkeypatch.setattr(Cohort, "read", classmethod(started))
    monkeypatch.setattr(simulate, "simulate_cohort", started)


def _refusals(tmp, cohort):
    """(arguments, message) of refused invocations; {tmp} and {cohort} are filled in."""
    gen = ["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", cohort]
    return [
        (gen + ["--out", f"{tmp}/g.txt"], r"^--out '.*g\.txt': expected a \.parquet, \.csv or \.tsv file name"),
        (gen + ["--out", f"{tmp}/g.csv", "--diagnostics", f"{tmp}/d.txt"], r"^--diagnostics '.*d\.txt': expected a"),
        (gen + ["--out", f"{tmp}/a_folder"], r"^--out '.*a_folder' is a folder; expected a file name"),
        (gen + ["--out", f"{tmp}/a_file/g.csv"], r"^--out '.*g\.csv': '.*a_file' is a file, not a folder"),
        (gen + ["--out", f"{tmp}/g.csv", "--diagnostics", f"{tmp}/./g.csv"], r"^--diagnostics and --out name the same"),
        (gen + ["--out", f"{tmp}/g.csv", "--models", f"{tmp}/none"], r"^--models '.*none' does not exist"),
        (["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", f"{tmp}/none", "--out", f"{tmp}/g.csv"],
         r"^--cohort '.*none' does not exist"),
        (gen + ["--out", f"{tmp}/g.csv", "--sampler", "fast"], r"^--sampler 'fast': expected one of ddpm, ddim"),
        (gen + ["--out", f"{tmp}/g.csv", "--method", "mean"], r"^--method 'mean': expected one of coherent, multi"),
        (gen + ["--out", f"{tmp}/g.csv", "--weights", "[1]"], r"^--weights '\[1\]': expected a JSON object"),
        (gen + ["--out", f"{tmp}/g.csv", "--device", "tpu"], r"^--device 'tpu': expected one of cpu, cuda"),
        (["generate", "--target", "foo", "--cohort", cohort, "--out", f"{tmp}/g.csv"],
         r"^--target: unknown modality 'foo'; known modalities: cna, rnaseq, rppa, wsi"),
        (["generate", "--target", "rppa", "--have", "rnaseq,bar", "--cohort", cohort, "--out", f"{tmp}/g.csv"],
         r"^--have: unknown modality 'bar'; known modalities: cna, rnaseq, rppa, wsi"),
        # the cohort's own files (item: --out must never overwrite an input)
        (gen + ["--out", f"{cohort}/rppa.parquet"], r"is the cohort's own rppa\.parquet; refusing to overwrite"),
        (gen + ["--out", f"{cohort}/../cohort/rnaseq.parquet"], r"is the cohort's own rnaseq\.parquet"),
        (gen + ["--out", f"{tmp}/link.parquet"], r"is the cohort's own cna\.parquet"),
        (gen + ["--out", f"{cohort}/wsi.csv"], r"is the cohort's own wsi\.csv"),  # would become its wsi table
        (gen + ["--out", f"{cohort}/clinical.csv"], r"is the cohort's own clinical\.csv"),
        (gen + ["--out", f"{tmp}/g.csv", "--diagnostics", f"{cohort}/split.csv"], r"^--diagnostics .* own split\.csv"),
        (["encode", "--models", tmp, "--cohort", cohort, "--out", f"{cohort}/rppa.parquet"], r"own rppa\.parquet"),
        (["encode", "--models", tmp, "--cohort", cohort, "--out", f"{tmp}/z.json"], r"^--out .*expected a \.parquet"),
        (["prioritize", "--modality", "rnaseq", "--cohort", cohort, "--models", tmp, "--out", f"{cohort}/cna.tsv"],
         r"^--out .* own cna\.tsv"),
        (["prioritize", "--modality", "rnaseq", "--cohort", cohort, "--models", tmp, "--task", "os"],
         r"^--task 'os': expected one of stage, survival"),
        (["evaluate", "reconstruction", "--cohort", cohort, "--models", tmp, "--out", f"{tmp}/a_file"],
         r"^--out '.*a_file' is a file; expected a folder"),
        (["evaluate", "privacy", "--cohort", cohort, "--models", tmp, "--out", cohort],
         r"^--out '.*cohort' is the cohort folder"),
        (["evaluate", "signal", "--cohort", cohort, "--models", tmp, "--out", f"{tmp}/r", "--test-cohort", f"{tmp}/x"],
         r"^--test-cohort '.*x' does not exist"),
        (["encoders", "train", "--all", "--cohort", cohort, "--models", f"{tmp}/a_file"], r"^--models .* is a file"),
        (["encoders", "train", "--all", "--cohort", cohort, "--models", tmp, "--kind", "vae"],
         r"^--kind 'vae': expected one of autoencoder, pca"),
        (["experts", "train", "--all", "--cohort", cohort, "--models", cohort], r"^--models .* is the cohort folder"),
        (["demo", "--out", f"{tmp}/a_file"], r"^--out '.*a_file' is a file; expected a folder"),
    ]


@pytest.mark.parametrize("case", range(len(_refusals("T", "C"))))
def test_bad_options_are_refused_before_any_work_and_nothing_is_written(tmp_path, sim_dir, capsys, no_work, case):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "link.parquet").symlink_to(sim_dir / "cna.parquet")
    before = {p: p.stat().st_mtime_ns for p in [*tmp_path.rglob("*"), *sim_dir.rglob("*")]}
    args, message = _refusals(str(tmp_path), str(sim_dir))[case]
    code, out, err = run(args, capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err[len("error: "):]), err
    assert {p: p.stat().st_mtime_ns for p in [*tmp_path.rglob("*"), *sim_dir.rglob("*")]} == before


def test_several_outputs_are_written_all_or_none(tmp_path, monkeypatch):
    from cohere import cohort
    from cohere.cli.common import write_tables

    frame = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.Index(["s1", "s2"], name="sample"))
    (tmp_path / "old.csv").write_text("kept\n")
    real = cohort.atomic_write_table
    calls = []

    def second_fails(df, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(df, path)

    monkeypatch.setattr(cohort, "atomic_write_table", second_fails)
    with pytest.raises(OSError, match="No space left"):
        write_tables({tmp_path / "new.parquet": frame, tmp_path / "old.csv": frame})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]  # no new file, no staged leftovers
    assert (tmp_path / "old.csv").read_text() == "kept\n"
    monkeypatch.setattr(cohort, "atomic_write_table", real)
    write_tables({tmp_path / "new.parquet": frame, tmp_path / "old.csv": frame})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.parquet", "old.csv"]
    assert pd.read_csv(tmp_path / "old.csv", index_col=0).equals(frame)


def test_encoders_train_writes_no_encoder_if_a_later_one_fails(tmp_path, sim_dir, capsys):
    code, _, err = run(["encoders", "train", "--all", "--cohort", str(sim_dir), "--models", str(tmp_path / "m"),
                        "--max-epochs", "2", "--input-form", "rnaseq=zscore"], capsys)
    assert code == 1 and "implausible for z-scores" in err
    assert "cna: input form" in err  # cna came first and was fitted; nothing of it was saved
    assert not (tmp_path / "m").exists()


def test_an_empty_store_list_says_how_to_list_a_models_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COHERE_HOME", str(tmp_path / "home"))
    for group in ("experts", "encoders"):
        code, out, _ = run([group, "list"], capsys)
        assert code == 0 and f"'cohere {group} list --models DIR'" in out and "cohere-demo/models" in out


def test_progress_leaves_stdout_alone(capsys):
    from cohere.cli.common import progress

    for total in (3, None):
        with progress("counting", total) as update:
            for i in range(3):
                update(i + 1)
    assert capsys.readouterr().out == ""


def test_demo_runs_end_to_end_and_writes_what_it_says(tmp_path, capsys, monkeypatch):
    """The whole ``cohere demo`` on a small simulated cohort with a tiny recipe: every stage runs
    (encoders, 16 models with their calibration, stacking and feature stacking, generation of
    every missing modality, decoding, scoring), so that a defect in any of them fails here and
    not first in a user's hands (the suite's other tests call these stages one by one)."""
    import cohere.cli.demo as demo_cli

    monkeypatch.setattr(demo_cli, "DEMO_RECIPE", {**demo_cli.DEMO_RECIPE, "steps": 40, "eval_every": 20,
                                                  "hidden": 32, "layers": 1, "val_steps": 4})
    monkeypatch.setattr(demo_cli, "DEMO_ENCODER_EPOCHS", 2)
    out = tmp_path / "demo"
    code, text, err = run(["demo", "--out", str(out), "--patients", "300", "--draws", "2"], capsys)
    assert code in (0, None), err
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.split() and line.split()[0] in ("cna", "rnaseq", "rppa", "wsi") and len(line.split()) == 6}
    assert set(rows) == {"cna", "rnaseq", "rppa", "wsi"}, text
    for m, (_, patients, *scores) in rows.items():
        generated = pd.read_parquet(out / "generated" / f"{m}.parquet")
        assert len(generated) == int(patients) > 0
        assert generated.notna().all().all()
        assert all(s.replace(".", "", 1).lstrip("-").isdigit() for s in scores), rows[m]
        present = pd.read_parquet(out / "cohort" / f"{m}.parquet").index
        assert not generated.index.isin(present).any()  # only the patients missing it
    assert len(list((out / "models" / "experts").iterdir())) == 16
    assert f"cohere experts list --models {out / 'models'}" in text
