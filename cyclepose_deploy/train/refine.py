"""Refinement by self-training after the CycleGAN: a departure from the paper, off unless
`--refine-steps N` asks for it.

CyclePose teaches S about real images only through the image cycle and the mask-domain discriminator.
Refinement adds a supervised phase on the real images themselves, with targets S makes: each round,
  1. pseudo-labels: S segments every training image as the runtime would (its normalisation and scale,
     with `refine_tta` its outputs averaged over flips in y, x and both, as Cellpose's `augment`;
     Cellpose's dynamics with the runtime's contrast checks and half-maximum outlines, nuclei cut by the
     image's edge exempt from the flow check); objects whose flows disagree with their masks by more than
     `refine_flow_error` are not trusted: their pixels, and S's foreground that no kept object covers,
     are left out of the loss (ignored), not taught as background;
  2. `refine_steps / refine_rounds` steps of Cellpose's loss (MSE on 5 x flows, BCE on the probability,
     over the pixels not ignored) on crops of those images with strong augmentation: flips and rot90,
     scale jitter (flows resampled, their direction kept), gamma, gain, offset, blur and noise, crops
     reaching past the image's edge (zeros there, as the runtime pads); a `refine_synthetic` share of
     each batch is G's renderings of synthetic masks with their exact targets (the shape prior stays).
The next round labels the images again with the improved S (noisy-student self-training, Xie et al.
2020). The optimiser is a fresh Adam with a learning rate that decays linearly to 10 % over the phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cyclepose_deploy.runtime.tiling.augment import flip_mean
from cyclepose_deploy.train.losses import FLOW_SCALE, augment_rendering

SCALE_JITTER = 1.25  # crops are zoomed by a factor in [1/1.25, 1.25]
IGNORE_BAND = 1  # px around untrusted pixels that are not taught either


@dataclass
class Target:
    """One training image (C, H, W) normalised, at S's scale, and its pseudo-label target (4, H, W):
    unit flow dY, dX, probability and the ignore mask (1 = not taught)."""

    image: np.ndarray
    target: np.ndarray


def predict(
    net: torch.nn.Module, image: np.ndarray, autocast: Any, memory_format: Any, tta: bool = False
) -> np.ndarray:
    """S's (3, H, W) output (flows dY, dX x FLOW_SCALE, cellprob logit) for one normalised (C, H, W)
    image, padded with zeros (the normalised background, as the runtime pads) to multiples of 16.
    tta: the mean over the image as it is and flipped in y, in x and both (runtime.tiling.augment,
    as the runtime's --tta)."""
    c, h, w = image.shape
    padded = np.zeros((1, c, -(-h // 16) * 16, -(-w // 16) * 16), np.float32)
    padded[0, :, :h, :w] = image
    net.eval()
    device = next(net.parameters()).device

    def infer(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad(), autocast():
            x = torch.from_numpy(batch).to(device).contiguous(memory_format=memory_format)
            return net(x).float().cpu().numpy()

    out = flip_mean(infer, padded) if tta else infer(padded)
    return out[0, :, :h, :w]


def pseudo_label(
    output: np.ndarray, image: np.ndarray, max_flow_error: float
) -> tuple[np.ndarray, np.ndarray]:
    """(labels int32, ignore bool) of one image from S's output, with the runtime's dynamics (see the
    module docstring); image: the normalised (C, H, W) image S saw."""
    from scipy import ndimage

    from cyclepose_deploy.runtime.dynamics.masks import edge_objects, flow_errors
    from cyclepose_deploy.runtime.dynamics.segment import DynamicsSettings, segment
    from cyclepose_deploy.runtime.source.normalize import noise_sigma

    flows = np.ascontiguousarray(output[:2] / FLOW_SCALE)
    logit = np.ascontiguousarray(output[2])
    noise = noise_sigma([image[0]])
    labels, _ = segment(flows, logit, DynamicsSettings(flow_threshold=0.0), logit.size, image[0], noise)
    count = int(labels.max())
    ignore = (logit > 0) & (labels == 0)
    if count:
        errors = flow_errors(labels, count, flows)
        cut = edge_objects(labels, count, (True, True, True, True))
        untrusted = (errors > max_flow_error) & ~cut
        untrusted[0] = False
        ignore |= untrusted[labels]
        labels = np.where(untrusted[labels], 0, labels)
    ignore = ndimage.binary_dilation(ignore, iterations=IGNORE_BAND) & (labels == 0)
    return labels.astype(np.int32), ignore


def make_target(labels: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """(4, H, W) float32: unit flows of the labels (Cellpose's heat diffusion), probability, ignore."""
    from cyclepose_deploy.runtime.dynamics import labels_to_flows

    flows = labels_to_flows(labels)
    return np.concatenate([flows, (labels > 0)[None], ignore[None]]).astype(np.float32)


def masked_flow_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cellpose's loss over the pixels not ignored: MSE on 5 x flows (halved) + BCE on the logit."""
    keep = 1.0 - target[:, 3]
    count = keep.sum().clamp_min(1.0)
    squared = ((output[:, :2] - FLOW_SCALE * target[:, :2]) ** 2).mean(1)  # per pixel, as F.mse_loss
    bce = F.binary_cross_entropy_with_logits(output[:, 2], target[:, 2], reduction="none")
    return (squared * keep).sum() / count / 2.0 + (bce * keep).sum() / count


def augment(
    x: torch.Tensor, t: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale jitter (image bilinear, flows bilinear and renormalised, probability and ignore nearest),
    gamma, gain, offset, blur and noise on a batch of crops and their (4, T, T) targets."""
    n = x.shape[0]

    def uniform(lo: float, hi: float, shape: tuple[int, ...] = (n, 1, 1, 1)) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    zoom = torch.exp(uniform(-math.log(SCALE_JITTER), math.log(SCALE_JITTER), (n,)))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    flows = F.grid_sample(t[:, :2], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rest = F.grid_sample(t[:, 2:], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    norm = flows.pow(2).sum(1, keepdim=True).sqrt()
    flows = torch.where(norm > 1e-3, flows / norm.clamp_min(1e-6), torch.zeros_like(flows)) * (
        rest[:, :1] > 0
    )
    x = x.clamp_min(0) ** uniform(0.7, 1.4) * uniform(0.75, 1.3) + uniform(-0.05, 0.05)
    blur = (uniform(0.0, 1.0) < 0.3).float()
    smooth = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = blur * (0.5 * x + 0.5 * smooth) + (1.0 - blur) * x
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.08)
    return x, torch.cat([flows, rest], 1)


def sample_crops(
    rng: np.random.Generator, targets: list[Target], batch: int, tile: int, border: float
) -> tuple[np.ndarray, np.ndarray]:
    """(batch, C, T, T) crops and their (batch, 4, T, T) targets, images drawn by area; a `border`
    share reaches up to T/2 past an image's edge (zeros there, taught as background), then flips and
    rot90 with the flow vectors turned."""
    from cyclepose_deploy.train.data import dihedral_flows

    weights = np.array([t.image.shape[1] * t.image.shape[2] for t in targets], float)
    weights /= weights.sum()
    channels = targets[0].image.shape[0]
    xs = np.zeros((batch, channels, tile, tile), np.float32)
    ts = np.zeros((batch, 4, tile, tile), np.float32)
    for b in range(batch):
        item = targets[int(rng.choice(len(targets), p=weights))]
        h, w = item.image.shape[1:]
        reach = tile // 2 if rng.uniform() < border else 0
        y = int(rng.integers(-reach, max(h - tile + reach, -reach) + 1))
        x = int(rng.integers(-reach, max(w - tile + reach, -reach) + 1))
        y0, y1, x0, x1 = max(y, 0), min(y + tile, h), max(x, 0), min(x + tile, w)
        both = np.zeros((channels + 4, tile, tile), np.float32)
        both[:channels, y0 - y : y1 - y, x0 - x : x1 - x] = item.image[:, y0:y1, x0:x1]
        both[channels:, y0 - y : y1 - y, x0 - x : x1 - x] = item.target[:, y0:y1, x0:x1]
        turned = dihedral_flows(rng, np.concatenate([both[channels:], both[:channels]]))
        ts[b], xs[b] = turned[:4], turned[4:]
    return xs, ts


def rendered_batch(trainer: Any, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` G renderings of synthetic masks (augmented as in the mask cycle) and their exact targets
    with nothing ignored."""
    cfg = trainer.config
    r, inside = trainer.bank.sample(trainer.rng, count, cfg.tile, cfg.border)
    r_t, inside_t = trainer._tensor(r), trainer._tensor(inside)
    trainer.G.eval()
    with torch.no_grad(), trainer._autocast():
        images = trainer.G(r_t.contiguous(memory_format=trainer.memory_format)).float() * inside_t
    trainer.G.train()
    return augment_rendering(images, trainer.augment_gen) * inside_t, torch.cat(
        [r_t, torch.zeros_like(r_t[:, :1])], 1
    )


class Refiner:
    """The refinement phase of a Trainer (module docstring): `label()` starts a round, `step()` is
    one update. Its progress (`step`, the S that labelled this round) goes into full checkpoints, so
    --resume continues it (the round's pseudo-labels are made again from that S: deterministic)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        cfg = trainer.config
        self.per_round = max(1, math.ceil(cfg.refine_steps / cfg.refine_rounds))
        self.optimizer = torch.optim.Adam(trainer.S.parameters(), lr=cfg.refine_lr)
        # fp16 autocast on CUDA needs loss scaling (off on CPU); it starts at the CycleGAN's scale so
        # the first refinement steps are not skipped as overflows
        self.scaler = torch.amp.GradScaler(
            "cuda",
            init_scale=trainer.scaler_gen.get_scale() or 65536.0,
            enabled=trainer.device.type == "cuda",
        )
        self.generator = torch.Generator().manual_seed(cfg.seed + 7)
        self.rng = np.random.default_rng([cfg.seed, 7])
        self.step = 0  # refinement steps done
        self.targets: list[Target] = []
        self.labeller: dict[str, torch.Tensor] | None = None  # S's weights that made this round's labels

    @property
    def done(self) -> bool:
        return self.step >= self.trainer.config.refine_steps

    def label(self) -> int:
        """Pseudo-label every training image with S as it is now; returns the objects kept."""
        trainer = self.trainer
        self.labeller = {k: v.detach().clone() for k, v in trainer.S.state_dict().items()}
        self.targets = []
        kept = 0
        for image in trainer.crops.images:
            output = predict(
                trainer.S, image, trainer._autocast, trainer.memory_format, trainer.config.refine_tta
            )
            labels, ignore = pseudo_label(output, image, trainer.config.refine_flow_error)
            self.targets.append(Target(image, make_target(labels, ignore)))
            kept += int(len(np.unique(labels)) - 1)
        trainer.S.train()
        return kept

    def train_step(self) -> dict[str, float]:
        """One supervised update of S on pseudo-labelled crops (and rendered synthetic ones); relabels
        at each round's start."""
        trainer, cfg = self.trainer, self.trainer.config
        if self.step % self.per_round == 0 or not self.targets:
            self.label()
        factor = 1.0 - 0.9 * self.step / max(cfg.refine_steps, 1)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.refine_lr * factor
        synthetic = int(round(cfg.batch * cfg.refine_synthetic))
        x, t = sample_crops(self.rng, self.targets, cfg.batch - synthetic, cfg.tile, cfg.border)
        x_t, t_t = augment(torch.from_numpy(x), torch.from_numpy(t), self.generator)
        x_t, t_t = x_t.to(trainer.device), t_t.to(trainer.device)  # augmented on the CPU generator
        if synthetic:
            x_s, t_s = rendered_batch(trainer, synthetic)
            x_t, t_t = torch.cat([x_t, x_s]), torch.cat([t_t, t_s])
        trainer.S.train()
        with trainer._autocast():
            output = trainer.S(x_t.contiguous(memory_format=trainer.memory_format)).float()
        loss = masked_flow_loss(output, t_t)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return {"refine": float(loss.item())}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": self.rng.bit_generator.state,
            "labeller": self.labeller or {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a phase: the round's labels are made again by the S that made them."""
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
        if state.get("labeller") and self.step % self.per_round:
            current = {k: v.detach().clone() for k, v in self.trainer.S.state_dict().items()}
            self.trainer.S.load_state_dict(state["labeller"])
            self.label()
            self.trainer.S.load_state_dict(current)
