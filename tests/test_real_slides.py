"""`cyclepose infer` on what real microscopes and scanners produce (issue: real slides): sparse and
empty fields, multi-series / pyramid / multi-page files, stacks and RGB, missing pixels, physical
units, PNG / JPEG / BMP and OME-Zarr, and the small faults. Each test checks the output itself."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.source.slide import Slide, SlideOptions
from cyclepose_deploy.synth.slide import make_slide

pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(12)


@pytest.fixture
def infer(invoke: Callable) -> Callable[..., tuple[int, str, dict]]:
    def run(slide: Path, net: Path, out: Path, *extra: object) -> tuple[int, str, dict]:
        """Run the CLI; return (exit code, output, summary JSON or {})."""
        summary = out.with_suffix(".json")
        code, text = invoke("infer", slide, "--model", net, "-o", out, "--summary-json", summary, *extra)
        data = json.loads(summary.read_text()) if code == 0 else {}
        return code, text, data

    return run


@pytest.fixture
def reference(infer: Callable) -> Callable[[np.ndarray, Path, Path], np.ndarray]:
    def labels_of(image: np.ndarray, net: Path, folder: Path) -> np.ndarray:
        """Labels of the same pixels saved as a plain 2-D TIFF: what every other container must give."""
        folder.mkdir(exist_ok=True)
        tifffile.imwrite(folder / "ref.tif", image)
        code, text, _ = infer(folder / "ref.tif", net, folder / "ref_labels.tif")
        assert code == 0, text
        labels = tifffile.imread(folder / "ref_labels.tif")
        assert labels.max() > 10  # the proxy network finds nuclei on these fields
        return labels

    return labels_of


def field_with_nuclei(size: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    image, labels = make_slide(size, size, seed)
    return image, labels.astype(np.int32)


def labels_in(path: Path) -> np.ndarray:
    return tifffile.imread(path).astype(np.int64)


# 1. normalisation --------------------------------------------------------------------------------
@pytest.mark.slow
def test_sparse_field_scores_like_the_patch_alone(
    net: Path, tmp_path: Path, infer: Callable, f1: Callable
) -> None:
    """2048x2048 of camera background with one 256x256 patch of nuclei (the issue's case)."""
    patch, truth_patch = field_with_nuclei(256, seed=21)
    background = float(np.percentile(patch, 5))
    field = RNG.normal(background, 3.0, (2048, 2048)).clip(0).astype(np.uint16)
    field[896:1152, 896:1152] = patch
    truth = np.zeros(field.shape, np.int32)
    truth[896:1152, 896:1152] = truth_patch
    tifffile.imwrite(tmp_path / "patch.tif", patch)
    tifffile.imwrite(tmp_path / "field.tif", field, tile=(256, 256))
    code, text, alone = infer(tmp_path / "patch.tif", net, tmp_path / "p.tif")
    assert code == 0, text
    code, text, sparse = infer(tmp_path / "field.tif", net, tmp_path / "f.tif")
    assert code == 0, text
    f_alone, f_sparse = (
        f1(labels_in(tmp_path / "p.tif"), truth_patch),
        f1(labels_in(tmp_path / "f.tif"), truth),
    )
    assert f_alone > 0.5  # the blur proxy network merges touching nuclei; the comparison is the point
    assert f_sparse >= f_alone - 0.05, (f_alone, f_sparse, sparse["objects"], int(truth_patch.max()))


def test_a_dim_8bit_field_of_a_few_nuclei_is_not_saturated(
    net: Path, tmp_path: Path, infer: Callable
) -> None:
    """An 8-bit field whose background is one flat value and whose 4 nuclei cover 0.3 %: the noise
    is at least the rounding noise, so the guards hold and the nuclei map near 1, not to 50x it."""
    from cyclepose_deploy.runtime.source.normalize import QUANTIZATION_SIGMA, Normalization

    yy, xx = np.mgrid[:512, :512]
    truth = np.zeros((512, 512), np.int32)
    for k, (cy, cx) in enumerate([(80, 100), (300, 400), (420, 150), (200, 250)], start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2] = k
    image = ndimage.gaussian_filter(np.where(truth > 0, 150.0, 0.0), 1.0) + 6
    image = np.round(image + RNG.normal(0, 2, image.shape) * (image > 10)).clip(0, 255).astype(np.uint8)
    norm = Normalization.from_sample(image)
    assert norm.noise * (norm.high - norm.low) == pytest.approx(QUANTIZATION_SIGMA)
    assert 0.5 < norm.apply(np.array([150.0 + 6]))[0] < 2.0  # a nucleus reads as one, not saturated
    tifffile.imwrite(tmp_path / "dim.tif", image)
    code, text, summary = infer(tmp_path / "dim.tif", net, tmp_path / "d.tif", "--diameter", 15)
    assert code == 0, text
    assert summary["objects"] == 4, summary


@pytest.mark.parametrize("illumination", [False, True])
def test_noise_only_field_gives_almost_no_objects(
    net: Path, tmp_path: Path, illumination: bool, infer: Callable
) -> None:
    yy, xx = np.mgrid[0:1024, 0:1024]
    base = 200.0 + 300.0 * np.exp(-((yy - 300) ** 2 + (xx - 700) ** 2) / 4e5) * illumination
    field = RNG.poisson(base).astype(np.uint16)
    tifffile.imwrite(tmp_path / "noise.tif", field)
    code, text, summary = infer(tmp_path / "noise.tif", net, tmp_path / "n.tif")
    assert code == 0, text
    assert summary["objects"] <= 2  # at most 2 per megapixel on 1.05 MP
    assert tifffile.imread(tmp_path / "n.tif").max() == summary["objects"]


def test_norm_range_and_percentiles_are_used(
    net: Path, tmp_path: Path, infer: Callable, f1: Callable, error_line: Callable
) -> None:
    image, truth = field_with_nuclei(256)
    tifffile.imwrite(tmp_path / "s.tif", image)
    code, text, _ = infer(tmp_path / "s.tif", net, tmp_path / "a.tif", "--norm-range", "0,65535")
    assert code == 0, text
    assert tifffile.imread(tmp_path / "a.tif").max() == 0  # the whole 16-bit range: nothing is bright
    low, high = np.percentile(image, [1, 99.8])
    # the diameter given: this test is about the intensities, not the estimate
    code, text, _ = infer(
        tmp_path / "s.tif", net, tmp_path / "b.tif", "--norm-range", f"{low},{high}", "--diameter", 20
    )
    assert code == 0, text
    assert f1(labels_in(tmp_path / "b.tif"), truth) > 0.5
    code, text, _ = infer(
        tmp_path / "s.tif", net, tmp_path / "c.tif", "--norm-percentiles", "1,99.8", "--diameter", 20
    )
    assert code == 0 and f1(labels_in(tmp_path / "c.tif"), truth) > 0.5, text
    line = error_line(*infer(tmp_path / "s.tif", net, tmp_path / "d.tif", "--norm-range", "5,5")[:2])
    assert "--norm-range" in line and not (tmp_path / "d.tif").exists()


# 2. several images in one file ---------------------------------------------------------------------
def test_multi_series_defaults_to_full_resolution_with_its_pixel_size(
    net: Path, tmp_path: Path, infer: Callable, reference: Callable, error_line: Callable
) -> None:
    image, truth = field_with_nuclei(256)
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            image[::4, ::4],
            metadata={"axes": "YX", "Name": "overview", "PhysicalSizeX": 1.3, "PhysicalSizeY": 1.3},
        )
        tif.write(
            image,
            metadata={
                "axes": "YX",
                "Name": "full",
                "PhysicalSizeX": 325,
                "PhysicalSizeXUnit": "nm",
                "PhysicalSizeY": 325,
                "PhysicalSizeYUnit": "nm",
            },
        )
    code, text, summary = infer(path, net, tmp_path / "l.tif", "--objects", tmp_path / "o.csv")
    assert code == 0, text
    assert "series 1 of 2" in summary["image"] and "--series" in text
    assert summary["pixel_size_um"] == pytest.approx([0.325, 0.325])
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "l.tif"), reference(image, net, tmp_path / "ref")
    )
    code, text, summary = infer(path, net, tmp_path / "t.tif", "--series", 0)
    assert code == 0, text
    assert tifffile.imread(tmp_path / "t.tif").shape == (64, 64)
    assert summary["pixel_size_um"] == pytest.approx([1.3, 1.3])
    assert "out of range" in error_line(*infer(path, net, tmp_path / "x.tif", "--series", 2)[:2])


def test_pyramid_level_and_its_pixel_size(tmp_path: Path) -> None:
    image = (RNG.random((256, 256)) * 1000).astype(np.uint16)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            image,
            subifds=2,
            tile=(64, 64),
            metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64))
        tif.write(image[::4, ::4], subfiletype=1, tile=(64, 64))
    full = Slide(path)
    assert full.shape == (256, 256) and full.pixel_size == pytest.approx((0.5, 0.5))
    half = Slide(path, options=SlideOptions(level=1))
    assert half.shape == (128, 128) and half.pixel_size == pytest.approx((1.0, 1.0))
    np.testing.assert_array_equal(half.read(0, 128, 0, 128), image[::2, ::2])
    with pytest.raises(UserError, match=r"^level 3 is out of range.*3 level"):
        Slide(path, options=SlideOptions(level=3))


def test_multi_page_stack_needs_a_plane(tmp_path: Path) -> None:
    pages = (RNG.random((4, 40, 50)) * 100).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for page in pages:
            tif.write(page, contiguous=False, metadata=None)
    with pytest.raises(UserError, match=r"4 planes along axis I.*with plane N \(0\.\.3\)"):
        Slide(tmp_path / "pages.tif")
    np.testing.assert_array_equal(
        Slide(tmp_path / "pages.tif", options=SlideOptions(plane=2)).read(0, 40, 0, 50), pages[2]
    )
    with pytest.raises(UserError, match="^plane 4 is out of range"):
        Slide(tmp_path / "pages.tif", options=SlideOptions(plane=4))


def test_a_numpy_stack_saved_as_planar_samples_needs_a_channel(tmp_path: Path) -> None:
    """tifffile.imwrite of an (N, H, W) array with N 3 or 4 writes one page of N planar samples (axes
    SYX): nothing says whether they are a stack or channels, so the reader asks instead of taking 0."""
    planes = (RNG.random((3, 40, 50)) * 100).astype(np.uint8)
    # what tifffile.imwrite(path, planes) writes today (it warns that it will change)
    tifffile.imwrite(tmp_path / "three.tif", planes, photometric="rgb", planarconfig="separate")
    with pytest.raises(UserError, match=r"3 planes stored as the samples of one page.*channel N \(0\.\.2\)"):
        Slide(tmp_path / "three.tif")
    picked = Slide(tmp_path / "three.tif", options=SlideOptions(channel=2))
    np.testing.assert_array_equal(picked.read(0, 40, 0, 50), planes[2])
    rgb = np.moveaxis(planes, 0, -1).copy()  # interleaved RGB (YXS) keeps channel 0 by default
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(Slide(tmp_path / "rgb.tif").read(0, 40, 0, 50), planes[0])


# 3. axes -------------------------------------------------------------------------------------------
def test_imagej_hyperstack_picks_t_z_and_channel(tmp_path: Path) -> None:
    stack = (RNG.random((2, 3, 2, 30, 40)) * 1000).astype(np.uint16)  # TZCYX
    tifffile.imwrite(tmp_path / "h.tif", stack, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(UserError, match=r"time points.*with t N"):
        Slide(tmp_path / "h.tif", options=SlideOptions(z=1))
    slide = Slide(tmp_path / "h.tif", options=SlideOptions(t=1, z=2, channel=1))
    np.testing.assert_array_equal(slide.read(0, 30, 0, 40), stack[1, 2, 1])
    with pytest.raises(UserError, match="several stacked axes"):
        Slide(tmp_path / "h.tif", options=SlideOptions(plane=1))
    with pytest.raises(UserError, match=r"^z 3 is out of range"):
        Slide(tmp_path / "h.tif", options=SlideOptions(t=0, z=3))


def test_rgb_channel_and_empty_channel_warning(
    net: Path, tmp_path: Path, infer: Callable, reference: Callable
) -> None:
    image, truth = field_with_nuclei(256)
    scaled = (image.astype(np.float64) / image.max() * 255).astype(np.uint8)
    rgb = np.zeros((*image.shape, 3), np.uint8)
    rgb[..., 2] = scaled  # nuclei in the blue channel, as a DAPI overlay
    rgb[..., 0] = RNG.integers(0, 3, image.shape)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    code, text, summary = infer(tmp_path / "rgb.tif", net, tmp_path / "a.tif")
    assert code == 0, text
    assert "warning: channel 0 (the default)" in text and "--channel 2" in text
    code, text, summary = infer(tmp_path / "rgb.tif", net, tmp_path / "b.tif", "--channel", 2)
    assert code == 0, text
    assert "warning" not in text
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "b.tif"), reference(scaled, net, tmp_path / "ref")
    )


# 4. non-finite pixels ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_missing_pixel_changes_only_the_object_that_holds_it(
    net: Path, tmp_path: Path, bad: float, infer: Callable
) -> None:
    image, _ = field_with_nuclei(256)
    image = image.astype(np.float32)
    tifffile.imwrite(tmp_path / "clean.tif", image)
    code, text, _ = infer(tmp_path / "clean.tif", net, tmp_path / "clean_l.tif", "--diameter", 20)
    assert code == 0, text
    clean = tifffile.imread(tmp_path / "clean_l.tif")
    ys, xs = np.nonzero(clean)
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]
    image[y, x] = bad
    tifffile.imwrite(tmp_path / "bad.tif", image)
    code, text, _ = infer(tmp_path / "bad.tif", net, tmp_path / "bad_l.tif", "--diameter", 20)
    assert code == 0, text
    dirty = tifffile.imread(tmp_path / "bad_l.tif")
    hit = clean[y, x]
    same = (clean != hit) & (dirty != dirty[y, x])
    np.testing.assert_array_equal(clean[same] > 0, dirty[same] > 0)
    assert len(np.unique(clean)) == len(np.unique(dirty))


# 5. physical units ---------------------------------------------------------------------------------
def test_pixel_size_from_imagej_ome_and_tags(tmp_path: Path) -> None:
    image = np.zeros((32, 32), np.uint16)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        image,
        imagej=True,
        resolution=(1 / 0.325, 1 / 0.325),
        metadata={"unit": "micron"},
    )
    assert Slide(tmp_path / "ij.tif").pixel_size == pytest.approx((0.325, 0.325))
    tifffile.imwrite(
        tmp_path / "nm.ome.tif",
        image,
        ome=True,
        metadata={
            "PhysicalSizeX": 325,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 325,
            "PhysicalSizeYUnit": "nm",
        },
    )
    assert Slide(tmp_path / "nm.ome.tif").pixel_size == pytest.approx((0.325, 0.325))
    tifffile.imwrite(
        tmp_path / "cm.tif", image, resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER"
    )
    assert Slide(tmp_path / "cm.tif").pixel_size == pytest.approx((0.65, 0.65))
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert Slide(tmp_path / "dpi.tif").pixel_size is None  # a print default, not a microscope pixel
    given = Slide(tmp_path / "dpi.tif", options=SlideOptions(pixel_size=(0.2, 0.3)))
    assert given.pixel_size == (0.2, 0.3)


def test_units_reach_labels_prob_and_object_table(
    net: Path, tmp_path: Path, infer: Callable, error_line: Callable
) -> None:
    image, _ = field_with_nuclei(256)
    tifffile.imwrite(
        tmp_path / "ij.tif", image, imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "um"}
    )
    out = tmp_path / "l.tif"
    code, text, summary = infer(
        tmp_path / "ij.tif",
        net,
        out,
        "--objects",
        tmp_path / "o.csv",
        "--prob",
        tmp_path / "p.tif",
        "--diameter-um",
        6.5,
    )
    assert code == 0, text
    assert summary["diameter"]["px"] == pytest.approx(20.0) and summary["diameter"]["method"] == "given"
    for path in (out, tmp_path / "p.tif"):
        assert Slide(path).pixel_size == pytest.approx((0.325, 0.325))
    rows = list(csv.DictReader(open(tmp_path / "o.csv")))
    assert rows
    for row in rows:
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * 0.325**2, rel=1e-3)
        assert float(row["centroid_x_um"]) == pytest.approx(float(row["centroid_x"]) * 0.325, abs=0.01)
    code, text, summary = infer(tmp_path / "ij.tif", net, tmp_path / "g.tif", "--pixel-size", "0.5")
    assert code == 0 and summary["pixel_size_um"] == [0.5, 0.5], text
    tifffile.imwrite(tmp_path / "plain.tif", image)
    line = error_line(*infer(tmp_path / "plain.tif", net, tmp_path / "h.tif", "--diameter-um", 6)[:2])
    assert "--pixel-size" in line and not (tmp_path / "h.tif").exists()
    line = error_line(*infer(tmp_path / "plain.tif", net, tmp_path / "h.tif", "--pixel-size", "nan")[:2])
    assert "--pixel-size" in line


def test_micrometre_columns_are_exact_far_from_the_origin(tmp_path: Path) -> None:
    """Positions to 0.001 µm and areas to 0.0001 µm² wherever the nucleus lies: 15 mm into a slide,
    significant digits would have written 1.5e+04 (10 µm steps)."""
    from cyclepose_deploy.runtime.outputs.objects import ObjectTable

    labels = np.zeros((64, 64), np.int32)
    labels[10:13, 20:24] = 1  # 12 px, centroid (11, 21.5) in the block
    image = np.full((64, 64), 4321.5, np.float32)

    class Raw:
        def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return image[: y1 - y0, : x1 - x0]

    table = ObjectTable(1, Raw(), pixel_size=(0.65, 0.325))  # type: ignore[arg-type]
    table.observe(23_000, 46_000, labels)
    table.save_csv(tmp_path / "o.csv")
    (row,) = list(csv.DictReader(open(tmp_path / "o.csv")))
    assert float(row["centroid_y_um"]) == pytest.approx(23_011 * 0.65, abs=5e-4)
    assert float(row["centroid_x_um"]) == pytest.approx(46_021.5 * 0.325, abs=5e-4)
    assert float(row["area_um2"]) == pytest.approx(12 * 0.65 * 0.325, abs=5e-5)
    assert float(row["mean_intensity"]) == 4321.5


# 6. other formats ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("suffix", "dtype"), [(".png", np.uint8), (".png", np.uint16), (".jpg", np.uint8), (".bmp", np.uint8)]
)
def test_png_jpeg_bmp(
    net: Path, tmp_path: Path, suffix: str, dtype: type, infer: Callable, reference: Callable, f1: Callable
) -> None:
    import imagecodecs

    image, truth = field_with_nuclei(256)
    top = np.iinfo(dtype).max
    scaled = (image.astype(np.float64) / image.max() * top).astype(dtype)
    path = tmp_path / f"field{suffix}"
    encode = {
        ".png": imagecodecs.png_encode,
        ".jpg": imagecodecs.jpeg8_encode,
        ".bmp": imagecodecs.bmp_encode,
    }
    path.write_bytes(encode[suffix](scaled))
    code, text, summary = infer(path, net, tmp_path / "l.tif")
    assert code == 0, text
    expected = reference(scaled, net, tmp_path / "ref")
    labels = tifffile.imread(tmp_path / "l.tif")
    if suffix == ".jpg":  # lossy: the same nuclei, not the same pixels
        assert f1(labels.astype(np.int64), expected.astype(np.int64)) > 0.9
    else:
        np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_multiscale_with_units(
    net: Path, tmp_path: Path, version: str, infer: Callable, reference: Callable
) -> None:
    import zarr

    image, truth = field_with_nuclei(256)
    store = tmp_path / "field.zarr"
    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(str(store), mode="w", zarr_format=fmt)
    for level, step in enumerate((1, 2)):
        root.create_array(str(level), data=image[None, ::step, ::step], chunks=(1, 64, 64))
    multiscales = [
        {
            "version": version,
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [{"type": "scale", "scale": [1, 0.4 * s, 0.4 * s]}],
                }
                for i, s in enumerate((1, 2))
            ],
        }
    ]
    if version == "0.4":
        root.attrs["multiscales"] = multiscales
    else:
        root.attrs["ome"] = {"version": version, "multiscales": multiscales}
    code, text, summary = infer(store, net, tmp_path / "l.tif")
    assert code == 0, text
    assert summary["pixel_size_um"] == pytest.approx([0.4, 0.4])
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "l.tif"), reference(image, net, tmp_path / "ref")
    )
    low = Slide(store, options=SlideOptions(level=1))
    assert low.shape == (128, 128) and low.pixel_size == pytest.approx((0.8, 0.8))


def test_plain_zarr_array_is_read_lazily(tmp_path: Path) -> None:
    import zarr

    image = (RNG.random((300, 200)) * 100).astype(np.float32)
    array = zarr.open_array(
        str(tmp_path / "a.zarr"), mode="w", shape=image.shape, chunks=(64, 64), dtype="f4"
    )
    array[:] = image
    slide = Slide(tmp_path / "a.zarr")
    assert isinstance(slide._array, zarr.Array) and slide.pixel_size is None
    np.testing.assert_array_equal(slide.read(10, 50, 20, 90), image[10:50, 20:90])


# 7. smaller faults ---------------------------------------------------------------------------------
def test_small_overlap_warns(net: Path, tmp_path: Path, infer: Callable) -> None:
    image, _ = field_with_nuclei(128)
    tifffile.imwrite(tmp_path / "s.tif", image)
    code, text, _ = infer(tmp_path / "s.tif", net, tmp_path / "l.tif", "--overlap", 0)
    assert code == 0, text
    assert "warning: --overlap 0 px" in text and "split" in text
    code, text, _ = infer(tmp_path / "s.tif", net, tmp_path / "m.tif")
    assert "--overlap" not in text


def test_eval_accepts_one_row_images(tmp_path: Path, invoke: Callable) -> None:
    labels = np.array([[0, 1, 1, 0, 2, 2, 2, 0]], np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", labels)
    tifffile.imwrite(tmp_path / "g.tif", labels)
    code, text = invoke("eval", tmp_path / "p.tif", tmp_path / "g.tif", "--json", tmp_path / "r.json")
    assert code == 0, text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_pred"] == 2 and report["n_gt"] == 2


def test_compressed_single_strip_tiff_is_decoded_once(tmp_path: Path) -> None:
    image = (RNG.random((1200, 2000)) * 1000).astype(np.uint16)  # one zlib strip of 4.6 MB
    tifffile.imwrite(tmp_path / "strip.tif", image, compression="zlib", rowsperstrip=1200)
    slide = Slide(tmp_path / "strip.tif")
    assert slide._strips is not None and any("strips" in note for note in slide.notes)
    for y in range(0, 1200, 256):
        for x in range(0, 2000, 256):
            np.testing.assert_array_equal(
                slide.read(y, min(y + 256, 1200), x, min(x + 256, 2000)), image[y : y + 256, x : x + 256]
            )
    assert slide._strips.decoded == 1


def test_plane_skips_singleton_axes_and_bad_ome_zarr_axes_are_one_line(tmp_path: Path) -> None:
    import zarr

    stack = (RNG.random((1, 1, 5, 40, 50)) * 100).astype(np.uint16)  # t c z y x, one time point
    root = zarr.open_group(str(tmp_path / "z.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=stack)
    kinds = ["time", "channel", "space", "space", "space"]
    axes = [{"name": n, "type": t} for n, t in zip("tczyx", kinds, strict=True)]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    slide = Slide(tmp_path / "z.zarr", options=SlideOptions(plane=2))
    np.testing.assert_array_equal(slide.read(0, 40, 0, 50), stack[0, 0, 2])
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes[2:4], "datasets": [{"path": "0"}]}]
    with pytest.raises(UserError, match="do not fit"):
        Slide(tmp_path / "z.zarr")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": "0"}]
    with pytest.raises(UserError, match="malformed OME-Zarr"):
        Slide(tmp_path / "z.zarr")


def test_outlines_of_a_lower_level_are_in_full_resolution_pixels(
    net: Path, tmp_path: Path, infer: Callable
) -> None:
    image, _ = field_with_nuclei(256)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image, subifds=1, tile=(64, 64), metadata={"axes": "YX"})
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64))
    code, text, _ = infer(path, net, tmp_path / "l.tif", "--level", 1, "--geojson", tmp_path / "n.geojson")
    assert code == 0, text
    labels = tifffile.imread(tmp_path / "l.tif")
    assert labels.shape == (128, 128)
    features = json.loads((tmp_path / "n.geojson").read_text())["features"]
    polygons = [f["geometry"]["coordinates"] for f in features if f["geometry"]["type"] == "Polygon"]
    xs = [x for rings in polygons for x, _ in rings[0]]
    assert max(xs) > 128 and max(xs) <= 256  # doubled to level-0 pixels
