"""The torch reference runner: the network as trained, used as ground truth for every exported artifact."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cyclepose_deploy.runtime.backends.base import Runner


class TorchRunner(Runner):
    """Runs S in eval mode on CPU under no_grad; the yardstick for parity checks."""

    def __init__(self, net: torch.nn.Module, channels: int, threads: int | None = None) -> None:
        super().__init__("torch", device="cpu", precision="fp32", channels=channels)
        self.net = net.eval()
        self.threads = threads

    def info(self) -> dict[str, Any]:
        return {"threads": self.threads} if self.threads is not None else {}

    def activate_impl(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(batch)).numpy()
