"""`cyclepose eval`: score predicted instance labels against ground truth (precision, recall, F1, AP)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer

from cyclepose_deploy.cli.common import user_errors
from cyclepose_deploy.errors import UserError

if TYPE_CHECKING:
    from cyclepose_deploy.metrics import MatchResult


def read_labels(path: Path, name: str) -> np.ndarray:
    """Level 0 of a label TIFF, whole, as a 2-D integer array (eval does not need bounded memory)."""
    from cyclepose_deploy.runtime.source.formats import read_tiff_whole

    labels = read_tiff_whole(path, f"{name} file")
    while labels.ndim > 2 and labels.shape[0] == 1:  # drop leading singleton axes, keep a 1xN image 2-D
        labels = labels[0]
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise UserError(f"{name} file {path} has shape {labels.shape}, not one 2-D plane: pass 2-D labels")
    return labels


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @user_errors
    def eval_(
        pred: Path = typer.Argument(..., help="Predicted instance labels (TIFF)."),
        gt: Path = typer.Argument(..., help="Ground-truth instance labels (TIFF)."),
        json_out: Path | None = typer.Option(None, "--json", help="Also write the results as JSON."),
    ) -> None:
        """Match instances one-to-one by IoU and report precision, recall, F1 and AP."""
        from cyclepose_deploy.atomic import check_writable, write_json_atomic
        from cyclepose_deploy.metrics import check_labels, match_instances

        if json_out is not None:
            check_writable(json_out)
        p = check_labels(read_labels(pred, "prediction"), f"prediction {pred}")
        g = check_labels(read_labels(gt, "ground truth"), f"ground truth {gt}")
        result = match_instances(p, g)
        _print(result)
        if json_out is not None:
            report = {"prediction": str(pred), "ground_truth": str(gt), **result.to_dict()}
            write_json_atomic(json_out, report)


def _print(result: MatchResult) -> None:
    """The headline thresholds as a table on stdout (so it can be piped), then mean AP."""
    from rich.console import Console
    from rich.table import Table

    from cyclepose_deploy.metrics import REPORT_THRESHOLDS

    table = Table(title=f"{result.n_pred} predicted, {result.n_gt} ground-truth objects")
    for column in ("IoU", "TP", "FP", "FN", "precision", "recall", "F1", "AP"):
        table.add_column(column, justify="right")
    for t in REPORT_THRESHOLDS:
        s = result.at(t)
        metrics = (s.precision, s.recall, s.f1, s.ap)
        table.add_row(f"{t:g}", str(s.tp), str(s.fp), str(s.fn), *(f"{v:.4f}" for v in metrics))
    console = Console()
    console.print(table)
    console.print(f"mean AP (IoU 0.5:0.95): {result.mean_ap:.4f}")
