"""Run by Cellpose's own virtual environment (benchmarks/vs_cellpose.py starts it; never imported by
the project): load S into Cellpose 3.1's CPnet once, segment every image with CellposeModel.eval, write
NAME.labels.tif per image and a JSON of what ran and its internal times. With "check": build the CPnet
only and compare it with the plain one-channel CPnet (untimed).

    CELLPOSE_PYTHON benchmarks/cellpose_child.py '{"checkpoint": ..., "images": [...], ...}'
"""

# ruff: noqa: E402  (the clock starts before the imports: their time is part of what is measured)
import time

t_start = time.perf_counter()
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from cellpose import core, models, resnet_torch
from cellpose.version import version as cellpose_version

t_imported = time.perf_counter()


class CPnetStyle256(resnet_torch.CPnet):
    # Cellpose 3.1's run_net keeps styles in an (n, 256) array, so a narrower S's style vector (its
    # deepest width) is zero-padded to 256; segmentation never reads it (no size model here).
    def forward(self, data):
        y, style, features = super().forward(data)
        return y, torch.nn.functional.pad(style, (0, 256 - style.shape[1])), features


def cpnet_from_s(path, mkldnn):
    # S (strict) in a CPnet of its widths; a one-channel S is widened to Cellpose's two-channel input
    # (image + zero channel) with the extra input channel's BatchNorm and conv weights at zero, so it
    # contributes exactly nothing: Cellpose 3.1 cannot run nchan=1 with a diameter (resize_image drops
    # the channel axis of an (H, W, 1) image, then run_net's transpose fails).
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config, state = ckpt["config"], ckpt["S"]
    nchan, widths = int(config["in_channels"]), [int(w) for w in config["widths"]]
    diam_mean = float(config["diam_mean"])
    exact = CPnetStyle256([nchan, *widths], 3, sz=3, mkldnn=mkldnn, max_pool=True, diam_mean=diam_mean)
    exact.load_state_dict(state, strict=True)
    exact.diam_mean.data.fill_(diam_mean)
    exact.diam_labels.data.fill_(diam_mean)
    if nchan == 2:
        return exact.eval(), exact.eval(), diam_mean, []
    net = CPnetStyle256([2, *widths], 3, sz=3, mkldnn=mkldnn, max_pool=True, diam_mean=diam_mean)
    target, wide, padded = net.state_dict(), {}, []
    for key, value in state.items():
        want = target[key].shape
        if want != value.shape:
            dim = next(i for i, (a, b) in enumerate(zip(want, value.shape, strict=True)) if a != b)
            extra = list(value.shape)
            extra[dim] = want[dim] - value.shape[dim]
            fill = torch.ones if key.endswith("running_var") else torch.zeros
            value = torch.cat([value, fill(extra, dtype=value.dtype)], dim)
            padded.append(key)
        wide[key] = value
    net.load_state_dict(wide, strict=True)
    net.diam_mean.data.fill_(diam_mean)
    net.diam_labels.data.fill_(diam_mean)
    return net.eval(), exact.eval(), diam_mean, padded


if args.get("check"):
    net, exact, diam_mean, padded = cpnet_from_s(args["checkpoint"], False)
    x = np.random.default_rng(0).random((1, 300, 260, 1), dtype=np.float32) * 1.5 - 0.2
    y_exact = core.run_net(exact, x)[0]
    y_wide = core.run_net(net, np.concatenate([x, np.zeros_like(x)], -1))[0]
    print(
        json.dumps(
            {
                "cellpose": cellpose_version,
                "torch": torch.__version__,
                "padded_keys": padded,
                "nbase": net.nbase,
                "diam_mean": diam_mean,
                "state_dict_keys": len(exact.state_dict()),
                "max_abs_diff_vs_exact": float(np.abs(y_exact - y_wide).max()),
            }
        )
    )
    sys.exit(0)

model = models.CellposeModel(gpu=False, pretrained_model=False, nchan=2)
net, _, diam_mean, padded = cpnet_from_s(args["checkpoint"], model.mkldnn)
model.net = net.to(model.device)
model.nbase = list(net.nbase)
model.diam_mean = model.diam_labels = diam_mean
t_loaded = time.perf_counter()
images = []
for name in args["images"]:
    t0 = time.perf_counter()
    image = tifffile.imread(name)
    t1 = time.perf_counter()
    masks = model.eval(
        image, channels=[0, 0], diameter=args["diameter"], flow_threshold=0.4, cellprob_threshold=0.0
    )[0]
    t2 = time.perf_counter()
    out = Path(args["out_dir"]) / (Path(name).name.split(".")[0] + ".labels.tif")
    tifffile.imwrite(out, np.asarray(masks).astype(np.uint32), compression="zlib")
    images.append(
        {
            "image": Path(name).name,
            "objects": int(np.asarray(masks).max()),
            "read_s": t1 - t0,
            "eval_s": t2 - t1,
            "write_s": time.perf_counter() - t2,
        }
    )
info = {
    "cellpose": cellpose_version,
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "mkldnn": bool(model.mkldnn),
    "nbase": list(net.nbase),
    "diam_mean": diam_mean,
    "padded_keys": padded,
    "import_s": t_imported - t_start,
    "model_load_s": t_loaded - t_imported,
    "total_in_script_s": time.perf_counter() - t_start,
    "images": images,
}
Path(args["info"]).write_text(json.dumps(info, indent=1))
