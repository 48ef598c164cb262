"""Whole micrographs in Label Studio (image-level active learning, active/images.py): each
selected image becomes a task with the class table as single choices, the classifier's decision
as the pre-annotation and the acquisition score as its score; experts pick a class (or flag the
image) and the pulled choices become image labels. Connect with labelstudio.loop.connect and
config.image_label_config. Pushing, pulling, costs and restarts are the
tiles' (labelstudio/loop.py); only what a task shows and what an answer means differ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from microal.active.images import ImageALProject, classifier_version
from microal.classify.classifier_file import Classifier
from microal.classify.labels import NONE_CLASS
from microal.data.imageio import read_catalog_image
from microal.files import atomic_path
from microal.labelstudio.client import choice_result, results_choices
from microal.labelstudio.config import CLASS_NAME, FLAG_NONE, FLAGS_NAME
from microal.labelstudio.loop import (
    LabelStudioLabeller,
    LabelStudioTarget,
    PullReport,
    PushReport,
    Verdict,
    new_selection,
    pull,
)


def _write_image_png(project: ImageALProject, row: pd.Series, path) -> None:
    """The micrograph as 8-bit grey, cut as ingest decided (what the classifier saw)."""
    image = np.clip(read_catalog_image(row, project.config.ingest), 0, 1)
    with atomic_path(path) as tmp:
        Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp, format="PNG")


def prediction_results(decision: str) -> list[dict]:
    """The classifier's decision as a pre-annotation: its class ticked, or the "none of these
    classes" flag when most crops were none of the trained classes."""
    if decision == NONE_CLASS:
        return [choice_result(FLAGS_NAME, [FLAG_NONE])]
    return [choice_result(CLASS_NAME, [decision])]


def push_images(
    project: ImageALProject, target: LabelStudioTarget, selection: pd.DataFrame, classifier: Classifier
) -> PushReport:
    """Queue the selected images as tasks with the classifier's decision pre-annotated and the
    acquisition score (entropy and novelty lie in [0, 1]) as the prediction score. Idempotent:
    an image is never queued twice."""
    report = PushReport()
    new = new_selection(project, target, selection, report)
    if new.empty:
        return report
    round_ = project.current_round + 1
    images = project.images(new.tile_id)
    version = classifier_version(classifier)
    tasks = []
    for _, row in new.iterrows():
        image = images.loc[row.tile_id]
        _write_image_png(project, image, target.files_dir / f"{row.tile_id}.png")
        tasks.append(
            {
                "data": {
                    "image": target.image_url(row.tile_id),
                    "tile_id": row.tile_id,
                    "image_id": image.image_id,
                    "image_name": image.image_name,
                    "round": round_,
                    "acquisition_score": float(row.score),
                },
                "predictions": [
                    {
                        "result": prediction_results(str(row.decision)),
                        "score": float(np.clip(row.score, 0, 1)),
                        "model_version": version,
                    }
                ],
            }
        )
    task_ids = target.client.create_tasks(target.project_id, tasks)
    project.pool.mark_queued(new.tile_id.tolist(), round_, task_ids=task_ids)
    report.created = new.tile_id.tolist()
    return report


def accept_choices(project: ImageALProject, image_id: str, submitted: list) -> Verdict:
    """The class most experts chose becomes the image's label; no class chosen, or a tie between
    classes, rejects the image (with the reason). Agreement: the share of experts who chose it."""
    votes = Counter(choice for record in submitted for choice in results_choices(record.result, CLASS_NAME)[:1])
    if not votes:
        return Verdict(len(submitted), float("nan"), rejected="no class chosen")
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return Verdict(len(submitted), ranked[0][1] / len(submitted), rejected=f"experts disagree: {dict(votes)}")
    label, count = ranked[0]
    round_ = int(project.pool.table.set_index("tile_id").loc[image_id, "round"])  # when it was queued
    project.write_labels({image_id: label}, round_, "label studio")
    return Verdict(len(submitted), count / len(submitted))


@dataclass
class ImageLabelStudioLabeller(LabelStudioLabeller):
    """The experts, labelling whole micrographs by class: the shared round hands them images."""

    def push(self, project: ImageALProject, selection: pd.DataFrame, classifier: Classifier) -> PushReport:
        return push_images(project, self.target, selection, classifier)

    def pull(self, project: ImageALProject) -> PullReport:
        return pull(project, self.target, accept=accept_choices)
