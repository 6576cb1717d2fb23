"""Modalities: the ``Modality`` base class, the shared ``Preprocessor`` and the built-ins."""

from .base import Modality, Preprocessor

__all__ = ["Modality", "Preprocessor"]
