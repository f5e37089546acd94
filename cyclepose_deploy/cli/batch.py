"""`cyclepose infer DIR | GLOB | FILE... --out-dir OUT`: many images in one process with one model load.

Each image gets OUT/NAME.labels.ome.tif and OUT/NAME.objects.csv, and every other output asked for, as a
single image would (--preview: NAME.preview.png, --prob: NAME.prob.tif, --geojson: NAME.geojson, --rois:
NAME.rois.zip, --zarr: NAME.ome.zarr; the value given to those options names nothing in batch mode);
OUT/summary.csv has one row per image (status, objects, seconds, diameter, pixel size, error). A bad
file fails its row and the rest go on. Exit code: 0 when every image was segmented (or already done), 1
when some failed, 2 when none could run. A re-run skips images whose outputs all exist (they are
complete: every output is renamed into place only when finished) unless --overwrite, and keeps their
figures from the previous summary.csv.
"""

from __future__ import annotations

import csv
import glob
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from cyclepose_deploy.defaults import CHUNK
from cyclepose_deploy.errors import OptionError, UserError

# Images up to one default chunk run CONCURRENT at a time, and their tiles share network batches
# (runtime.backends.batching); a larger image runs alone, so memory stays that of one chunk per image.
CONCURRENT = 4
SMALL_PIXELS = CHUNK * CHUNK

IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2", ".png", ".jpg", ".jpeg", ".bmp", ".zarr")
LABELS_SUFFIX = ".labels.ome.tif"
OBJECTS_SUFFIX = ".objects.csv"
OUTPUT_SUFFIXES = {  # batch mode's file per image for each optional output
    "objects": OBJECTS_SUFFIX,
    "preview": ".preview.png",
    "prob": ".prob.tif",
    "geojson": ".geojson",
    "rois": ".rois.zip",
    "zarr": ".ome.zarr",
}
SUMMARY = "summary.csv"
COLUMNS = ("image", "status", "objects", "seconds", "diameter_px", "pixel_size_um", "labels", "error")


def _is_zarr_image(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any(
        (path / name).exists() for name in (".zarray", ".zgroup", ".zattrs", "zarr.json")
    )


def expand_inputs(
    paths: Sequence[Path], recursive: bool, out: Path | None, out_dir: Path | None
) -> tuple[list[Path], bool]:
    """(the images, batch mode?) from the command line: files, folders (their images, sorted) and
    quoted globs. One file with -o is the single-image mode; anything else needs --out-dir."""
    images: list[Path] = []
    expanded = False
    for raw in paths:
        if raw.is_dir() and not _is_zarr_image(raw):
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in raw.glob(pattern) if _looks_like_image(p))
            if not found:
                raise UserError(f"no images in folder {raw} (looked for {', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
            expanded = True
        elif not raw.exists() and glob.has_magic(str(raw)):
            found = sorted(
                Path(p) for p in glob.glob(str(raw), recursive=recursive) if _looks_like_image(Path(p))
            )
            if not found:
                raise UserError(f"no images match {raw}: check the pattern")
            images.extend(found)
            expanded = True
        else:
            images.append(raw)
    if out_dir is None:
        if len(images) == 1 and not expanded and out is not None:
            return images, False
        if out is None:
            raise UserError("give -o LABELS for one image, or --out-dir FOLDER for several")
        raise UserError(
            f"{len(images)} images given: use --out-dir FOLDER (one labels file per image), not -o"
        )
    if out is not None:
        raise UserError("-o and --out-dir both given: -o names one image's labels, --out-dir a batch folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file: give a folder")
    return images, True


def _looks_like_image(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(LABELS_SUFFIX) or name.startswith("."):
        return False
    if path.suffix.lower() == ".zarr":
        return path.is_dir()
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def output_names(images: Sequence[Path]) -> list[str]:
    """A unique output name per image: its file name without the image suffix(es), prefixed by the
    parent folder's name where two images share a name."""
    stems = [_stem(p) for p in images]
    names = []
    for path, stem in zip(images, stems, strict=True):
        names.append(f"{path.parent.name}_{stem}" if stems.count(stem) > 1 else stem)
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def run_batch(
    seg: Any, images: Sequence[Path], out_dir: Path, outputs: Sequence[str], say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Segment each image with the loaded Segmenter (its options: what every image gets) into its
    labels, object table and the `outputs` named (keys of OUTPUT_SUFFIXES); write the summary; return
    the summary's rows (exit_code: what the command returns)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cyclepose_deploy.atomic import write_atomic
    from cyclepose_deploy.console import console

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out-dir {out_dir}: {exc.strerror or exc}") from None
    names = output_names(images)
    wanted = ["objects", *(name for name in outputs if name != "objects")]
    earlier = _earlier_rows(out_dir / SUMMARY)
    guess = _acquisition_diameter(seg, images, say)
    rows: list[dict[str, Any]] = [{} for _ in images]
    bar = Progress(
        TextColumn("images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )
    with bar, seg.shared_batches(), ThreadPoolExecutor(CONCURRENT, thread_name_prefix="image") as pool:
        task = bar.add_task("images", total=len(images))
        running: list[Future] = []

        def one(k: int) -> None:
            extra = guess if k > 0 else {}  # the first image keeps its own estimate, as alone
            rows[k] = _one(seg, images[k], out_dir / names[k], wanted, say, extra)
            if rows[k]["status"] == "skipped":
                rows[k] = {**earlier.get(rows[k]["image"], {}), **rows[k]}
            bar.advance(task)

        try:
            for k, image in enumerate(images):
                if (
                    _pixels(image, seg.options.image) > SMALL_PIXELS
                ):  # a large slide runs alone: bounded memory
                    wait(running)
                    running.clear()
                    one(k)
                else:
                    running.append(pool.submit(one, k))
            wait(running)
            for future in running:
                future.result()
        except BaseException:  # Ctrl-C: drop the queued images, let the running ones stop
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    write_atomic(out_dir / SUMMARY, _csv(rows).encode())
    failed = sum(r["status"] == "failed" for r in rows)
    done = sum(r["status"] == "done" for r in rows)
    skipped = len(rows) - failed - done
    console.print(
        f"{done} segmented, {skipped} already done (skipped), {failed} failed; summary in {out_dir / SUMMARY}"
    )
    return rows


def exit_code(rows: Sequence[dict[str, Any]]) -> int:
    """0 when every image was segmented or already done, 1 when some failed, 2 when all failed."""
    failed = sum(r["status"] == "failed" for r in rows)
    if failed == 0:
        return 0
    return 2 if failed == len(rows) else 1


def _earlier_rows(summary: Path) -> dict[str, dict[str, Any]]:
    """The rows of an earlier run's summary.csv by image (figures for the images a re-run skips)."""
    try:
        with open(summary, newline="") as handle:
            return {row["image"]: row for row in csv.DictReader(handle) if row.get("image")}
    except (OSError, ValueError, KeyError, csv.Error):
        return {}


def _acquisition_diameter(seg: Any, images: Sequence[Path], say: Callable[[str], None]) -> dict[str, float]:
    """With --diameter-fields N: one diameter for the batch, the median of the first N images' estimates
    (the same acquisition imaged alike), so each field does not run an estimate of its own. Without
    it (and without a diameter), the options the other images get: the first image's estimate as
    their first guess (`diameter_guess`; each is still measured, in one network pass where it holds)."""
    scale = seg.options.scale
    fields = scale.diameter_fields
    if not fields:
        automatic = scale.diameter is None and scale.diameter_um is None and scale.diameter_guess is None
        return _first_guess(seg, images[0], say) if automatic and len(images) > 1 else {}
    sample = list(images[:fields])
    try:
        estimate = seg.estimate_diameter(sample)
    except UserError as exc:
        raise UserError(
            f"the diameter of the first {len(sample)} image(s) cannot be estimated: {exc}"
        ) from None
    if estimate is None:
        say(f"no nucleus-like structure in the first {len(sample)} image(s): each image is estimated alone")
        return
    seg.options = seg.options.updated(diameter=estimate.diameter, diameter_fields=None)
    say(f"diameter {estimate.diameter:.1f} px for every image (median of {estimate.objects} field estimates)")
    return {}


def _first_guess(seg: Any, image: Path, say: Callable[[str], None]) -> dict[str, float]:
    """{"diameter_guess": the first image's estimate}; empty when it has none, or when it cannot be
    estimated (its own row then reports why: a damaged first file must not end the batch)."""
    try:
        estimate = seg.estimate_diameter(image)
        if estimate is None:
            return {}
        seg.options.updated(diameter_guess=estimate.diameter)  # in range for the option
    except Exception as exc:  # as _one: any failure of one file is that file's
        say(f"warning: {image}: no first guess for the other images ({type(exc).__name__})")
        return {}
    return {"diameter_guess": estimate.diameter}


def _pixels(image: Path, options: Any) -> int:
    """The image's pixel count from its header (0 when it cannot be opened: its own run reports why)."""
    from cyclepose_deploy.runtime.source.slide import Slide

    try:
        slide = Slide(image, None, options)
    except Exception:
        return 0
    try:
        return slide.shape[0] * slide.shape[1]
    finally:
        slide.close()


def _one(
    seg: Any,
    image: Path,
    stem: Path,
    outputs: Sequence[str],
    say: Callable[[str], None],
    extra: dict[str, float],
) -> dict[str, Any]:
    """One image's row of the summary; `stem`: OUT/NAME, its outputs' common start; extra: options of
    this image's call (its diameter_guess)."""
    labels = stem.with_name(stem.name + LABELS_SUFFIX)
    files = {name: stem.with_name(stem.name + OUTPUT_SUFFIXES[name]) for name in outputs}
    row: dict[str, Any] = {"image": str(image), "labels": str(labels)}
    if not seg.options.run.overwrite and all(p.exists() for p in (labels, *files.values())):
        return {**row, "status": "skipped"}
    start = time.perf_counter()
    try:
        summary = seg.segment_file(
            image,
            labels,
            **files,
            overwrite=True,
            resume=True,  # an image interrupted last time keeps its finished chunks (same settings)
            **extra,
            warn=lambda text: say(f"{image.name}: {text}") if text.startswith("warning") else None,
        )
    except UserError as exc:
        from cyclepose_deploy.cli.common import flag

        text = exc.render(flag) if isinstance(exc, OptionError) else str(exc)
        text = " ".join(text.split())  # one line in the CSV, whatever the message
        say(f"warning: {image}: {text}")
        return {**row, "status": "failed", "error": text, "seconds": f"{time.perf_counter() - start:.2f}"}
    except Exception as exc:  # a damaged file must not end the batch: fail its row, name the cause
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        say(f"warning: {image}: unexpected failure ({text})")
        return {**row, "status": "failed", "error": text, "seconds": f"{time.perf_counter() - start:.2f}"}
    size = summary.pixel_size
    return {
        **row,
        "status": "done",
        "objects": summary.objects,
        "seconds": f"{summary.seconds:.2f}",
        "diameter_px": f"{summary.diameter.diameter:.2f}" if summary.diameter else "",
        "pixel_size_um": f"{size[1]:.6g}" if size else "",
    }


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    return buffer.getvalue()
