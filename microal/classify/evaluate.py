"""`microal classify evaluate`: predictions against the image labels.

Accuracy and balanced accuracy (mean recall over the true classes present), recall per class,
the confusion matrix with a "none" column, and, when some images belong to classes the
classifier was not trained on (classify.leave_out), the open-set AUROC: how well `novelty`
(the share of "none" crops) separates those images from the known ones, and their recall as
"none".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score

from microal.classify.labels import NONE_CLASS
from microal.files import atomic_path
from microal.plots import confusion_figure


def classification_metrics(predictions: pd.DataFrame, labels: pd.Series, trained: list[str]) -> dict:
    """`labels`: the true class of each prediction row (indexed alike); a class not in `trained`
    counts as "none". Returns metrics, recall per class, and the confusion matrix as a table."""
    truth = labels.where(labels.isin(trained), NONE_CLASS).to_numpy()
    decision = predictions.decision.to_numpy()
    order = [*trained, NONE_CLASS]
    matrix = confusion_matrix(truth, decision, labels=order)
    present = [c for c in order if (truth == c).any()]
    recall = {c: float(np.mean(decision[truth == c] == c)) for c in present}
    known = [c for c in present if c != NONE_CLASS]
    metrics = {
        "images": len(truth),
        "accuracy": float(np.mean(decision == truth)),
        "balanced_accuracy": float(np.mean([recall[c] for c in known])) if known else float("nan"),
        "open_set_auroc": float("nan"),
        "none_recall": recall.get(NONE_CLASS, float("nan")),
    }
    unknown = truth == NONE_CLASS
    if unknown.any() and (~unknown).any():
        metrics["open_set_auroc"] = float(roc_auc_score(unknown, predictions.novelty.to_numpy()))
    table = pd.DataFrame(matrix, index=pd.Index(order, name="true"), columns=pd.Index(order, name="predicted"))
    return {"metrics": metrics, "recall": recall, "confusion": table.loc[[c for c in order if table.loc[c].sum()]]}


def balanced_accuracy_over(recall: dict[str, float], classes: list[str]) -> float:
    """Mean recall over the named classes (those with enough images to judge)."""
    values = [recall[c] for c in classes if c in recall]
    return float(np.mean(values)) if values else float("nan")


def write_evaluation(result: dict, predictions: pd.DataFrame, out_dir: Path) -> Path:
    """metrics.csv, recall.csv, confusion.csv and confusion.png, and the predictions with their labels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "metrics.csv": pd.DataFrame([result["metrics"]]),
        "recall.csv": pd.DataFrame({"class": list(result["recall"]), "recall": list(result["recall"].values())}),
        "predictions.csv": predictions,
    }
    for name, table in tables.items():
        with atomic_path(out_dir / name) as tmp:
            table.to_csv(tmp, index=False)
    with atomic_path(out_dir / "confusion.csv") as tmp:
        result["confusion"].to_csv(tmp)
    confusion_figure(result["confusion"], out_dir / "confusion.png")
    return out_dir
