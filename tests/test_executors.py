"""Training on an executor: serial, local worker processes and Ray give the same artifacts,
byte for byte; each artifact is written whole as its model finishes; failures keep the others;
re-runs train only what is missing; without Ray, --executor ray is refused in one line."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from clihelp import run

from cohere.diffusion.train import GRID, TrainConfig
from cohere.encoders import load_encoder
from cohere.executors import LocalExecutor, RayExecutor, SerialExecutor
from cohere.training import Job, longest_first, make_jobs, plan, train_jobs

TINY = ["--steps", "40", "--batch-size", "64", "--hidden", "32", "--layers", "1"]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray with 2 CPUs for this file (the executor joins it instead of starting its own)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture
def models(tiny, tmp_path):
    """A factory of fresh models folders holding the tiny encoders."""
    root, _ = tiny

    def make(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(root / "models" / "encoders", folder / "encoders")
        return folder
    return make


def files(models: Path) -> dict[str, bytes]:
    """Every file under experts/, by relative path."""
    return {str(p.relative_to(models)): p.read_bytes() for p in sorted((models / "experts").rglob("*")) if p.is_file()}


def train(capsys, cohort, folder, *args):
    return run(["experts", "train", *args, "--cohort", str(cohort), "--models", str(folder), *TINY], capsys)


IDS = ["rnaseq->cna", "multi->cna"]
_SERIAL: dict[str, dict[str, bytes]] = {}


def serial_files(tiny, models, capsys) -> dict[str, bytes]:
    """The files of IDS trained by the serial executor (trained once for this file's tests)."""
    if "files" not in _SERIAL:
        root, _ = tiny
        folder = models("serial")
        code, out, err = train(capsys, root / "cohort", folder, *IDS)
        assert code == 0, err
        _SERIAL["files"] = files(folder)
    return _SERIAL["files"]


def test_ray_tasks_give_the_serial_artifacts_byte_for_byte(tiny, models, ray_local, capsys):
    root, _ = tiny
    a, on_ray = serial_files(tiny, models, capsys), models("ray")
    code, out, err = train(capsys, root / "cohort", on_ray, *IDS, "--executor", "ray")
    assert code == 0, err
    assert "trained 2 model(s)" in out and "on ray" in out
    b = files(on_ray)
    assert sorted(a) == sorted(b) and len(a) == 6  # 2 artifacts x (weights, config, card)
    assert a == b


def test_a_search_on_ray_tune_keeps_the_serial_searchs_model(tiny, models, ray_local, capsys, monkeypatch):
    root, _ = tiny
    # a small grid (the configurations are drawn in this process): the paper's 1024-wide nets
    # take minutes even on the tiny cohort
    for name, values in {"hidden": (32, 48), "layers": (1, 2), "time_dim": (16,), "cond_emb_dim": (8,),
                         "batch_size": (64,)}.items():
        monkeypatch.setitem(GRID, name, values)
    serial, on_ray = models("serial"), models("ray")
    assert train(capsys, root / "cohort", serial, "cna->rppa", "--search", "2")[0] == 0
    code, out, err = train(capsys, root / "cohort", on_ray, "cna->rppa", "--search", "2", "--executor", "ray")
    assert code == 0, err
    assert files(serial) == files(on_ray)
    import json

    trials = json.loads((on_ray / "experts" / "cna_to_rppa" / "config.json").read_text())["training"]["search"]
    assert len(trials) == 2 and all("val_energy" in t for t in trials)


def tiny_jobs(tiny, ids):
    root, cohort = tiny
    encoders = {m: load_encoder(root / "models" / "encoders" / m) for m in ["cna", "rnaseq", "rppa"]}
    train_ids = cohort.ids_in("train", 0)
    latents = {m: e.encode_cohort(cohort, cohort.tables[m].index.intersection(train_ids)) for m, e in encoders.items()}
    config = TrainConfig(steps=40, batch_size=64, hidden=32, layers=1, time_dim=16, val_steps=5)
    pairs = plan(ids, False, list(encoders))
    return make_jobs(pairs, latents, encoders, config, cohort_name="tiny")


def broken(job: Job) -> Job:
    """The same job with three target rows fewer than source rows: its fit fails."""
    latents = dict(job.latents)
    latents[job.target] = latents[job.target].iloc[:-3]
    return Job(job.source, job.target, latents, job.encoders, job.config, job.search, job.training)


def test_a_failed_model_leaves_nothing_and_the_others_are_kept(tiny, tmp_path):
    good, bad = tiny_jobs(tiny, ["rnaseq->cna", "cna->rnaseq"])
    lines = []
    outcome = train_jobs([good, broken(bad)], tmp_path, SerialExecutor(), log=lines.append)
    assert list(outcome.saved) == ["rnaseq->cna"] and list(outcome.failed) == ["cna->rnaseq"]
    assert "expected latents of shape" in outcome.failed["cna->rnaseq"]
    assert sorted(p.name for p in (tmp_path / "experts").iterdir()) == ["rnaseq_to_cna"]  # no temporary folder
    assert any(line.startswith("cna->rnaseq: failed: ") for line in lines)
    with pytest.raises(Exception, match=r"1 model\(s\) failed \(cna->rnaseq: .*1 other model\(s\) are saved in .*; "
                                        r"re-run the same command to train only what is missing"):
        outcome.check(tmp_path)


class _Killed(Job):
    """A job whose worker dies outright (as a killed or out-of-memory process does)."""

    def fit(self, progress=None, run_trials=None):
        os._exit(9)


def test_failed_and_killed_ray_workers_leave_nothing_and_the_others_are_kept(tiny, tmp_path, ray_local):
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    good, other, third = tiny_jobs(tiny, ["rnaseq->cna", "cna->rnaseq", "cna->rppa"])
    killed = _Killed(other.source, other.target, other.latents, other.encoders, other.config)
    outcome = train_jobs([killed, good, broken(third)], tmp_path, RayExecutor(), log=lambda s: None)
    assert list(outcome.saved) == ["rnaseq->cna"] and sorted(outcome.failed) == ["cna->rnaseq", "cna->rppa"]
    assert "expected latents of shape" in outcome.failed["cna->rppa"]  # the training's own error, one line
    assert "Worker" in outcome.failed["cna->rnaseq"] or "died" in outcome.failed["cna->rnaseq"]
    assert sorted(p.name for p in (tmp_path / "experts").iterdir()) == ["rnaseq_to_cna"]


def test_local_workers_give_the_serial_artifacts_byte_for_byte(tiny, models, capsys, monkeypatch):
    root, _ = tiny
    monkeypatch.setitem(sys.modules, "ray", None)  # the local executor needs no Ray
    a, local = serial_files(tiny, models, capsys), models("local")
    code, out, err = train(capsys, root / "cohort", local, *IDS, "--executor", "local", "--workers", "2")
    assert code == 0, err
    assert "trained 2 model(s)" in out and "on local" in out
    assert files(local) == a and len(a) == 6


def test_python_m_cohere_spawns_local_workers_that_do_not_rerun_the_command(tiny, models, capsys):
    """The workers are spawned: each re-imports the main module, here ``cohere.__main__``."""
    import subprocess

    root, _ = tiny
    a, folder = serial_files(tiny, models, capsys), models("python-m")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_ = subprocess.run([sys.executable, "-m", "cohere", "experts", "train", IDS[0], "--cohort", str(root / "cohort"),
                           "--models", str(folder), *TINY, "--executor", "local", "--workers", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert run_.returncode == 0, run_.stderr
    assert run_.stdout.count("trained 1 model(s)") == 1 and "on local" in run_.stdout
    assert files(folder) == {k: v for k, v in a.items() if k.startswith("experts/rnaseq_to_cna/")}


def test_local_workers_start_the_longest_jobs_first(tiny):
    jobs = tiny_jobs(tiny, ["rnaseq->cna", "cna->rppa", "multi->rnaseq", "multi->cna"])
    rows = {j.id: len(j.latents[j.target]) for j in jobs}
    assert rows["multi->cna"] > rows["multi->rnaseq"] and rows["cna->rppa"] > rows["rnaseq->cna"]
    assert [jobs[i].id for i in longest_first(jobs)] == ["multi->cna", "multi->rnaseq", "cna->rppa", "rnaseq->cna"]
    searched = Job(jobs[0].source, jobs[0].target, jobs[0].latents, jobs[0].encoders, jobs[0].config, search=3)
    assert longest_first([*jobs, searched])[0] == 4  # a search trains several configurations: first


def test_failed_and_killed_local_workers_leave_nothing_and_the_others_are_kept(tiny, tmp_path):
    good, other, third = tiny_jobs(tiny, ["rnaseq->cna", "cna->rnaseq", "cna->rppa"])
    killed = _Killed(other.source, other.target, other.latents, other.encoders, other.config)
    lines = []
    outcome = train_jobs([killed, good, broken(third)], tmp_path, LocalExecutor(workers=2), log=lines.append)
    assert list(outcome.saved) == ["rnaseq->cna"] and sorted(outcome.failed) == ["cna->rnaseq", "cna->rppa"]
    assert "expected latents of shape" in outcome.failed["cna->rppa"]  # the training's own error, one line
    assert outcome.failed["cna->rnaseq"] == ("its worker process died (exit code 9: killed, or out of memory) before "
                                             "the model was saved; re-run the same command to train what is missing")
    assert sorted(p.name for p in (tmp_path / "experts").iterdir()) == ["rnaseq_to_cna"]
    assert any(line.startswith("rnaseq->cna: trained") for line in lines)
    with pytest.raises(Exception, match="--workers must be an int >= 1, got 0"):
        LocalExecutor(workers=0)


def test_a_rerun_trains_only_what_is_missing_or_differs(tiny, models, capsys, monkeypatch):
    root, _ = tiny
    monkeypatch.setitem(sys.modules, "ray", None)  # and the serial path never imports Ray
    folder = models("m")
    ids = ["rnaseq->cna", "cna->rnaseq"]
    assert train(capsys, root / "cohort", folder, *ids)[0] == 0
    first = files(folder)
    shutil.rmtree(folder / "experts" / "cna_to_rnaseq")
    code, out, err = train(capsys, root / "cohort", folder, *ids)
    assert code == 0, err
    assert "rnaseq->cna: up to date (same encoders, recipe and training data)" in out
    assert "cna->rnaseq: trained" in out and "trained 1 model(s)" in out and "1 up to date" in out
    assert files(folder) == first  # the retrained one is the same file
    code, out, _ = train(capsys, root / "cohort", folder, "rnaseq->cna", "--lr", "0.005")  # another recipe
    assert code == 0 and "rnaseq->cna: trained" in out
    code, out, _ = train(capsys, root / "cohort", folder, "cna->rnaseq", "--force")
    assert code == 0 and "cna->rnaseq: trained" in out


def test_without_ray_the_executor_is_refused_in_one_line(tiny, models, capsys, monkeypatch):
    root, _ = tiny
    folder = models("m")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code, out, err = train(capsys, root / "cohort", folder, "rnaseq->cna", "--executor", "ray")
    assert code != 0
    assert err.strip() == ("error: --executor ray needs Ray, which is not installed; install the extra: "
                           "pip install 'cohere[ray]'")
    assert not (folder / "experts").exists()


def test_executor_options_are_checked(tiny, models, capsys):
    root, _ = tiny
    folder = models("m")
    code, _, err = train(capsys, root / "cohort", folder, "rnaseq->cna", "--executor", "dask")
    assert code != 0 and "--executor 'dask': expected one of serial, local, ray" in err
    code, _, err = train(capsys, root / "cohort", folder, "rnaseq->cna", "--address", "auto")
    assert code != 0 and "--address is for --executor ray" in err
    code, _, err = train(capsys, root / "cohort", folder, "rnaseq->cna", "--address", "auto", "--executor", "local")
    assert code != 0 and "--address is for --executor ray" in err
    code, _, err = train(capsys, root / "cohort", folder, "rnaseq->cna", "--workers", "2")
    assert code != 0 and err.strip() == "error: --workers is for --executor local; add it or drop the option"
