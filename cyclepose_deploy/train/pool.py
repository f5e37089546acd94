"""CycleGAN's image pool: discriminators see a history of generated samples, not only the latest."""

from __future__ import annotations

import numpy as np
import torch


class ImagePool:
    """Holds up to `size` past samples; each query returns, per sample, the new one or (half the
    time, once full) a stored one that the new sample replaces."""

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self.items: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.size == 0:
            return batch
        out = []
        for item in batch.detach():
            if len(self.items) < self.size:
                self.items.append(item.clone())
                out.append(item)
            elif rng.uniform() < 0.5:
                k = int(rng.integers(self.size))
                out.append(self.items[k].clone())
                self.items[k] = item.clone()
            else:
                out.append(item)
        return torch.stack(out)

    def state_dict(self) -> dict[str, object]:
        return {"size": self.size, "items": [t.cpu() for t in self.items]}

    def load_state_dict(self, state: dict[str, object], device: torch.device | str = "cpu") -> None:
        self.size = int(state["size"])  # type: ignore[call-overload]
        self.items = [t.to(device) for t in state["items"]]  # type: ignore[attr-defined]
