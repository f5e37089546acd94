"""Batch mode and the Python API (issue: interop): one process and one model load for a folder of
images; the API gives the CLI's labels bit for bit."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.synth.slide import make_slide

pytest.importorskip("onnxruntime")


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_folder_of_mixed_images_with_one_corrupt(net: Path, tmp_path: Path, invoke: Callable) -> None:
    import imagecodecs

    src = tmp_path / "fields"
    src.mkdir()
    for i in range(19):
        size = (96, 128, 160)[i % 3]
        image, _ = make_slide(size, size + 16 * (i % 2), seed=i)
        if i % 4 == 1:
            (src / f"f{i:02d}.png").write_bytes(imagecodecs.png_encode((image >> 4).astype(np.uint8)))
        elif i % 4 == 2:
            tifffile.imwrite(src / f"f{i:02d}.tif", image.astype(np.float32))
        else:
            tifffile.imwrite(src / f"f{i:02d}.tif", image)
    (src / "f19.tif").write_bytes(b"II*\x00 truncated")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code, text = invoke("infer", src, "--model", net, "--out-dir", out)
    assert code == 1, text
    table = rows(out)
    assert len(table) == 20
    assert [r["status"] for r in table].count("done") == 19
    failed = [r for r in table if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["image"].endswith("f19.tif") and "cannot read" in failed[0]["error"]
    labels = sorted(out.glob("*.labels.ome.tif"))
    assert len(labels) == 19 and len(list(out.glob("*.objects.csv"))) == 19
    for row in table[:19]:
        assert int(row["objects"]) == tifffile.imread(row["labels"]).max() > 0
    # a re-run skips what is complete; --overwrite redoes it
    code, text = invoke("infer", src, "--model", net, "--out-dir", out)
    assert code == 1 and [r["status"] for r in rows(out)].count("skipped") == 19, text
    (src / "f19.tif").unlink()
    code, text = invoke("infer", src, "--model", net, "--out-dir", out, "--overwrite")
    assert code == 0 and [r["status"] for r in rows(out)].count("done") == 19, text


def test_batch_where_nothing_runs_exits_2(net: Path, tmp_path: Path, invoke: Callable) -> None:
    for i in range(2):
        (tmp_path / f"bad{i}.tif").write_bytes(b"not a tiff")
    code, text = invoke(
        "infer", tmp_path / "bad0.tif", tmp_path / "bad1.tif", "--model", net, "--out-dir", tmp_path / "out"
    )
    assert code == 2, text
    assert [r["status"] for r in rows(tmp_path / "out")] == ["failed", "failed"]


def test_glob_recursive_and_mode_errors(net: Path, tmp_path: Path, invoke: Callable) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        tifffile.imwrite(folder / "same.tif", make_slide(96, 96, 1)[0])
    code, text = invoke(
        "infer",
        str(tmp_path / "a" / "**" / "*.tif"),
        "--recursive",
        "--model",
        net,
        "--out-dir",
        tmp_path / "out",
    )
    assert code == 0, text
    assert sorted(p.name for p in (tmp_path / "out").glob("*.labels.ome.tif")) == [
        "a_same.labels.ome.tif",
        "b_same.labels.ome.tif",
    ]
    code, text = invoke("infer", tmp_path / "a", "--model", net, "-o", tmp_path / "x.tif")
    assert code == 2 and "--out-dir" in text
    code, text = invoke("infer", tmp_path / "a" / "same.tif", "--model", net)
    assert code == 2 and "give -o" in text


def test_api_equals_cli_bit_for_bit(net: Path, tmp_path: Path, invoke: Callable) -> None:
    from cyclepose_deploy import Segmenter

    image, _ = make_slide(200, 232, 7)
    tifffile.imwrite(tmp_path / "s.tif", image)
    code, text = invoke("infer", tmp_path / "s.tif", "--model", net, "-o", tmp_path / "l.tif")
    assert code == 0, text
    cli = tifffile.imread(tmp_path / "l.tif")
    with Segmenter(net) as seg:
        result = seg.segment(image)
        again = seg.segment(image.astype(np.float32)).labels
        summary = seg.segment_file(tmp_path / "s.tif", tmp_path / "api.tif")
    labels = result.labels
    assert result.objects == labels.max() and result.diameter is not None and result.flows is None
    assert set(result.to_dict()) >= {"objects", "shape", "diameter", "stage_seconds"}
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, cli)
    np.testing.assert_array_equal(again, cli)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "api.tif"), cli)
    assert summary.objects == cli.max()


def test_api_reads_zarr_and_dask_arrays_in_windows(net: Path, tmp_path: Path) -> None:
    import zarr

    from cyclepose_deploy import Segmenter

    image, _ = make_slide(256, 256, 3)
    z = zarr.open_array(
        str(tmp_path / "a.zarr"), mode="w", shape=image.shape, chunks=(64, 64), dtype=image.dtype
    )
    z[:] = image
    with Segmenter(net, chunk=256) as seg:
        reference = seg.segment(image).labels
        np.testing.assert_array_equal(seg.segment(z).labels, reference)
        with pytest.raises(UserError, match="2-D"):
            seg.segment(np.zeros((2, 64, 64), np.uint16))
        with pytest.raises(UserError, match="pixel_size"):
            seg.segment(image, diameter_um=6.0)
        da = pytest.importorskip("dask.array")  # last: skips only the dask case where dask is absent
        np.testing.assert_array_equal(seg.segment(da.from_array(image, chunks=64)).labels, reference)


@pytest.mark.parametrize("spool", [True, False], ids=["levels-spooled", "levels-from-ids"])
def test_labels_are_a_nearest_neighbour_ome_tiff_pyramid(
    net: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, invoke: Callable, spool: bool
) -> None:
    """Both ways to the levels (spooled while level 0 streams by, or decoded from the ids when the
    spool would be too big) pick the nearest full-size pixel."""
    from cyclepose_deploy.runtime.outputs.tiff import nearest_index
    from cyclepose_deploy.runtime.source.slide import Slide

    monkeypatch.setattr("cyclepose_deploy.runtime.outputs.tiff.PYRAMID_TOP", 128)
    if not spool:
        monkeypatch.setattr("cyclepose_deploy.runtime.run.passtwo.SPOOL_MAX_BYTES", 0)
    image, _ = make_slide(520, 400, 9)
    tifffile.imwrite(tmp_path / "s.tif", image)
    code, text = invoke(
        "infer",
        tmp_path / "s.tif",
        "--model",
        net,
        "-o",
        tmp_path / "l.tif",
        "--diameter",
        20,
        "--pixel-size",
        0.5,
    )
    assert code == 0, text
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        assert tif.is_ome
    assert [lv.shape for lv in levels] == [(520, 400), (260, 200), (130, 100), (65, 50)]
    full = levels[0]
    for level in levels[1:]:  # the runtime ran at scale 1: each level picks the nearest full-size pixel
        ys = nearest_index(level.shape[0], full.shape[0], 0, level.shape[0])
        xs = nearest_index(level.shape[1], full.shape[1], 0, level.shape[1])
        np.testing.assert_array_equal(level, full[np.ix_(ys, xs)])
    assert set(np.unique(levels[2])) <= set(np.unique(levels[0]))
    assert Slide(tmp_path / "l.tif").pixel_size == pytest.approx((0.5, 0.5))


def _polygon_area(ring: list) -> float:
    pts = np.asarray(ring, float)
    x, y = pts[:, 0], pts[:, 1]
    return abs(0.5 * (np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def test_geojson_and_rois_match_the_labels_chunked_or_not(
    net: Path, tmp_path: Path, invoke: Callable
) -> None:
    import roifile

    image, _ = make_slide(300, 280, 11)
    tifffile.imwrite(tmp_path / "s.tif", image)
    outputs = {}
    for name, chunk in (("whole", 2048), ("chunked", 256)):
        folder = tmp_path / name
        folder.mkdir()
        code, text = invoke(
            "infer",
            tmp_path / "s.tif",
            "--model",
            net,
            "-o",
            folder / "l.tif",
            "--chunk",
            chunk,
            "--geojson",
            folder / "n.geojson",
            "--rois",
            folder / "r.zip",
            "--pixel-size",
            0.5,
            "--no-whole-image",  # the same square tiles both ways: only the chunks differ
        )
        assert code == 0, text
        outputs[name] = ((folder / "n.geojson").read_text(), (folder / "r.zip").read_bytes())
    assert outputs["whole"][0] == outputs["chunked"][0]  # identical outlines whether chunked or not
    data = json.loads(outputs["whole"][0])
    labels = tifffile.imread(tmp_path / "whole" / "l.tif")
    counts = np.bincount(labels.ravel())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == labels.max()
    for feature in data["features"]:
        props = feature["properties"]
        assert props["classification"]["name"] == "Nucleus" and props["objectType"] == "detection"
        label = props["measurements"]["Label"]
        assert props["measurements"]["Area µm^2"] == pytest.approx(counts[label] * 0.25)
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        area = sum(_polygon_area(p[0]) - sum(_polygon_area(h) for h in p[1:]) for p in polygons)
        assert area == pytest.approx(counts[label], rel=0.1)
    rois = roifile.roiread(tmp_path / "whole" / "r.zip")
    assert len(rois) == labels.max()
    from scipy import ndimage

    single = 0
    for roi in rois:
        label = int(roi.name.split("-")[1])
        mask = labels == label
        if ndimage.label(mask)[1] != 1:
            continue  # a nucleus in pieces: its ROI is the largest piece (documented)
        single += 1
        ys, xs = np.nonzero(mask)
        coords = roi.coordinates()
        assert coords[:, 0].min() == xs.min() and coords[:, 1].min() == ys.min()
        assert coords[:, 0].max() == xs.max() + 1 and coords[:, 1].max() == ys.max() + 1
    assert single > len(rois) // 2


def test_ome_zarr_opens_at_the_printed_path_and_equals_the_tiff(
    net: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, invoke: Callable
) -> None:
    """The folder --zarr names is an NGFF image with labels/nuclei: ome-zarr-py's Reader finds the image
    and its label there, ome-zarr-models validates root and label, the label levels equal the TIFF's."""
    pytest.importorskip("ome_zarr")
    models = pytest.importorskip("ome_zarr_models.v05.image_label")
    images = pytest.importorskip("ome_zarr_models.v05.image")
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    monkeypatch.setattr("cyclepose_deploy.runtime.outputs.tiff.PYRAMID_TOP", 128)
    image, _ = make_slide(300, 260, 4)
    tifffile.imwrite(tmp_path / "s.tif", image)
    store = tmp_path / "out.ome.zarr"
    code, text = invoke(
        "infer",
        tmp_path / "s.tif",
        "--model",
        net,
        "-o",
        tmp_path / "l.tif",
        "--zarr",
        store,
        "--pixel-size",
        0.65,
    )
    assert code == 0, text
    group = zarr.open_group(str(store / "labels" / "nuclei"), mode="r")
    models.ImageLabel.from_zarr(group)  # raises when the metadata breaks the NGFF schema
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert len(multiscale["datasets"]) == len(levels) == 3
    for dataset, level in zip(multiscale["datasets"], levels, strict=True):
        np.testing.assert_array_equal(np.asarray(group[dataset["path"]]), level)
    first = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert first == pytest.approx([0.65, 0.65])
    assert zarr.open_group(str(store / "labels"), mode="r").attrs["ome"] == {
        "version": "0.5",
        "labels": ["nuclei"],
    }
    images.Image.from_zarr(zarr.open_group(str(store), mode="r"))  # the root: the image
    nodes = list(Reader(parse_url(str(store)))())  # the path the tool prints, as napari-ome-zarr reads it
    kinds = {type(spec) for node in nodes for spec in node.specs}
    assert Multiscales in kinds and Label in kinds, kinds
    root = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(np.asarray(root["s0"]), image)  # the segmented image, its own dtype
    code, text = invoke(
        "infer", tmp_path / "s.tif", "--model", net, "-o", tmp_path / "l2.tif", "--zarr", store
    )
    assert code == 2 and "already exists" in text


def test_preview_shows_a_full_resolution_crop_of_the_densest_region(
    net: Path, tmp_path: Path, invoke: Callable
) -> None:
    import imagecodecs

    image, _ = make_slide(600, 1300, 5)
    image[:, :700] = np.percentile(image, 1)  # nuclei only on the right: the crop must go there
    tifffile.imwrite(tmp_path / "s.tif", image)
    code, text = invoke(
        "infer", tmp_path / "s.tif", "--model", net, "-o", tmp_path / "l.tif", "--preview", tmp_path / "p.png"
    )
    assert code == 0, text
    png = imagecodecs.png_decode((tmp_path / "p.png").read_bytes())
    step = 2  # 1300 px -> a 650 px overview
    overview_w = -(-1300 // step)
    assert png.shape == (512, overview_w + 8 + 512, 3)
    crop = png[:, overview_w + 8 :]
    assert (crop == [255, 64, 64]).all(axis=2).sum() > 500  # outlines at full resolution
    box = np.nonzero((png[:, :overview_w] == [255, 220, 0]).all(axis=2))
    assert box[1].min() >= 700 // step - 1  # the boxed crop lies in the nuclei half


def test_batch_survives_a_damaged_multichannel_file(net: Path, tmp_path: Path, invoke: Callable) -> None:
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "good.tif", make_slide(96, 96, 2)[0])
    data = np.random.default_rng(0).integers(0, 4000, (3, 256, 256)).astype(np.uint16)
    tifffile.imwrite(src / "rgbish.tif", data, compression="zlib", metadata={"axes": "CYX"})
    raw = (src / "rgbish.tif").read_bytes()
    (src / "rgbish.tif").write_bytes(raw[: len(raw) * 2 // 3])  # the last channel's data is cut
    code, text = invoke("infer", src, "--model", net, "--out-dir", tmp_path / "out")
    assert code == 1 and "Traceback" not in text, text
    status = {Path(r["image"]).name: r["status"] for r in rows(tmp_path / "out")}
    assert status == {"good.tif": "done", "rgbish.tif": "failed"}
    errors = [r["error"] for r in rows(tmp_path / "out") if r["error"]]
    assert len(errors) == 1 and "\n" not in errors[0]


def test_batch_writes_what_one_image_gets_and_keeps_skipped_figures(
    net: Path, tmp_path: Path, invoke: Callable
) -> None:
    """Every output of single-image mode, per image, equal to the single-image run; a re-run skips
    finished images and keeps their figures in summary.csv; -o into a missing folder creates it."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        tifffile.imwrite(src / f"f{i}.tif", make_slide(128, 128, 20 + i)[0])
    outputs = ("--geojson", "g", "--rois", "r", "--preview", "p", "--prob", "q", "--zarr", "z")
    code, text = invoke("infer", src, "--model", net, "--out-dir", tmp_path / "out", *outputs)
    assert code == 0, text
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    for i in range(2):
        for suffix in (
            ".labels.ome.tif",
            ".objects.csv",
            ".geojson",
            ".rois.zip",
            ".preview.png",
            ".prob.tif",
            ".ome.zarr",
        ):
            assert f"f{i}{suffix}" in names
    single = tmp_path / "single" / "deeper" / "f0.tif"  # a folder that does not exist yet
    code, text = invoke(
        "infer", src / "f0.tif", "--model", net, "-o", single, "--geojson", single.with_suffix(".geojson")
    )
    assert code == 0, text
    np.testing.assert_array_equal(
        tifffile.imread(single), tifffile.imread(tmp_path / "out" / "f0.labels.ome.tif")
    )
    assert single.with_suffix(".geojson").read_text() == (tmp_path / "out" / "f0.geojson").read_text()
    first = {r["image"]: r for r in rows(tmp_path / "out")}
    code, text = invoke("infer", src, "--model", net, "--out-dir", tmp_path / "out", *outputs)
    assert code == 0, text
    again = {r["image"]: r for r in rows(tmp_path / "out")}
    assert {r["status"] for r in again.values()} == {"skipped"}
    for image, row in again.items():
        assert (
            row["objects"] == first[image]["objects"] != ""
            and row["diameter_px"] == first[image]["diameter_px"]
        )


def test_batch_of_small_fields_equals_fields_run_alone(
    net: Path, tmp_path: Path, invoke: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # callers must meet within the linger for their tiles to share a call: generous on a busy machine
    monkeypatch.setattr("cyclepose_deploy.runtime.backends.batching.LINGER_S", 0.05)
    from cyclepose_deploy import Segmenter

    src = tmp_path / "fields"
    src.mkdir()
    for i in range(6):
        image, _ = make_slide(128, 112, seed=40 + i)
        tifffile.imwrite(src / f"f{i}.tif", image)
    out = tmp_path / "out"
    code, text = invoke("infer", src, "--model", net, "--out-dir", out)
    assert code == 0, text
    with Segmenter(net) as seg:
        # a batch gives the other fields its first field's estimate as their first guess
        first = seg.estimate_diameter(src / "f0.tif")
        guess = {"diameter_guess": first.diameter} if first is not None else {}
        for i in range(6):
            seg.segment_file(src / f"f{i}.tif", tmp_path / f"alone{i}.tif", **(guess if i else {}))
            alone = tifffile.imread(tmp_path / f"alone{i}.tif")
            assert alone.max() > 0
            assert np.array_equal(alone, tifffile.imread(out / f"f{i}.labels.ome.tif"))
        # the same fields from 4 threads: their tiles shared network calls, labels unchanged
        from concurrent.futures import ThreadPoolExecutor

        with seg.shared_batches() as batcher, ThreadPoolExecutor(4) as pool:
            arrays = [tifffile.imread(src / f"f{i}.tif") for i in range(6)]
            together = list(pool.map(lambda a: seg.segment(a, **guess), arrays[1:]))
            together.insert(0, seg.segment(arrays[0]))
        assert batcher.calls < batcher.tiles
        for i, result in enumerate(together):
            assert np.array_equal(result.labels, tifffile.imread(tmp_path / f"alone{i}.tif"))


def test_api_and_cli_load_a_shipped_model_by_name_through_a_cached_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, invoke: Callable
) -> None:
    """`Segmenter("synth")` and `--model synth`: the checkpoint is exported once into the cache (keyed
    by its sha256), then reused; the runtime alone still refuses a checkpoint it cannot load."""
    pytest.importorskip("torch")
    from cyclepose_deploy import Segmenter
    from cyclepose_deploy.runtime.api import Segmenter as RuntimeSegmenter

    monkeypatch.setenv("CYCLEPOSE_CACHE", str(tmp_path / "cache"))
    image, _ = make_slide(160, 160, 4)
    with Segmenter("synth") as seg:
        labels = seg.segment(image, diameter=20).labels
    (export,) = (tmp_path / "cache").iterdir()
    assert (export / "manifest.json").is_file() and labels.max() > 0
    stamp = (export / "manifest.json").stat().st_mtime_ns
    tifffile.imwrite(tmp_path / "s.tif", image)
    code, text = invoke(
        "infer", tmp_path / "s.tif", "--model", "synth", "-o", tmp_path / "l.tif", "--diameter", 20
    )
    assert code == 0, text
    assert (export / "manifest.json").stat().st_mtime_ns == stamp  # reused, not exported again
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l.tif"), labels)
    with pytest.raises(UserError, match="not a model file"):
        RuntimeSegmenter(Path(__file__).parents[1] / "cyclepose_deploy" / "models" / "cyclepose-synth.pt")
