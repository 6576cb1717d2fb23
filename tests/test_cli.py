"""The CLI as a user meets it: commands, outputs, one-line errors with exit code 1."""

from __future__ import annotations

import subprocess
import sys

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
