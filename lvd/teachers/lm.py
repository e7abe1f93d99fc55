"""Transformer language-model teachers over token windows x [B, seq_len] (int, < vocab_size).

``causal`` (kind "lm", the default text teacher): input [BOS, x_0, ..., x_{T-2}], output at
step t predicts x_t. The embedding of position t is the final-layer hidden state of step t,
i.e. the state after reading x_<t that emits x_t (position 0: after reading the learned BOS
token only). It is what the HMM state z_t must carry (method.md section 4).
Test metric ``perplexity``: exp of the mean negative log-likelihood per token over all
tokens of all test windows, the first token of each window predicted from BOS alone.

``bidirectional`` (kind "mlm"): a masked LM. Training replaces a random ``mask_ratio`` of
the tokens (at least one per window) by a MASK token and predicts them from the whole
window. The embedding of position t is the final-layer state of t over the unmasked window
(it sees x_t itself and both sides). Test metric ``masked_perplexity`` (fixed-seed masks):
exp of the mean NLL of masked tokens given the rest -- not a perplexity of the window, so
the stage reports ``teacher_test_perplexity`` as null for this teacher.

Output layer: a softmax over the vocabulary tied to the input embedding; for large
vocabularies (``auto_cutoffs``: vocab_size >= 8192, e.g. WikiText-2's 33,278) an adaptive
softmax (Grave et al. 2017, ``torch.nn.AdaptiveLogSoftmaxWithLoss``) over the types sorted by
their training frequency, which is still an exact, normalized distribution but about ten
times cheaper on a CPU. ``prepare(train)`` sets that frequency order before training.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lvd.teachers.transformer import Encoder, causal_mask


def auto_cutoffs(vocab_size: int) -> tuple[int, ...]:
    """Adaptive-softmax cluster boundaries for a vocabulary, () = a plain softmax."""
    if vocab_size < 8192:
        return ()
    return (2000, 10000) if vocab_size > 20000 else (2000,)


class TokenLM(nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, dim: int = 128, layers: int = 2, heads: int = 4,
                 causal: bool = True, mask_ratio: float = 0.15, cutoffs: tuple[int, ...] = ()):
        super().__init__()
        if not causal and not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        self.vocab_size, self.seq_len, self.causal, self.mask_ratio = vocab_size, seq_len, causal, mask_ratio
        self.bos, self.mask_id = vocab_size, vocab_size + 1
        self.num_positions, self.embedding_dim = seq_len, dim
        self.tok = nn.Embedding(vocab_size + 2, dim)  # + BOS + MASK
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, dim))
        self.encoder = Encoder(dim, layers, heads)
        self.cutoffs = tuple(cutoffs)
        if self.cutoffs:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(dim, vocab_size, list(self.cutoffs), div_value=4.0)
            # rank[token id] = position of the token in training-frequency order (set by prepare)
            self.register_buffer("rank", torch.arange(vocab_size))
        else:
            self.out_bias = nn.Parameter(torch.zeros(vocab_size))
        self.register_buffer("mask", causal_mask(seq_len), persistent=False)

    def hidden(self, inp: torch.Tensor) -> torch.Tensor:
        """inp [B, T] token ids (may include BOS/MASK) -> final-layer states [B, T, dim]."""
        T = inp.shape[1]
        mask = self.mask[:T, :T] if self.causal else None
        return self.encoder(self.tok(inp) + self.pos[:T], mask)

    @torch.no_grad()
    def prepare(self, train: torch.Tensor) -> None:
        """Before training: order the adaptive softmax's types by their frequency in ``train``."""
        if self.cutoffs:
            counts = torch.bincount(train.reshape(-1).long().cpu(), minlength=self.vocab_size)
            order = counts.argsort(descending=True, stable=True)  # [V] ids, most frequent first
            self.rank.copy_(order.argsort().to(self.rank.device))

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> log-probabilities of every type, [..., vocab_size]."""
        if self.cutoffs:
            lp = self.adaptive.log_prob(h.reshape(-1, h.shape[-1]))[:, self.rank]  # back to id order
            return lp.view(*h.shape[:-1], self.vocab_size)
        return F.log_softmax(F.linear(h, self.tok.weight[: self.vocab_size], self.out_bias), -1)

    def target_nll(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed NLL (nats) of targets y [N] given states h [N, dim]."""
        if self.cutoffs:
            return -self.adaptive(h, self.rank[y]).output.sum()
        lg = F.linear(h, self.tok.weight[: self.vocab_size], self.out_bias)
        return F.cross_entropy(lg, y, reduction="sum")

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """[BOS, x_0, ..., x_{T-2}]: step t has read x_<t."""
        bos = torch.full_like(x[:, :1], self.bos)
        return torch.cat([bos, x[:, :-1]], 1)

    def random_masked(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """bool [B, T], True where masked; at least one per row."""
        if generator is None:
            noise = torch.rand(x.shape, device=x.device)
        else:
            noise = torch.rand(x.shape, generator=generator).to(x.device)
        return (noise < self.mask_ratio) | (noise == noise.min(1, keepdim=True).values)

    def token_nll(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Summed NLL (nats) and number of predicted tokens for a batch."""
        x = x.long()
        if self.causal:
            h = self.hidden(self.shifted(x))
            return self.target_nll(h.reshape(-1, h.shape[-1]), x.reshape(-1)), x.numel()
        masked = self.random_masked(x, generator)
        h = self.hidden(torch.where(masked, torch.full_like(x, self.mask_id), x))
        return self.target_nll(h[masked], x[masked]), int(masked.sum())

    def loss(self, x: torch.Tensor):
        total, n = self.token_nll(x)
        nll = total / n
        return nll, {"nll": nll.item()}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, dim] (see the module docstring for which state)."""
        x = x.long()
        return self.hidden(self.shifted(x) if self.causal else x)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[torch.Tensor], fit_batches=None) -> dict:
        gen = None if self.causal else torch.Generator().manual_seed(1234)
        total, n = 0.0, 0
        for x in batches:
            t, k = self.token_nll(x, gen)
            total += t.item()
            n += k
        nll = total / max(n, 1)
        key = "perplexity" if self.causal else "masked_perplexity"
        return {key: math.exp(nll), "nll": nll, "bits_per_token": nll / math.log(2)}
