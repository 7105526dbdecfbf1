"""Image comparisons shared by the models' losses, evaluations and benchmarks: SSIM and PSNR."""

import torch
import torch.nn.functional as F


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two image batches (..., C, H, W) in [0, 1] (Wang et al., 2004), differentiable."""
    c1, c2 = 0.01**2, 0.03**2
    shape = x.shape
    x, y = x.reshape(-1, 1, *shape[-2:]), y.reshape(-1, 1, *shape[-2:])
    g = torch.exp(
        -((torch.arange(window, dtype=x.dtype, device=x.device) - window // 2) ** 2) / (2 * sigma**2)
    )
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]  # (1, 1, w, w)

    def blur(t):
        return F.conv2d(t, kernel)  # valid padding: no border effects

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], shape (..., C, H, W) -> (...)."""
    mse = ((pred.clamp(0, 1) - target) ** 2).flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp_min(1e-10))
