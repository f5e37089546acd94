"""Make docs/napari-widget.png: the Segment nuclei widget docked in napari after a run.

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/napari_screenshot.py \
        --model EXPORT_DIR --image slide.tif
    (slide.tif e.g. from `cyclepose synth slide.tif --height 520 --width 696 --seed 7`)

Opens the widget as the Plugins menu does (the npe2 manifest), presses Run (the worker thread), waits
for the Labels layer and saves the window, reduced to a 256-colour PNG. napari's settings and the
widget's memory go to a temporary folder, not the home folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(), "settings.yaml"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="export folder or .onnx")
    parser.add_argument("--image", required=True, help="a 2-D image file")
    parser.add_argument("--out", default=str(Path(__file__).with_name("napari-widget.png")))
    parser.add_argument("--size", default="1280x760", help="window WxH")
    args = parser.parse_args()

    import napari
    import tifffile
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari: cyclepose-deploy")
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(width, height)
    name = Path(args.image).name.split(".")[0][:8]
    viewer.add_image(tifffile.imread(args.image), name=name, colormap="gray")
    _, widget = viewer.window.add_plugin_dock_widget("cyclepose-deploy", "Segment nuclei")
    widget.model.value = args.model
    widget.run()
    end = time.monotonic() + 600
    while widget.worker is not None and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)
    print(widget.message.value)
    viewer.layers[f"{name} nuclei"].contour = 2
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(shot[..., :3]).quantize(256).save(args.out, optimize=True)
    print(args.out, Path(args.out).stat().st_size // 1024, "KB")
    viewer.close()


if __name__ == "__main__":
    main()
