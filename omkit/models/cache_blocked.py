"""3-D convolutions over a large volume in cache-sized slabs of planes, for CPU inference.

Dense inference runs the backbone and the heads once over a whole region (about 5M
voxels on a BraTS case), one sample. Two things make PyTorch's CPU convolution slower
per voxel there than over a batch of tiles of the same model:

- oneDNN's direct convolution reads and writes activations far larger than the cache
  (a full-resolution map of 8 channels is about 170 MB), and reorders them to and from
  its blocked layout in memory. Measured on a 2-core Xeon (AVX-512), torch 2.13, an
  8 -> 8 channel 3x3x3 convolution: 52 ns per voxel over a 104 x 168 x 136 volume, 40 over
  16 tiles of 16 x 32 x 32, 26 over slabs of 8 planes of the volume.
- For one sample, PyTorch sends a convolution whose ``N * C * D * H`` is at most 20480 to
  its im2col fallback instead of oneDNN (a heuristic for 2-D images): the slabs, and the
  coarse levels of a U-Net, fall there, 2 to 10 times slower.

:class:`CacheBlockedConv3d` computes the same function: the output along D in slabs of
about :data:`CACHE_BLOCK_BYTES`, each slab's input the planes its outputs need (its
kernel's reach of zero padding at the volume's ends, as the whole convolution pads), each
through oneDNN directly when PyTorch has it (float32 and no autocast; otherwise the
usual ``F.conv3d``). The slab results are written into one output: the same values up to
float rounding (a different summation order inside oneDNN). On the benchmark case with a
width-0.25 ECA OM-Net, dense inference went from 6.65 s to 5.19 s (``benchmarks/RESULTS.md``).

Used on the dense path's own copy of a model (``omkit.inference.dense.folded_model``),
never on a model a user holds: only modules whose type is exactly ``nn.Conv3d`` are
converted (a plug-in's subclass may compute something else), and only while no gradient
is recorded; CUDA tensors, strides or dilations along D and non-zero padding modes take
the module's own forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# bytes of the larger of a slab's input and output: a few times a core's L2 cache, which
# measured best (4 to 8 MiB on the machine above, whole dense runs; 2 and 16 MiB were about
# 15 % slower)
CACHE_BLOCK_BYTES = 8 << 20


def _onednn_direct(x: Tensor) -> bool:
    """Whether ``x`` can go to oneDNN's convolution without PyTorch's backend choice: a
    float32 CPU tensor with no CPU autocast active (autocast's casts happen in
    ``F.conv3d``, not in the backend op)."""
    return (x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled("cpu"))


class CacheBlockedConv3d(nn.Conv3d):
    """``nn.Conv3d`` that computes large CPU inputs in slabs of planes along D (see the
    module docstring); the parameters and the function are the module's."""

    def _conv(self, x: Tensor, padding) -> Tensor:
        if _onednn_direct(x):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, padding, list(self.stride),
                                                     list(self.dilation), self.groups)
        return F.conv3d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type != "cpu" or x.dim() != 5 or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or self.stride[0] != 1 or self.dilation[0] != 1
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return super().forward(x)
        depth, (kernel, pad) = x.shape[2], (self.kernel_size[0], self.padding[0])
        out_depth = depth + 2 * pad - kernel + 1
        plane_bytes = x.shape[0] * max(x.shape[1], self.out_channels) * x.shape[3] * x.shape[4] * x.element_size()
        planes = max(1, CACHE_BLOCK_BYTES // max(plane_bytes, 1))
        if out_depth <= 2 * planes:  # small enough as it is
            return self._conv(x, list(self.padding))
        in_plane_padding = [0, self.padding[1], self.padding[2]]
        channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
        out = None
        for o0 in range(0, out_depth, planes):
            o1 = min(out_depth, o0 + planes)
            i0, i1 = o0 - pad, o1 - pad + kernel - 1  # the input planes these outputs read
            part = x[:, :, max(0, i0):min(depth, i1)]
            if i0 < 0 or i1 > depth:  # the whole convolution's zero padding at the ends of D
                part = F.pad(part, (0, 0, 0, 0, max(0, -i0), max(0, i1 - depth)))
            y = self._conv(part, in_plane_padding)
            if out is None:
                out = torch.empty((y.shape[0], y.shape[1], out_depth, *y.shape[3:]), dtype=y.dtype, device=y.device,
                                  memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
            out[:, :, o0:o1] = y
        return out


def cache_blocked_convolutions(module: nn.Module) -> nn.Module:
    """``module`` with every submodule whose type is exactly ``nn.Conv3d`` turned into a
    :class:`CacheBlockedConv3d` in place (same parameters, same state dict); returns it.
    For a copy the caller owns (the dense path's folded model)."""
    for sub in module.modules():
        if type(sub) is nn.Conv3d:
            sub.__class__ = CacheBlockedConv3d
    return module
