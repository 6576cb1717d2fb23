"""Diffusion core: the DDPM noise schedule with its sampler steps, and the MLP noise network."""

from cohere.diffusion.denoiser import Denoiser, DenoiserConfig
from cohere.diffusion.schedule import NoiseSchedule, StepOutput

__all__ = ["NoiseSchedule", "StepOutput", "Denoiser", "DenoiserConfig"]
