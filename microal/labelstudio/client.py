"""Everything that talks to Label Studio goes through here (the one module that imports
label-studio-sdk): projects, Local Files storage, tasks with pre-annotations, annotations
and webhooks, and the brush RLE conversions (the SDK's converters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from microal.data.tiling import IGNORE_INDEX
from microal.errors import MicroalError
from microal.labelstudio.config import BRUSH_NAME, FLAGS_NAME, IMAGE_NAME


def mask_to_results(mask: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """A class-index mask -> one brush result per class present (RLE, painted pixels = 255)."""
    height, width = mask.shape
    results = []
    for index, name in enumerate(class_names):
        painted = mask == index
        if not painted.any():
            continue
        results.append(
            {
                "from_name": BRUSH_NAME,
                "to_name": IMAGE_NAME,
                "type": "brushlabels",
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": [int(v) for v in mask2rle((painted * 255).astype(np.uint8))],
                    "brushlabels": [name],
                },
            }
        )
    return results


def results_to_mask(results: list[dict[str, Any]], class_names: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Brush results -> class-index mask; pixels nobody painted stay 255 (unknown, not background)."""
    mask = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    for result in results:
        if result.get("type") != "brushlabels" or result.get("from_name") != BRUSH_NAME:
            continue
        value = result.get("value", {})
        labels = value.get("brushlabels") or []
        if not labels or labels[0] not in class_names:
            raise MicroalError(f"annotation label {labels} is not in the class table {class_names}")
        height = int(result.get("original_height", shape[0]))
        width = int(result.get("original_width", shape[1]))
        if (height, width) != tuple(shape):
            raise MicroalError(f"annotation is {width}x{height}, the tile is {shape[1]}x{shape[0]}")
        alpha = decode_rle(value["rle"]).reshape(height, width, 4)[:, :, 3]
        mask[alpha > 0] = class_names.index(labels[0])
    return mask


def results_choices(results: list[dict[str, Any]], from_name: str) -> list[str]:
    """The choices ticked in the `from_name` Choices control."""
    chosen = []
    for result in results:
        if result.get("type") == "choices" and result.get("from_name") == from_name:
            chosen += list(result.get("value", {}).get("choices", []))
    return chosen


def results_flags(results: list[dict[str, Any]]) -> list[str]:
    return results_choices(results, FLAGS_NAME)


def choice_result(from_name: str, choices: list[str]) -> dict[str, Any]:
    """A Choices result (a pre-annotation, or an expert's answer) ticking `choices`."""
    return {"from_name": from_name, "to_name": IMAGE_NAME, "type": "choices", "value": {"choices": list(choices)}}


@dataclass
class AnnotationRecord:
    task_id: int
    annotation_id: int
    tile_id: str
    annotator: int | None
    lead_time: float | None
    was_cancelled: bool
    updated_at: str
    result: list[dict] = field(repr=False, default_factory=list)


def _get(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


class LabelStudioClient:
    """A thin, typed face of the SDK for microal's needs. The token is held, never shown."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self._client = LabelStudio(base_url=self.url, api_key=token)

    def __repr__(self) -> str:  # never the token
        return f"LabelStudioClient({self.url!r})"

    def check(self) -> None:
        try:
            self._client.users.whoami()
        except Exception as error:  # the SDK raises its own and httpx's errors
            raise MicroalError(
                f"Label Studio at {self.url} refused the token or is not reachable ({type(error).__name__})"
            ) from None

    def ensure_project(self, title: str, label_config: str) -> int:
        """The project with this title (created if missing); its labelling config must match."""
        for project in self._client.projects.list(title=title):
            if _get(project, "title") == title:
                existing = (_get(project, "label_config") or "").strip()
                if existing and existing != label_config.strip():
                    raise MicroalError(
                        f"Label Studio project {title!r} has another labelling config; "
                        "use a new project title or update it in Label Studio"
                    )
                return int(_get(project, "id"))
        project = self._client.projects.create(
            title=title, label_config=label_config, show_collab_predictions=True, maximum_annotations=1
        )
        return int(project.id)

    def set_overlap(self, project_id: int, annotators_per_task: int) -> None:
        self._client.projects.update(id=project_id, maximum_annotations=annotators_per_task)

    def ensure_local_storage(self, project_id: int, folder: str) -> None:
        """Serve tiles from `folder` (inside the server's LOCAL_FILES_DOCUMENT_ROOT)."""
        for storage in self._client.import_storage.local.list(project=project_id):
            if _get(storage, "path") == folder:
                return
        self._client.import_storage.local.create(
            project=project_id, path=folder, title="microal tiles", use_blob_urls=False, regex_filter="^$"
        )

    def task_tiles(self, project_id: int) -> list[tuple[str, int]]:
        """(tile_id, task id) of every microal task in the project, duplicates included."""
        out = []
        for task in self._client.tasks.list(project=project_id, fields="all"):
            data = _get(task, "data") or {}
            if "tile_id" in data:
                out.append((str(data["tile_id"]), int(_get(task, "id"))))
        return out

    def tasks_by_tile(self, project_id: int) -> dict[str, int]:
        """tile_id -> task id (what has been pushed, whatever the pool says)."""
        return dict(self.task_tiles(project_id))

    def create_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import tasks (each {"data": ..., "predictions": [...]}) in one request; their ids in order."""
        if not tasks:
            return []
        response = self._client.projects.import_tasks(
            id=project_id, request=tasks, return_task_ids=True, commit_to_project=True
        )
        ids = list(_get(response, "task_ids") or [])
        if len(ids) != len(tasks):
            raise MicroalError(f"Label Studio created {len(ids)} of {len(tasks)} tasks")
        return [int(i) for i in ids]

    def task(self, task_id: int) -> dict[str, Any]:
        """A task's data and predictions (result, score, model_version)."""
        task = self._client.tasks.get(id=task_id)
        predictions = [
            {"result": _get(p, "result"), "score": _get(p, "score"), "model_version": _get(p, "model_version")}
            for p in (_get(task, "predictions") or [])
        ]
        return {"id": int(_get(task, "id")), "data": dict(_get(task, "data") or {}), "predictions": predictions}

    def annotations(self, project_id: int) -> list[AnnotationRecord]:
        """Every annotation (submitted or skipped) of every microal task in the project."""
        records = []
        for task in self._client.tasks.list(project=project_id, fields="all"):
            data = _get(task, "data") or {}
            if "tile_id" not in data:
                continue
            for annotation in _get(task, "annotations") or []:
                records.append(
                    AnnotationRecord(
                        task_id=int(_get(task, "id")),
                        annotation_id=int(_get(annotation, "id")),
                        tile_id=str(data["tile_id"]),
                        annotator=_get(annotation, "completed_by"),
                        lead_time=_get(annotation, "lead_time"),
                        was_cancelled=bool(_get(annotation, "was_cancelled", False)),
                        updated_at=str(_get(annotation, "updated_at") or _get(annotation, "created_at") or ""),
                        result=list(_get(annotation, "result") or []),
                    )
                )
        return records

    def annotate(
        self,
        task_id: int,
        results: list[dict],
        lead_time: float | None = None,
        cancelled: bool = False,
        completed_by: int | None = None,
    ) -> int:
        """Submit an annotation as an expert would (used by tests and the end-to-end check)."""
        kwargs: dict[str, Any] = {"result": results, "was_cancelled": cancelled}
        if lead_time is not None:
            kwargs["lead_time"] = lead_time
        if completed_by is not None:
            kwargs["completed_by"] = completed_by
        return int(self._client.annotations.create(id=task_id, **kwargs).id)

    def ensure_user(self, email: str, password: str) -> int:
        """A (second) expert's user id, created if missing."""
        for user in self._client.users.list():
            if _get(user, "email") == email:
                return int(_get(user, "id"))
        return int(self._client.users.create(username=email.split("@")[0], email=email, password=password).id)

    def webhook_urls(self, project_id: int) -> list[str]:
        return [_get(hook, "url") for hook in self._client.webhooks.list(project=str(project_id))]

    def ensure_webhook(self, project_id: int, url: str) -> None:
        if url in self.webhook_urls(project_id):
            return
        self._client.webhooks.create(
            url=url,
            project=project_id,
            send_payload=False,
            send_for_all_actions=False,
            actions=["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"],
        )
