"""The shared batcher: concurrent callers' tiles share network calls, each gets its own rows back, and
a call stays within the tile count and the pixel budget."""

from __future__ import annotations

import numpy as np
import pytest

from cyclepose_deploy.runtime.backends.base import Runner


class _RecordingRunner(Runner):
    """Returns each tile's own values (so rows can be traced back) and records batch sizes."""

    def __init__(self) -> None:
        super().__init__("recording", channels=1)
        self.sizes: list[int] = []

    def infer_impl(self, images: np.ndarray) -> np.ndarray:
        import time

        self.sizes.append(len(images))
        time.sleep(0.01)  # a network call takes time: callers queue up meanwhile
        if (images < 0).any():
            raise ValueError("bad tile")
        return np.repeat(images[:, :1], 3, axis=1)


def test_shared_batcher_concatenates_callers_and_returns_their_own_rows() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cyclepose_deploy.runtime.backends.batching import SharedBatcher

    inner = _RecordingRunner()
    inner.activate()
    batcher = SharedBatcher(inner, max_batch=8)
    batcher.activate()
    assert batcher.input_metadata() == inner.input_metadata() and batcher.device == "cpu"
    inner.sizes.clear()
    tiles = [np.full((k % 3 + 1, 1, 32, 32), float(k), np.float32) for k in range(24)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(batcher.infer, tiles))
    for k, out in enumerate(outs):
        assert out.shape == (k % 3 + 1, 3, 32, 32) and (out == k).all()
    assert max(inner.sizes) > 3 and max(inner.sizes) <= 8  # several callers per call, never above max
    assert sum(inner.sizes) == sum(len(t) for t in tiles) and batcher.calls == len(inner.sizes)
    # an error reaches the callers of its batch only, and the batcher goes on
    with pytest.raises(ValueError, match="bad tile"):
        batcher.infer(np.full((1, 1, 32, 32), -1.0, np.float32))
    assert (batcher.infer(np.ones((1, 1, 32, 32), np.float32)) == 1).all()
    batcher.deactivate()
    with pytest.raises(RuntimeError, match="activated"):
        batcher.infer(np.ones((1, 1, 32, 32), np.float32))


def test_shared_batcher_keeps_a_call_within_the_pixel_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cyclepose_deploy.runtime.backends import batching

    monkeypatch.setattr(batching, "MAX_BATCH_PIXELS", 3 * 32 * 32)  # three 32 px tiles per call
    inner = _RecordingRunner()
    inner.activate()
    batcher = batching.SharedBatcher(inner, max_batch=8, linger=0.05)
    batcher.activate()
    inner.sizes.clear()
    with ThreadPoolExecutor(6) as pool:
        outs = list(
            pool.map(batcher.infer, [np.full((1, 1, 32, 32), float(k), np.float32) for k in range(12)])
        )
    batcher.deactivate()
    assert all((out == k).all() for k, out in enumerate(outs))
    assert max(inner.sizes) <= 3 and sum(inner.sizes) == 12
