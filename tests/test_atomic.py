"""Atomic writes (cohere.atomic): normal permissions under any umask, nothing left behind
when a write fails or is interrupted (an exception, KeyboardInterrupt, SIGTERM of the CLI).

Covers generated tables (cohort.atomic_write_table) and artifact folders (save_artifact);
the store's own writes are in test_store.py.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from cohere import atomic
from cohere.artifacts import load_artifact, pack_artifact, save_artifact, write_artifact
from cohere.cohort import atomic_write_table

TABLE = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.Index(["s1", "s2"], name="sample"))
CONFIG = {"kind": "encoder", "id": "cna", "modality": "cna"}


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_tables_get_the_permissions_of_a_normal_write(tmp_path, umask, suffix):
    out = atomic_write_table(TABLE, tmp_path / "new" / f"gen{suffix}")
    assert mode(out) == 0o666 & ~umask and mode(out.parent) == 0o777 & ~umask
    atomic_write_table(TABLE, out)  # replacing keeps the normal mode too
    assert mode(out) == 0o666 & ~umask and leftovers(out.parent) == []


def test_artifact_folders_get_the_permissions_of_a_normal_write(tmp_path, umask):
    folder = tmp_path / "models" / "encoders" / "cna"
    save_artifact(folder, CONFIG, {"w": torch.ones(2)}, "card")
    save_artifact(folder, CONFIG, {"w": torch.zeros(2)}, "card")  # replacing an existing folder
    assert mode(folder) == 0o777 & ~umask
    assert {p.name: mode(p) for p in folder.iterdir()} == {n: 0o666 & ~umask for n in
                                                          ("config.json", "model.safetensors", "README.md")}
    assert leftovers(folder.parent) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError, ValueError])
def test_a_failed_table_write_leaves_the_old_table_and_no_temporary_file(tmp_path, monkeypatch, error):
    out = atomic_write_table(TABLE, tmp_path / "gen.csv")
    before = out.read_bytes()

    def half_written(self, path, *args, **kwargs):
        with open(path, "w") as f:
            f.write("sample,a\ns1,")
        raise error("interrupted")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_written)
    with pytest.raises(error):
        atomic_write_table(TABLE * 2, out)
    assert out.read_bytes() == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interrupted_artifact_save_keeps_the_old_folder(tmp_path, monkeypatch, error):
    folder = tmp_path / "cna"
    old = save_artifact(folder, CONFIG, {"w": torch.ones(2)}, "card")
    real, calls = os.replace, []

    def replace(src, dst):  # the 2nd rename (new folder into place) is interrupted
        calls.append((src, dst))
        if len(calls) == 2:
            raise error("interrupted")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(error):
        save_artifact(folder, CONFIG, {"w": torch.zeros(2)}, "card")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert len(calls) == 3  # old aside, new in (failed), old back
    assert load_artifact(folder).digest == old and leftovers(tmp_path) == []


@pytest.mark.parametrize("folder", [False, True])
def test_an_interrupt_just_after_the_temporary_exists_removes_it(tmp_path, monkeypatch, folder):
    """SIGTERM (Interrupted) or Ctrl-C can land between the creation of the temporary and the
    block that cleans it up: here, in the call right after it is created."""
    from cohere.errors import Interrupted

    name = "mkdir" if folder else "close"  # the call that creates the folder / closes the new file
    real = getattr(os, name)

    def then_interrupted(*args):
        real(*args)
        raise Interrupted(143)

    monkeypatch.setattr(atomic.os, name, then_interrupted)
    with pytest.raises(Interrupted):
        with atomic.writing(tmp_path / "out.csv", folder=folder):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_before_the_rename_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_artifact(tmp_path / "cna", CONFIG, {"w": torch.ones(2)}, card=None)  # the card is not text
    assert list(tmp_path.iterdir()) == []
    _, files = pack_artifact(CONFIG, {"w": torch.ones(2)}, "card")
    with pytest.raises(TypeError):  # the weights are written into the temporary folder, then the card fails
        write_artifact(tmp_path / "cna", {**files, "README.md": None})
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_cli_write_removes_the_temporary_file(tmp_path):
    """The real console entry point, killed by SIGTERM (as `timeout` does) while it writes."""
    from cohere.encoders import make_encoder
    from cohere.plugins import get_modality

    rng = np.random.default_rng(0)
    columns = [f"g{j}" for j in range(40)]
    small = pd.DataFrame(rng.uniform(-1, 1, (100, 40)), index=[f"t{i}" for i in range(100)], columns=columns)
    make_encoder(get_modality("cna"), None, "pca").fit(small).save(tmp_path / "models" / "encoders" / "cna")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    n = 300_000
    big = pd.DataFrame(rng.uniform(-1, 1, (n, 40)).astype(np.float32), columns=columns,
                       index=pd.Index([f"p{i}" for i in range(n)], name="sample"))
    big.to_parquet(cohort / "cna.parquet")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "COHERE_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cohere", "encode", "--models", str(tmp_path / "models"),
                             "--cohort", str(cohort), "--out", str(out / "latents.csv")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None and leftovers(out), "the write finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert list(out.iterdir()) == []
