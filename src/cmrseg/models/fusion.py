"""The all-slice fusion transformer bottleneck (paper Sec. 2.2, Fig. 3).

Bottleneck features of *all* slices of a stack, ``[S, C, h, w]`` (slices along the batch
axis), pass through transformers that attend

1. **across slices** (inter-slice): for each in-plane position, a sequence of S tokens;
2. **within each slice** (intra-slice): for each slice, a sequence of h*w tokens.

Pre-norm multi-head attention + MLP with residuals, and **no positional encoding**: any
number of slices works and the block is permutation-equivariant over slices. Several stacks
of different lengths can share one batch: they are padded to the longest and masked.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

    ``[B, L, C] -> [B, L, C]``; ``key_mask`` ``[B, L]`` (True = real token) hides padding.
    """

    def __init__(self, dim: int, heads: int = 8, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                              dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


def _pack(tokens: torch.Tensor, stack_sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[N, L, C]`` -> ``[B, S_max, L, C]`` and a ``[B, S_max]`` validity mask (None when
    every stack has the same length and no padding is needed)."""
    if len(set(stack_sizes)) == 1:
        s = stack_sizes[0]
        return tokens.view(len(stack_sizes), s, *tokens.shape[1:]), None
    s_max = max(stack_sizes)
    packed = tokens.new_zeros(len(stack_sizes), s_max, *tokens.shape[1:])
    mask = torch.zeros(len(stack_sizes), s_max, dtype=torch.bool, device=tokens.device)
    start = 0
    for i, s in enumerate(stack_sizes):
        packed[i, :s] = tokens[start:start + s]
        mask[i, :s] = True
        start += s
    return packed, mask


def _unpack(packed: torch.Tensor, stack_sizes: list[int], mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return packed.reshape(-1, *packed.shape[2:])
    return torch.cat([packed[i, :s] for i, s in enumerate(stack_sizes)])


class AllSliceFusion(nn.Module):
    """``depth`` pairs of (inter-slice, intra-slice) transformer layers.

    Shapes: ``x`` ``[N, C, h, w]`` with ``N = sum(stack_sizes)`` -> ``[N, C, h, w]``.
    ``stack_sizes=None`` means one stack of all N slices.
    """

    def __init__(self, dim: int, heads: int = 8, depth: int = 1, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.inter = nn.ModuleList([TransformerLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.intra = nn.ModuleList([TransformerLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, stack_sizes: list[int] | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        sizes = [n] if stack_sizes is None else list(stack_sizes)
        if sum(sizes) != n:
            raise ValueError(f"stack sizes {sizes} do not add up to {n} slices")
        t = x.flatten(2).transpose(1, 2)  # [N, L, C], L = h*w
        for inter, intra in zip(self.inter, self.intra):
            packed, mask = _pack(t, sizes)  # [B, S, L, C]
            b, s, l, _ = packed.shape
            seq = packed.transpose(1, 2).reshape(b * l, s, c)  # one sequence of S slices per position
            key_mask = None if mask is None else mask[:, None, :].expand(b, l, s).reshape(b * l, s)
            seq = inter(seq, key_mask)
            t = _unpack(seq.view(b, l, s, c).transpose(1, 2), sizes, mask)
            t = intra(t)  # [N, L, C]: attention within each slice
        t = self.norm(t)
        return t.transpose(1, 2).reshape(n, c, h, w)
