"""The paper's noise network: an MLP eps_theta(x_t, t, c_1..c_k) over latent vectors.

    temb = ReLU(Linear(sinusoid(t)))                                   (n, time_dim)
    e_i  = ReLU(Linear(c_i)) * m_i       for each condition i          (n, cond_emb_dim)
    h    = [x_t, temb, e_1, ..., e_k]
    h    = [ReLU(BatchNorm(Linear(h))), temb]    repeated `layers` times
    eps  = Linear(h)                                                   (n, latent_dim)

``m_i`` is the 0/1 presence mask of condition i. A single-condition expert has
``cond_dims=(32,)``; the multi-condition model has one entry per source modality;
``cond_dims=()`` is unconditional. Parameter names (``time_proj``, ``cond_proj.{i}``,
``blocks.{j}.linear``, ``blocks.{j}.norm``, ``out``) are part of the saved format: keep them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cohere.errors import CohereError


@dataclass
class DenoiserConfig:
    latent_dim: int = 32  # d, width of x_t and of the predicted eps
    cond_dims: tuple[int, ...] = (32,)  # c_i, width of each condition; () = unconditional
    hidden: int = 512  # width of each hidden layer
    layers: int = 5  # number of hidden Linear -> BatchNorm1d -> ReLU layers
    time_dim: int = 128  # sinusoidal time embedding width (even)
    cond_emb_dim: int = 32  # width of each condition's embedding

    def __post_init__(self):
        if isinstance(self.cond_dims, int) or not isinstance(self.cond_dims, Sequence):
            raise CohereError(f"cond_dims must be a sequence of ints (one per condition), got {self.cond_dims!r}")
        self.cond_dims = tuple(self.cond_dims)  # a JSON round trip gives a list
        for name in ("latent_dim", "hidden", "layers", "time_dim", "cond_emb_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CohereError(f"DenoiserConfig.{name} must be a positive int, got {v!r}")
        if self.time_dim % 2:
            raise CohereError(f"DenoiserConfig.time_dim must be even (sin and cos halves), got {self.time_dim}")
        for c in self.cond_dims:
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise CohereError(f"DenoiserConfig.cond_dims must hold positive ints, got {self.cond_dims!r}")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM / the Transformer:
    [sin(t w_0..w_{dim/2-1}), cos(t w_0..w_{dim/2-1})] with w_j = max_period^(-j/(dim/2)).
    t: (n,) -> (n, dim), float32.

    The authors' code (r-marchesi/coherent-genAI) uses w_j = max_period^(-j/(dim/2 - 1)), so
    the first layer sees other frequencies and weights cannot be moved between the two
    codebases (each trains and samples consistently with its own). cohere keeps the DDPM /
    diffusers convention; it is part of the saved format."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)  # (half,)
    args = t.float()[:, None] * freqs[None]  # (n, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (n, dim)


class Block(nn.Module):
    """Linear -> BatchNorm1d -> ReLU."""

    def __init__(self, fan_in: int, fan_out: int):
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out)
        self.norm = nn.BatchNorm1d(fan_out)

    def forward(self, h: Tensor) -> Tensor:
        return torch.relu(self.norm(self.linear(h)))


class Denoiser(nn.Module):
    """eps_theta(x_t, t, conds, mask): predicts the noise in x_t (Ho et al. 2020, eq. 14)."""

    def __init__(self, config: DenoiserConfig | None = None):
        super().__init__()
        config = DenoiserConfig() if config is None else config
        if not isinstance(config, DenoiserConfig):
            raise CohereError(f"config must be a DenoiserConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.time_proj = nn.Linear(c.time_dim, c.time_dim)
        self.cond_proj = nn.ModuleList([nn.Linear(ci, c.cond_emb_dim) for ci in c.cond_dims])
        fan_in = c.latent_dim + c.time_dim + len(c.cond_dims) * c.cond_emb_dim
        self.blocks = nn.ModuleList([Block(fan_in if j == 0 else c.hidden + c.time_dim, c.hidden) for j in range(c.layers)])
        self.out = nn.Linear(c.hidden + c.time_dim, c.latent_dim)

    @property
    def num_conds(self) -> int:
        return len(self.config.cond_dims)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor | int | float,
        conds: Sequence[Tensor] = (),
        mask: Tensor | None = None,
    ) -> Tensor:
        """x_t: (n, latent_dim); t: (n,) int or float timesteps, or one for the whole batch;
        conds: k tensors (n, c_i), in the order of ``config.cond_dims``; mask: (n, k) 0/1
        (float or bool), None = every condition present. Where ``mask[r, i] == 0`` the value of
        ``conds[i][r]`` is never read (it may be NaN/inf): its embedding is exactly zero.
        Returns eps: (n, latent_dim)."""
        c, k = self.config, self.num_conds
        if not isinstance(x_t, Tensor) or x_t.dim() != 2 or x_t.shape[1] != c.latent_dim:
            raise CohereError(f"x_t must be a tensor of shape (n, {c.latent_dim}), got {tuple(getattr(x_t, 'shape', ()))}")
        n = x_t.shape[0]
        if not isinstance(t, Tensor):
            t = torch.tensor(t, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise CohereError(f"t must have shape ({n},) or be a scalar, got {tuple(t.shape)}")
        if isinstance(conds, Tensor) or len(conds) != k:
            got = "a tensor" if isinstance(conds, Tensor) else f"{len(conds)}"
            raise CohereError(f"expected a list of {k} condition tensors (cond_dims={c.cond_dims}), got {got}")
        for i, (ci, cond) in enumerate(zip(c.cond_dims, conds)):
            if not isinstance(cond, Tensor) or cond.shape != (n, ci):
                raise CohereError(f"conds[{i}] must have shape ({n}, {ci}), got {tuple(getattr(cond, 'shape', ()))}")
        if mask is None:
            mask = x_t.new_ones(n, k)  # (n, k)
        elif not isinstance(mask, Tensor) or mask.shape != (n, k):
            raise CohereError(f"mask must have shape ({n}, {k}) (rows x conditions), got {tuple(getattr(mask, 'shape', ()))}")
        mask = mask.to(x_t.device, x_t.dtype)  # (n, k)

        temb = torch.relu(self.time_proj(timestep_embedding(t.to(x_t.device), c.time_dim).to(x_t.dtype)))  # (n, time_dim)
        h = [x_t, temb]
        for i, (proj, cond) in enumerate(zip(self.cond_proj, conds)):
            m = mask[:, i : i + 1]  # (n, 1)
            cond = torch.where(m != 0, cond.to(x_t.dtype), torch.zeros((), dtype=x_t.dtype, device=x_t.device))  # (n, c_i)
            h.append(torch.relu(proj(cond)) * m)  # (n, cond_emb_dim), exactly 0 where masked
        h = torch.cat(h, dim=-1)  # (n, latent_dim + time_dim + k * cond_emb_dim)
        for block in self.blocks:
            h = torch.cat([block(h), temb], dim=-1)  # (n, hidden + time_dim)
        return self.out(h)  # (n, latent_dim)
