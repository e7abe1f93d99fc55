"""A small pre-LayerNorm transformer encoder with an explicit attention mask.

Shared by the MAE (patch tokens) and the language models (word tokens). The mask is
boolean, True where a query may attend to a key; it is the only way information moves
between tokens, which is what the teachers' locality and causality tests rely on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # h: [B, T, D]; mask: bool [T, T] or [B, 1, T, T] (True = may attend) or None
        B, T, D = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, T, D/heads]
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return h + self.mlp(self.ln2(h))


class Encoder(nn.Module):
    """``layers`` blocks then a final LayerNorm: [B, T, D] -> [B, T, D]."""

    def __init__(self, dim: int, layers: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, mask)
        return self.ln(h)


def causal_mask(T: int, device=None) -> torch.Tensor:
    """bool [T, T]: query t sees keys 0..t."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def key_mask(visible: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, T, T] from visible [B, T]: every query sees the visible keys, and itself.

    A query always sees itself so that no row is empty (an empty row makes attention NaN);
    a hidden token therefore never influences a visible one.
    """
    T = visible.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=visible.device)
    return (visible[:, None, None, :] | eye).expand(-1, 1, T, T)
