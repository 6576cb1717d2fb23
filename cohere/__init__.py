"""cohere: generate a patient's missing biomedical data modality with Coherent Denoising.

The import name ``cohere`` is shared with an unrelated SDK on PyPI; this project is
distributed as ``cohere-denoising``.
"""

__version__ = "0.1.0"


def _registered_modalities() -> dict:
    """The plugin host's modalities (every plugin's ``register_modalities``, built-ins included)."""
    from .plugins import modalities

    return modalities()


# the package root wires the plugin host into the modality registry, so that the lower
# layers (cohort, encoders) read the registry and never import the host; nothing loads here
from .modalities import registry as _modality_registry  # noqa: E402

_modality_registry.set_loader(_registered_modalities)
