"""The CyclePose training step and its resumable state.

Mask cycle: synthetic target r -> G -> image -> (augmented) S -> Cellpose loss against r: S learns
with exact targets here. Image cycle: real x -> S -> G -> L1 to x. LSGAN terms make G's images look
like the real ones (D_image) and S's outputs on real images look like synthetic masks (D_mask)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cyclepose_deploy import limits
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.nets.discriminators import PatchDiscriminator
from cyclepose_deploy.nets.renderer import Renderer
from cyclepose_deploy.nets.segmenter import Segmenter
from cyclepose_deploy.synth.shapes import ShapePrior
from cyclepose_deploy.train.data import ImageCrops, MaskBank
from cyclepose_deploy.train.losses import augment_rendering, flow_loss, lsgan, to_mask_domain
from cyclepose_deploy.train.pool import ImagePool
from cyclepose_deploy.train.refine import Refiner


@dataclass
class TrainConfig:
    """Everything that shapes a run; saved in the checkpoint so --resume needs no repeats."""

    in_channels: int = 1
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    diameter: list[float] = field(default_factory=lambda: [10.0, 30.0])
    coverage: float = 0.3
    coverage_max: float | None = None  # with it, each mask canvas draws its coverage in [coverage, max]
    normalization: dict[str, float] = field(default_factory=lambda: {"lower": 1.0, "upper": 99.0})
    tile: int = 128
    batch: int = 8
    steps: int = 1000
    seed: int = 0
    lr_s: float = 1e-3
    lr: float = 2e-4
    lambda_mask: float = 10.0
    lambda_image: float = 10.0
    lambda_adv_s: float = 1.0
    detach_render: bool = False
    real_grad: bool = True  # the paper: S learns from real images (image cycle + D_mask); False: departure
    rescale_images: bool = True  # resample each real image to diam_mean (blob estimate); False: departure
    pool: int = 50
    bank_canvases: int = 8
    bank_canvas: int = 384
    refresh_every: int = 10
    render_width: int = 16
    disc_base: int = 32
    calibration_batches: int = 50
    border: float = 0.25  # fraction of crops (both domains) that reach past an image edge (data.py)
    precision: str = "auto"  # CPU: "bf16" (autocast) where the CPU has native bf16, else "fp32"; CUDA: fp16
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU (oneDNN)
    init: str | None = None  # the checkpoint this run was warm-started from (--init), for provenance
    # refinement by self-training after the CycleGAN steps (train/refine.py; a departure, off at 0)
    refine_steps: int = 0
    refine_rounds: int = 2
    refine_lr: float = 3e-4
    refine_synthetic: float = 0.25  # share of each refinement batch rendered from synthetic masks
    refine_flow_error: float = 0.4  # pseudo-label objects whose flow error exceeds it are ignored
    refine_tta: bool = False  # pseudo-labels from S's outputs averaged over flips (4x the labelling)
    # the deployed S averages its weights with the warm start's (WiSE-FT; a departure, off at 0)
    init_weight: float = 0.0

    def __post_init__(self) -> None:
        """Every number within its declared range (limits.TRAIN), so that a run that starts also writes
        a checkpoint export accepts; OptionError naming the setting."""
        check_train_config(self)

    @property
    def diam_mean(self) -> float:
        return 0.5 * (self.diameter[0] + self.diameter[1])

    @property
    def total_steps(self) -> int:
        """CycleGAN steps, then refinement steps."""
        return self.steps + self.refine_steps

    def prior(self) -> ShapePrior:
        return ShapePrior(
            diameter_min=self.diameter[0], diameter_max=self.diameter[1], coverage=self.coverage
        )


def check_train_config(config: TrainConfig) -> None:
    """The declared ranges of a training run (limits.TRAIN, limits.MODEL)."""
    from cyclepose_deploy.errors import OptionError

    table = limits.TRAIN
    for name in ("steps", "tile", "batch", "seed"):
        setattr(config, name, table[name].check(name, getattr(config, name)))
    for name, key in (("lr_s", "lr"), ("lr", "lr")):
        setattr(config, name, table[key].check(name, getattr(config, name)))
    config.widths = check_widths(config.widths)
    low, high = limits.check_pair("diameter", config.diameter, table["diameter"], ordered=False)
    if low > high:
        raise OptionError("diameter", f"{{diameter}} {low:g}-{high:g} needs MIN <= MAX, e.g. 10-30")
    config.diameter = [low, high]
    config.coverage = table["coverage"].check("coverage", config.coverage)
    if config.coverage_max is not None:
        config.coverage_max = table["coverage"].check("coverage", config.coverage_max)
    if config.batch * config.tile * config.tile > limits.MAX_TRAIN_PIXELS:
        raise OptionError(
            "batch", f"{{batch}} {config.batch} crops of {config.tile} px are too many px per step: lower it"
        )
    if config.tile > config.bank_canvas:
        raise OptionError(
            "tile", f"{{tile}} {config.tile} must be at most the synthetic canvas ({config.bank_canvas} px)"
        )
    if not 0.0 <= config.border <= 1.0:
        raise OptionError("border_crops", f"{{border_crops}} {config.border} must be a fraction from 0 to 1")
    config.refine_steps = table["refine_steps"].check("refine_steps", config.refine_steps)
    config.refine_rounds = table["refine_rounds"].check("refine_rounds", config.refine_rounds)
    config.refine_lr = table["lr"].check("refine_lr", config.refine_lr)
    if not 0.0 <= config.refine_synthetic < 1.0:
        raise OptionError(
            "refine_synthetic", f"{{refine_synthetic}} {config.refine_synthetic} must be in [0, 1)"
        )
    if config.refine_steps and round(config.batch * config.refine_synthetic) >= config.batch:
        raise OptionError(
            "refine_synthetic",
            f"{{refine_synthetic}} {config.refine_synthetic} of a {{batch}} of {config.batch} leaves no "
            "real crop in a refinement batch: lower it or raise {batch}",
        )
    config.init_weight = table["init_weight"].check("init_weight", config.init_weight)
    if config.precision not in ("auto", "bf16", "fp32"):
        raise OptionError("precision", f"{{precision}} {config.precision!r} must be auto, bf16 or fp32")


def check_widths(widths: object) -> list[int]:
    """S's channels per level: 2 to 8 levels (Cellpose: 4), each within limits.MODEL["width"]; what
    train.checkpoint.check_config asks of a checkpoint, so a run never writes one export refuses."""
    from cyclepose_deploy.errors import OptionError

    if not isinstance(widths, (list, tuple)) or not 2 <= len(widths) <= 8:
        raise OptionError(
            "widths",
            f"{{widths}} {widths!r} needs 2 to 8 channel counts, e.g. 16,32,64,128 (Cellpose: 32,64,128,256)",
        )
    checked = [limits.MODEL["width"].check("widths", w) for w in widths]
    if limits.approx_weights(checked) > limits.MAX_WEIGHTS:
        raise OptionError(
            "widths",
            f"{{widths}} {','.join(map(str, checked))} would build about {limits.approx_weights(checked):,} "
            f"weights (at most {limits.MAX_WEIGHTS:,}): use fewer channels, e.g. 32,64,128,256",
        )
    return checked


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic (AVX512-BF16 or AMX): there bf16 autocast is 2-3x faster than fp32;
    elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: CUDA fp16 (mixed precision); CPU bf16 for "bf16", or "auto" on a CPU
    with native bf16; None (fp32) otherwise."""
    if device.type == "cuda":
        return torch.float16
    if precision == "bf16" or (precision == "auto" and cpu_has_bf16()):
        return torch.bfloat16
    return None


def lr_factor(step: int, total: int) -> float:
    """Constant for the first half, then linear decay to 10 %."""
    half = total // 2
    return 1.0 if step < half else 1.0 - 0.9 * (step - half) / max(total - half, 1)


class Trainer:
    """Nets, optimisers, pools, the mask bank and every RNG: all of it goes into a full checkpoint."""

    def __init__(self, config: TrainConfig, crops: ImageCrops, device: str = "cpu") -> None:
        self.config, self.crops, self.device = config, crops, torch.device(device)
        torch.manual_seed(config.seed)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.amp_dtype = autocast_dtype(config.precision, self.device)

        def place(net: torch.nn.Module) -> torch.nn.Module:
            return net.to(self.device, memory_format=self.memory_format)

        self.S = place(Segmenter(config.in_channels, config.widths, config.diam_mean))
        self.G = place(Renderer(config.in_channels, config.render_width))
        self.D_image = place(PatchDiscriminator(config.in_channels, config.disc_base))
        self.D_mask = place(PatchDiscriminator(3, config.disc_base))
        self.opt_gen = torch.optim.Adam(
            [
                {"params": self.S.parameters(), "lr": config.lr_s},
                {"params": self.G.parameters(), "lr": config.lr},
            ],
            betas=(0.5, 0.999),
        )
        disc_params = [*self.D_image.parameters(), *self.D_mask.parameters()]
        self.opt_disc = torch.optim.Adam(disc_params, lr=config.lr, betas=(0.5, 0.999))
        self.base_lrs = [config.lr_s, config.lr, config.lr]
        amp = self.device.type == "cuda"
        self.scaler_gen = torch.amp.GradScaler("cuda", enabled=amp)
        self.scaler_disc = torch.amp.GradScaler("cuda", enabled=amp)
        self.rng = np.random.default_rng([config.seed, 1])
        self.augment_gen = torch.Generator().manual_seed(config.seed + 2)
        self.pool_image, self.pool_mask = ImagePool(config.pool), ImagePool(config.pool)
        self.bank = MaskBank(config.prior(), config.bank_canvas, config.bank_canvases, config.coverage_max)
        self.bank.fill(self.rng)
        self.step = 0
        self.seconds = 0.0  # wall time trained, across resumes
        self.refiner: Refiner | None = Refiner(self) if config.refine_steps else None
        self.S_init: dict[str, torch.Tensor] | None = None  # the warm start's S, for config.init_weight
        self.init_reloaded: str | None = None  # the file S_init was read again from (train.run)

    def warm_start(self, nets: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load the weights of a warm start (train.run.init_config): S always; G and the discriminators
        where the checkpoint has them (a Cellpose model has S only: the others start fresh)."""
        for name, state in nets.items():
            getattr(self, name).load_state_dict(state)
        self.S_init = {k: v.clone() for k, v in _cpu(self.S.state_dict()).items()}  # S trains in place

    def _autocast(self) -> torch.autocast:
        dtype = self.amp_dtype or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp_dtype is not None)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device).contiguous(memory_format=self.memory_format)

    def _set_lr(self) -> None:
        factor = lr_factor(self.step, self.config.steps)
        groups = [*self.opt_gen.param_groups, *self.opt_disc.param_groups]
        for group, base in zip(groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def _batches(self) -> Batches:
        cfg = self.config
        x, inside_x = self.crops.sample(self.rng, cfg.batch, cfg.border)
        r, inside_r = self.bank.sample(self.rng, cfg.batch, cfg.tile, cfg.border)
        if self.step % cfg.refresh_every == cfg.refresh_every - 1:
            self.bank.refresh(self.rng)
        return Batches(*(self._tensor(a) for a in (x, inside_x, r, inside_r)))

    def train_step(self) -> dict[str, float]:
        """One step: of the CycleGAN (S and G, then both discriminators) for the first config.steps,
        then of the refinement (train/refine.py). Returns the losses."""
        if self.step >= self.config.steps and self.refiner is not None:
            losses = self.refiner.train_step()
            self.step += 1
            return losses
        self._set_lr()
        batches = self._batches()
        losses, fake_x, r_x = self._generator_step(batches)
        losses.update(self._discriminator_step(batches.x, batches.r, fake_x, r_x))
        self.step += 1
        return losses

    def _generator_step(self, b: Batches) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        cfg = self.config
        x, r = b.x, b.r
        for d in (self.D_image, self.D_mask):
            d.requires_grad_(False)
        with self._autocast():
            fake_x = self.G(r) * b.inside_r  # a black band where the crop lies past the image's edge
            adv_g = lsgan(self.D_image(fake_x), True)
            rendered = fake_x.detach() if cfg.detach_render else fake_x
            seen = augment_rendering(rendered, self.augment_gen) * b.inside_r  # the band stays black
            mask_cycle = flow_loss(self.S(seen).float(), r)
            with torch.set_grad_enabled(cfg.real_grad):
                r_x = to_mask_domain(self.S(x).float())
            adv_s = lsgan(self.D_mask(r_x), True) if cfg.real_grad else torch.zeros((), device=x.device)
            image_cycle = F.l1_loss(self.G(r_x).float() * b.inside_x, x)
            total = (
                adv_g
                + cfg.lambda_adv_s * adv_s
                + cfg.lambda_mask * mask_cycle
                + cfg.lambda_image * image_cycle
            )
        self.opt_gen.zero_grad(set_to_none=True)
        self.scaler_gen.scale(total).backward()
        self.scaler_gen.step(self.opt_gen)
        self.scaler_gen.update()
        for d in (self.D_image, self.D_mask):
            d.requires_grad_(True)
        losses = {
            "mask": mask_cycle.item(),
            "image": image_cycle.item(),
            "adv_g": adv_g.item(),
            "adv_s": adv_s.item(),
        }
        return losses, fake_x.detach(), r_x.detach()

    def _discriminator_step(
        self, x: torch.Tensor, r: torch.Tensor, fake_x: torch.Tensor, r_x: torch.Tensor
    ) -> dict[str, float]:
        fake_x = self.pool_image.query(fake_x, self.rng)
        r_x = self.pool_mask.query(r_x, self.rng)
        with self._autocast():
            d_image = 0.5 * (lsgan(self.D_image(x), True) + lsgan(self.D_image(fake_x), False))
            d_mask = 0.5 * (lsgan(self.D_mask(r), True) + lsgan(self.D_mask(r_x), False))
        self.opt_disc.zero_grad(set_to_none=True)
        self.scaler_disc.scale(d_image + d_mask).backward()
        self.scaler_disc.step(self.opt_disc)
        self.scaler_disc.update()
        return {"d_image": d_image.item(), "d_mask": d_mask.item()}

    def calibrated_segmenter(self) -> Segmenter:
        """A copy of S whose BatchNorm statistics come from real crops only (AdaBN): in training S
        saw rendered and real batches, and eval mode must match the real images it will segment. With
        config.init_weight, then averaged with the warm start's S (_average_with_init)."""
        net = copy.deepcopy(self.S)
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        rng = np.random.default_rng([self.config.seed, 99, self.step])  # leaves the training RNG alone
        net.train()
        with torch.no_grad():
            for _ in range(self.config.calibration_batches):
                net(self._tensor(self.crops.sample(rng, self.config.batch)[0]))
        for bn in bns:
            bn.momentum = 0.05
        if self.config.init_weight:
            self._average_with_init(net, self.config.init_weight)
        return net.eval()

    def set_init(self, state: dict[str, torch.Tensor]) -> None:
        """Keep `state` as the warm start's S; ValueError unless it has S's keys and shapes."""
        own = self.S.state_dict()
        if set(state) != set(own) or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
            raise ValueError("the warm start's S (S_init) is not this run's network")
        self.S_init = state

    def _average_with_init(self, net: Segmenter, weight: float) -> None:
        """net <- (1 - weight) x itself + weight x the warm start's S (in place), every floating-point
        entry of the state: weights and BatchNorm statistics (each net's own, measured on the images it
        learned from; measuring the average's again on real crops scored lower on dev).

        Weight-space ensembling of a fine-tuned net with the one it started from (WiSE-FT: Wortsman et
        al., "Robust fine-tuning of zero-shot models", CVPR 2022): both lie in one basin, and the average
        keeps most of the fine-tuning's gain with the start's strengths (here: the exact outlines the
        synthetic prior learned, which self-training on S's own outlines wears down)."""
        if self.S_init is None:
            raise UserError(
                "init_weight averages with the warm start's weights, which this run does not have: "
                "start it with --init"
            )
        state = net.state_dict()
        with torch.no_grad():
            for name, value in state.items():
                if value.is_floating_point():
                    start = self.S_init[name].to(value.device, value.dtype)
                    value.mul_(1.0 - weight).add_(start, alpha=weight)

    def checkpoint(self, full: bool = True) -> dict[str, Any]:
        """A checkpoint dict: "S" is the calibrated S that export deploys; a full one also carries
        everything --resume needs (S's training state, optimisers, pools, bank, RNGs)."""
        cfg = asdict(self.config)
        cfg["diam_mean"] = self.config.diam_mean
        out: dict[str, Any] = {
            "config": cfg,
            "step": self.step,
            "S": _cpu(self.calibrated_segmenter().state_dict()),
            "G": _cpu(self.G.state_dict()),
            "D_image": _cpu(self.D_image.state_dict()),
            "D_mask": _cpu(self.D_mask.state_dict()),
        }
        if full:
            out.update(self._resume_state())
        return out

    def _resume_state(self) -> dict[str, Any]:
        refine = {"refine": self.refiner.state_dict()} if self.refiner is not None else {}
        start = {"S_init": self.S_init} if self.S_init is not None else {}
        return {
            **refine,
            **start,
            "S_train": _cpu(self.S.state_dict()),
            "optimizers": {
                "gen": self.opt_gen.state_dict(),
                "disc": self.opt_disc.state_dict(),
                "scaler_gen": self.scaler_gen.state_dict(),
                "scaler_disc": self.scaler_disc.state_dict(),
            },
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "augment": self.augment_gen.get_state(),
            },
            "pools": {"image": self.pool_image.state_dict(), "mask": self.pool_mask.state_dict()},
            "bank": {
                "canvases": [torch.from_numpy(c) for c in self.bank.canvases],
                "labels": [torch.from_numpy(c) for c in self.bank.labels],
                "next_replace": self.bank.next_replace,
            },
        }

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Restore a full checkpoint so that training continues exactly where it stopped."""
        self.S.load_state_dict(checkpoint["S_train"])
        for name in ("G", "D_image", "D_mask"):
            getattr(self, name).load_state_dict(checkpoint[name])
        opts = checkpoint["optimizers"]
        self.opt_gen.load_state_dict(opts["gen"])
        self.opt_disc.load_state_dict(opts["disc"])
        self.scaler_gen.load_state_dict(opts["scaler_gen"])
        self.scaler_disc.load_state_dict(opts["scaler_disc"])
        rng = checkpoint["rng"]
        self.rng.bit_generator.state = rng["numpy"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.augment_gen.set_state(rng["augment"])
        self.pool_image.load_state_dict(checkpoint["pools"]["image"], self.device)
        self.pool_mask.load_state_dict(checkpoint["pools"]["mask"], self.device)
        bank = checkpoint["bank"]
        self.bank.load_state_dict(
            {
                "canvases": [c.numpy() for c in bank["canvases"]],
                "labels": [c.numpy() for c in bank.get("labels", [])],
                "next_replace": bank["next_replace"],
            }
        )
        self.step = int(checkpoint["step"])
        if "S_init" in checkpoint:
            self.set_init(checkpoint["S_init"])
        if self.refiner is not None and "refine" in checkpoint:
            self.refiner.load_state_dict(checkpoint["refine"])


@dataclass
class Batches:
    """One step's crops: real images x and where they lie inside their image (N, 1, T, T); synthetic
    targets r and where they lie inside (0 in a black band, data.MaskBank)."""

    x: torch.Tensor
    inside_x: torch.Tensor
    r: torch.Tensor
    inside_r: torch.Tensor


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain contiguous CPU tensors (channels-last weights are stored in the usual layout)."""
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}
