"""cohere: generate a patient's missing biomedical data modality with Coherent Denoising.

The import name ``cohere`` is shared with an unrelated SDK on PyPI; this project is
distributed as ``cohere-denoising``.
"""

__version__ = "0.1.0"
