"""`cyclepose synth` then `cyclepose eval` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from typer.testing import CliRunner

from cyclepose_deploy.cli import app

runner = CliRunner()


def test_synth_then_eval_gt_against_itself(tmp_path: Path) -> None:
    slide, gt, report = tmp_path / "s.tif", tmp_path / "gt.tif", tmp_path / "r.json"
    args = ["synth", str(slide), "--size", "256", "--labels", str(gt), "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert tifffile.imread(slide).dtype == np.uint16
    result = runner.invoke(app, ["eval", str(gt), str(gt), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "1.0000" in result.stdout and "mean AP" in result.stdout
    data = json.loads(report.read_text())
    n = len(np.unique(tifffile.imread(gt))) - 1
    assert data["n_gt"] == data["n_pred"] == n > 20
    assert all(t["f1"] == 1.0 for t in data["thresholds"])
    assert data["mean_ap_50_95"] == 1.0


def test_eval_scores_an_imperfect_prediction(tmp_path: Path) -> None:
    gt = np.zeros((40, 40), np.uint16)
    gt[0:10, 0:10], gt[20:30, 20:30], gt[0:4, 30:34] = 1, 2, 3
    pred = np.zeros((40, 40), np.int32)
    pred[0:10, 0:8] = 5  # IoU 0.8 with gt 1
    pred[20:30, 20:30] = 6  # exact
    pred[35:39, 0:4] = 7  # false positive
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "p.tif", pred[None])  # a leading singleton axis is accepted
    report = tmp_path / "r.json"
    args = ["eval", str(tmp_path / "p.tif"), str(tmp_path / "gt.tif"), "--json", str(report)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    scores = {t["iou"]: t for t in json.loads(report.read_text())["thresholds"]}
    assert (scores[0.5]["tp"], scores[0.5]["fp"], scores[0.5]["fn"]) == (2, 1, 1)
    assert scores[0.5]["f1"] == 2 * 2 / (2 * 2 + 1 + 1)
    assert scores[0.8]["tp"] == 2 and scores[0.85]["tp"] == 1
