"""Encoders: a modality's features <-> a standardised 32-d latent.

``AutoencoderEncoder`` (omics: BatchNorm/ReLU MLP, mirrored decoder, AdamW, early stopping
on validation MSE) and ``PCAEncoder`` (slide embeddings; also the linear baseline for omics).
Both share the modality's fitted ``Preprocessor`` and standardise latents on train. An
encoder is saved as an artifact folder; its digest (sha256 of ``model.safetensors``) is the
latent-space contract that experts record.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .artifacts import load_artifact, render_card, save_artifact
from .scores import observed_r2
from .errors import CohereError
from .modalities import Modality, Preprocessor, registry
from .modalities.base import DEFAULT_MIN_COVERAGE

LATENT_DIM = 32


def latent_columns(dim: int = LATENT_DIM) -> list[str]:
    return [f"z{i:02d}" for i in range(dim)]


class Encoder:
    """Shared fit/encode/decode/save logic; subclasses supply the core map."""

    kind = ""

    def __init__(self, modality: Modality, input_form: str | None = None,
                 latent_dim: int = LATENT_DIM, seed: int = 0):
        self.modality = modality
        self.input_form = input_form
        self.latent_dim = latent_dim
        self.seed = seed

    # -- fitting

    def fit(self, df: pd.DataFrame, verbose: bool = False, progress=None) -> "Encoder":
        """Fit preprocessing and encoder on the training rows ``df`` only; an autoencoder
        calls ``progress(epoch, max_epochs)`` after every epoch."""
        form = self.modality.resolve_form(self.input_form)
        if len(df) < 20:
            raise CohereError(f"{self.modality.name}: {len(df)} training samples; at least 20 are "
                              "needed to fit an encoder")
        t0 = time.perf_counter()
        self.preprocessor_ = Preprocessor(self.modality, form, seed=self.seed).fit(df)
        Z = self.preprocessor_.transform(df)                      # (n, d) standardised
        if Z.shape[1] < self.latent_dim:
            raise CohereError(f"{self.modality.name}: {Z.shape[1]} features after preprocessing, "
                              f"fewer than the {self.latent_dim}-d latent")
        self._fit_core(Z, verbose, progress)
        H = self._encode_core(Z)
        # kept at float32 precision so a saved and reloaded encoder is bit-identical
        self.latent_mean_ = H.mean(0).astype(np.float32).astype(np.float64)
        self.latent_std_ = np.where(H.std(0) > 1e-8, H.std(0), 1.0).astype(np.float32).astype(np.float64)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    # -- use

    def encode(self, df: pd.DataFrame, min_coverage: float = DEFAULT_MIN_COVERAGE) -> pd.DataFrame:
        """Features -> standardised latents (n, latent_dim)."""
        return self._latents(self.preprocessor_.transform(df, min_coverage), df.index)

    def _latents(self, Z: np.ndarray, index) -> pd.DataFrame:
        H = (self._encode_core(Z) - self.latent_mean_) / self.latent_std_
        return pd.DataFrame(H.astype(np.float32), index=index, columns=latent_columns(self.latent_dim))

    def encode_cohort(self, cohort, ids=None, min_coverage: float = DEFAULT_MIN_COVERAGE) -> pd.DataFrame:
        """Latents of ``cohort``'s table of this modality (the rows ``ids`` if given, in that
        order). A table that the cohort declares (cohort.json or ``--input-form``) in another
        input form than the encoder's is converted over the whole cohort when the modality
        knows how (:meth:`Modality.convert`, e.g. log2 counts to z-scores within each cancer
        type), else refused. A table covering less than ``min_coverage`` of the encoder's
        features is refused.

        Records what it imputed or converted as ``self.imputation_`` (a
        :class:`~cohere.modalities.Imputation`; its ``note()`` is the line to show the user).
        """
        m = self.modality.name
        table = cohort.tables[m]
        declared, trained = cohort.input_forms.get(m), self.preprocessor_.form
        converted = ""
        if declared is not None and declared != trained:
            table, converted = self._convert(cohort, table, declared, trained)
        if ids is not None:
            table = table.loc[ids]
        Z, self.imputation_ = self.preprocessor_.transform_recorded(table, min_coverage, converted)
        return self._latents(Z, table.index)

    def _convert(self, cohort, table: pd.DataFrame, declared: str, trained: str) -> tuple[pd.DataFrame, str]:
        """The whole table converted from ``declared`` to the encoder's form, and the note."""
        mod = self.modality
        if (declared, trained) not in mod.conversions:
            raise CohereError(mod.form_mismatch(declared, trained))
        groups = np.zeros(len(table), dtype=object)
        clinical = cohort.clinical
        if clinical is not None and "cancer_type" in clinical.columns:
            groups = clinical["cancer_type"].reindex(table.index).fillna("").astype(str).to_numpy()
        X = mod.convert(table.to_numpy(np.float64), declared, trained, groups)
        return (pd.DataFrame(X, index=table.index, columns=table.columns),
                f"converted from {declared!r} to the encoder's {trained!r}: {mod.conversions[(declared, trained)]}")

    def decode(self, latents) -> pd.DataFrame:
        """Standardised latents -> features on the modelled scale (``output_units``)."""
        index = latents.index if isinstance(latents, pd.DataFrame) else None
        H = np.asarray(latents, np.float64)
        if H.ndim != 2 or H.shape[1] != self.latent_dim:
            raise CohereError(f"decode expects latents of shape (n, {self.latent_dim}), got {H.shape}")
        Z = self._decode_core((H * self.latent_std_ + self.latent_mean_).astype(np.float32))
        return self.preprocessor_.inverse_transform(Z, index=index)

    def target_features(self, df: pd.DataFrame) -> pd.DataFrame:
        """The true values on the modelled scale, NaN where unobserved (for evaluation)."""
        pre = self.preprocessor_
        Xt = self.modality.transform(df.to_numpy(np.float64), pre.form)
        return pd.DataFrame(Xt, index=df.index, columns=df.columns).reindex(columns=pre.features_)

    def feature_r2(self, df: pd.DataFrame, latents) -> float:
        """Feature-space R^2 of decode(latents) against the true table ``df`` over observed
        cells (variance weighted: 1 - SSE / SST around each feature's mean)."""
        return observed_r2(self.target_features(df).to_numpy(np.float64),
                           self.decode(np.asarray(latents)).to_numpy(np.float64))

    def reconstruction_r2(self, df: pd.DataFrame) -> float:
        """Feature-space R^2 of decode(encode(x)) over observed cells."""
        return self.feature_r2(df, self.encode(df))

    # -- persistence

    def save(self, folder: str | os.PathLike, metrics: dict | None = None,
             training: dict | None = None) -> str:
        """Write the artifact folder; return its digest."""
        pre = self.preprocessor_
        config = {
            "kind": "encoder", "id": self.modality.name, "modality": self.modality.name,
            "encoder": self.kind, "latent_dim": self.latent_dim, "seed": self.seed,
            "preprocessing": pre.to_config(), "architecture": self._architecture(),
            "output_units": self.modality.output_units(pre.form),
            "metrics": metrics or {}, "training": training or {},
        }
        tensors = {f"preprocess.{k}": v for k, v in pre.state_.items()}
        tensors |= {f"{self.kind}.{k}": v for k, v in self._core_tensors().items()}
        tensors["latent.mean"] = torch.as_tensor(self.latent_mean_)
        tensors["latent.std"] = torch.as_tensor(self.latent_std_)
        rank = pre.state_["ppca_loadings"].shape[0] if "ppca_loadings" in pre.state_ else None
        card = render_card("encoder.md.j2", config=config, n_features=len(pre.features_),
                           form_description=self.modality.input_forms[pre.form], ppca_rank=rank)
        self.digest = save_artifact(folder, config, tensors, card)
        self.config, self.path = save_config_view(config, self.digest), Path(folder)
        return self.digest


def save_config_view(config: dict, digest: str) -> dict:
    """The config as it reads back from disk (with the recorded sha256)."""
    return {**config, "files": {"model.safetensors": digest}}


def load_encoder(folder: str | os.PathLike, modality: Modality | None = None) -> Encoder:
    """Load an encoder artifact with strict key and shape checks."""
    art = load_artifact(folder, kind="encoder")
    cfg = art.config
    if modality is None:
        modality = registry.get(cfg["modality"])
    cls = {"autoencoder": AutoencoderEncoder, "pca": PCAEncoder}.get(cfg.get("encoder"))
    if cls is None:
        raise CohereError(f"{folder}: unknown encoder type {cfg.get('encoder')!r}")
    enc = cls(modality, cfg["preprocessing"]["input_form"], cfg["latent_dim"], cfg.get("seed", 0),
              **cfg["architecture"])
    pre = Preprocessor.from_state(modality, cfg["preprocessing"], {
        k.split(".", 1)[1]: v for k, v in art.tensors.items() if k.startswith("preprocess.")})
    n_proto = art.tensors["preprocess.prototypes"].shape[0] if "preprocess.prototypes" in art.tensors else None
    rank = art.tensors["preprocess.ppca_loadings"].shape[0] if "preprocess.ppca_loadings" in art.tensors else None
    d = len(pre.features_)
    shapes = {f"preprocess.{k}": s for k, s in pre.tensor_shapes(n_proto, rank).items()}
    shapes |= {f"{enc.kind}.{k}": s for k, s in enc._core_shapes(d).items()}
    shapes |= {"latent.mean": (enc.latent_dim,), "latent.std": (enc.latent_dim,)}
    art.expect(shapes)
    enc.preprocessor_ = pre
    enc._load_core({k.split(".", 1)[1]: v for k, v in art.tensors.items() if k.startswith(f"{enc.kind}.")}, d)
    enc.latent_mean_ = art.tensors["latent.mean"].double().numpy()
    enc.latent_std_ = art.tensors["latent.std"].double().numpy()
    enc.digest = art.digest
    enc.config = cfg
    enc.path = Path(folder)
    return enc


def make_encoder(modality: Modality, input_form: str | None = None, kind: str | None = None,
                 **kwargs) -> Encoder:
    """The modality's default encoder (or ``kind`` = "autoencoder" | "pca")."""
    cls = {"autoencoder": AutoencoderEncoder, "pca": PCAEncoder}[kind or modality.encoder]
    return cls(modality, input_form, **kwargs)


# ---------------------------------------------------------------- PCA


class PCAEncoder(Encoder):
    """Linear: projection on the top principal components of the standardised features."""

    kind = "pca"

    def _architecture(self) -> dict:
        return {}

    def _fit_core(self, Z, verbose=False, progress=None):
        mean = Z.mean(0)
        _, _, Vt = np.linalg.svd((Z - mean).astype(np.float64), full_matrices=False)
        self.components_ = Vt[: self.latent_dim].astype(np.float32)   # (k, d)
        self.mean_ = mean.astype(np.float32)                            # (d,)

    def _encode_core(self, Z):
        return (Z - self.mean_) @ self.components_.T

    def _decode_core(self, H):
        return H @ self.components_ + self.mean_

    def _core_tensors(self):
        return {"components": torch.as_tensor(self.components_), "mean": torch.as_tensor(self.mean_)}

    def _core_shapes(self, d):
        return {"components": (self.latent_dim, d), "mean": (d,)}

    def _load_core(self, t, d):
        self.components_ = t["components"].numpy()
        self.mean_ = t["mean"].numpy()


# ---------------------------------------------------------------- autoencoder


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU between every pair of sizes, plain Linear last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """A linear path (initialised to PCA) plus a BatchNorm/ReLU MLP residual on each side.

    The MLPs' last layers start at zero, so training starts from the PCA solution and early
    stopping on validation MSE can only keep what improves on it.
    """

    def __init__(self, n_features: int, hidden: tuple[int, ...], latent_dim: int):
        super().__init__()
        self.linear_encoder = nn.Linear(n_features, latent_dim)
        self.linear_decoder = nn.Linear(latent_dim, n_features)
        self.encoder = _mlp([n_features, *hidden, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden), n_features])

    def init_pca(self, Z: np.ndarray) -> None:
        mean = Z.mean(0)
        _, _, Vt = np.linalg.svd((Z - mean).astype(np.float64), full_matrices=False)
        P = torch.as_tensor(Vt[: self.linear_encoder.out_features], dtype=torch.float32)  # (k, d)
        m = torch.as_tensor(mean, dtype=torch.float32)                                    # (d,)
        with torch.no_grad():
            self.linear_encoder.weight.copy_(P)
            self.linear_encoder.bias.copy_(-P @ m)
            self.linear_decoder.weight.copy_(P.T)
            self.linear_decoder.bias.copy_(m)
            for mlp in (self.encoder, self.decoder):
                mlp[-1].weight.zero_()
                mlp[-1].bias.zero_()

    def encode(self, x):
        return self.linear_encoder(x) + self.encoder(x)

    def decode(self, h):
        return self.linear_decoder(h) + self.decoder(h)

    def forward(self, x):
        return self.decode(self.encode(x))


class AutoencoderEncoder(Encoder):
    """MLP autoencoder trained with AdamW on MSE, early stopping on validation MSE."""

    kind = "autoencoder"

    def __init__(self, modality, input_form=None, latent_dim=LATENT_DIM, seed=0,
                 hidden: tuple[int, ...] = (512, 256), lr: float = 1e-4,
                 weight_decay: float = 1e-4, batch_size: int = 128, max_epochs: int = 200,
                 patience: int = 15, val_fraction: float = 0.1, dropout_input: float = 0.0):
        super().__init__(modality, input_form, latent_dim, seed)
        self.hidden = tuple(hidden)
        self.lr, self.weight_decay = lr, weight_decay
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.val_fraction = val_fraction
        self.dropout_input = dropout_input

    def _architecture(self) -> dict:
        return {"hidden": list(self.hidden)}

    def _fit_core(self, Z, verbose=False, progress=None):
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(len(Z))
        n_val = max(1, int(round(self.val_fraction * len(Z))))
        Zt = torch.as_tensor(Z[perm[n_val:]])
        Zv = torch.as_tensor(Z[perm[:n_val]])
        self.net_ = Autoencoder(Z.shape[1], self.hidden, self.latent_dim)
        self.net_.init_pca(Z[perm[n_val:]])
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.max_epochs)
        gen = torch.Generator().manual_seed(self.seed)
        self.net_.eval()
        with torch.no_grad():
            best = float(((self.net_(Zv) - Zv) ** 2).mean())   # the PCA starting point
        best_state, since = copy.deepcopy(self.net_.state_dict()), 0
        self.history_ = [best]
        for epoch in range(self.max_epochs):
            self.net_.train()
            order = torch.randperm(len(Zt), generator=gen)
            for i in range(0, len(Zt), self.batch_size):
                idx = order[i:i + self.batch_size]
                if len(idx) < 2:          # BatchNorm needs two rows
                    continue
                x = Zt[idx]
                if self.dropout_input:
                    x_in = x * (torch.rand(x.shape, generator=gen) > self.dropout_input) / (1 - self.dropout_input)
                else:
                    x_in = x
                loss = ((self.net_(x_in) - x) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            self.net_.eval()
            with torch.no_grad():
                val = float(((self.net_(Zv) - Zv) ** 2).mean())
            self.history_.append(val)
            if verbose:
                print(f"  epoch {epoch + 1}: val MSE {val:.4f}")
            if progress is not None:
                progress(epoch + 1, self.max_epochs)
            if val < best - 1e-5:
                best, best_state, since = val, copy.deepcopy(self.net_.state_dict()), 0
            else:
                since += 1
                if since >= self.patience:
                    break
        self.net_.load_state_dict(best_state)
        self.net_.eval()
        self.best_val_mse_ = best
        self.epochs_ = len(self.history_) - 1

    @torch.no_grad()
    def _encode_core(self, Z):
        return self.net_.encode(torch.as_tensor(Z, dtype=torch.float32)).numpy().astype(np.float64)

    @torch.no_grad()
    def _decode_core(self, H):
        return self.net_.decode(torch.as_tensor(H, dtype=torch.float32)).numpy()

    def _core_tensors(self):
        return dict(self.net_.state_dict())

    def _core_shapes(self, d):
        net = Autoencoder(d, self.hidden, self.latent_dim)
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}

    def _load_core(self, t, d):
        self.net_ = Autoencoder(d, self.hidden, self.latent_dim)
        # num_batches_tracked is an integer buffer saved as float; cast back
        state = {k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in t.items()}
        self.net_.load_state_dict(state, strict=True)
        self.net_.eval()
