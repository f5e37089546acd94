"""Slide reading (TIFF flavours, channels, pixel size), rescaling, tiled writing, PNG and object table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.outputs.objects import ObjectTable
from cyclepose_deploy.runtime.outputs.preview import Preview, encode_png
from cyclepose_deploy.runtime.outputs.tiff import label_blocks, write_tiled_tiff
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import ScaledSource, Slide, sample_normalization

RNG = np.random.default_rng(3)


@pytest.mark.parametrize(
    "dtype, kwargs",
    [
        (np.uint8, {}),
        (np.uint16, {"tile": (64, 64), "compression": "zlib", "bigtiff": True}),
        (np.float32, {"rowsperstrip": 7, "compression": "zlib"}),
        (
            np.uint16,
            {
                "ome": True,
                "tile": (32, 32),
                "metadata": {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25},
            },
        ),
    ],
)
def test_slide_reads_windows_of_any_flavour(tmp_path: Path, dtype: type, kwargs: dict) -> None:
    image = (RNG.random((150, 97)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "s.tif", image, **kwargs)
    slide = Slide(tmp_path / "s.tif")
    assert slide.shape == (150, 97)
    np.testing.assert_array_equal(slide.read(10, 77, 5, 90), image[10:77, 5:90].astype(np.float32))
    if "metadata" in kwargs:
        assert slide.pixel_size == (0.25, 0.5)


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ({}, (0.25, 0.5)),  # OME's default unit is the micrometre
        ({"PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"}, (0.25e-3, 0.5e-3)),
        ({"PhysicalSizeXUnit": "\u00b5m", "PhysicalSizeYUnit": "um"}, (0.25, 0.5)),
        ({"PhysicalSizeXUnit": "mm", "PhysicalSizeYUnit": "\u00b5m"}, (0.25, 500.0)),
        ({"PhysicalSizeXUnit": "pixel", "PhysicalSizeYUnit": "pixel"}, None),  # no physical size
    ],
)
def test_ome_pixel_size_honours_units(tmp_path: Path, units: dict, expected: tuple | None) -> None:
    metadata = {"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, **units}
    tifffile.imwrite(tmp_path / "u.ome.tif", np.zeros((2, 16, 16), np.uint16), ome=True, metadata=metadata)
    size = Slide(tmp_path / "u.ome.tif").pixel_size
    assert size == (pytest.approx(expected) if expected else None)


def test_pyramid_reads_level_zero(tmp_path: Path) -> None:
    image = (RNG.random((128, 128)) * 1000).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "p.ome.tif", bigtiff=True) as tif:
        tif.write(image, subifds=1, tile=(32, 32), metadata={"axes": "YX"})
        tif.write(image[::2, ::2], subfiletype=1, tile=(32, 32))
    slide = Slide(tmp_path / "p.ome.tif")
    assert slide.shape == (128, 128)
    np.testing.assert_array_equal(slide.read(0, 128, 0, 128), image)


def test_channel_selection_and_errors(tmp_path: Path) -> None:
    image = (RNG.random((3, 40, 50)) * 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.ome.tif", image, ome=True, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(Slide(tmp_path / "c.ome.tif", channel=2).read(0, 40, 0, 50), image[2])
    with pytest.raises(UserError, match=r"^channel 3 is out of range.*3 channels"):
        Slide(tmp_path / "c.ome.tif", channel=3)
    tifffile.imwrite(tmp_path / "z.ome.tif", image, ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(UserError, match=r"3 Z planes.*2D plane with z N \(0\.\.2\)"):
        Slide(tmp_path / "z.ome.tif")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(UserError, match="cannot read"):
        Slide(tmp_path / "bad.tif")
    with pytest.raises(UserError, match="not found"):
        Slide(tmp_path / "missing.tif")


def test_sampled_normalisation_matches_full_percentiles(tmp_path: Path) -> None:
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(RNG.gamma(2.0, 100.0, (1200, 1100)), 3.0)
    image = (smooth * 20 + RNG.normal(0, 2, smooth.shape)).clip(0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "n.tif", image, tile=(128, 128))
    norm = sample_normalization(Slide(tmp_path / "n.tif"))
    low, high = np.percentile(image, [1, 99])
    assert abs(norm.low - low) < 0.1 * high and abs(norm.high - high) < 0.1 * high


def test_scaled_source_resamples_linearly() -> None:
    class Ramp:
        shape = (100, 80)

        def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return np.add.outer(np.arange(y0, y1), np.zeros(x1 - x0)).astype(np.float32)

    scaled = ScaledSource(Ramp(), 0.5)
    assert scaled.shape == (50, 40)
    np.testing.assert_allclose(scaled.read(10, 20, 0, 5)[:, 0], (np.arange(10, 20) + 0.5) * 2 - 0.5)


def test_tiled_writer_and_label_mapping_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    from cyclepose_deploy.runtime.outputs import tiff

    monkeypatch.setattr(tiff, "BLOCK_COLS", 256)  # several blocks per tile row
    ids = np.zeros((300, 520), np.uint64)
    ids[10:40, 10:30] = 1_000_000_007
    ids[200:300, 500:520] = 5
    table = np.array([5, 1_000_000_007], np.uint64)
    seen: list[int] = []
    write_tiled_tiff(
        tmp_path / "l.tif",
        label_blocks(ids, table, ids.shape),
        ids.shape,
        "uint32",
        (0.3, 0.3),
        [lambda r0, c0, block: seen.append(r0)],
    )
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        out = tif.asarray()
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].compression == 8
        assert 'PhysicalSizeX="0.3"' in tif.ome_metadata
    assert out.dtype == np.uint32 and seen == [0, 0, 0, 256, 256, 256]
    assert (out[10:40, 10:30] == 2).all() and (out[200:, 500:] == 1).all() and out.sum() == 2 * 600 + 2000


def test_label_blocks_rescale_by_nearest() -> None:
    ids = np.arange(1, 13, dtype=np.uint64).reshape(3, 4)
    ((_, _, strip),) = label_blocks(ids, np.arange(1, 13, dtype=np.uint64), (6, 8))
    np.testing.assert_array_equal(strip[::2, ::2], ids.astype(np.uint32))
    np.testing.assert_array_equal(strip[1::2, 1::2], ids.astype(np.uint32))


def test_object_table_merges_objects_across_strips() -> None:
    labels = np.zeros((50, 40), np.uint32)
    labels[5:30, 3:9] = 1
    labels[20:22, 30:35] = 2
    image = np.arange(50 * 40, dtype=np.float32).reshape(50, 40)

    class Src:
        shape = (50, 40)

        def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return image[y0:y1, x0:x1]

    table = ObjectTable(2, Src())
    for r0 in range(0, 50, 16):
        for c0 in (0, 24):
            table.observe(r0, c0, labels[r0 : r0 + 16, c0 : c0 + 24])
    rows = table.rows()
    np.testing.assert_allclose(rows[0, :4], [1, 17.0, 5.5, 150])
    np.testing.assert_array_equal(rows[0, 4:8], [5, 3, 30, 9])
    np.testing.assert_allclose(rows[0, 8], image[labels == 1].mean())
    assert rows[1, 3] == 10


def test_preview_png_decodes_with_outlines(tmp_path: Path) -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    labels = np.zeros((64, 80), np.uint32)
    labels[10:30, 10:40] = 7
    image = np.full((64, 80), 50.0, np.float32)

    class Src:
        shape = (64, 80)

        def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return image[y0:y1, x0:x1]

    preview = Preview((64, 80), Src(), Normalization(0.0, 100.0), max_side=40)
    for r0 in range(0, 64, 16):
        for c0 in (0, 33):
            preview.observe(r0, c0, labels[r0 : r0 + 16, c0 : c0 + 48])
    preview.save(tmp_path / "p.png")
    rgb = imagecodecs.png_decode((tmp_path / "p.png").read_bytes())
    assert rgb.shape == (32, 40, 3)
    assert tuple(rgb[5, 5]) == (255, 64, 64) and tuple(rgb[0, 0]) == (127, 127, 127)
    assert encode_png(np.zeros((2, 3, 3), np.uint8))[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_ahead_keeps_order_raises_in_turn_and_always_ends_its_thread(finishes: Callable) -> None:
    """Pass 2's read-ahead (runtime.run.readahead): the same items in order; an error while making
    an item arrives after the items before it, with the source closed; a caller that stops early
    stops the thread and closes the source; no thread outlives the iteration."""
    import threading

    from cyclepose_deploy.runtime.run.readahead import read_ahead

    def alive() -> int:
        return sum(t.name == "read-ahead" for t in threading.enumerate())

    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))
    assert alive() == 0

    closed: list[str] = []

    def failing():  # noqa: ANN202
        try:
            yield 1
            yield 2
            raise ValueError("bad block")
        finally:
            closed.append("failing")

    got = []
    with pytest.raises(ValueError, match="bad block"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2] and closed == ["failing"] and alive() == 0

    made: list[int] = []

    def endless():  # noqa: ANN202
        try:
            k = 0
            while True:
                made.append(k)
                yield k
                k += 1
        finally:
            closed.append("endless")

    ahead = read_ahead(endless(), depth=2)
    assert next(ahead) == 0
    ahead.close()  # the caller failed: the thread stops after the item it is making
    assert closed[-1] == "endless" and len(made) <= 4 and alive() == 0

    class BadClose:
        def __iter__(self):  # noqa: ANN204
            return iter([1])

        def close(self) -> None:
            raise OSError("cannot close")

    raised = finishes(lambda: list(read_ahead(BadClose())))  # type: ignore[arg-type]
    assert [str(e) for e in raised] == ["cannot close"]  # reported to the caller, not waited on forever
