"""Image-level active learning: the pool's items are whole micrographs (an item's id is its
image id), each labelled with one class of the class table, and the round's model is the
classification track's classifier (microal.classify).

The pool, the round (active/rounds.run_round) and the labellers (the oracle, Label Studio) are
the ones tiles use. What differs lives here: the label store is a table of image classes, a
round trains a classifier on the labelled images (the catalog's labels replaced by the
store's), measures it on the held-out test images, and scores the unlabelled images by the
entropy of their averaged crop distribution or by novelty (classify/acquire.py).

Folders: as a tile project (active/folders.py), with ``image_labels.parquet`` for the labels and,
per round, ``catalog.parquet`` (what the classifier trained on) and ``classifier/``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from microal.active.costs import CostTable, SimulatedCost
from microal.active.folders import REPORT_FILE, SCORES_FILE, SELECTION_FILE, ProjectFolders
from microal.active.pool import LABELLED, QUEUED, REJECTED, UNLABELLED, Pool
from microal.active.selection import cold_start_acquisition
from microal.classify.acquire import rank_images
from microal.classify.classifier_file import CLASSIFIER_FILE, Classifier, load_classifier
from microal.classify.evaluate import classification_metrics
from microal.classify.labels import labelled_images, trained_classes
from microal.classify.predict import predict_images
from microal.classify.train import train_classifier
from microal.config import ProjectConfig, apply_overrides
from microal.data.catalog import read_catalog
from microal.data.splits import EXCLUDED, TEST, TRAIN, assign_splits, held_out_splits
from microal.errors import MicroalError
from microal.files import atomic_path

IMAGE_LABELS_FILE = "image_labels.parquet"
ROUND_CATALOG_FILE = "catalog.parquet"
CLASSIFIER_DIR = "classifier"
LABEL_COLUMNS = ["image_id", "label", "round", "source"]


class ImageLabels:
    """image_labels.parquet: the class of each labelled pool image, the round it became known,
    and where it came from (catalog, oracle, label studio). An image labelled again keeps the
    latest class."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(LABEL_COLUMNS, [str, str, int, str])})
        return pd.read_parquet(self.path)

    def write(self, rows: list[dict]) -> None:
        table = pd.concat([self.read(), pd.DataFrame(rows, columns=LABEL_COLUMNS)], ignore_index=True)
        table = table.drop_duplicates("image_id", keep="last").reset_index(drop=True)
        with atomic_path(self.path) as tmp:
            table.to_parquet(tmp, index=False)

    def by_image(self) -> pd.Series:
        table = self.read()
        return pd.Series(table.label.to_numpy(), index=table.image_id.to_numpy(), dtype=object)


def _held_out(images: pd.DataFrame, config: ProjectConfig) -> pd.Series:
    """test / excluded / train (or unlabelled) by image id, from the catalog's own labels."""
    return pd.Series(held_out_splits(images, config.split).to_numpy(), index=images.image_id.to_numpy())


@dataclass
class ImageALProject:
    root: Path
    config: ProjectConfig
    catalog_path: Path
    pool: Pool
    seed: int = 0  # round r trains with training.seed = seed*100 + r (a simulation's seed)

    items = "images"

    @property
    def folders(self) -> ProjectFolders:
        return ProjectFolders(self.root)

    @property
    def labels(self) -> ImageLabels:
        return ImageLabels(self.root / IMAGE_LABELS_FILE)

    @property
    def costs(self) -> CostTable:
        return CostTable(self.folders.costs)

    @property
    def current_round(self) -> int:
        return max(0, int(self.pool.table["round"].max()))

    def round_dir(self, round_: int) -> Path:
        return self.folders.round(round_)

    def trained_rounds(self) -> list[int]:
        return self.folders.rounds_with(f"{CLASSIFIER_DIR}/best_{CLASSIFIER_FILE}")

    @cached_property
    def catalog(self) -> pd.DataFrame:
        """The catalog with its own labels (hidden from training in a simulation)."""
        return labelled_images(read_catalog(self.catalog_path), self.config)

    def images(self, image_ids) -> pd.DataFrame:
        return self.catalog.set_index("image_id", drop=False).loc[list(image_ids)]

    def heldout_images(self) -> pd.DataFrame:
        """The split's test images (with their labels): where each round's classifier is measured."""
        splits = _held_out(self.catalog, self.config)
        return self.catalog[self.catalog.image_id.map(splits) == TEST]

    def round_images(self) -> pd.DataFrame:
        """The catalog as the next round trains on it: labelled pool images carry the store's
        class and the held-out test images their own; every other image is unlabelled."""
        known = self.labels.by_image()
        labelled = self.pool.table.tile_id[self.pool.table.state == LABELLED]
        labels = pd.Series(None, index=self.catalog.index, dtype=object)
        from_store = self.catalog.image_id.isin(labelled)
        labels[from_store] = self.catalog.image_id[from_store].map(known)
        test = self.catalog.image_id.isin(self.heldout_images().image_id)
        labels[test] = self.catalog.label[test]
        return self.catalog.assign(label=labels, labelled=labels.notna())

    def round_catalog(self, round_: int, images: pd.DataFrame | None = None) -> Path:
        """rounds/round-<r>/catalog.parquet: what round `round_` trains on (`round_images`)."""
        images = self.round_images() if images is None else images
        path = self.round_dir(round_) / ROUND_CATALOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            # A catalog file's `labelled` means "has a mask" (data/catalog.py); in memory it means
            # "has a class" (classify/labels.labelled_images), which training derives again.
            images.assign(labelled=images.mask_path.notna()).to_parquet(tmp, index=False)
        return path

    # The steps of the shared round (active/rounds.RoundProject).

    def train_round(
        self, address: str | None = None, members: Classifier | None = None
    ) -> tuple[Classifier, pd.DataFrame | None]:
        """The round's classifier: trained on every labelled image (Ray Train), reused when the
        round has one already, or `members` taken as it; measured on the held-out images."""
        round_ = self.current_round
        folder = self.round_dir(round_)
        best = folder / CLASSIFIER_DIR / f"best_{CLASSIFIER_FILE}"
        if members is not None:
            classifier = members
        elif best.exists():
            classifier = load_classifier(best)
        else:
            if not self.pool.ids(LABELLED):
                raise MicroalError("classify al: no image is labelled yet; label a few (or ingest labels) first")
            images = self.round_images()
            catalog = self.round_catalog(round_, images)
            config = apply_overrides(self.config, self._round_settings(round_, images), source=f"round {round_}")
            storage = self.root / "ray-runs"
            name = f"round-{round_}"
            run = train_classifier(
                config,
                catalog,
                folder / CLASSIFIER_DIR,
                str(storage),
                name,
                resume=(storage / name).exists(),  # a round stopped half-way goes on from its checkpoint
                address=address,
            )
            classifier = load_classifier(run.best_classifier)
        return classifier, self._report(classifier, folder)

    def _round_settings(self, round_: int, images: pd.DataFrame) -> dict:
        """The round's seed, as many validation folds as the labelled samples allow (an early round
        may hold fewer samples than split.n_folds asks for), and a fold that trains every class."""
        settings = {"training.seed": self.seed * 100 + round_}
        split = self.config.split
        if split.method != "group_kfold":
            return settings
        pool = images[images.labelled & ~images.image_id.isin(self.heldout_images().image_id)]
        groups = pool[split.group_by].nunique()
        if groups < 2:
            raise MicroalError(
                f"classify al: the labelled images come from {groups} {split.group_by}(s); "
                "a round needs two or more (one validates the other)"
            )
        folds = min(split.n_folds, int(groups))
        settings["split.n_folds"] = folds
        # The first fold (from split.fold on) whose validation leaves every labelled class some
        # training images: with few labels a whole class can sit in one fold.
        classes = set(pool.label)
        for fold in [*range(split.fold % folds, folds), *range(split.fold % folds)]:
            roles = assign_splits(images, split.model_copy(update={"n_folds": folds, "fold": fold}))
            if set(images.label[roles == TRAIN]) == classes:
                break
        settings["split.fold"] = fold
        return settings

    def _report(self, classifier: Classifier, folder: Path) -> pd.DataFrame | None:
        heldout = self.heldout_images()
        if heldout.empty:
            return None
        predictions = predict_images(classifier, heldout, progress=False)
        result = classification_metrics(predictions, heldout.label.reset_index(drop=True), classifier.classes)
        report = pd.DataFrame([{"model": "classifier", **result["metrics"]}])
        with atomic_path(folder / REPORT_FILE) as tmp:
            report.to_csv(tmp, index=False)
        return report

    def score_round(self, model: Classifier) -> pd.DataFrame:
        """Every unlabelled pool image's distribution, entropy and novelty (and a seeded random
        score, the baseline) into the round's scores.parquet."""
        round_ = self.current_round
        candidates = self.pool.ids(UNLABELLED)
        if not candidates:
            raise MicroalError("classify al: no unlabelled image left in the pool")
        table = predict_images(model, self.images(candidates).reset_index(drop=True), progress=False)
        rng = np.random.default_rng(self.seed * 100 + round_)
        table = table.assign(tile_id=table.image_id, random=rng.random(len(table)), version=classifier_version(model))
        with atomic_path(self.round_dir(round_) / SCORES_FILE) as tmp:
            table.to_parquet(tmp, index=False)
        return table

    def select_round(self, k: int | None = None, acquisition: str | None = None) -> pd.DataFrame:
        """The al.batch_size (or k) unlabelled images ranked first by classify.acquisition (entropy,
        novelty or random; random while fewer than al.random_until images are labelled), from the
        round's score table; images queued, labelled or rejected are never chosen."""
        folder = self.round_dir(self.current_round)
        if not (folder / SCORES_FILE).exists():
            raise MicroalError(f"classify al: no score table in {folder}; the round has not been scored")
        scores = pd.read_parquet(folder / SCORES_FILE)
        busy = set(self.pool.table.tile_id[self.pool.table.state.isin([QUEUED, LABELLED, REJECTED])])
        scores = scores[~scores.tile_id.isin(busy)]
        if acquisition is None:
            labelled = len(self.pool.ids(LABELLED))
            acquisition = cold_start_acquisition(
                self.config.classify.acquisition, labelled, self.config.al.random_until, items="images"
            )
        k = k or self.config.al.batch_size
        if acquisition == "random":
            ranked = scores.sort_values(["random", "image_name"], ascending=[False, True]).head(k)
        else:
            ranked = rank_images(scores, by=acquisition, k=k)
        selection = ranked.assign(acquisition=acquisition, score=ranked[acquisition]).reset_index(drop=True)
        with atomic_path(folder / SELECTION_FILE) as tmp:
            selection.to_csv(tmp, index=False)
        return selection

    def reveal_truth(self, item_ids: list[str], cost: SimulatedCost) -> list[float]:
        """Simulation: the catalog's hidden classes of these images into the label store. An
        image's class is one decision, so it costs the cost model's seconds per item."""
        images = self.images(item_ids)
        hidden = images.image_name[images.label.isna()].tolist()
        if hidden:
            raise MicroalError(f"images without a label to reveal: {hidden[:5]}")
        self.write_labels(dict(zip(images.image_id, images.label)), self.current_round + 1, "oracle")
        return [cost.seconds_per_tile] * len(images)

    def write_labels(self, labels: dict[str, str], round_: int, source: str) -> None:
        unknown = sorted({v for v in labels.values() if v not in self.config.class_names})
        if unknown:
            raise MicroalError(f"labels {unknown} are not in the class table {self.config.class_names}")
        self.labels.write(
            [{"image_id": i, "label": label, "round": round_, "source": source} for i, label in labels.items()]
        )


def classifier_version(classifier: Classifier) -> str:
    """A short content hash of the classifier file: which model pre-annotated a task."""
    return "classifier-" + hashlib.sha1(Path(classifier.path).read_bytes()).hexdigest()[:12]


def init_image_project(
    root: Path, config: ProjectConfig, catalog_path: Path, start_per_class: int | None = None, seed: int = 0
) -> ImageALProject:
    """The pool: every image not held out for testing. Images whose catalog label is known start
    labelled (round 0); with `start_per_class` (a simulation), only that many per class do,
    chosen at random, and the other labels stay hidden for the oracle."""
    if trained_classes(config) != config.class_names:
        raise MicroalError("classify al: classify.leave_out is for open-set experiments, not for a labelling loop")
    catalog = labelled_images(read_catalog(catalog_path), config)
    splits = _held_out(catalog, config)
    images = catalog[~catalog.image_id.map(splits).isin([TEST, EXCLUDED])]
    if images.empty:
        raise MicroalError("classify al: no image for the pool (every image is held out)")
    items = pd.DataFrame(
        {
            "tile_id": images.image_id,
            "image_id": images.image_id,
            "domain": images["domain"].astype(str) if "domain" in images else "",
            "row": 0,
            "col": 0,
        }
    )
    project = ImageALProject(root, config, catalog_path, Pool.create(ProjectFolders(root).pool, items), seed)
    known = images[images.labelled]
    if start_per_class is not None:
        rng = np.random.default_rng(seed)
        picked = [
            index
            for _, group in known.groupby("label", sort=True)
            for index in group.index[rng.permutation(len(group))[:start_per_class]]
        ]
        known = known.loc[picked]
    project.write_labels(dict(zip(known.image_id, known.label)), 0, "catalog")
    if not known.empty:
        project.pool.mark_labelled(known.image_id, 0, note="came with a label")
    return project


def load_image_project(root: Path, config: ProjectConfig, catalog_path: Path, seed: int = 0) -> ImageALProject:
    return ImageALProject(root, config, catalog_path, Pool.load(ProjectFolders(root).pool), seed)


def is_image_project(root: Path) -> bool:
    return (Path(root) / IMAGE_LABELS_FILE).exists()
