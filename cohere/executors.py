"""Where the jobs of :mod:`cohere.training` run.

- :class:`SerialExecutor` (the default): here, one model after another; nothing imports Ray.
- :class:`LocalExecutor`: in worker processes on this machine, one model each at a time,
  longest first (:func:`~cohere.training.longest_first`): the cores of a laptop without Ray.
- :class:`RayExecutor`: on Ray (the optional extra ``pip install 'cohere[ray]'``). Without an
  address it starts a local Ray on this machine's cores and stops it afterwards; with one it
  joins that cluster. Models train as Ray tasks of ``cpus_per_model`` CPUs each; a model with
  a random search (``search`` > 1) runs its configurations as Ray Tune trials instead (models
  one after another, their trials side by side), each trial stopping early on the project's
  own checkpoint-selection score (``train_denoiser``'s patience rule).

All give the same artifacts, byte for byte: a job's weights depend on the job only (see
:mod:`cohere.training`), a search keeps the first best configuration in the grid's order
whatever order the trials finish in, and the worker's cohere, torch and numpy versions must
equal this process's. An executor's ``run(jobs, report)`` yields ``(index, Trained)`` or
``(index, reason)`` as each job ends, and calls ``report(index, fraction)`` while it trains.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import CohereError
from .training import Job, Trained, longest_first, run_job

RAY_EXTRA = "pip install 'cohere[ray]'"


class _Fraction:
    """``progress(step, total, info)`` of train_denoiser -> the fraction of a job done, counting
    the trials of a search (a trial's steps start again from the beginning)."""

    def __init__(self, job: Job, report: Callable[[float], None]):
        self.trials, self.trial, self.last, self.report = max(1, job.search), 0, 0, report

    def __call__(self, step: int, total: int, info: dict) -> None:
        if step < self.last:
            self.trial += 1
        self.last = step
        self.report((self.trial + step / max(total, 1)) / self.trials)


class SerialExecutor:
    """Train in this process, one job after another (a CohereError fails that job only)."""

    name = "serial"

    def run(self, jobs: Sequence[Job], report: Callable[[int, float], None]) -> Iterator[tuple[int, Trained | str]]:
        for i, job in enumerate(jobs):
            try:
                result = run_job(job, _Fraction(job, lambda f, i=i: report(i, f)))
            except CohereError as e:
                yield i, str(e)
                continue
            yield i, result


class LocalExecutor:
    """Train in worker processes on this machine, ``workers`` of them (default: its cores
    divided by the recipe's threads per model), each training one model after another. The
    processes are spawned, not forked, so a worker holds nothing of this process but the jobs
    it is sent; each job sets torch's threads to its recipe, as the serial executor does, and
    gives the same bytes. Jobs start longest first (:func:`~cohere.training.longest_first`) so
    that the last model to finish is a short one. A model with a random search trains its
    configurations one after another in its worker. Progress comes back at every evaluation. A
    worker that dies (killed, out of memory) fails the model it was training, in one line, and
    a new worker takes the models still waiting."""

    name = "local"

    def __init__(self, workers: int | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise CohereError(f"--workers must be an int >= 1, got {workers!r}")
        self.workers = workers

    def run(self, jobs: Sequence[Job], report: Callable[[int, float], None]) -> Iterator[tuple[int, Trained | str]]:
        import itertools
        import multiprocessing
        import os
        import queue as queues

        threads = max([1] + [j.config.threads for j in jobs])
        n = min(len(jobs), self.workers or max(1, (os.cpu_count() or 1) // threads))
        ctx = multiprocessing.get_context("spawn")
        messages = ctx.Queue()  # (worker, job index, "progress", fraction) or (..., "done", Trained | reason)
        todo, workers, busy, ids = longest_first(jobs), {}, {}, itertools.count()

        def start() -> None:
            wid, tasks = next(ids), ctx.Queue()
            proc = ctx.Process(target=_local_worker, args=(wid, tasks, messages), daemon=True,
                               name=f"cohere-worker-{wid}")
            proc.start()
            workers[wid] = (proc, tasks)

        def read(timeout: float) -> list[tuple[int, Trained | str]]:
            """What the workers sent, until ``timeout`` s pass without a message or a job ends."""
            ended = []
            with contextlib.suppress(queues.Empty):
                while not ended:
                    wid, i, kind, value = messages.get(timeout=timeout)
                    if kind == "progress":
                        report(i, value)
                    elif busy.get(wid) == i:
                        del busy[wid]
                        ended.append((i, value))
            return ended

        try:
            for _ in range(n):
                start()
            while todo or busy:
                for wid, (_, tasks) in workers.items():
                    if wid not in busy and todo:
                        busy[wid] = todo.pop(0)
                        tasks.put((busy[wid], jobs[busy[wid]]))
                yield from read(0.5)
                for wid, (proc, tasks) in list(workers.items()):
                    if proc.is_alive():
                        continue
                    yield from read(0.2)  # what it sent before it exited is in the pipe
                    del workers[wid]
                    if wid in busy:
                        yield busy.pop(wid), (f"its worker process died (exit code {proc.exitcode}: killed, or out of "
                                              "memory) before the model was saved; re-run the same command to train "
                                              "what is missing")
                    if todo:
                        start()
        finally:
            for proc, tasks in workers.values():
                tasks.put(None)  # a worker between jobs stops; one still training is stopped
            for wid, (proc, tasks) in workers.items():
                if wid in busy:
                    proc.terminate()
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
            messages.close()


def _local_worker(wid: int, tasks, messages) -> None:
    """A LocalExecutor worker: trains the jobs it is sent until it gets None. It sends each
    job's Trained, or the training's own error (one line). It exits if the process that
    started it is gone (killed outright), between jobs and at every evaluation of a job."""
    import os
    import queue as queues

    parent = os.getppid()

    def progress(i: int, fraction: float) -> None:
        if os.getppid() != parent:
            os._exit(1)
        messages.put((wid, i, "progress", fraction))

    while True:
        try:
            item = tasks.get(timeout=5.0)
        except queues.Empty:
            if os.getppid() != parent:
                os._exit(1)
            continue
        if item is None:
            break
        i, job = item
        try:
            result = run_job(job, _Fraction(job, lambda f: progress(i, f)))
        except CohereError as e:
            result = str(e)
        except Exception as e:  # noqa: BLE001 (a bug in training fails this model only)
            result = _first_line(e)
        messages.put((wid, i, "done", result))
    messages.close()
    messages.join_thread()  # every result is in the pipe before the process exits


def require_ray():
    """The ray module, or a one-line refusal naming the extra."""
    try:
        import ray
        from ray import tune  # noqa: F401 (the search needs Ray Tune)
    except ImportError:
        raise CohereError(f"--executor ray needs Ray, which is not installed; install the extra: {RAY_EXTRA}") from None
    return ray


class RayExecutor:
    """Train on Ray: a local Ray on this machine's cores (``address`` None, ``num_cpus`` of them,
    default all), or the cluster at ``address`` ("auto" or "ray://host:10001"). ``storage``:
    where Ray Tune keeps a search's trial checkpoints (a temporary folder by default; a path
    every node reaches, e.g. a shared file system, on a cluster of several machines)."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_model: int = 1, num_cpus: int | None = None,
                 storage: str | None = None, gpus_per_model: float = 0):
        if isinstance(cpus_per_model, bool) or not isinstance(cpus_per_model, int) or cpus_per_model < 1:
            raise CohereError(f"--cpus-per-model must be an int >= 1, got {cpus_per_model!r}")
        self.ray = require_ray()
        self.address, self.cpus, self.num_cpus, self.storage = address, cpus_per_model, num_cpus, storage
        self.gpus = gpus_per_model  # --device cuda: each model (or trial) holds a GPU

    def _start(self) -> bool:
        """Connect (or start a local Ray); True if this call started it and must stop it."""
        import logging

        ray = self.ray
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CohereError(f"could not start or reach {where}: {first}; check --address (e.g. 'auto' on a "
                              "node of the cluster, or ray://HEAD:10001)") from None
        return True

    def run(self, jobs: Sequence[Job], report: Callable[[int, float], None]) -> Iterator[tuple[int, Trained | str]]:
        ray = self.ray
        started = self._start()
        try:
            plain = [i for i, j in enumerate(jobs) if j.search <= 1]
            # max_retries: a worker lost (killed, out of memory, its node gone) is retried once;
            # an error raised by the training itself is not (it would fail again)
            task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=1)(run_job)
            pending = {task.remote(jobs[plain[k]]): plain[k] for k in longest_first([jobs[i] for i in plain])}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready[0])
                try:
                    yield i, ray.get(ready[0])
                except ray.exceptions.RayError as e:
                    yield i, _reason(e)
            for i, job in enumerate(jobs):
                if job.search > 1:
                    trials = TuneTrials(self.cpus, self.storage, lambda f, i=i: report(i, f), self.gpus)
                    try:
                        yield i, run_job(job, None, run_trials=trials)
                    except CohereError as e:
                        yield i, str(e)
        finally:
            if started:
                ray.shutdown()


def _first_line(error: BaseException, empty: str = "") -> str:
    """An exception as one line: its type and the first line of its message (``empty`` if none)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else empty}".rstrip(": ")


def _reason(error) -> str:
    """One line for a failed Ray task: the training's own error, or what happened to the worker."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, CohereError):
        return str(cause)
    if cause is not None:
        return _first_line(cause)
    return _first_line(error, "the worker was lost")


# ----------------------------------------------------------------------------- Ray Tune search


class TuneTrials:
    """A ``run_trials`` for :func:`~cohere.diffusion.train.random_search`: the configurations as
    Ray Tune trials of ``cpus`` CPUs each. Each trial reports its validation score at every
    evaluation and stops early by the recipe's patience on the same score; its selected
    checkpoint comes back as safetensors + JSON through Tune's checkpoint storage."""

    def __init__(self, cpus: int = 1, storage: str | None = None, report: Callable[[float], None] | None = None,
                 gpus: float = 0):
        self.cpus, self.storage, self.report, self.gpus = cpus, storage, report, gpus

    def __call__(self, configs, train: tuple, val: tuple, options: dict) -> list:
        import os

        # Tune's newer console output prints tables even at verbose=0; the classic one is silent there
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        from ray import tune

        options = dict(options)
        options.pop("progress", None)  # this process's; the trials report to Tune instead
        data = {"train": train, "val": val, "options": options, "configs": [c.to_dict() for c in configs]}
        trainable = tune.with_resources(tune.with_parameters(_trial, data=data), {"cpu": self.cpus, "gpu": self.gpus})
        key = id(self)
        if self.report is not None:
            _REPORTERS[key] = self.report
        with tempfile.TemporaryDirectory(prefix="cohere-tune-") as tmp:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(list(range(len(configs))))},
                tune_config=tune.TuneConfig(metric="criterion", mode="min", reuse_actors=False),
                run_config=tune.RunConfig(name="search", storage_path=self.storage or tmp, verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=0),
                                          callbacks=[_tune_progress(len(configs), configs[0].steps, key)]),
            )
            grid = tuner.fit()
            results = [None] * len(configs)
            for r in grid:
                i = r.config["trial"]
                if r.error is not None or r.checkpoint is None:
                    raise CohereError(f"search trial {i + 1} of {len(configs)} failed: {_reason(r.error)}")
                with r.checkpoint.as_directory() as folder:
                    results[i] = _read_trial(Path(folder), configs[i], train)
        _REPORTERS.pop(key, None)
        return results


def _trial(params: dict, data: dict) -> None:
    """One Tune trial: train one configuration, report every evaluation, then the selected checkpoint."""
    from ray import tune
    from safetensors.torch import save_file

    from .diffusion.train import TrainConfig, criterion_key, train_denoiser

    cfg = TrainConfig.from_dict(data["configs"][params["trial"]])

    def progress(step, total, info):
        tune.report({"criterion": float(info[criterion_key(cfg, info)]), "step": step})

    res = train_denoiser(*data["train"], config=cfg, val=data["val"], progress=progress, **data["options"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_file({**res.model.state_dict(), "x0_bounds.low": res.x0_bounds[0], "x0_bounds.high": res.x0_bounds[1]},
                  folder / "model.safetensors")
        (folder / "result.json").write_text(json.dumps({
            "best_step": res.best_step, "steps_run": res.steps_run, "seconds": res.seconds, "n_train": res.n_train,
            "n_val": res.n_val, "history": res.history, "metrics": res.metrics}))
        tune.report({"criterion": float(res.criterion), "step": res.steps_run, "done": True},
                    checkpoint=tune.Checkpoint.from_directory(folder))


def _read_trial(folder: Path, cfg, train: tuple):
    """A trial's checkpoint (safetensors + JSON, never pickle) as a TrainResult."""
    import torch
    from safetensors.torch import load_file

    from .diffusion.denoiser import Denoiser
    from .diffusion.train import TrainResult

    state = load_file(folder / "model.safetensors")
    info = json.loads((folder / "result.json").read_text())
    bounds = (state.pop("x0_bounds.low"), state.pop("x0_bounds.high"))
    with torch.random.fork_rng(devices=[]):  # building the net draws initial weights: not from the global RNG
        model = Denoiser(cfg.denoiser_config([c.shape[1] for c in train[1]], train[0].shape[1]))
    model.load_state_dict(state, strict=True)
    model.eval()
    return TrainResult(model, info["best_step"], info["steps_run"], info["seconds"], info["n_train"], info["n_val"],
                       cfg, info["history"], info["metrics"], bounds)


# Tune pickles its run config (callbacks included) to keep the experiment's state; a progress
# bar holds locks, so the callback holds a key into this table instead of the reporter itself
_REPORTERS: dict[int, Callable[[float], None]] = {}


def _report(key: int, fraction: float) -> None:
    report = _REPORTERS.get(key)
    if report is not None:
        report(fraction)


def _tune_progress(n_trials: int, steps: int, key: int):
    """A Tune callback (run in this process): the search's progress as a fraction of its budget."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.steps = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.steps[trial.trial_id] = steps if result.get("done") else min(result.get("step", 0), steps)
            _report(key, sum(self.steps.values()) / (n_trials * steps))

    return Progress()
