"""λ-conditioned convolutional denoiser: a plain ResNet (one level) or a UNet (several levels).

``forward(z, logsnr, cond=None, augment_labels=None)`` maps ``z`` ``[B, C, H, W]``, λ ``[B]`` and, for
class-conditional nets (``num_classes`` set), labels ``[B]`` (and, with ``augment_dim`` set, the augmentation labels
``[B, augment_dim]`` of :mod:`vdmlab.data.augment`, absent = not augmented) to a tensor shaped like ``z``; what the
output means (x̂, ε̂, v̂, an energy, ...) is decided by the parameterization, not here.

Design (close to VDM's ScoreUNet and DDPM's UNet):

- λ enters through :class:`~vdmlab.models.embeddings.LogSNREmbedding`; every residual block adds a
  per-channel projection of it after its first conv (additive, as in VDM/DDPM: cheaper than scale/shift
  and enough for the default ~0.44M-parameter net);
- the last conv of every residual block, the output projection of every attention block and the final
  output conv are zero-initialised, so each block starts as the identity and the initial output is exactly 0;
- ``channel_mults`` of length 1 gives no down/up-sampling and no decoder: conv_in, ``num_res_blocks``
  residual blocks, GroupNorm-SiLU-conv_out (the default for 8x8 digits). Longer ``channel_mults`` add
  strided-conv downsampling by 2 per extra level, a middle block (res, [attention], res) and a decoder
  with nearest-neighbour upsampling and concatenated skip connections (``num_res_blocks + 1`` blocks per
  level, as in DDPM);
- only smooth ops (conv, linear, GroupNorm, SiLU, softmax attention written out explicitly rather than
  through fused SDPA kernels, which lack double backward on GPU) and no in-place ops, so that energy
  parameterizations can differentiate through ∇_z of the output.

Resolutions that 2^(levels-1) does not divide (28x28 MNIST with 3 levels, ...) are rejected at construction
with a ValueError rather than padded internally: padding belongs to the data (``dataset.pad_to_32=true``),
where it is also seen by the likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdmlab.checks import check_bool, check_float, check_int, check_int_list, check_positive
from vdmlab.models.embeddings import (
    ClassEmbedding,
    LogSNREmbedding,
    add_class_embedding,
    broadcast_logsnr,
    fourier_features,
    num_fourier_channels,
)


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (used for the last layer of residual branches)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3, + Linear(SiLU(emb)), GroupNorm-SiLU-dropout-conv3x3 (zero-init), + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        # 1x1 conv on the skip only when the channel count changes (decoder blocks with concatenated skips).
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, pre-GroupNorm, zero-init output, residual."""

    def __init__(self, channels: int, num_heads: int = 1, groups: int = 8):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        # Explicit softmax attention (not F.scaled_dot_product_attention): always double-differentiable.
        attn = torch.softmax(torch.einsum("bncq,bnck->bnqk", q, k) / math.sqrt(c // self.num_heads), dim=-1)
        out = torch.einsum("bnqk,bnck->bncq", attn, v).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour interpolation then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _image_shape(data_shape: Sequence[int]) -> tuple[int, int]:
    """(C, image_size) of square images [C, H, W]; anything else gets an error naming the shape."""
    shape = tuple(int(d) for d in data_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(
            f"model=unet takes square images [C, H, W], but the dataset gives examples of shape {shape}; "
            f"use model=mlp for flat data such as dataset=toy2d"
        )
    return shape[0], shape[1]


class UNet(nn.Module):
    """λ-conditioned ResNet/UNet denoiser, ``forward(z [B, C, H, W], logsnr [B]) -> [B, C, H, W]``.

    Args:
        in_channels: data channels C (also the output channels).
        width: base channel count; level i has ``width * channel_mults[i]`` channels.
        channel_mults: one entry per resolution level; length 1 means no downsampling.
        num_res_blocks: residual blocks per level (encoder; the decoder has one more per level).
        attention_resolutions: resolutions (e.g. ``(16,)``) whose res blocks are followed by self-attention;
            each must be one of the level resolutions ``image_size // 2**i``.
        image_size: H = W of the data; used to validate the levels and place attention.
        dropout: dropout rate inside the residual blocks.
        groups: GroupNorm groups (``width`` must be divisible by it).
        emb_dim: λ-embedding size, default ``4 * width``.
        fourier_min_exp, fourier_max_exp: exponents of the Fourier-feature input (both None disables).
        num_heads: attention heads.
        mid_attention: self-attention in the middle block (res, attention, res) whatever
            ``attention_resolutions`` says (DDPM and VDM always have it).
        decoder: middle block and decoder with skip connections; None means "when there are several levels";
            True with one level is VDM's ScoreUNet (``num_res_blocks`` down, middle, ``num_res_blocks + 1`` up,
            all at full resolution).
        max_logsnr: λ range that the embedding's lowest frequency resolves monotonically.
        data_shape: the datamodule's ``(C, H, W)``; when given it sets ``in_channels`` and ``image_size``.
        num_classes: None (unconditional) or the number of classes C: a class embedding of C + 1 entries (the
            last one the null class ∅ of classifier-free guidance) is added to the λ embedding.
        augment_dim: 0 (no augmentation conditioning) or the size of the augmentation label vector, mapped by a
            bias-free linear layer onto the λ embedding (EDM's ``map_augment``): no label, or a zero one, adds nothing.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        channel_mults: Sequence[int] = (1,),
        num_res_blocks: int = 4,
        attention_resolutions: Sequence[int] = (),
        image_size: int = 8,
        dropout: float = 0.0,
        groups: int = 8,
        emb_dim: int | None = None,
        fourier_min_exp: int | None = None,
        fourier_max_exp: int | None = None,
        num_heads: int = 1,
        mid_attention: bool = False,
        decoder: bool | None = None,
        max_logsnr: float = 30.0,
        data_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        augment_dim: int = 0,
    ):
        super().__init__()
        if data_shape is not None:
            in_channels, image_size = _image_shape(data_shape)
        width, num_res_blocks = check_int("width", width, 1), check_int("num_res_blocks", num_res_blocks, 0)
        channel_mults = check_int_list("channel_mults", channel_mults, 1)
        attention_resolutions = check_int_list("attention_resolutions", attention_resolutions, 1)
        dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0, open_max=True)
        groups, num_heads = check_int("groups", groups, 1), check_int("num_heads", num_heads, 1)
        emb_dim = check_int("emb_dim", emb_dim, 1, optional=True)
        fourier_min_exp = check_int("fourier_min_exp", fourier_min_exp, optional=True)
        fourier_max_exp = check_int("fourier_max_exp", fourier_max_exp, optional=True)
        max_logsnr = check_positive("max_logsnr", max_logsnr)
        mid_attention = check_bool("mid_attention", mid_attention)
        decoder = None if decoder is None else check_bool("decoder", decoder)
        levels = len(channel_mults)
        if levels < 1:
            raise ValueError("channel_mults must have at least one entry")
        factor = 2 ** (levels - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} is not divisible by 2^(len(channel_mults)-1)={factor} "
                f"(channel_mults={channel_mults}): use fewer levels or pad the data, e.g. "
                f"dataset.pad_to_32=true for 28x28 MNIST"
            )
        if width % groups:
            raise ValueError(f"width={width} must be divisible by groups={groups} (GroupNorm)")
        resolutions = [image_size // 2**i for i in range(levels)]
        bad = [r for r in attention_resolutions if r not in resolutions]
        if bad:
            raise ValueError(
                f"attention_resolutions {bad} are not among the level resolutions {resolutions} "
                f"(image_size={image_size}, channel_mults={channel_mults})"
            )
        self.in_channels, self.image_size, self.levels = in_channels, image_size, levels
        self.has_decoder = levels > 1 if decoder is None else bool(decoder)
        self.fourier_min_exp, self.fourier_max_exp = fourier_min_exp, fourier_max_exp
        emb_dim = emb_dim if emb_dim is not None else 4 * width
        self.embed = LogSNREmbedding(emb_dim, max_logsnr=max_logsnr, freq_dim=width)
        self.num_classes = check_int("num_classes", num_classes, 1, optional=True,
                                     reason="null (unconditional; filled from the dataset) or an integer >= 1")
        self.class_embed = ClassEmbedding(self.num_classes, emb_dim) if self.num_classes else None
        self.augment_dim = check_int("augment_dim", augment_dim, 0)
        self.augment_embed = nn.Linear(self.augment_dim, emb_dim, bias=False) if self.augment_dim else None

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, groups=groups, dropout=dropout)

        def attn(ch: int, r: int) -> nn.Module:
            return AttentionBlock(ch, num_heads, groups) if r in attention_resolutions else nn.Identity()

        in_feat = in_channels + num_fourier_channels(in_channels, fourier_min_exp, fourier_max_exp)
        self.conv_in = nn.Conv2d(in_feat, width, 3, padding=1)

        # Encoder: per level, num_res_blocks (res, attn) pairs, then a downsample (except the last level).
        ch, skip_chs = width, [width]
        self.down = nn.ModuleList()
        for lvl, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, width * mult), attn(width * mult, resolutions[lvl])]))
                ch = width * mult
                skip_chs.append(ch)
            if lvl < levels - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)

        # Middle and decoder by default only when there are several levels (a UNet); one level = plain ResNet.
        self.mid = nn.ModuleList()
        self.up = nn.ModuleList()
        if self.has_decoder:
            mid_attn = AttentionBlock(ch, num_heads, groups) if mid_attention else attn(ch, resolutions[-1])
            self.mid.extend([res(ch, ch), mid_attn, res(ch, ch)])
            for lvl in reversed(range(levels)):
                out = width * channel_mults[lvl]
                for _ in range(num_res_blocks + 1):
                    block = res(ch + skip_chs.pop(), out)
                    self.up.append(nn.ModuleList([block, attn(out, resolutions[lvl])]))
                    ch = out
                if lvl > 0:
                    self.up.append(Upsample(ch))
            assert not skip_chs

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, z: Tensor, logsnr: Tensor, cond: Tensor | None = None, augment_labels: Tensor | None = None) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects z of shape [B, {self.in_channels}, H, W], got {tuple(z.shape)}")
        factor = 2 ** (self.levels - 1)
        if z.shape[-2] % factor or z.shape[-1] % factor:
            raise ValueError(
                f"spatial size {tuple(z.shape[-2:])} is not divisible by {factor} ({self.levels} levels)"
            )
        emb = add_class_embedding(self.embed(broadcast_logsnr(logsnr, z.shape[0])), self.class_embed, cond)
        if augment_labels is not None:
            if self.augment_embed is None or augment_labels.shape != (z.shape[0], self.augment_dim):
                raise ValueError(f"augmentation labels of shape {tuple(augment_labels.shape)} reached a UNet with "
                                 f"augment_dim={self.augment_dim}; set model.augment_dim to the augmentation's label size "
                                 f"(augment=edm sets both)")
            emb = emb + self.augment_embed(augment_labels.to(emb.dtype))
        x = z
        if self.fourier_min_exp is not None:
            x = torch.cat([z, fourier_features(z, self.fourier_min_exp, self.fourier_max_exp)], dim=1)

        h = self.conv_in(x)
        multi = self.has_decoder
        hs = [h] if multi else []
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)
            else:
                block, att = layer
                h = att(block(h, emb))
            if multi:
                hs.append(h)
        if multi:
            h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
            for layer in self.up:
                if isinstance(layer, Upsample):
                    h = layer(h)
                else:
                    block, att = layer
                    h = att(block(torch.cat([h, hs.pop()], dim=1), emb))
        return self.conv_out(F.silu(self.norm_out(h)))
