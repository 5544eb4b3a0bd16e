"""Denoiser networks ``forward(z, logsnr) -> tensor shaped like z``, conditioned on λ = log SNR."""

from vdmlab.models.embeddings import LogSNREmbedding, fourier_features
from vdmlab.models.mlp import MLP
from vdmlab.models.unet import UNet

__all__ = ["LogSNREmbedding", "MLP", "UNet", "fourier_features"]
