"""VQ-VAE image teacher trained for likelihood, with an independent decoder per patch.

Shapes: images x are integer levels [B, H, W, Ch] in [0, num_cats); the patch grid is
(H/p) x (W/p) = P = num_positions patches of V_p = p * p * Ch variables each, in the order
of ``lvd.pc.patches.patch_index``.

Encoder (may look at neighbours): 3x3 conv over pixels -> p x p stride-p conv to one vector
per patch -> residual 3x3 convs over the patch grid -> 1x1 conv to ``latent_dim``.
Quantizer: ``num_codebooks`` groups of latent_dim / num_codebooks dims, each snapped to the
nearest of ``codebook_size`` codes; EMA codebook updates, dead codes restarted from encoder
outputs, straight-through gradient, commitment loss.
Decoder: one MLP shared by all positions plus a learned per-position bias on its first
layer; it maps patch i's quantized latent z_i (and i) to a discretized logistic mixture per
variable of patch i, so p(x | z) = prod_i p(x_i | z_i) -- the PC's own factorization.

Patch embedding (extract_embeddings): the quantized latent z_i, float [B, P, latent_dim].

Test metric (a bound, reported in bits per dimension): with the deterministic encoder,
log p(x) >= log p(x | z_q(x)) + log prior(z_q(x)), so
    bpd <= [-log2 p(x | z_q) - log2 prior(z_q)] / num_vars.
``bpd_uniform_prior`` uses a uniform prior over codes (num_positions * num_codebooks *
log2 codebook_size bits); ``bpd_fitted_prior`` uses, per position and codebook, the code
frequencies of the training set with add-one smoothing (fitted on train only, so still a
valid bound on test). ``bpd`` is the fitted-prior bound when fitted, else the uniform one.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lvd.pc.patches import patch_index
from lvd.teachers import logistic


class Quantizer(nn.Module):
    """Product quantizer with EMA codebooks: [N, G * d] -> quantized [N, G * d], codes [N, G]."""

    def __init__(self, latent_dim: int, codebook_size: int, groups: int, decay: float = 0.99,
                 eps: float = 1e-5, dead_frac: float = 0.1):
        super().__init__()
        if latent_dim % groups:
            raise ValueError(f"latent_dim={latent_dim} is not divisible by num_codebooks={groups}")
        self.G, self.K, self.d = groups, codebook_size, latent_dim // groups
        self.decay, self.eps, self.dead_frac = decay, eps, dead_frac
        self.register_buffer("codebook", torch.randn(groups, codebook_size, self.d))  # [G, K, d]
        self.register_buffer("cluster_size", torch.ones(groups, codebook_size))      # EMA counts
        self.register_buffer("code_sum", self.codebook.clone())                        # EMA sums
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code per group: z [N, G, d] -> int64 [N, G]."""
        dist = (z.pow(2).sum(-1, keepdim=True) - 2 * torch.einsum("ngd,gkd->ngk", z, self.codebook)
                + self.codebook.pow(2).sum(-1)[None])  # [N, G, K]
        return dist.argmin(-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [N, G] -> code vectors [N, G, d]."""
        return self.codebook[torch.arange(self.G, device=codes.device), codes]

    def forward(self, z_flat: torch.Tensor):
        z = z_flat.reshape(-1, self.G, self.d)  # [N, G, d]
        if self.training and not bool(self.initialized):
            self._restart(z.detach(), torch.ones(self.G, self.K, dtype=torch.bool, device=z.device))
            self.initialized.fill_(True)
        codes = self.codes(z.detach())
        zq = self.lookup(codes)
        if self.training:
            self._ema_update(z.detach(), codes)
        commit = F.mse_loss(z, zq.detach())
        zq = z + (zq - z).detach()  # straight-through
        return zq.reshape(z_flat.shape), codes, commit

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.K).to(z.dtype)  # [N, G, K]
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.code_sum.mul_(self.decay).add_(torch.einsum("ngk,ngd->gkd", onehot, z), alpha=1 - self.decay)
        n = self.cluster_size.sum(-1, keepdim=True)
        size = (self.cluster_size + self.eps) / (n + self.K * self.eps) * n  # Laplace-smoothed counts
        self.codebook.copy_(self.code_sum / size.unsqueeze(-1))
        mean_size = self.cluster_size.mean(-1, keepdim=True)  # ~ N / K
        self._restart(z, self.cluster_size < self.dead_frac * mean_size)

    @torch.no_grad()
    def _restart(self, z: torch.Tensor, dead: torch.Tensor) -> None:
        """Move dead codes (bool [G, K]) onto random encoder outputs of this batch."""
        for g in range(self.G):
            idx = dead[g].nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            pick = torch.randint(0, z.shape[0], (idx.numel(),), device=z.device)
            new = z[pick, g] + 0.01 * z[:, g].std() * torch.randn_like(z[pick, g])
            size = self.cluster_size[g].mean() if self.initialized else 1.0  # a fresh code counts as average
            self.codebook[g, idx] = new
            self.code_sum[g, idx] = new * size
            self.cluster_size[g, idx] = size


class VQVAE(nn.Module):
    def __init__(self, height: int, width: int, channels: int, num_cats: int, patch_size: int,
                 dim: int = 64, latent_dim: int = 16, codebook_size: int = 128, num_codebooks: int = 1,
                 num_mix: int = 4, commitment: float = 0.25, ema_decay: float = 0.95, res_blocks: int = 1):
        super().__init__()
        p = patch_size
        index = torch.from_numpy(patch_index(height, width, channels, p))  # [P, V_p]
        self.register_buffer("patch_idx", index, persistent=False)
        self.num_cats, self.num_mix, self.commitment = num_cats, num_mix, commitment
        self.num_positions, self.patch_vars = index.shape
        self.num_vars = height * width * channels
        self.embedding_dim = latent_dim
        c1 = max(dim // 2, 8)
        self.pix = nn.Conv2d(channels, c1, 3, padding=1)
        self.patchify = nn.Conv2d(c1, dim, p, stride=p)
        self.res = nn.ModuleList(nn.Sequential(nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(),
                                               nn.Conv2d(dim, dim, 1)) for _ in range(res_blocks))
        self.to_latent = nn.Conv2d(dim, latent_dim, 1)
        self.quant = Quantizer(latent_dim, codebook_size, num_codebooks, ema_decay)
        hidden = 2 * dim
        self.dec_in = nn.Linear(latent_dim, hidden)
        self.dec_pos = nn.Parameter(torch.zeros(self.num_positions, hidden))
        self.dec = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, self.patch_vars * logistic.num_params(num_mix)))

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, Ch] -> [B, P, V_p]."""
        return x.reshape(x.shape[0], -1)[:, self.patch_idx]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents [B, P, latent_dim]."""
        u = (x.float() * (2.0 / (self.num_cats - 1)) - 1.0).permute(0, 3, 1, 2)  # [B, Ch, H, W]
        h = self.patchify(F.gelu(self.pix(u)))  # [B, dim, gh, gw]
        for block in self.res:
            h = h + block(h)
        return self.to_latent(F.gelu(h)).flatten(2).transpose(1, 2)  # [B, gh*gw, L], row-major grid

    def quantize(self, z_e: torch.Tensor):
        """[B, P, L] -> quantized [B, P, L], codes [B, P, G], commitment loss."""
        B, P, L = z_e.shape
        zq, codes, commit = self.quant(z_e.reshape(B * P, L))
        return zq.view(B, P, L), codes.view(B, P, -1), commit

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """[B, P, L] -> logistic-mixture params [B, P, V_p, 3 * num_mix]; patch i from z_i alone."""
        h = self.dec(self.dec_in(zq) + self.dec_pos)
        return h.view(*zq.shape[:2], self.patch_vars, -1)

    def patch_log_prob(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        """log p(x_i | z_i) in nats, [B, P]."""
        return logistic.log_prob(self.patches(x), self.decode(zq), self.num_cats).sum(-1)

    def loss(self, x: torch.Tensor):
        zq, _, commit = self.quantize(self.encode(x))
        nll = -self.patch_log_prob(x, zq).sum(1).mean() / self.num_vars  # nats per dim
        return nll + self.commitment * commit, {"recon_bpd": nll.item() / math.log(2), "commit": commit.item()}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.encode(x))[0]

    @torch.no_grad()
    def evaluate(self, batches: Iterable[torch.Tensor], fit_batches: Iterable[torch.Tensor] | None = None) -> dict:
        G, K, P = self.quant.G, self.quant.K, self.num_positions
        prior_bits = None
        if fit_batches is not None:
            counts = torch.zeros(P * G, K, device=self.dec_pos.device)
            for x in fit_batches:
                codes = self.quantize(self.encode(x))[1]  # [B, P, G]
                counts.scatter_add_(1, codes.reshape(-1, P * G).T, torch.ones(P * G, codes.shape[0],
                                                                               device=counts.device))
            prior_bits = -torch.log2((counts + 1) / (counts.sum(1, keepdim=True) + K))  # [P*G, K]
        recon, fitted, n = 0.0, 0.0, 0
        used = torch.zeros(G, K, dtype=torch.bool, device=self.dec_pos.device)
        for x in batches:
            zq, codes, _ = self.quantize(self.encode(x))
            recon -= self.patch_log_prob(x, zq).sum().item()
            flat = codes.reshape(-1, P * G)  # [B, P*G]
            if prior_bits is not None:
                fitted += prior_bits.gather(1, flat.T).sum().item()
            used |= F.one_hot(codes.reshape(-1, G), K).any(0).bool()
            n += x.shape[0]
        recon_bpd = recon / (math.log(2) * n * self.num_vars)
        out = {"recon_bpd": recon_bpd,
               "bpd_uniform_prior": recon_bpd + P * G * math.log2(K) / self.num_vars,
               "codes_used": used.sum().item() / G}
        if prior_bits is not None:
            out["bpd_fitted_prior"] = recon_bpd + fitted / (n * self.num_vars)
        out["bpd"] = out.get("bpd_fitted_prior", out["bpd_uniform_prior"])
        return out
