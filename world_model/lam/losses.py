"""Training losses of the latent action model beside L1 and SSIM: optical-flow consistency, the error
where the frame changed, and warm-ups.

No pretrained network can be downloaded here, so the perceptual term is structural (SSIM, Gaussian
window, computed in torch) and the flow term uses a small flow estimator this project trains itself:
`FlowNet` regresses OpenCV DIS flow on real frame pairs, and the consistency loss asks the flow it
sees between frame 0 and a *predicted* frame to match the flow it sees between frame 0 and the real
one (ViPRA does the same with a frozen RAFT). The estimator's weights get no gradient from the
consistency term, so it cannot learn to hide the difference.
"""

import torch
import torch.nn.functional as F
from torch import nn


class FlowNet(nn.Module):
    """A small encoder-decoder from a frame pair (B, 6, H, W) to flow (B, 2, H, W) in pixels.

    Works at half resolution inside (the flows here are a few pixels) and upsamples at the end.
    """

    def __init__(self, width: int = 32):
        super().__init__()

        def conv(i, o, stride=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.GELU())

        self.down1 = conv(6, width, 2)  # H/2
        self.down2 = conv(width, 2 * width, 2)  # H/4
        self.mid = conv(2 * width, 2 * width)
        self.up = conv(3 * width, width)  # at H/2, with the skip from down1
        self.out = nn.Conv2d(width, 2, 3, 1, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], dim=1) * 2 - 1
        d1 = self.down1(x)
        d2 = self.mid(self.down2(d1))
        u = self.up(torch.cat([d1, F.interpolate(d2, scale_factor=2.0, mode="nearest")], dim=1))
        # Flow in pixels of the full image: predicted at half resolution, so scale it by 2.
        return 2 * F.interpolate(self.out(u), scale_factor=2.0, mode="bilinear", align_corners=False)

    def frozen(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The same function with the weights detached: gradients reach the inputs only."""
        params = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, params, (a, b))


def motion_mask(
    prev: torch.Tensor, real: torch.Tensor, threshold: float = 0.05, pad: int = 2
) -> torch.Tensor:
    """Frames (B, S, 3, H, W) and the frames after them -> (B, S, 1, H, W): 1 where a pixel changed by more
    than `threshold` in some channel, dilated by `pad` pixels (where the moved thing came from and went)."""
    changed = ((real - prev).abs().amax(2, keepdim=True) > threshold).float()
    dilated = F.max_pool2d(changed.flatten(0, 1), 2 * pad + 1, stride=1, padding=pad)
    return dilated.view_as(changed)


def masked_mse(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error (B, S, 3, H, W) over the pixels of a mask (B, S, 1, H, W); 0 where none is set."""
    return (error.pow(2) * mask).sum() / (mask.sum() * error.shape[2]).clamp_min(1.0)


def ramp(step: int, start: int, warmup: int) -> float:
    """0 before `start`, then linear up to 1 over `warmup` steps (a loss term's warm-up schedule)."""
    if step < start:
        return 0.0
    return 1.0 if warmup <= 0 else min(1.0, (step - start + 1) / warmup)
