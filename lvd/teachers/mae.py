"""Masked autoencoder image teacher (LVD's teacher), small enough for a CPU.

Tokens: one per patch (``lvd.pc.patches.patch_index`` order), a linear map of the patch's
scaled pixel values plus a learned position embedding: [B, P, dim].
Training: a random ``mask_ratio`` of the patches is hidden; the encoder (a transformer
whose attention only reaches visible tokens) encodes the visible ones; a one-layer decoder
sees the encoded visible tokens and a mask token (plus position) at each hidden patch and
predicts a discretized logistic mixture for every variable of the hidden patches. The loss
is their negative log-likelihood per variable.

Patch embedding (LVD): the encoder's final-layer token of patch i computed with only the
3x3 neighbourhood of patches around i visible (fewer at the border), [B, P, dim]. It is
computed by gathering each neighbourhood into its own short sequence of 9 tokens, which
equals running the encoder on the full grid with everything else hidden.

Test metric: ``masked_bpd``, bits per hidden variable given the visible patches, with
fixed-seed masks. It is a conditional figure, not a bound on the image likelihood, so the
stage reports ``teacher_test_bpd`` as null for this teacher.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from lvd.pc.patches import grid_shape, patch_index
from lvd.teachers import logistic
from lvd.teachers.transformer import Encoder, key_mask


def neighbourhoods(gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each grid position: indices of its 3x3 neighbourhood, centre first, [P, 9] int64,
    and whether each neighbour lies on the grid, [P, 9] bool (off-grid slots point at the centre)."""
    offsets = [(0, 0)] + [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    idx = torch.zeros(gh * gw, 9, dtype=torch.int64)
    ok = torch.zeros(gh * gw, 9, dtype=torch.bool)
    for r in range(gh):
        for c in range(gw):
            for j, (dr, dc) in enumerate(offsets):
                rr, cc = r + dr, c + dc
                inside = 0 <= rr < gh and 0 <= cc < gw
                idx[r * gw + c, j] = rr * gw + cc if inside else r * gw + c
                ok[r * gw + c, j] = inside
    return idx, ok


class MAE(nn.Module):
    def __init__(self, height: int, width: int, channels: int, num_cats: int, patch_size: int,
                 dim: int = 64, layers: int = 2, heads: int = 4, num_mix: int = 4, mask_ratio: float = 0.75):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        index = torch.from_numpy(patch_index(height, width, channels, patch_size))  # [P, V_p]
        self.register_buffer("patch_idx", index, persistent=False)
        nbr, nbr_ok = neighbourhoods(*grid_shape(height, width, patch_size))
        self.register_buffer("nbr", nbr, persistent=False)
        self.register_buffer("nbr_ok", nbr_ok, persistent=False)
        self.num_positions, self.patch_vars = index.shape
        self.num_cats, self.mask_ratio, self.embedding_dim = num_cats, mask_ratio, dim
        P = self.num_positions
        self.num_hidden = min(P - 1, max(1, round(mask_ratio * P)))  # hidden patches per training image
        self.tok = nn.Linear(self.patch_vars, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(P, dim))
        self.encoder = Encoder(dim, layers, heads)
        self.dec_in = nn.Linear(dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.dec_pos = nn.Parameter(0.02 * torch.randn(P, dim))
        self.decoder = Encoder(dim, 1, heads)
        self.head = nn.Linear(dim, self.patch_vars * logistic.num_params(num_mix))

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, Ch] -> [B, P, V_p]."""
        return x.reshape(x.shape[0], -1)[:, self.patch_idx]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        u = self.patches(x).float() * (2.0 / (self.num_cats - 1)) - 1.0
        return self.tok(u) + self.pos  # [B, P, dim]

    def encode(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Encoder output [B, P, dim]; rows of visible tokens depend on visible tokens only."""
        return self.encoder(self.tokens(x), key_mask(visible))

    def random_visible(self, B: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """bool [B, P] with exactly ``num_hidden`` False per row."""
        if generator is None:
            noise = torch.rand(B, self.num_positions, device=self.pos.device)
        else:  # a CPU generator: the same masks on every device
            noise = torch.rand(B, self.num_positions, generator=generator).to(self.pos.device)
        return noise.argsort(1).argsort(1) >= self.num_hidden  # rank < num_hidden -> hidden

    def hidden_log_prob(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """log p(x_i | visible patches) in nats for every patch, [B, P] (meaningful where hidden)."""
        h = self.dec_in(self.encode(x, visible))
        h = torch.where(visible.unsqueeze(-1), h, self.mask_token) + self.dec_pos
        params = self.head(self.decoder(h)).view(*h.shape[:2], self.patch_vars, -1)
        return logistic.log_prob(self.patches(x), params, self.num_cats).sum(-1)

    def loss(self, x: torch.Tensor):
        visible = self.random_visible(x.shape[0])
        lp = self.hidden_log_prob(x, visible)
        nll = -(lp * ~visible).sum() / (self.num_hidden * x.shape[0] * self.patch_vars)  # nats per variable
        return nll, {"masked_bpd": nll.item() / math.log(2)}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, P, dim]: token i encoded with only its 3x3 neighbourhood visible."""
        B, P = x.shape[0], self.num_positions
        t = self.tokens(x)[:, self.nbr]  # [B, P, 9, dim], centre first
        mask = key_mask(self.nbr_ok.expand(B, P, 9).reshape(B * P, 9))
        out = self.encoder(t.reshape(B * P, 9, -1), mask)  # [B*P, 9, dim]
        return out[:, 0].view(B, P, -1)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[torch.Tensor], fit_batches=None) -> dict:
        gen = torch.Generator().manual_seed(1234)  # the same masks every evaluation
        total, n = 0.0, 0
        for x in batches:
            visible = self.random_visible(x.shape[0], gen)
            total -= (self.hidden_log_prob(x, visible) * ~visible).sum().item()
            n += x.shape[0] * self.num_hidden * self.patch_vars
        return {"masked_bpd": total / (math.log(2) * n)}
