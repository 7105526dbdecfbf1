"""Quantizers for latent actions: VQ and NSVQ with dead-code replacement, FSQ, and none (continuous).

All take continuous latents z of shape (..., D) and return a `Quantized` with the quantized latents
(same shape, differentiable with respect to z), the integer code of each vector (none for the
continuous `Continuous`), and the auxiliary loss to add to the training loss (zero for FSQ and none).
Small codebooks with several tokens per transition are the norm here (ViPRA: 8 codes x 16 tokens;
LAPA: 8 x 4), so collapse onto a few codes is the failure to watch: VQ and NSVQ count code usage and
`replace_dead_codes` re-seeds unused codes from recent latents.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    z_q: torch.Tensor  # (..., D) quantized latents; gradients reach the input through them
    codes: torch.Tensor | None  # (...,) int64 code index of each latent vector; None when continuous
    loss: torch.Tensor  # scalar auxiliary loss (codebook and commitment terms), 0 for FSQ and continuous


class _Codebook(nn.Module):
    """A learned codebook with usage counting and dead-code replacement, shared by VQ and NSVQ."""

    def __init__(self, num_codes: int, dim: int, usage_decay: float = 0.99, data_init: bool = False):
        """`data_init`: on the first training batch, set the codes to randomly chosen latents of that
        batch, so that every code starts where latents are (a random codebook far from them leaves
        all latents on one code, and NSVQ's substituted noise then drowns the signal)."""
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"need num_codes >= 2 and dim >= 1, got num_codes={num_codes}, dim={dim}")
        self.num_codes, self.dim, self.usage_decay = num_codes, dim, usage_decay
        self.codebook = nn.Parameter(torch.randn(num_codes, dim) / dim**0.5)
        self.register_buffer("usage", torch.ones(num_codes) / num_codes)  # EMA of assignment frequency
        self.register_buffer("recent", torch.zeros(0, dim), persistent=False)  # latents to re-seed from
        self.register_buffer("initialized", torch.tensor(not data_init))

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        if self.initialized or not self.training:
            return
        picks = torch.randperm(len(flat), device=flat.device)[: self.num_codes]
        picks = picks[torch.arange(self.num_codes, device=flat.device) % len(picks)]
        noise = 0.01 * flat.std() * torch.randn(self.num_codes, self.dim, device=flat.device)
        self.codebook.data.copy_(flat[picks] + noise)
        self.initialized.fill_(True)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """(M, D) -> (M,) index of the nearest code in Euclidean distance."""
        return torch.cdist(flat, self.codebook).argmin(dim=1)

    def _record(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        if not self.training:
            return
        counts = torch.bincount(codes, minlength=self.num_codes).float() / max(len(codes), 1)
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        self.recent = flat.detach()[-4096:]

    @torch.no_grad()
    def replace_dead_codes(self, threshold: float | None = None) -> int:
        """Re-seed codes used less than `threshold` (default: 1/10 of uniform) from recent latents.

        Returns how many codes were replaced. Call it every few hundred steps during training.
        """
        threshold = 0.1 / self.num_codes if threshold is None else threshold
        dead = torch.nonzero(self.usage < threshold).flatten()
        if len(dead) == 0 or len(self.recent) == 0:
            return 0
        picks = torch.randint(len(self.recent), (len(dead),), device=self.recent.device)
        noise = 0.01 * self.recent.std() * torch.randn(len(dead), self.dim, device=self.recent.device)
        self.codebook.data[dead] = self.recent[picks] + noise
        self.usage[dead] = 1.0 / self.num_codes
        return len(dead)

    def perplexity(self) -> torch.Tensor:
        """exp(entropy) of the usage distribution: num_codes when all are used equally, 1 on collapse."""
        p = self.usage / self.usage.sum()
        return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class VectorQuantizer(_Codebook):
    """VQ-VAE quantizer: nearest code, straight-through gradients, codebook + beta * commitment loss."""

    def __init__(
        self, num_codes: int, dim: int, beta: float = 0.25, usage_decay: float = 0.99, data_init: bool = False
    ):
        super().__init__(num_codes, dim, usage_decay, data_init)
        self.beta = beta

    def forward(self, z: torch.Tensor) -> Quantized:
        flat = z.reshape(-1, self.dim)  # (M, D)
        self._init_from(flat.detach())
        codes = self.nearest(flat)
        q = self.codebook[codes]  # (M, D)
        self._record(flat, codes)
        loss = F.mse_loss(q, flat.detach()) + self.beta * F.mse_loss(flat, q.detach())
        z_q = flat + (q - flat).detach()  # straight-through: forward is q, gradient is identity
        return Quantized(z_q.reshape(z.shape), codes.reshape(z.shape[:-1]), loss)


class NSVQ(_Codebook):
    """Noise-substitution VQ (Vali & Bäckström, 2022), as LAPA and ViPRA use it.

    In training the quantization error is replaced by a random vector of the same norm,
    z + ||z - q|| * v / ||v||, which passes gradients to both the encoder and the codebook without a
    straight-through estimate or extra loss terms. In eval it returns the nearest code itself.
    """

    def forward(self, z: torch.Tensor) -> Quantized:
        flat = z.reshape(-1, self.dim)  # (M, D)
        self._init_from(flat.detach())
        codes = self.nearest(flat)
        q = self.codebook[codes]
        self._record(flat, codes)
        if self.training:
            noise = torch.randn_like(flat)
            error_norm = (flat - q).norm(dim=1, keepdim=True)
            z_q = flat + error_norm * noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            z_q = q
        return Quantized(z_q.reshape(z.shape), codes.reshape(z.shape[:-1]), flat.new_zeros(()))


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al., 2023): each dimension rounded to a few levels.

    The codebook is implicit (the product of `levels`), so it cannot collapse in the VQ sense; the
    input dimension must equal len(levels).
    """

    def __init__(self, levels: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        if len(levels) == 0 or any(n < 2 for n in levels):
            raise ValueError(f"FSQ levels must all be >= 2, got {levels}")
        self.levels = tuple(levels)
        self.dim = len(levels)
        self.num_codes = int(torch.tensor(levels).prod())
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + tuple(levels[:-1])), dim=0)
        self.register_buffer("_basis", basis, persistent=False)

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per dimension: tanh scale, offset of the levels (0.5 for even counts), largest level."""
        levels = self._levels
        even = levels % 2 == 0
        # Odd counts use the integers up to (L-1)/2, even counts the half-integers up to (L-1)/2; the
        # scale keeps tanh's open range inside the outermost rounding cells.
        scale = torch.where(even, levels / 2 * (1 - 1e-3), (levels - 1) / 2 * (1 + 1e-3))
        return scale, even.float() * 0.5, (levels - 1) / 2

    def forward(self, z: torch.Tensor) -> Quantized:
        if z.shape[-1] != self.dim:
            raise ValueError(
                f"FSQ with levels {self.levels} needs latents of size {self.dim}, got {tuple(z.shape)}"
            )
        scale, offset, top = self._grid()
        y = torch.tanh(z) * scale  # (..., D)
        steps = torch.round(y - offset)  # integer cell of each dimension
        q = y + (steps + offset - y).detach()  # straight-through rounding onto the grid
        digits = (steps + torch.div(self._levels, 2, rounding_mode="floor")).long()  # (..., D) in [0, L)
        codes = (digits * self._basis).sum(-1)
        return Quantized(q / top, codes, z.new_zeros(()))

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """(...,) code indices -> (..., D) quantized latents in [-1, 1], the inverse of forward's codes."""
        _, offset, top = self._grid()
        digits = (codes.unsqueeze(-1) // self._basis) % self._levels.long()
        steps = digits.float() - torch.div(self._levels, 2, rounding_mode="floor")
        return (steps + offset) / top


class Continuous(nn.Module):
    """No quantization (LAOM, Nikulin et al. 2025): the inverse dynamics' latents pass as they are, and
    the only bottleneck is their size (tokens x code_dim numbers per transition). There are no codes:
    code usage is not measured, and the video's labels are the latents themselves (lam.label)."""

    num_codes = None

    def forward(self, z: torch.Tensor) -> Quantized:
        return Quantized(z, None, z.new_zeros(()))


def code_stats(codes: torch.Tensor | None, num_codes: int | None) -> dict:
    """Fraction of the codebook in use and the perplexity of the code distribution (none for continuous
    latents, which have no codes)."""
    if codes is None:
        return {}
    p = torch.bincount(codes, minlength=num_codes).float()
    p = p / p.sum()
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()).item()
    return {"codebook_usage": (p > 0).float().mean().item(), "perplexity": perplexity}
