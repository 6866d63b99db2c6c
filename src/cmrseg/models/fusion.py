"""The all-slice fusion transformer bottleneck (paper Sec. 2.2, Fig. 3).

Bottleneck features of *all* slices of a stack, ``[S, C, h, w]`` (slices along the batch
axis), pass through transformers that attend

1. **across slices** (inter-slice): for each in-plane position, a sequence of S tokens;
2. **within each slice** (intra-slice): for each slice, a sequence of h*w tokens.

Pre-norm multi-head attention + MLP with residuals, and **no positional encoding**: any
number of slices works and the block is permutation-equivariant over slices. Several stacks
of different lengths can share one batch: they are padded to the longest and masked. A
fixed-shape training batch gives each slice's stack as a tensor (``stack_ids``, -1 for padding)
instead: then every position's sequence is the whole batch, with a block-diagonal mask that
lets a slice see only its own stack (one shape, no Python loop over stacks; the attention is
the same, and it is cheap at the bottleneck).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

    ``[B, L, C] -> [B, L, C]``; ``mask``: boolean, broadcastable to ``[B, heads, L, L]``
    (True = may attend), e.g. ``key_mask[:, None, None, :]`` to hide padding tokens.
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
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


def same_stack_mask(stack_ids: torch.Tensor) -> torch.Tensor:
    """``[N]`` stack of each slice (-1: padding) -> ``[N, N]`` bool: slice i may attend to slice j
    when both are in one stack. A padding slice attends to itself only (a row with no key would
    make the attention NaN, and NaN reaches the gradients even when the loss ignores it)."""
    same = (stack_ids[:, None] == stack_ids[None, :]) & (stack_ids[None, :] >= 0)
    return same | torch.eye(len(stack_ids), dtype=torch.bool, device=stack_ids.device)


def _unpack(packed: torch.Tensor, stack_sizes: list[int], mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return packed.reshape(-1, *packed.shape[2:])
    return torch.cat([packed[i, :s] for i, s in enumerate(stack_sizes)])


class AllSliceFusion(nn.Module):
    """``depth`` pairs of (inter-slice, intra-slice) transformer layers.

    Shapes: ``x`` ``[N, C, h, w]`` with ``N = sum(stack_sizes)`` -> ``[N, C, h, w]``.
    ``stack_sizes=None`` means one stack of all N slices; ``stack_ids`` (``[N]``, -1 for padding;
    see the module docstring) replaces ``stack_sizes``.
    """

    def __init__(self, dim: int, heads: int = 8, depth: int = 1, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.inter = nn.ModuleList([TransformerLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.intra = nn.ModuleList([TransformerLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, stack_sizes: list[int] | None = None,
                stack_ids: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        if stack_ids is not None:
            return self._forward_ids(x, stack_ids)
        sizes = [n] if stack_sizes is None else list(stack_sizes)
        if sum(sizes) != n:
            raise ValueError(f"stack sizes {sizes} do not add up to {n} slices")
        t = x.flatten(2).transpose(1, 2)  # [N, L, C], L = h*w
        for inter, intra in zip(self.inter, self.intra):
            packed, mask = _pack(t, sizes)  # [B, S, L, C]
            b, s, l, _ = packed.shape
            seq = packed.transpose(1, 2).reshape(b * l, s, c)  # one sequence of S slices per position
            key_mask = None if mask is None else mask[:, None, :].expand(b, l, s).reshape(b * l, s)
            seq = inter(seq, None if key_mask is None else key_mask[:, None, None, :])
            t = _unpack(seq.view(b, l, s, c).transpose(1, 2), sizes, mask)
            t = intra(t)  # [N, L, C]: attention within each slice
        t = self.norm(t)
        return t.transpose(1, 2).reshape(n, c, h, w)

    def _forward_ids(self, x: torch.Tensor, stack_ids: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if stack_ids.shape != (n,):
            raise ValueError(f"stack_ids has shape {tuple(stack_ids.shape)}, expected ({n},)")
        mask = same_stack_mask(stack_ids)  # [N, N], broadcast over positions and heads
        t = x.flatten(2).transpose(1, 2)  # [N, L, C]
        for inter, intra in zip(self.inter, self.intra):
            t = inter(t.transpose(0, 1), mask).transpose(0, 1)  # per position: a sequence of all N slices
            t = intra(t)
        t = self.norm(t)
        return t.transpose(1, 2).reshape(n, c, h, w)
