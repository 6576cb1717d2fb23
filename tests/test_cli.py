"""The CLI as a user meets it: commands, outputs, one-line errors with exit code 1."""

from __future__ import annotations

import os
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


USAGE_ERRORS = [  # (arguments, the usage line's start, click's error line)
    (["generate", "--target", "cna"], "Usage: cohere generate [OPTIONS]", "Error: Missing option '--cohort'."),
    (["plugins", "--bogus"], "Usage: cohere plugins [OPTIONS]", "Error: No such option: --bogus"),
    (["generate", "--target", "cna", "--cohort", ".", "--out", "o.csv", "--draws", "abc"],
     "Usage: cohere generate [OPTIONS]", "Error: Invalid value for '--draws'"),
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
    assert lines[0].startswith(usage) and error in lines[-1] and len(lines) <= 5, proc.stderr


def test_no_arguments_prints_the_help(tmp_path):
    proc = subprocess.run([console_script()], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cohere encoders train --all --cohort" in proc.stdout + proc.stderr


def test_usage_errors_in_process_exit_2(capsys):
    code, out, err = run(["generate", "--target", "cna"], capsys)
    assert code == 2 and "Error: Missing option '--cohort'." in err
