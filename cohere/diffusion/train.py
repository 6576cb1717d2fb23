"""Training a ``Denoiser``: epsilon-prediction MSE, checkpoint selection on held-out rows.

    loss = || eps - eps_theta(sqrt(abar_t) (x_0 - m) + sqrt(1 - abar_t) eps, t, C, mask) ||^2   (Ho et al., eq. 14)

with t ~ U{0..T-1}, eps ~ N(0, I) and m = ``offset(C, mask)`` a fixed mean the network is
trained around (CARD, Han et al. 2022; zero without one). Every ``eval_every`` steps the EMA
weights are scored on the validation rows by the caller's ``score(model, val)`` callback
(the experts layer generates the rows' latents with the fast sampler and scores them; this
layer knows nothing of samplers or metrics), and the checkpoint with the best value of the
criterion is kept, with early stopping after ``patience`` evaluations without improvement.
``select="mse"`` picks the callback's ``val_loss`` (the paper's criterion: MSE of single
draws); the default ``select="energy"`` its ``val_energy``, a proper score of the predictive
distribution. Why: on the real cohort the MSE of single draws keeps falling for as long as
training runs, because the model memorises the training pairs and its samples collapse
towards the mean (generated variance 49% -> 21% of the real one from 4k to 24k steps on
rppa->rnaseq, while the R^2 of the mean of 10 draws fell 0.14 -> 0.08): it never plateaus,
never stops early and rewards overfitting. The energy score bottoms out and stops. Without a
callback the criterion is the validation denoising loss (the training loss on the held-out
rows at fixed t and noise), which needs no sampler.

Multi-condition models (``mask`` given) are trained on the real presence mask with extra
random masking, including the empty set. Single-condition experts drop their condition with
probability ``uncond_prob``, so that the same network also learns the target's unconditional
distribution (its prediction with the mask at 0), which the product-of-experts consensus needs.

The validation rows are carved out of the rows given (``val_fraction``, preferring rows with
every condition present): pass only training-split rows; the cohort's validation split stays
untouched for reporting. Everything is seeded: the same seed gives bit-identical weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import CohereError
from .denoiser import Denoiser, DenoiserConfig
from .schedule import NoiseSchedule

# score(model, val) -> metrics of the validation rows val = (x0, conds, mask); see train_denoiser
Score = Callable[[Denoiser, tuple], dict]
MEANS = ("none", "ridge")
CRITERIA = {"mse": "val_loss", "energy": "val_energy"}

LR_SCHEDULES = ("onecycle", "cosine", "constant")
# the paper's hyperparameter grid (Methods, "Model Implementation and Training"). The authors'
# n_layers = 4..7 counts the output Linear (their code: n_layers - 1 hidden blocks), ours counts
# hidden blocks only, so their grid is 3..6 here
GRID = {
    "hidden": (256, 512, 1024),
    "layers": (3, 4, 5, 6),
    "time_dim": (64, 128),
    "cond_emb_dim": (8, 16, 32),
    "batch_size": (64, 128),
    "lr": (1e-4, 1e-3),  # log-uniform range
}


@dataclass
class TrainConfig:
    """The training recipe. Defaults are the CPU recipe measured on the real cohort's latents
    (scripts/benchmark_experts.py): the smallest net of the paper's grid (its per-step cost on
    one core: 6.8 ms at width 256 x 4 layers, 18 ms at 512 x 4, 56 ms at 1024 x 4, batch 256);
    lr 6e-3 beat 1e-3, 3e-3 and 1e-2 (at batch 256); batch 128, the larger of the paper's two,
    which trains the 9 TCGA models in less time than 256 at the same held-out scores (README,
    "Training"); a constant lr after a short warm-up with an EMA of the weights, so that a
    longer budget only extends the same trajectory; energy-score selection with early
    stopping, which ends most models before the 20,000-step budget."""

    # architecture, within the paper's grid
    hidden: int = 256
    layers: int = 4
    time_dim: int = 64
    cond_emb_dim: int = 32
    # optimisation
    steps: int = 20000  # optimizer steps at most (early stopping usually ends sooner)
    batch_size: int = 128  # in the paper's grid (64, 128); 256 (the previous default) costs 1.55x a step on one core
    lr: float = 6e-3  # peak learning rate
    lr_schedule: str = "constant"  # after a warm-up: constant | onecycle (cosine to ~0) | cosine
    weight_decay: float = 0.0  # AdamW
    ema_decay: float = 0.999  # EMA of weights and BatchNorm statistics; 0 = off
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    cond_noise: float = 0.0  # std of Gaussian noise added to the (standardised) conditions in training
    mean: str = "none"  # the mean the network is trained around: "ridge" of the conditions (CARD) | "none"
    uncond_prob: float = 0.15  # experts: drop the condition of a row with this probability (learns p(x) too)
    # multi-condition masking (ignored for a single always-present condition)
    mask_prob: float = 0.25  # drop each present condition with this probability
    empty_prob: float = 0.1  # drop all conditions of a row with this probability
    # checkpoint selection
    val_fraction: float = 0.1  # of the rows given, carved out for selection
    eval_every: int = 500  # steps between evaluations
    patience: int = 4  # evaluations without improvement before stopping; 0 = never stop early
    val_method: str = "ddim"  # fast sampler for the validation generations
    val_steps: int = 10  # the default sampler's (cohere.experts.SAMPLER_STEPS): checkpoints scored as they ship
    val_eta: float = 1.0  # stochastic DDIM: deterministic samplers (eta = 0) generate far worse here
    val_variance: str = "analytic"  # reverse variance of the validation sampler: "analytic" | "fixed" (DDIM's)
    val_draws: int = 2  # generations per validation row
    select: str = "energy"  # checkpoint criterion: "energy" score | "mse" of single draws (the paper's)
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # CPU threads during training (restored after); 0 = leave torch's setting

    def __post_init__(self):
        ints = {"threads": 0, "hidden": 1, "layers": 1, "time_dim": 2, "cond_emb_dim": 1, "steps": 1, "batch_size": 2,
                "eval_every": 1, "patience": 0, "val_steps": 1, "val_draws": 1, "seed": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise CohereError(f"TrainConfig.{name} must be an int >= {low}, got {v!r}")
            setattr(self, name, int(v))
        if self.lr_schedule not in LR_SCHEDULES:
            raise CohereError(f"TrainConfig.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.mean not in MEANS:
            raise CohereError(f"TrainConfig.mean must be one of {', '.join(MEANS)}, got {self.mean!r}")
        if self.select not in ("mse", "energy"):
            raise CohereError(f"TrainConfig.select must be 'mse' or 'energy', got {self.select!r}")
        if self.select == "energy" and self.val_draws < 2:
            raise CohereError("TrainConfig.select='energy' needs val_draws >= 2")
        if self.val_variance not in ("fixed", "analytic"):
            raise CohereError(f"TrainConfig.val_variance must be 'fixed' or 'analytic', got {self.val_variance!r}")
        if self.val_method not in ("ddim", "dpmpp2m"):
            raise CohereError(f"TrainConfig.val_method must be 'ddim' or 'dpmpp2m', got {self.val_method!r}")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise CohereError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "val_eta", "cond_noise"):
            if not getattr(self, name) >= 0:
                raise CohereError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("ema_decay", "mask_prob", "empty_prob", "val_fraction", "uncond_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise CohereError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    def denoiser_config(self, cond_dims: Sequence[int], latent_dim: int) -> DenoiserConfig:
        return DenoiserConfig(latent_dim=latent_dim, cond_dims=tuple(cond_dims), hidden=self.hidden,
                              layers=self.layers, time_dim=self.time_dim, cond_emb_dim=self.cond_emb_dim)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CohereError(f"unknown training settings {unknown}; known: {sorted(names)}")
        return cls(**d)


@dataclass
class TrainResult:
    """The selected model (EMA weights if EMA is on), in eval mode on the CPU."""

    model: Denoiser
    best_step: int
    steps_run: int
    seconds: float
    n_train: int
    n_val: int
    config: TrainConfig
    history: list[dict] = field(default_factory=list)  # one dict per evaluation
    metrics: dict = field(default_factory=dict)  # all validation metrics of the selected checkpoint
    x0_bounds: tuple[Tensor, Tensor] | None = None  # per-dimension min and max of the training targets

    @property
    def criterion(self) -> float:
        """The value of the selection criterion at the selected checkpoint."""
        return self.metrics[criterion_key(self.config, self.metrics)]

    @property
    def val_loss(self) -> float:
        """MSE of generated vs real validation latents (NaN without a scoring callback)."""
        return float(self.metrics.get("val_loss", float("nan")))

    @property
    def val_r2(self) -> float:
        """R^2 of single generated draws on the validation rows (NaN without a scoring callback)."""
        return float(self.metrics.get("val_r2", float("nan")))


def criterion_key(cfg: TrainConfig, metrics: dict) -> str:
    """The metric the checkpoint is selected on: ``CRITERIA[cfg.select]`` if the scoring
    callback reported it, else the validation denoising loss."""
    key = CRITERIA[cfg.select]
    return key if key in metrics else "val_denoising_loss"


# ----------------------------------------------------------------------------- data


def _as_data(x0, conds, mask, where: str):
    """Validate and convert to float32 tensors; NaN conditions where masked become 0."""
    x0 = torch.from_numpy(np.array(x0, np.float32))
    if x0.dim() != 2:
        raise CohereError(f"{where}: target latents must be a 2-d array (n, d), got shape {tuple(x0.shape)}")
    if not torch.isfinite(x0).all():
        raise CohereError(f"{where}: target latents contain NaN or inf; pass only rows that have the target")
    n = len(x0)
    if isinstance(conds, (np.ndarray, Tensor)):
        raise CohereError(f"{where}: conds must be a list of (n, c) arrays, one per condition")
    conds = [torch.from_numpy(np.array(c, np.float32)) for c in conds]
    for i, c in enumerate(conds):
        if c.dim() != 2 or len(c) != n:
            raise CohereError(f"{where}: conds[{i}] must have shape ({n}, c), got {tuple(c.shape)}")
    if mask is None:
        mask = torch.ones(n, len(conds))
    else:
        mask = torch.from_numpy(np.array(mask, np.float32))
        if mask.shape != (n, len(conds)) or not ((mask == 0) | (mask == 1)).all():
            raise CohereError(f"{where}: mask must be a 0/1 array of shape ({n}, {len(conds)}), got {tuple(mask.shape)}")
    for i, c in enumerate(conds):
        present = mask[:, i] > 0
        if not torch.isfinite(c[present]).all():
            raise CohereError(f"{where}: conds[{i}] has NaN/inf in rows marked present; set mask to 0 there")
        conds[i] = torch.where(present[:, None], c, torch.zeros(()))  # (n, c)
    return x0, conds, mask


def split_validation(mask: Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val): ``fraction`` of the rows for validation, drawn from the rows
    with every condition present when there are enough of them."""
    n = len(mask)
    n_val = max(2, int(round(fraction * n)))
    if n - n_val < 8:
        raise CohereError(f"{n} rows are too few to train and validate a denoiser; at least "
                          f"{n_val + 8} are needed")
    rng = np.random.default_rng(seed)
    complete = np.flatnonzero((mask > 0).all(1).numpy())
    pool = complete if len(complete) >= 2 * n_val else np.arange(n)
    val = np.sort(rng.choice(pool, size=n_val, replace=False))
    train = np.setdiff1d(np.arange(n), val)
    return train, val


# ----------------------------------------------------------------------------- EMA


class _EMA:
    """Exponential moving average of parameters and floating buffers (BatchNorm statistics)."""

    def __init__(self, model: Denoiser, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self._src = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
        self._dst = [t for t in list(self.model.parameters()) + list(self.model.buffers()) if t.is_floating_point()]
        self._int_src = [b for b in model.buffers() if not b.is_floating_point()]
        self._int_dst = [b for b in self.model.buffers() if not b.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early averages forget the init
        torch._foreach_lerp_(self._dst, self._src, 1.0 - d)
        for a, b in zip(self._int_dst, self._int_src):
            a.copy_(b)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def denoising_loss(model: Denoiser, schedule: NoiseSchedule, val: tuple, seed: int,
                   offset: Callable | None = None, repeats: int = 4) -> float:
    """The training loss on the validation rows at fixed timesteps and noise (``repeats``
    passes): the sampler-free criterion used when no scoring callback is given."""
    x0, conds, mask = val
    g = torch.Generator(x0.device).manual_seed(seed + 1)
    target = x0 if offset is None else x0 - offset(conds, mask)  # (n, d)
    total = 0.0
    for _ in range(repeats):
        noise = torch.randn(x0.shape, generator=g, device=x0.device)  # (n, d)
        t = torch.randint(0, schedule.num_train_timesteps, (len(x0),), generator=g, device=x0.device)  # (n,)
        total += float(((model(schedule.add_noise(target, noise, t), t, conds, mask) - noise) ** 2).mean())
    return total / repeats


# ----------------------------------------------------------------------------- training


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the peak lr at each step: a linear warm-up from lr/25 over 5% of the
    budget (at most 500 steps), then constant, cosine to 0, or cosine to ~0 ("onecycle")."""
    total = cfg.steps
    warm = max(1, min(500, int(0.05 * total)))

    def f(step: int) -> float:
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if step < warm:
            return 0.04 + 0.96 * step / warm
        if cfg.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / (total - warm))) * 0.999 + 1e-3

    return f


def train_denoiser(x0, conds, mask=None, config: TrainConfig | None = None, schedule: NoiseSchedule | None = None,
                   val: tuple | None = None, progress: Callable[[int, int, dict], None] | None = None,
                   offset: Callable | None = None, score: Score | None = None) -> TrainResult:
    """Train a denoiser generating ``x0`` (n, d) from ``conds`` (list of (n, c_i)) with
    presence ``mask`` (n, k) 0/1 or None (all present; no extra masking then).

    ``val``: optional ``(x0, conds, mask)`` for checkpoint selection; by default
    ``config.val_fraction`` of the rows is carved out. ``offset(conds, mask) -> (n, d)``: the
    fixed mean the network is trained around (None = zero); it is given the rows' clean
    conditions and their (possibly dropped) mask. ``score(model, val) -> dict``: validation
    metrics of the EMA model in eval mode, on ``val`` as float tensors on the training device
    (see the module docstring); None = the validation denoising loss only.
    ``progress(step, total, info)`` is called after every evaluation (``info``: step,
    train_loss, the validation metrics, best).
    On the CPU, ``config.threads`` sets torch's intra-op threads for the call only: these
    small MLPs are dominated by per-operation overhead, and a second thread competing with
    other processes for two cores made steps up to 20x slower in our measurements.
    """
    cfg = TrainConfig() if config is None else config
    if not isinstance(cfg, TrainConfig):
        raise CohereError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    with cpu_threads(cfg):
        return _train(x0, conds, mask, cfg, schedule, val, progress, offset, score)


@contextlib.contextmanager
def cpu_threads(cfg: TrainConfig):
    """torch's intra-op threads set to ``cfg.threads`` on the CPU (0: left as they are) for the
    block, restored afterwards."""
    before = torch.get_num_threads()
    if cfg.threads and torch.device(cfg.device).type == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    x0,
    conds,
    mask,
    cfg: TrainConfig,
    schedule: NoiseSchedule | None,
    val: tuple | None,
    progress: Callable[[int, int, dict], None] | None = None,
    offset: Callable | None = None,
    score: Score | None = None,
) -> TrainResult:
    schedule = NoiseSchedule() if schedule is None else schedule
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CohereError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    masked = mask is not None
    x0, conds, mask = _as_data(x0, conds, mask, "training data")
    if not conds and masked:
        raise CohereError("a mask was given for a model without conditions")
    if val is None:
        tr, va = split_validation(mask, cfg.val_fraction, cfg.seed)
        val = (x0[va], [c[va] for c in conds], mask[va])
        x0, conds, mask = x0[tr], [c[tr] for c in conds], mask[tr]
    else:
        val = _as_data(*val, "validation data")
        if len(val[1]) != len(conds):
            raise CohereError(f"validation data has {len(val[1])} conditions, training data {len(conds)}")
    if len(x0) < 8:
        raise CohereError(f"{len(x0)} training rows are too few; at least 8 are needed")
    n, d = x0.shape
    x0, mask = x0.to(device), mask.to(device)
    conds = [c.to(device) for c in conds]
    val = (val[0].to(device), [c.to(device) for c in val[1]], val[2].to(device))
    sched = schedule.to(device)
    k = len(conds)
    bounds = (x0.min(0).values, x0.max(0).values)  # (d,), (d,): the training range of the target

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Denoiser(cfg.denoiser_config([c.shape[1] for c in conds], d)).to(device)
    g = torch.Generator(device).manual_seed(cfg.seed)
    # foreach: one call per update for all tensors, the same arithmetic (bit-identical weights) with
    # less Python overhead per step than the per-tensor loop torch picks on the CPU
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    ema = _EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    T, bs = sched.num_train_timesteps, min(cfg.batch_size, n)

    t0 = time.perf_counter()
    best = (math.inf, {}, 0, None)  # (criterion, metrics, step, state)
    history, since, step = [], 0, 0
    loss_sum, loss_n = torch.zeros((), device=device), 0
    model.train()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, n, (bs,), generator=g, device=device)  # (b,)
        x = x0[idx]  # (b, d)
        noise = torch.randn(x.shape, generator=g, device=device)  # (b, d)
        t = torch.randint(0, T, (bs,), generator=g, device=device)  # (b,)
        m = mask[idx]  # (b, k)
        if masked and k:  # extra masking: each condition, and the whole set (empty set)
            keep = torch.rand(bs, k, generator=g, device=device) >= cfg.mask_prob  # (b, k)
            keep &= torch.rand(bs, 1, generator=g, device=device) >= cfg.empty_prob  # (b, k)
            m = m * keep
        elif k and cfg.uncond_prob > 0:  # an expert also learns the unconditional target
            m = m * (torch.rand(bs, 1, generator=g, device=device) >= cfg.uncond_prob)  # (b, k)
        cb = [c[idx] for c in conds]  # k x (b, c_i)
        if offset is not None:  # the network models x_0 - m(C) (CARD), m from the clean conditions
            x = x - offset(cb, m)  # (b, d)
        if cfg.cond_noise > 0:  # augmentation against memorising the pairing of c and x_0
            cb = [c + cfg.cond_noise * torch.randn(c.shape, generator=g, device=device) for c in cb]
        eps = model(sched.add_noise(x, noise, t), t, cb, m)  # (b, d)
        loss = torch.nn.functional.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            # foreach: the same norms (bit-identical weights) in one call for all gradients; 5% of a step
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        opt.step()
        lr_sched.step()
        if ema is not None:
            ema.update(step)
        loss_sum += loss.detach()
        loss_n += 1

        if step % cfg.eval_every == 0 or step == cfg.steps:
            net = ema.model if ema is not None else model.eval()
            metrics = {"val_denoising_loss": denoising_loss(net, sched, val, cfg.seed, offset)}
            if score is not None:
                metrics |= score(net, val)
            model.train()
            key = criterion_key(cfg, metrics)
            improved = metrics[key] < best[0]
            if improved:
                best = (metrics[key], metrics, step, copy.deepcopy(net.state_dict()))
                since = 0
            else:
                since += 1
            train_loss, loss_sum, loss_n = float(loss_sum) / loss_n, torch.zeros((), device=device), 0
            info = {"step": step, "train_loss": train_loss, **metrics, "lr": opt.param_groups[0]["lr"], "best": improved,
                    "seconds": round(time.perf_counter() - t0, 2)}
            history.append(info)
            if progress is not None:
                progress(step, cfg.steps, info)
            if cfg.patience and since >= cfg.patience:
                break

    if best[3] is None:
        raise CohereError(f"training diverged: the validation score was never finite ({history[-1][key]}); "
                          "lower the learning rate (e.g. --lr 1e-3)")
    final = copy.deepcopy(model).cpu()  # a copy, not a new Denoiser: no draw from the global RNG
    final.load_state_dict({k_: v.cpu() for k_, v in best[3].items()})
    final.eval()
    sched.to("cpu")
    return TrainResult(final, best[2], step, time.perf_counter() - t0, n, len(val[0]), cfg, history, best[1],
                       tuple(b.cpu() for b in bounds))


# ----------------------------------------------------------------------------- random search


@dataclass
class SearchResult:
    best: TrainResult
    trials: list[dict]  # one per config: the sampled settings and its validation metrics


def sample_configs(n_configs: int, base: TrainConfig | None = None, seed: int = 0) -> list[TrainConfig]:
    """``n_configs`` random configurations from the paper's grid (``GRID``), other settings
    from ``base``; the first one is ``base`` itself, so a search never does worse than it."""
    base = TrainConfig() if base is None else base
    if isinstance(n_configs, bool) or not isinstance(n_configs, int) or n_configs < 1:
        raise CohereError(f"n_configs must be a positive int, got {n_configs!r}")
    rng = np.random.default_rng(seed)
    out = [base]
    while len(out) < n_configs:
        lo, hi = GRID["lr"]
        pick = {name: int(rng.choice(GRID[name])) for name in ("hidden", "layers", "time_dim", "cond_emb_dim", "batch_size")}
        pick["lr"] = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        out.append(dataclasses.replace(base, **pick))
    return out


# run_trials(configs, train, val, options) -> one TrainResult per config, in their order:
# train_denoiser(*train, config=cfg, val=val, **options) for each (see serial_trials)
TrialRunner = Callable[[list, tuple, tuple, dict], list]


def serial_trials(configs: list[TrainConfig], train: tuple, val: tuple, options: dict) -> list[TrainResult]:
    """The configurations of a search trained one after another in this process."""
    return [train_denoiser(*train, config=cfg, val=val, **options) for cfg in configs]


def random_search(
    n_configs: int,
    x0,
    conds,
    mask=None,
    base: TrainConfig | None = None,
    schedule: NoiseSchedule | None = None,
    seed: int = 0,
    progress: Callable[[int, int, dict], None] | None = None,
    offset: Callable | None = None,
    score: Score | None = None,
    val_rows: np.ndarray | None = None,
    run_trials: TrialRunner | None = None,
) -> SearchResult:
    """Train ``n_configs`` configurations (see :func:`sample_configs`) on the same training
    and validation rows and keep the one with the best selection criterion (the first of
    equals). ``val_rows``: the validation row indices (default: :func:`split_validation`).
    ``run_trials``: how the configurations are trained (default :func:`serial_trials`, one
    after another here; cohere.executors runs them as Ray Tune trials)."""
    base = TrainConfig() if base is None else base
    configs = sample_configs(n_configs, base, seed)
    _, _, m = _as_data(x0, conds, mask, "training data")
    if val_rows is None:
        tr, va = split_validation(m, base.val_fraction, base.seed)
    else:
        va = np.asarray(val_rows)
        tr = np.setdiff1d(np.arange(len(m)), va)
    x0, conds = np.asarray(x0, np.float32), [np.asarray(c, np.float32) for c in conds]
    mk = None if mask is None else np.asarray(mask, np.float32)
    train = (x0[tr], [c[tr] for c in conds], None if mk is None else mk[tr])
    val = (x0[va], [c[va] for c in conds], None if mk is None else mk[va])
    results = (run_trials or serial_trials)(configs, train, val, dict(schedule=schedule, progress=progress,
                                                                       offset=offset, score=score))
    if len(results) != len(configs):
        raise CohereError(f"the search trained {len(results)} of its {len(configs)} configurations")
    best, trials = None, []
    for cfg, res in zip(configs, results):
        keys = ("hidden", "layers", "time_dim", "cond_emb_dim", "batch_size", "lr")
        trials.append({**{k: getattr(cfg, k) for k in keys}, **res.metrics})
        if best is None or res.criterion < best.criterion:
            best = res
    return SearchResult(best, trials)
