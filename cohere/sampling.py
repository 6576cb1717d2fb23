"""The one reverse-diffusion loop of cohere: consensus of denoisers over a shared x_t.

Every generation in the project runs through :func:`sample_latents`. A *member* is one
trained noise network with its conditions for the batch (``Member``); at each reverse step
every member predicts eps_i(x_t, t, C_i) and the step uses one of two consensus rules:

    "average":  eps = sum_i w_i eps_i,  w_i >= 0, sum_i w_i = 1              (paper, "Coherent Denoising")
    "product":  eps = eps_u + sum_i w_i (eps_i - eps_u),  w_i >= 0 (1 = exact)   (Liu et al. 2022)

The paper's weighted average is the score of a *geometric mixture* of the experts'
conditionals, p(x | C_1)^w_1 ... p(x | C_k)^w_k: it averages their information. The product
rule, with eps_u the prediction of an unconditional model of the target (the ``prior``
members), is the score of p(x) prod_i [p(x | C_i) / p(x)]^w_i, which with w_i = 1 is
p(x | C_1..C_k) when the conditions are independent given x (the assumption the paper states):
it sharpens where the experts agree. With one member and w = 1 both rules are plain
conditional sampling. The whole batch (all rows, all draws) is one tensor: there is no
per-sample Python work. ``on_step`` sees each step's member predictions, which is where
coherence monitoring and rejection hook in.

The reverse variance of the few-step DDIM sampler is either DDIM's own (``variance="fixed"``:
eta^2 beta_tilde, which makes 20-step samples far too narrow: on a linear-Gaussian problem
with a known posterior, 47% of the posterior's variance at 20 steps) or Analytic-DPM's optimal
variance (``variance="analytic"``, Bao et al. 2022) from each member's ``noise_error``
profile: its noise-prediction error E||eps - eps_theta||^2 / d at every timestep, measured on
held-out rows for each presence pattern of its conditions. The consensus of several members
combines their profiles the way it combines their predictions: r, the x_0 uncertainty left
after the step's prediction, is proportional to the error, and 1/r adds up like a precision,
1/r = sum_i w_i / r_i for the average, 1/r_u + sum_i w_i (1/r_i - 1/r_u) for the product.

A member's ``offset`` (n, d) is a mean its network was trained around (CARD, Han et al. 2022):
the network models x_0 - offset, so its prediction at x_t is eps_theta(x_t - sqrt(abar_t)
offset, t, C) (the forward process shifted by sqrt(abar_t) offset), and the eps of different
members refer to the same x_t.

``x0_bounds`` (low, high), each (d,), clamps the model's estimate of x_0 at every step to
the target's range (the training latents' per-dimension min and max, which every model
records) and re-derives eps from the clamped estimate ("thresholding", Saharia et al. 2022,
without diffusers' destructive default of +-1). Without it, about 1% of the trajectories of a
weakly conditioned model ran away to norms 10-20x the data's on the real cohort.

    x = sample_latents([Member(expert.model, [c])], expert.schedule, n=len(c),
                       method="ddim", steps=50, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .diffusion import Denoiser, NoiseSchedule
from .errors import CohereError

METHODS = ("ddpm", "ddim", "dpmpp2m")
CONSENSUS = ("average", "product")
VARIANCES = ("fixed", "analytic")
DEFAULT_STEPS = 50  # for "ddim" and "dpmpp2m" when steps is None


@dataclass
class Member:
    """One denoiser of the consensus and what it is conditioned on for this batch.

    ``conds``: one tensor (n, c_i) per condition of the model, in the order of its
    ``config.cond_dims``; ``mask``: (n, k) 0/1 presence or None (all present); ``weight``:
    non-negative (normalised to sum to one by the "average" consensus, used as given by the
    "product" one); ``offset``: (n, d) the mean the network was trained around, or None;
    ``noise_error``: (2^k, T) the network's noise-prediction error E||eps - eps_theta||^2 / d
    at every timestep for each presence pattern of its k conditions (row sum_i mask_i 2^i), or
    None; the analytic variance needs it.
    """

    model: Denoiser
    conds: Sequence[Tensor] = ()
    mask: Tensor | None = None
    weight: float = 1.0
    offset: Tensor | None = None
    noise_error: Tensor | None = None

    def _rows(self, f) -> "Member":
        return Member(self.model, [f(c) for c in self.conds], None if self.mask is None else f(self.mask),
                      self.weight, None if self.offset is None else f(self.offset), self.noise_error)

    def tile(self, draws: int) -> "Member":
        """The same member for ``draws`` copies of its rows, draw-major: (draws * n, ...)."""
        return self._rows(lambda a: a.repeat(draws, 1))

    def take(self, index: Tensor) -> "Member":
        """The same member for the rows ``index`` only."""
        return self._rows(lambda a: a[index])

    def to(self, device) -> "Member":
        m = self._rows(lambda a: a.to(device, torch.float32 if a.is_floating_point() else a.dtype))
        if m.noise_error is not None:
            m.noise_error = m.noise_error.to(device, torch.float32)
        return m

    def patterns(self, n: int) -> Tensor:
        """(n,) the presence pattern of each row's conditions, sum_i mask_i 2^i."""
        k = len(self.conds)
        if self.mask is None:
            return torch.full((n,), 2**k - 1, dtype=torch.long)
        bits = 2 ** torch.arange(k, device=self.mask.device)  # (k,)
        return ((self.mask > 0).long() * bits).sum(1)  # (n,)

    def eps(self, x: Tensor, t: Tensor, sqrt_abar: float) -> Tensor:
        """The network's noise prediction at x_t (n, d), its input shifted by its offset."""
        x_in = x if self.offset is None else x - sqrt_abar * self.offset  # (n, d)
        return self.model(x_in, t, self.conds, self.mask)


class StepInfo(NamedTuple):
    """What ``on_step`` receives at each reverse step (before the update is applied)."""

    index: int  # 0-based position in the loop
    t: int  # the timestep being denoised
    x_t: Tensor  # (n, d)
    eps_members: Tensor  # (k, n, d) each member's prediction
    weights: Tensor  # (k,) the weights (normalised to sum to one)
    eps: Tensor  # (n, d) the consensus


def timesteps(schedule: NoiseSchedule, method: str, steps: int | None) -> list[int]:
    """The descending timesteps a method visits: all T for "ddpm", S trailing otherwise."""
    if method not in METHODS:
        raise CohereError(f"unknown sampling method {method!r}; expected one of {', '.join(METHODS)}")
    T = schedule.num_train_timesteps
    if method == "ddpm":
        if steps not in (None, T):
            raise CohereError(f"method 'ddpm' runs all {T} steps; got steps={steps} (use 'ddim' or "
                              "'dpmpp2m' for fewer steps)")
        return list(range(T - 1, -1, -1))
    if steps is None:
        steps = DEFAULT_STEPS
    return schedule.ddim_timesteps(steps).tolist()


def _check_members(members: Sequence[Member], n: int, d: int) -> Tensor:
    if not members:
        raise CohereError("sampling needs at least one member (a denoiser and its conditions)")
    weights = []
    for i, m in enumerate(members):
        if not isinstance(m, Member) or not isinstance(m.model, Denoiser):
            raise CohereError(f"members[{i}] must be a Member holding a Denoiser")
        if m.model.training:
            raise CohereError(f"members[{i}]: the denoiser is in training mode; call .eval() first "
                              "(BatchNorm would otherwise mix the rows of the batch)")
        if m.model.config.latent_dim != d:
            raise CohereError(f"members[{i}] generates {m.model.config.latent_dim}-d latents, the "
                              f"others {d}-d; combine models of one target only")
        if len(m.conds) != m.model.num_conds:
            raise CohereError(f"members[{i}]: expected {m.model.num_conds} condition tensors, got {len(m.conds)}")
        for c in m.conds:
            if c.shape[0] != n:
                raise CohereError(f"members[{i}]: condition has {c.shape[0]} rows, expected n = {n}")
        if m.offset is not None and tuple(m.offset.shape) != (n, d):
            raise CohereError(f"members[{i}]: offset must have shape ({n}, {d}), got {tuple(m.offset.shape)}")
        if m.noise_error is not None and (m.noise_error.dim() != 2 or m.noise_error.shape[0] != 2 ** len(m.conds)):
            raise CohereError(f"members[{i}]: noise_error must have shape ({2 ** len(m.conds)}, T), "
                              f"got {tuple(m.noise_error.shape)}")
        w = float(m.weight)
        if not w >= 0 or w == float("inf"):
            raise CohereError(f"members[{i}]: weight must be finite and >= 0, got {m.weight}")
        weights.append(w)
    w = torch.tensor(weights, dtype=torch.float64)
    if w.sum() <= 0:
        raise CohereError("member weights sum to zero; give at least one a positive weight")
    return w.float()  # (k,) as given


@torch.no_grad()
def sample_latents(
    members: Sequence[Member],
    schedule: NoiseSchedule,
    n: int,
    method: str = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    x0_bounds: tuple[Tensor, Tensor] | None = None,
    consensus: str = "average",
    prior: Sequence[Member] = (),
    variance: str = "fixed",
) -> Tensor:
    """Run the reverse process for ``n`` rows at once and return x_0: (n, latent_dim).

    ``method``: "ddpm" (ancestral, all T steps, sigma_t^2 = beta_t as the paper), "ddim"
    (``steps`` trailing timesteps, default 50; ``eta`` = 0 deterministic, 1 ancestral-like) or "dpmpp2m"
    (DPM-Solver++(2M), ``steps`` trailing timesteps, deterministic). ``generator`` (on the
    models' device) draws x_T and the ancestral noise; ``x_T`` (n, d) replaces the first draw.
    ``x0_bounds``: (low, high) tensors (d,) that x0_hat is clamped to at every step (None = off).
    ``consensus``: "average" or "product" (module docstring); the product rule needs ``prior``,
    the unconditional members whose weight-averaged prediction is eps_u (not needed, and not
    run, for a single member of weight 1). ``variance`` ("ddim" only): "fixed" (DDIM's
    eta^2 beta_tilde) or "analytic" (from the members' ``noise_error``; module docstring).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CohereError(f"n must be a positive int (rows to generate), got {n!r}")
    if consensus not in CONSENSUS:
        raise CohereError(f"unknown consensus {consensus!r}; expected one of {', '.join(CONSENSUS)}")
    d = members[0].model.config.latent_dim if members else 0
    w = _check_members(members, n, d)
    ts = timesteps(schedule, method, steps)
    if eta < 0:
        raise CohereError(f"eta must be >= 0, got {eta}")
    device = next(members[0].model.parameters()).device
    w = w.to(device)
    members = [m.to(device) for m in members]
    product = consensus == "product" and not (len(members) == 1 and float(w[0]) == 1.0)
    if product:
        if not prior:
            raise CohereError("the product consensus needs an unconditional prediction of the target "
                              "(prior members); use consensus='average' for experts without one")
        w_u = _check_members(prior, n, d).to(device)
        w_u = w_u / w_u.sum()
        prior = [m.to(device) for m in prior]
    w_avg = w / w.sum()  # (k,)
    if variance not in VARIANCES:
        raise CohereError(f"unknown variance {variance!r}; expected one of {', '.join(VARIANCES)}")
    analytic = variance == "analytic" and method == "ddim"
    if analytic:
        used = [*members, *(prior if product else [])]
        if any(m.noise_error is None for m in used):
            raise CohereError("the analytic variance needs every model's noise_error profile (models trained by "
                              "this cohere record one); use variance='fixed' for older models")
        if any(m.noise_error.shape[1] != schedule.num_train_timesteps for m in used):
            raise CohereError("a noise_error profile does not cover the schedule's timesteps")
        errors = [m.noise_error[m.patterns(n).to(device)] for m in members]  # k x (n, T)
        prior_errors = [m.noise_error[m.patterns(n).to(device)] for m in prior] if product else []
    if x_T is None:
        x = torch.randn(n, d, generator=generator, device=device)  # (n, d) x_T ~ N(0, I)
    else:
        if tuple(x_T.shape) != (n, d):
            raise CohereError(f"x_T must have shape ({n}, {d}), got {tuple(x_T.shape)}")
        x = x_T.to(device, torch.float32)

    if x0_bounds is not None:
        low, high = (torch.as_tensor(b, dtype=torch.float32, device=device) for b in x0_bounds)
        if low.shape != (d,) or high.shape != (d,) or not bool((low <= high).all()):
            raise CohereError(f"x0_bounds must be two ({d},) tensors with low <= high")

    last_x0, last_t = None, None
    for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [-1])):
        tt = torch.full((n,), t, device=device, dtype=torch.long)  # (n,)
        sa = math.sqrt(float(schedule.alphas_cumprod[t]))
        eps_k = torch.stack([m.eps(x, tt, sa) for m in members])  # (k, n, d)
        if product:
            eps_u = torch.einsum("j,jnd->nd", w_u, torch.stack([m.eps(x, tt, sa) for m in prior]))  # (n, d)
            eps = eps_u + torch.einsum("k,knd->nd", w, eps_k - eps_u)  # (n, d)
        else:
            eps = eps_k[0] if len(members) == 1 else torch.einsum("k,knd->nd", w_avg, eps_k)  # (n, d)
        if x0_bounds is not None:  # clamp x0_hat, then the eps consistent with it (eq. 4 solved for eps)
            abar = float(schedule.alphas_cumprod[t])
            x0 = schedule.predict_x0(eps, t, x).clamp(low, high)  # (n, d)
            eps = (x - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)  # (n, d)
        if on_step is not None:
            on_step(StepInfo(i, t, x, eps_k, w_avg, eps))
        if method == "ddpm":
            x = schedule.ddpm_step(eps, t, x, generator=generator).prev_sample  # (n, d)
        elif method == "ddim":
            r = _consensus_error([e[:, t] for e in errors], w, [e[:, t] for e in prior_errors], w_u if product else None,
                                 product)[:, None] if analytic else None  # (n, 1)
            x = schedule.ddim_step(eps, t, t_prev, x, eta=eta, generator=generator, noise_error=r).prev_sample  # (n, d)
        else:
            out = schedule.dpmpp_2m_step(eps, t, t_prev, x, last_x0, last_t)
            x, last_x0, last_t = out.prev_sample, out.pred_original_sample, t
    return x


def _consensus_error(errors: list[Tensor], w: Tensor, prior_errors: list[Tensor], w_u: Tensor | None,
                     product: bool) -> Tensor:
    """(n,) the consensus's noise-prediction error from its members' (each (n,)): 1/r adds up
    like a precision, with the same weights as the predictions (module docstring)."""
    inv = [1.0 / e.clamp(1e-4, 1.0) for e in errors]  # k x (n,)
    if len(errors) == 1 and not product:
        return errors[0]
    if product:
        inv_u = 1.0 / torch.stack(prior_errors).mul(w_u[:, None]).sum(0).clamp(1e-4, 1.0)  # (n,)
        total = inv_u + sum(wi * (v - inv_u) for wi, v in zip(w, inv))
    else:
        total = sum(wi * v for wi, v in zip(w / w.sum(), inv))
    return 1.0 / total.clamp(min=1.0)  # (n,) an error of at most 1 (the prior's own, with no information)


# ---------------------------------------------------------------- coherence and rejection


def coherence(eps_members: Tensor, weights: Tensor) -> Tensor:
    """Per row, the weighted mean pairwise cosine distance of the members' eps (paper,
    "Coherent Denoising"): d_ij = 1 - cos(eps_i, eps_j), pair weight (w_i + w_j) / 2.

    ``eps_members`` (k, n, d), ``weights`` (k,) -> (n,). 0 = all agree; 2 = opposite.
    One member (or no weighted pair) is perfectly coherent.
    """
    k, n = eps_members.shape[:2]
    if k < 2:
        return eps_members.new_zeros(n)
    unit = torch.nn.functional.normalize(eps_members, dim=-1)       # (k, n, d)
    i, j = torch.triu_indices(k, k, 1, device=unit.device)          # (p,), (p,)
    dist = 1.0 - (unit[i] * unit[j]).sum(-1)                         # (p, n)
    pair_w = (weights[i] + weights[j]) / 2                           # (p,)
    if float(pair_w.sum()) <= 0:
        return eps_members.new_zeros(n)
    return (pair_w[:, None] * dist).sum(0) / pair_w.sum()           # (n,)


@dataclass
class Generation:
    """K draws for each of n rows, with the consensus diagnostics per draw.

    ``draws`` (K, n, d); ``attempts`` (K, n) trajectories run for that draw;
    ``bad_fraction`` (K, n) fraction of steps whose coherence exceeded the threshold in the
    kept attempt; ``accepted`` (K, n) whether the kept attempt passed the rejection test.
    """

    draws: Tensor
    attempts: Tensor
    bad_fraction: Tensor
    accepted: Tensor

    @property
    def mean(self) -> Tensor:            # (n, d)
        return self.draws.mean(0)

    @property
    def variance(self) -> Tensor:        # (n, d) across draws (0 for a single draw)
        k = self.draws.shape[0]
        return self.draws.var(0, unbiased=False) if k > 1 else torch.zeros_like(self.draws[0])


def recenter(draws: Tensor, point: Tensor, alpha: float) -> Tensor:
    """Stack the mean of ``draws`` (K, n, d) with a point prediction ``point`` (n, d): shift
    every draw of a row by the same vector so that the mean of its K draws becomes
    ``alpha`` * (their mean) + (1 - ``alpha``) * ``point``. The spread of the draws around their
    mean is untouched; with one draw (K = 1) there is no mean to stack and the draw is
    returned as it is. ``alpha`` = 1 leaves the draws unchanged."""
    if draws.shape[0] < 2 or alpha >= 1.0:
        return draws
    return draws - (1.0 - alpha) * (draws.mean(0, keepdim=True) - point.to(draws)[None])


@torch.no_grad()
def generate(
    members: Sequence[Member],
    schedule: NoiseSchedule,
    n: int,
    draws: int = 1,
    method: str = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    threshold: float = 1.0,
    fraction: float = 0.10,
    attempts: int = 10,
    x0_bounds: tuple[Tensor, Tensor] | None = None,
    consensus: str = "average",
    prior: Sequence[Member] = (),
    variance: str = "fixed",
) -> Generation:
    """Coherent Denoising with rejection: ``draws`` samples for each of ``n`` rows.

    Draws and rows run as one batch (row r of draw k is batch row k * n + r). A trajectory
    whose coherence exceeds ``threshold`` on more than ``fraction`` of its steps is rejected
    and only the rejected rows are regenerated from fresh noise, up to ``attempts`` in all;
    the attempt with the fewest incoherent steps is kept. The paper's code uses 1.0 / 0.10 / 10.
    ``x0_bounds``, ``consensus``, ``prior`` and ``variance`` are passed to :func:`sample_latents`.
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise CohereError(f"draws must be a positive int, got {draws!r}")
    if not 0 <= fraction <= 1:
        raise CohereError(f"fraction must be in [0, 1], got {fraction}")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise CohereError(f"attempts must be an int >= 1, got {attempts!r}")
    if not threshold >= 0:
        raise CohereError(f"threshold must be >= 0 (cosine distances lie in [0, 2]), got {threshold}")
    members = [m for m in members if float(m.weight) > 0]   # a zero weight has no effect at all
    if not members:
        raise CohereError("no member with a positive weight; give at least one a weight > 0")
    device = next(members[0].model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = n * draws
    tiled = [m.tile(draws) for m in members]
    tiled_prior = [m.tile(draws) for m in prior]
    n_steps = len(timesteps(schedule, method, steps))

    def run(index: Tensor) -> tuple[Tensor, Tensor]:
        bad = torch.zeros(len(index), device=device)

        def count(info: StepInfo) -> None:
            bad.add_((coherence(info.eps_members, info.weights) > threshold).float())

        x = sample_latents([m.take(index) for m in tiled], schedule, len(index), method, steps, eta, generator,
                           on_step=count, x0_bounds=x0_bounds, consensus=consensus,
                           prior=[m.take(index) for m in tiled_prior], variance=variance)
        return x, bad / n_steps

    everyone = torch.arange(rows, device=device)
    best_x, best_bad = run(everyone)                                  # (rows, d), (rows,)
    tries = torch.ones(rows, dtype=torch.long, device=device)
    for _ in range(attempts - 1):
        redo = everyone[best_bad > fraction]
        if len(redo) == 0:
            break
        x, bad = run(redo)
        tries[redo] += 1
        better = bad < best_bad[redo]
        best_x[redo[better]] = x[better]
        best_bad[redo[better]] = bad[better]
    d = best_x.shape[1]
    return Generation(best_x.reshape(draws, n, d), tries.reshape(draws, n),
                      best_bad.reshape(draws, n), (best_bad <= fraction).reshape(draws, n))
