"""Modalities: the ``Modality`` base class, the shared ``Preprocessor`` and the built-ins."""

from .base import Imputation, Modality, Preprocessor

__all__ = ["Imputation", "Modality", "Preprocessor"]
