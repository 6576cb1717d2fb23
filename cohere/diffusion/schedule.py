"""The DDPM noise schedule and the samplers' single steps (DDPM, DDIM, DPM-Solver++(2M)).

Split as in diffusers: ``NoiseSchedule`` owns the coefficients and one ``*_step`` per sampler;
the caller owns the loop (and, for DPM-Solver++, the previous x0 prediction). Notation follows
DDPM (Ho et al. 2020): ``beta_t`` linear in t, ``alpha_t = 1 - beta_t``,
``abar_t = prod_{s<=t} alpha_s`` and

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)                       (Ho et al., eq. 4)

Timesteps are 0-indexed, ``0..T-1``; ``t = 0`` is the least noisy. A target timestep of ``-1``
means "clean data" (``abar_{-1} = 1``), which is what diffusers does for DDPM and, with its
default ``set_alpha_to_one=True``, for DDIM; DPM-Solver++ reaches the same point through its
default ``final_sigmas_type="zero"``.

The loops below reproduce diffusers' schedulers (``clip_sample=False``, ``thresholding=False``,
``prediction_type="epsilon"``, linear betas)::

    sched = NoiseSchedule()
    x = torch.randn(n, d, generator=g)
    for t in range(sched.num_train_timesteps - 1, -1, -1):           # DDPMScheduler, fixed_large
        x = sched.ddpm_step(model(x, t), t, x, generator=g).prev_sample

    ts = sched.ddim_timesteps(50).tolist()                           # DDIM, trailing spacing
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x = sched.ddim_step(model(x, t), t, t_prev, x).prev_sample

    last_x0 = last_t = None                                          # DPM-Solver++(2M)
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        out = sched.dpmpp_2m_step(model(x, t), t, t_prev, x, last_x0, last_t)
        x, last_x0, last_t = out.prev_sample, out.pred_original_sample, t
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from cohere.errors import CohereError


class StepOutput(NamedTuple):
    """One sampler step: the less noisy sample and the model's estimate of x_0 behind it."""

    prev_sample: Tensor  # (n, d) x_{t_prev}
    pred_original_sample: Tensor  # (n, d) x0_hat(x_t, eps)


class NoiseSchedule(nn.Module):
    """Linear-beta DDPM schedule (Ho et al. 2020, Sec. 4) with no weights, only buffers.

    Coefficients are computed in float64 and registered as float32 buffers (non-persistent, so
    they move with ``.to(device)`` but never enter a state dict): ``betas``, ``alphas``,
    ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``posterior_variance`` (beta_tilde_t, eq. 7),
    ``posterior_mean_coef1`` and ``posterior_mean_coef2`` (eq. 7), each of shape (T,).

    The per-step scalars of the samplers are Python floats taken from a float64 CPU copy of
    abar_t, so stepping is device-agnostic, never syncs an accelerator, and only rounds once
    (when the scalar meets the tensor's dtype).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise CohereError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise CohereError(f"expected 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        self.num_train_timesteps = num_train_timesteps
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)

        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)  # (T,)
        alphas = 1.0 - betas  # (T,)
        abar = torch.cumprod(alphas, dim=0)  # (T,)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])  # (T,) abar_{t-1}, abar_{-1} = 1
        self._abar64 = abar  # float64 on CPU, deliberately not a buffer (see class docstring)
        coefs = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "posterior_variance": betas * (1.0 - abar_prev) / (1.0 - abar),  # beta_tilde_t, eq. 7
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),  # multiplies x_0, eq. 7
            "posterior_mean_coef2": alphas.sqrt() * (1.0 - abar_prev) / (1.0 - abar),  # multiplies x_t, eq. 7
        }
        for name, value in coefs.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return f"num_train_timesteps={self.num_train_timesteps}, beta_start={self.beta_start}, beta_end={self.beta_end}"

    # ----------------------------------------------------------------------------- helpers

    def _abar(self, t: int) -> float:
        """abar_t as a Python float (float64); abar_{-1} = 1 (clean data)."""
        return 1.0 if t == -1 else float(self._abar64[t])

    def _timestep(self, t, name: str = "t", allow_minus_one: bool = False) -> int:
        if isinstance(t, Tensor):
            if t.numel() != 1 or t.is_floating_point():
                raise CohereError(
                    f"{name} must be a single integer timestep, got a tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
                )
            t = int(t.item())
        elif isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            t = int(t)
        else:
            raise CohereError(f"{name} must be an int timestep, got {type(t).__name__}")
        low = -1 if allow_minus_one else 0
        if not low <= t < self.num_train_timesteps:
            raise CohereError(f"{name} must be in [{low}, {self.num_train_timesteps - 1}], got {t}")
        return t

    @staticmethod
    def _check_pair(eps: Tensor, x_t: Tensor) -> None:
        if not isinstance(eps, Tensor) or not isinstance(x_t, Tensor):
            raise CohereError("eps and x_t must be torch tensors")
        if eps.shape != x_t.shape:
            raise CohereError(f"eps and x_t must have the same shape, got {tuple(eps.shape)} and {tuple(x_t.shape)}")
        if not (eps.is_floating_point() and x_t.is_floating_point()):
            raise CohereError(f"eps and x_t must be floating point, got {eps.dtype} and {x_t.dtype}")

    @staticmethod
    def _noise_like(x: Tensor, generator: torch.Generator | None, noise: Tensor | None) -> Tensor:
        """The ancestral noise: ``noise`` if given, else a draw from ``generator`` (as diffusers does)."""
        if noise is not None:
            if generator is not None:
                raise CohereError("pass either generator or noise, not both")
            if noise.shape != x.shape:
                raise CohereError(f"noise must have the sample's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
            return noise.to(device=x.device, dtype=x.dtype)
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def predict_x0(self, eps: Tensor, t: int, x_t: Tensor) -> Tensor:
        """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (Ho et al., eq. 15, inverted eq. 4)."""
        t = self._timestep(t)
        self._check_pair(eps, x_t)
        abar_t = self._abar(t)
        return (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)  # (n, d)

    # ----------------------------------------------------------------------------- forward process

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """Sample q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise  (Ho et al., eq. 4).

        ``x0`` and ``noise``: (n, ...) of the same shape; ``t``: LongTensor (n,) (one timestep
        per row) or an int for the whole batch.
        """
        if not isinstance(x0, Tensor) or not isinstance(noise, Tensor) or x0.shape != noise.shape:
            got = [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for v in (x0, noise)]
            raise CohereError(f"x0 and noise must be tensors of the same shape, got {got[0]} and {got[1]}")
        if x0.dim() < 1:
            raise CohereError("x0 must have a batch dimension: expected shape (n, d)")
        n = x0.shape[0]
        if not isinstance(t, Tensor):
            t = torch.full((n,), self._timestep(t), dtype=torch.long)
        if t.is_floating_point() or t.dtype == torch.bool or t.shape != (n,):
            raise CohereError(f"t must be an integer tensor of shape ({n},), got dtype {t.dtype} and shape {tuple(t.shape)}")
        t = t.to(self.alphas_cumprod.device, torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            lo, hi = int(t.min()), int(t.max())
            raise CohereError(f"t must lie in [0, {self.num_train_timesteps - 1}], got values in [{lo}, {hi}]")
        shape = (n,) + (1,) * (x0.dim() - 1)
        a = self.sqrt_alphas_cumprod[t].to(x0.device, x0.dtype).view(shape)  # (n, 1)
        s = self.sqrt_one_minus_alphas_cumprod[t].to(x0.device, x0.dtype).view(shape)  # (n, 1)
        return a * x0 + s * noise  # (n, d)

    # ----------------------------------------------------------------------------- samplers

    def ddpm_step(
        self,
        eps: Tensor,
        t: int,
        x_t: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """One ancestral DDPM step x_t -> x_{t-1} (Ho et al., Algorithm 2), sigma_t^2 = beta_t.

            x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps) + sigma_t z,   z ~ N(0, I)

        written, as in diffusers, through x0_hat (eq. 15) and the posterior mean of eq. 7,
        which is the same mean. ``sigma_t^2 = beta_t`` is diffusers' ``variance_type="fixed_large"``;
        no clipping of x0_hat. At ``t == 0`` no noise is added and ``generator`` is not used.
        ``noise`` (shape of ``x_t``) replaces the draw from ``generator``.
        """
        t = self._timestep(t)
        self._check_pair(eps, x_t)
        abar_t, abar_prev = self._abar(t), self._abar(t - 1)
        alpha_t = abar_t / abar_prev
        beta_t = 1.0 - alpha_t
        x0 = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)  # (n, d) eq. 15
        c0 = math.sqrt(abar_prev) * beta_t / (1.0 - abar_t)  # eq. 7, coefficient of x_0
        ct = math.sqrt(alpha_t) * (1.0 - abar_prev) / (1.0 - abar_t)  # eq. 7, coefficient of x_t
        mean = c0 * x0 + ct * x_t  # (n, d) mu_theta(x_t, t)
        if t > 0:
            mean = mean + math.sqrt(beta_t) * self._noise_like(x_t, generator, noise)  # (n, d)
        return StepOutput(mean, x0)

    def ddim_timesteps(self, num_steps: int, spacing: str = "trailing") -> Tensor:
        """Descending LongTensor (num_steps,) of the timesteps a DDIM/DPM-Solver loop visits.

        ``"trailing"`` (default; Lin et al. 2023, Table 2) starts at T-1 and equals diffusers'
        ``timestep_spacing="trailing"`` for DDIMScheduler and DPMSolverMultistepScheduler,
        including its float rounding (``np.arange(T, 0, -T/S)``), except that the spurious
        extra timestep -1 that diffusers emits for some S (e.g. S=61 with T=1000) is dropped.
        ``"leading"`` is ``arange(S) * (T // S)`` reversed: DDIMScheduler's "leading" with
        ``steps_offset=0`` (DPMSolverMultistepScheduler's "leading" uses S+1 points; not matched).
        """
        T = self.num_train_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= T:
            raise CohereError(f"num_steps must be an int in [1, {T}], got {num_steps!r}")
        num_steps = int(num_steps)
        if spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / num_steps))[:num_steps].astype(np.int64) - 1
        elif spacing == "leading":
            ts = (np.arange(num_steps) * (T // num_steps))[::-1].astype(np.int64)
        else:
            raise CohereError(f"spacing must be 'trailing' or 'leading', got {spacing!r}")
        return torch.from_numpy(ts.copy())

    def ddim_step(
        self,
        eps: Tensor,
        t: int,
        t_prev: int,
        x_t: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        noise_error: float | Tensor | None = None,
    ) -> StepOutput:
        """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12):

            x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps + sigma z,
            s^2 = eta^2 (1 - abar_prev)/(1 - abar_t) (1 - abar_t/abar_prev)   (eta^2 * beta_tilde)

        and sigma = s, or, given ``noise_error`` r = E||eps - eps_theta(x_t)||^2 / d (the
        model's noise-prediction error at t on held-out data; a float, or an (n, 1) tensor per
        row), the optimal variance of a Gaussian reverse step with that mean (Analytic-DPM,
        Bao et al. 2022, eq. 7, where r = 1 - E||eps_theta||^2 / d for a perfect model; Bao
        et al. 2022b for an imperfect mean):

            sigma^2 = s^2 + (sqrt((1 - abar_t) / alpha) - sqrt(1 - abar_prev - s^2))^2 r,
            alpha = abar_t / abar_prev.

        The second term is the uncertainty of x_0 given x_t that the point estimate x0_hat
        drops, (1 - abar_t)/abar_t r per dimension, carried through the step: with few steps s^2
        alone makes the samples far too narrow.

        ``t_prev = -1`` is the final step to clean data, with abar_prev = 1 (diffusers'
        ``set_alpha_to_one=True``, its default; ``False`` would use abar_0 instead). With
        ``eta = 1`` and ``t_prev = t - 1`` the mean is DDPM's posterior mean, but the variance is
        beta_tilde_t, not DDPM's beta_t. As in diffusers, noise is drawn whenever ``eta > 0``
        (also at the last step, where s = 0), so a shared ``generator`` stays in step with it.

        Note: diffusers' DDIMScheduler itself always uses ``t_prev = t - T // S``, which differs
        from the next listed timestep when S does not divide T; pass that t_prev to reproduce it.
        """
        t = self._timestep(t)
        t_prev = self._timestep(t_prev, "t_prev", allow_minus_one=True)
        if t_prev >= t:
            raise CohereError(f"t_prev must be smaller than t, got t={t}, t_prev={t_prev}")
        if eta < 0:
            raise CohereError(f"eta must be >= 0, got {eta}")
        self._check_pair(eps, x_t)
        abar_t, abar_prev = self._abar(t), self._abar(t_prev)
        x0 = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)  # (n, d)
        var = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)  # beta_tilde for t -> t_prev
        std = eta * math.sqrt(var)
        direction = math.sqrt(max(1.0 - abar_prev - std**2, 0.0))
        prev = math.sqrt(abar_prev) * x0 + direction * eps  # (n, d)
        if noise_error is not None:  # Analytic-DPM: add the x_0 uncertainty behind x0_hat
            gap = (math.sqrt((1.0 - abar_t) * abar_prev / abar_t) - direction) ** 2
            r = torch.clamp(torch.as_tensor(noise_error, dtype=x_t.dtype, device=x_t.device), 0.0, 1.0)
            sigma = torch.sqrt(std**2 + gap * r)  # scalar or (n, 1)
            return StepOutput(prev + sigma * self._noise_like(x_t, generator, noise), x0)
        if eta > 0:
            prev = prev + std * self._noise_like(x_t, generator, noise)  # (n, d)
        return StepOutput(prev, x0)

    def dpmpp_2m_step(
        self,
        eps: Tensor,
        t: int,
        t_prev: int,
        x_t: Tensor,
        last_x0: Tensor | None = None,
        last_t: int | None = None,
    ) -> StepOutput:
        """One DPM-Solver++(2M) step x_t -> x_{t_prev} (Lu et al. 2022, Algorithm 2, data prediction).

        With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma),
        h = lambda_prev - lambda_t and D0 = x0_hat(x_t, eps):

            first order (DDIM):  x_prev = sigma_prev/sigma_t x_t - alpha_prev (e^{-h} - 1) D0
            second order:        same with D0 + D1/2, D1 = (h / h_last)(D0 - last_x0),
                                 h_last = lambda_t - lambda_{last_t}       ("midpoint" solver)

        ``last_x0`` / ``last_t``: the ``pred_original_sample`` returned by the previous call of
        the loop and that call's ``t`` (both or neither). The step is first order when they are
        absent (the first step) and when ``t_prev == -1`` (the last step, sigma_prev = 0, which
        returns x0_hat exactly), i.e. diffusers' DPMSolverMultistepScheduler with
        ``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``,
        ``lower_order_final=True`` and its default ``final_sigmas_type="zero"``.
        """
        t = self._timestep(t)
        t_prev = self._timestep(t_prev, "t_prev", allow_minus_one=True)
        if t_prev >= t:
            raise CohereError(f"t_prev must be smaller than t, got t={t}, t_prev={t_prev}")
        if (last_x0 is None) != (last_t is None):
            raise CohereError("pass last_x0 and last_t together (the previous step's pred_original_sample and its t), or neither")
        self._check_pair(eps, x_t)
        abar_t = self._abar(t)
        x0 = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)  # (n, d) D0
        if t_prev == -1:  # sigma_prev = 0, h = inf: the first-order update is exactly x0_hat
            return StepOutput(x0, x0)

        def lam(a: float) -> float:
            return 0.5 * (math.log(a) - math.log1p(-a))  # log(sqrt(a) / sqrt(1 - a))

        abar_prev = self._abar(t_prev)
        alpha_prev, sigma_prev, sigma_t = math.sqrt(abar_prev), math.sqrt(1.0 - abar_prev), math.sqrt(1.0 - abar_t)
        h = lam(abar_prev) - lam(abar_t)
        d = x0  # (n, d)
        if last_x0 is not None:
            last_t = self._timestep(last_t, "last_t")
            if last_t <= t:
                raise CohereError(f"last_t must be larger (noisier) than t, got last_t={last_t}, t={t}")
            if last_x0.shape != x0.shape:
                raise CohereError(f"last_x0 must have shape {tuple(x0.shape)}, got {tuple(last_x0.shape)}")
            h_last = lam(abar_t) - lam(self._abar(last_t))
            d = x0 + 0.5 * (h / h_last) * (x0 - last_x0.to(x0.dtype))  # (n, d) D0 + D1/2
        prev = (sigma_prev / sigma_t) * x_t - alpha_prev * math.expm1(-h) * d  # (n, d)
        return StepOutput(prev, x0)
