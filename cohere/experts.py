"""Diffusion experts C -> X and the masked multi-condition model multi -> X, as artifacts.

An ``Expert`` generates the standardised latent of a target modality X from the latent of
one source modality C (id ``"rnaseq->cna"``); a ``MultiConditionModel`` generates X from
any subset of its sources, absent ones masked (id ``"multi->cna"``). Both wrap a trained
``Denoiser`` and the ``NoiseSchedule`` it was trained with, and are saved as artifact folders
``MODELS/experts/<source>_to_<target>/`` (``multi_to_<target>`` for the multi model) whose
``config.json`` records the digests of the encoders whose latents they were trained on: the
latent-space contract, checked by :meth:`check_encoders`.

    expert = Expert.fit("rnaseq", "cna", rna_latents, cna_latents, encoders)
    expert.save(models / "experts" / expert.folder_name)
    draws = load_model(folder, encoders).sample(rna_latents_new, n_draws=10, seed=0)  # (10, n, 32)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import load_artifact, read_config, render_card, save_artifact
from .diffusion import Denoiser, DenoiserConfig, NoiseSchedule
from .diffusion.train import TrainConfig, TrainResult, random_search, train_denoiser
from .errors import CohereError
from .ids import ARROW, parse_id
from .sampling import Member, sample_latents


def folder_name(model_id: str) -> str:
    """``"rnaseq->cna"`` -> ``"rnaseq_to_cna"``; ``"multi->cna"`` -> ``"multi_to_cna"``."""
    source, target = parse_id(model_id)
    return f"{source}_to_{target}"


def _digests(encoders: Mapping, modalities: Sequence[str]) -> dict[str, str]:
    out = {}
    for m in modalities:
        enc = encoders.get(m) if isinstance(encoders, Mapping) else None
        if enc is None:
            raise CohereError(f"no encoder given for modality {m!r}; the model records the digest of "
                              "every encoder whose latents it uses")
        out[m] = enc if isinstance(enc, str) else enc.digest
    return out


def _to_tensor(x, name: str, rows: int | None = None, dim: int | None = None) -> torch.Tensor:
    a = x.to_numpy(np.float32) if isinstance(x, pd.DataFrame) else np.asarray(x, np.float32)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim) or (rows is not None and a.shape[0] != rows):
        want = f"({rows if rows is not None else 'n'}, {dim if dim is not None else 'd'})"
        raise CohereError(f"{name}: expected latents of shape {want}, got {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a))


class _DiffusionModel:
    """What experts and multi-condition models share: the network, its schedule, the
    contract, the metrics, saving, loading and sampling."""

    kind = ""
    card_template = ""

    def __init__(self, sources: Sequence[str], target: str, model: Denoiser, schedule: NoiseSchedule,
                 encoders: Mapping[str, str], train_config: TrainConfig | None = None,
                 metrics: Mapping | None = None, training: Mapping | None = None,
                 x0_bounds: tuple | None = None):
        d = model.config.latent_dim
        if x0_bounds is None:
            x0_bounds = (torch.full((d,), -torch.inf), torch.full((d,), torch.inf))
        self.x0_bounds = tuple(torch.as_tensor(b, dtype=torch.float32).reshape(d) for b in x0_bounds)
        self.sources = list(sources)
        self.target = target
        self.model = model.eval()
        self.schedule = schedule
        self.encoders = dict(encoders)  # {modality: digest}
        self.train_config = train_config
        self.metrics = dict(metrics or {})
        self.training = dict(training or {})
        self.digest: str | None = None
        self.path: Path | None = None

    # -- identity

    @property
    def id(self) -> str:
        raise NotImplementedError

    @property
    def folder_name(self) -> str:
        return folder_name(self.id)

    @property
    def val_loss(self) -> float:
        return float(self.metrics.get("val_loss", float("nan")))

    def __repr__(self) -> str:
        r2 = self.metrics.get("val_r2")
        return f"{type(self).__name__}({self.id!r}, val_r2={r2 if r2 is None else round(r2, 4)})"

    # -- the latent-space contract

    def check_encoders(self, encoders: Mapping) -> None:
        """Refuse encoders other than the ones this model was trained with.

        ``encoders``: {modality: encoder (with ``.digest``) or digest string}. Every modality
        in both must carry the recorded digest; modalities the model uses but that are not
        given are not checked.
        """
        for m, recorded in self.encoders.items():
            if m not in encoders:
                continue
            given = encoders[m] if isinstance(encoders[m], str) else getattr(encoders[m], "digest", None)
            if given != recorded:
                raise CohereError(
                    f"{self.id}: was trained on latents of the {m} encoder with digest {recorded}, but the "
                    f"given {m} encoder has digest {given}; use the encoder the model was trained with or "
                    "retrain the model on the new encoder's latents")

    # -- config and persistence

    def _config(self) -> dict:
        s = self.schedule
        cfg = {
            "kind": self.kind, "id": self.id, "sources": self.sources, "target": self.target,
            "encoders": self.encoders, "latent_dim": self.model.config.latent_dim,
            "schedule": {"num_train_timesteps": s.num_train_timesteps, "beta_start": s.beta_start,
                         "beta_end": s.beta_end, "beta_schedule": "linear", "prediction_type": "epsilon"},
            "architecture": {"hidden": self.model.config.hidden, "layers": self.model.config.layers,
                             "time_dim": self.model.config.time_dim,
                             "cond_emb_dim": self.model.config.cond_emb_dim,
                             "cond_dims": list(self.model.config.cond_dims)},
            "training": {**({"recipe": self.train_config.to_dict()} if self.train_config else {}), **self.training},
            "metrics": self.metrics,
            "n_train": int(self.training.get("n_train", 0)),
            "sampling": {"method": "ddim", "steps": 50, "eta": 1.0,
                         "x0_clamp": "per-dimension training range of the target (tensors x0_bounds.low/high)"},
        }
        if self.kind == "expert":
            cfg["source"] = self.sources[0]
        return cfg

    def save(self, folder: str | os.PathLike) -> str:
        """Write the artifact folder (config.json, model.safetensors, README.md); return the digest."""
        config = self._config()
        card = render_card(self.card_template, config=config)
        tensors = {**self.model.state_dict(), "x0_bounds.low": self.x0_bounds[0], "x0_bounds.high": self.x0_bounds[1]}
        self.digest = save_artifact(folder, config, tensors, card)
        self.path = Path(folder)
        return self.digest

    @classmethod
    def _from_artifact(cls, folder, encoders: Mapping | None):
        art = load_artifact(folder, kind=cls.kind)
        cfg = art.config
        try:
            arch, sch = cfg["architecture"], cfg["schedule"]
            sources, target = list(cfg["sources"]), cfg["target"]
            dcfg = DenoiserConfig(latent_dim=int(cfg["latent_dim"]), cond_dims=tuple(arch["cond_dims"]),
                                  hidden=arch["hidden"], layers=arch["layers"], time_dim=arch["time_dim"],
                                  cond_emb_dim=arch["cond_emb_dim"])
            schedule = NoiseSchedule(int(sch["num_train_timesteps"]), float(sch["beta_start"]), float(sch["beta_end"]))
            recorded = dict(cfg["encoders"])
        except (KeyError, TypeError) as e:
            raise CohereError(f"{folder}: config.json lacks or mangles {e}; re-download or re-train the model") from None
        if sch.get("beta_schedule", "linear") != "linear" or sch.get("prediction_type", "epsilon") != "epsilon":
            raise CohereError(f"{folder}: unsupported schedule {sch}; cohere models use linear betas and epsilon prediction")
        if len(dcfg.cond_dims) != len(sources):
            raise CohereError(f"{folder}: {len(sources)} sources but {len(dcfg.cond_dims)} condition inputs")
        model = Denoiser(dcfg)
        state = model.state_dict()
        d = dcfg.latent_dim
        art.expect({**{k: tuple(v.shape) for k, v in state.items()}, "x0_bounds.low": (d,), "x0_bounds.high": (d,)})
        tensors = dict(art.tensors)
        bounds = (tensors.pop("x0_bounds.low"), tensors.pop("x0_bounds.high"))
        # num_batches_tracked is an integer buffer that save_artifact stores as float: cast back
        model.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()}, strict=True)
        training = dict(cfg.get("training", {}))
        recipe = training.pop("recipe", None)
        obj = cls.__new__(cls)
        _DiffusionModel.__init__(obj, sources, target, model, schedule, recorded,
                                 TrainConfig.from_dict(recipe) if recipe else None, cfg.get("metrics", {}), training,
                                 bounds)
        if obj.id != cfg.get("id"):
            raise CohereError(f"{folder}: config id {cfg.get('id')!r} does not match its sources and target ({obj.id!r})")
        obj.digest, obj.path = art.digest, Path(folder)
        if encoders is not None:
            obj.check_encoders(encoders)
        return obj

    @classmethod
    def load(cls, folder: str | os.PathLike, encoders: Mapping | None = None):
        """Load with strict checks (sha256, tensor names and shapes); with ``encoders``
        ({modality: encoder}) also check the latent-space contract."""
        return cls._from_artifact(folder, encoders)

    # -- sampling

    @property
    def clamps(self) -> bool:
        """Whether the model has finite x_0 bounds to clamp to during sampling."""
        return bool(torch.isfinite(self.x0_bounds[0]).any() or torch.isfinite(self.x0_bounds[1]).any())

    def to(self, device) -> "_DiffusionModel":
        self.model.to(device)
        return self

    def _member_inputs(self, conds, n: int | None) -> tuple[list[torch.Tensor], torch.Tensor | None, int]:
        raise NotImplementedError

    def member(self, conds, weight: float = 1.0, n_draws: int = 1, n: int | None = None) -> Member:
        """This model as a member of a consensus for ``n_draws`` draws per row (draw-major).
        ``n``: the number of rows, needed only when no condition is given (multi model)."""
        c, mask, n = self._member_inputs(conds, n)
        return Member(self.model, c, mask, weight).tile(n_draws)

    def sample(self, conds, n_draws: int = 1, steps: int | None = None, method: str = "ddim",
               seed: int = 0, eta: float = 1.0, n: int | None = None, clip: bool = True) -> np.ndarray:
        """Generate ``n_draws`` target latents per row: array (n_draws, n, latent_dim).

        Defaults: DDIM with 50 trailing steps and eta = 1 (stochastic, like DDPM's ancestral
        sampling); ``method="ddpm"`` runs the paper's full T-step sampler. ``n``: rows to
        generate when no condition is given (multi model, unconditional). ``clip``: clamp the
        x_0 estimate at every step to the training range of the target (``x0_bounds``).
        """
        if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
            raise CohereError(f"n_draws must be a positive int, got {n_draws!r}")
        mem = self.member(conds, n_draws=n_draws, n=n)
        n = len(mem.conds[0]) if mem.conds else len(mem.mask)
        device = next(self.model.parameters()).device
        g = torch.Generator(device).manual_seed(int(seed))
        x = sample_latents([mem], self.schedule.to(device), n, method=method, steps=steps, eta=eta, generator=g,
                           x0_bounds=self.x0_bounds if clip and self.clamps else None)
        return x.view(n_draws, n // n_draws, -1).cpu().numpy()

    # -- training helpers

    @staticmethod
    def _train(x0, conds, mask, config, schedule, search: int, progress):
        if search and search > 1:
            res = random_search(search, x0, conds, mask, base=config, schedule=schedule, seed=config.seed,
                                progress=progress)
            return res.best, res.trials
        return train_denoiser(x0, conds, mask, config, schedule, progress=progress), None

    @staticmethod
    def _record(result: TrainResult, trials, extra: Mapping | None) -> tuple[dict, dict]:
        cfg = result.config
        metrics = {k: round(v, 6) for k, v in result.metrics.items()}  # val_loss, val_r2, val_r2_mean, val_energy
        metrics |= {"selected_by": "energy score" if cfg.select == "energy" else "mse",
                    "val_sampler": f"{cfg.val_method}, {cfg.val_steps} steps, eta {cfg.val_eta}, "
                                   f"{cfg.val_draws} draws per row",
                    "n_val": result.n_val}
        training = {"n_train": result.n_train, "best_step": result.best_step, "steps_run": result.steps_run,
                    "seconds": round(result.seconds, 1), **dict(extra or {})}
        if trials:
            training["search"] = trials
        return metrics, training


class Expert(_DiffusionModel):
    """A single-condition diffusion model C -> X (id ``"rnaseq->cna"``)."""

    kind = "expert"
    card_template = "expert.md.j2"

    def __init__(self, source: str, target: str, model: Denoiser, schedule: NoiseSchedule,
                 encoders: Mapping[str, str], train_config: TrainConfig | None = None,
                 metrics: Mapping | None = None, training: Mapping | None = None, x0_bounds: tuple | None = None):
        if model.num_conds != 1:
            raise CohereError(f"an expert has one condition; the denoiser has {model.num_conds}")
        super().__init__([source], target, model, schedule, encoders, train_config, metrics, training, x0_bounds)

    @property
    def source(self) -> str:
        return self.sources[0]

    @property
    def id(self) -> str:
        return f"{self.source}{ARROW}{self.target}"

    @classmethod
    def fit(cls, source: str, target: str, source_latents, target_latents, encoders: Mapping,
            config: TrainConfig | None = None, schedule: NoiseSchedule | None = None, search: int = 0,
            progress: Callable | None = None, training: Mapping | None = None) -> "Expert":
        """Train on paired rows (training split only): ``source_latents`` and
        ``target_latents`` (n, d) of the same samples; ``encoders`` {modality: encoder or
        digest} for source and target. ``search`` > 1: random search over that many configs."""
        config = TrainConfig() if config is None else config
        schedule = NoiseSchedule() if schedule is None else schedule
        if source == target:
            raise CohereError(f"source and target must differ, got {source!r} twice")
        digests = _digests(encoders, [source, target])
        c = _to_tensor(source_latents, f"{source} latents")
        x = _to_tensor(target_latents, f"{target} latents", rows=len(c))
        if isinstance(source_latents, pd.DataFrame) and isinstance(target_latents, pd.DataFrame):
            if not source_latents.index.equals(target_latents.index):
                raise CohereError(f"{source} and {target} latents must have the same samples in the same order")
        res, trials = cls._train(x.numpy(), [c.numpy()], None, config, schedule, search, progress)
        metrics, train_info = cls._record(res, trials, training)
        return cls(source, target, res.model, schedule, digests, res.config, metrics, train_info, res.x0_bounds)

    def _member_inputs(self, conds, n):
        if isinstance(conds, Mapping):
            if set(conds) != {self.source}:
                raise CohereError(f"{self.id}: expected conditions for {self.source!r} only, got {sorted(conds)}")
            conds = conds[self.source]
        c = _to_tensor(conds, f"{self.id}: {self.source} latents", rows=n, dim=self.model.config.cond_dims[0])
        if not torch.isfinite(c).all():
            raise CohereError(f"{self.id}: {self.source} latents contain NaN; pass only samples that have {self.source}")
        return [c], None, len(c)


class MultiConditionModel(_DiffusionModel):
    """One diffusion model per target conditioned on any subset of its sources (id ``"multi->cna"``)."""

    kind = "multi"
    card_template = "multi.md.j2"

    def __init__(self, sources: Sequence[str], target: str, model: Denoiser, schedule: NoiseSchedule,
                 encoders: Mapping[str, str], train_config: TrainConfig | None = None,
                 metrics: Mapping | None = None, training: Mapping | None = None, x0_bounds: tuple | None = None):
        if model.num_conds != len(sources):
            raise CohereError(f"{len(sources)} sources but the denoiser has {model.num_conds} conditions")
        super().__init__(sources, target, model, schedule, encoders, train_config, metrics, training, x0_bounds)

    @property
    def id(self) -> str:
        return f"multi{ARROW}{self.target}"

    @classmethod
    def fit(cls, target: str, target_latents, source_latents: Mapping[str, object], encoders: Mapping,
            config: TrainConfig | None = None, schedule: NoiseSchedule | None = None, search: int = 0,
            progress: Callable | None = None, training: Mapping | None = None) -> "MultiConditionModel":
        """Train on every training sample that has the target: ``target_latents`` (n, d);
        ``source_latents`` {modality: (n, d)} aligned with it, a row all NaN where that sample
        lacks the modality (the real missingness). Extra random masking per ``config``."""
        config = TrainConfig() if config is None else config
        schedule = NoiseSchedule() if schedule is None else schedule
        sources = sorted(source_latents)
        if not sources or target in sources:
            raise CohereError(f"multi->{target}: give at least one source modality other than the target")
        digests = _digests(encoders, [*sources, target])
        x = _to_tensor(target_latents, f"{target} latents")
        conds, mask = cls._conds_and_mask(source_latents, sources, len(x), f"multi->{target}")
        if isinstance(target_latents, pd.DataFrame):
            for m in sources:
                s = source_latents[m]
                if isinstance(s, pd.DataFrame) and not s.index.equals(target_latents.index):
                    raise CohereError(f"multi->{target}: {m} latents must be aligned with the target's samples "
                                      "(reindex them, NaN rows where missing)")
        res, trials = cls._train(x.numpy(), [c.numpy() for c in conds], mask.numpy(), config, schedule,
                                 search, progress)
        presence = {m: int(mask[:, i].sum()) for i, m in enumerate(sources)}
        metrics, train_info = cls._record(res, trials, {"n_with_source": presence, **dict(training or {})})
        return cls(sources, target, res.model, schedule, digests, res.config, metrics, train_info, res.x0_bounds)

    @staticmethod
    def _conds_and_mask(source_latents: Mapping, sources: Sequence[str], n: int | None, where: str):
        conds, mask = [], []
        for m in sources:
            v = source_latents.get(m)
            if v is None:
                conds.append(None)
                mask.append(None)
                continue
            c = _to_tensor(v, f"{where}: {m} latents", rows=n)
            n = len(c) if n is None else n
            present = torch.isfinite(c).all(1)  # (n,)
            partial = ~present & ~torch.isnan(c).all(1)
            if partial.any():
                raise CohereError(f"{where}: {m} latents have rows that are partly NaN; a missing modality "
                                  "is a row entirely NaN")
            conds.append(torch.where(present[:, None], c, torch.zeros(())))
            mask.append(present.float())
        if n is None:
            raise CohereError(f"{where}: give at least one source's latents (a row of NaN where missing), "
                              "or the number of rows n to generate unconditionally")
        conds = [torch.zeros(n, 32) if c is None else c for c in conds]
        mask = torch.stack([torch.zeros(n) if m_ is None else m_ for m_ in mask], dim=1)  # (n, k)
        return conds, mask

    def _member_inputs(self, conds, n):
        if not isinstance(conds, Mapping):
            raise CohereError(f"{self.id}: conditions must be a dict {{modality: latents}} over "
                              f"{', '.join(self.sources)} (absent ones omitted or NaN rows)")
        unknown = sorted(set(conds) - set(self.sources))
        if unknown:
            raise CohereError(f"{self.id}: unknown source modality {unknown[0]!r}; this model takes "
                              f"{', '.join(self.sources)}")
        c, mask = self._conds_and_mask(conds, self.sources, n, self.id)
        dims = self.model.config.cond_dims
        for i, m in enumerate(self.sources):
            if c[i].shape[1] != dims[i]:
                if m in conds and conds[m] is not None:
                    raise CohereError(f"{self.id}: {m} latents must have {dims[i]} columns, got {c[i].shape[1]}")
                c[i] = torch.zeros(len(c[i]), dims[i])
        return c, mask, len(mask)


MODEL_CLASSES = {"expert": Expert, "multi": MultiConditionModel}


def load_model(folder: str | os.PathLike, encoders: Mapping | None = None) -> Expert | MultiConditionModel:
    """Load an expert or multi-condition artifact folder (the class its config records)."""
    kind = read_config(folder).get("kind")
    if kind not in MODEL_CLASSES:
        raise CohereError(f"{folder}: is a {kind!r} artifact, expected an expert or a multi-condition model")
    return MODEL_CLASSES[kind].load(folder, encoders)


def model_dir(models: str | os.PathLike, model_id: str) -> Path:
    """``MODELS/experts/<source>_to_<target>/``."""
    return Path(models) / "experts" / folder_name(model_id)


def list_models(models: str | os.PathLike) -> list[Path]:
    """The expert / multi artifact folders under ``MODELS/experts``, sorted."""
    root = Path(models) / "experts"
    return sorted(p for p in root.glob("*") if (p / "config.json").is_file()) if root.is_dir() else []
