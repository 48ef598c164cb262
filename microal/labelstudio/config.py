"""Label Studio labelling configs made from the project's class table (and checked against it).

One image per task, brush labels (one per class, in the class table's colours), and tile-level
flags experts can set instead of (or besides) painting:

- ``unusable``: nothing to learn from (out of focus, no microstructure) -> the tile is rejected;
- ``imaging artefact``: beam shadow, charging, scratches, dust -> rejected, kept as a flag;
- ``unsure``: painted, but the expert is not confident -> kept, flagged in the report.

Whole micrographs (image-level active learning) get one Choices control of the classes instead
of the brushes, and one more flag, ``none of these classes`` -> rejected (it cannot train a class).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

from microal.config import ProjectConfig
from microal.errors import ConfigError
from microal.plots import class_colors

IMAGE_NAME, BRUSH_NAME, FLAGS_NAME, CLASS_NAME = "image", "mask", "flags", "class"
FLAG_UNUSABLE, FLAG_ARTEFACT, FLAG_UNSURE = "unusable", "imaging artefact", "unsure"
FLAGS = (FLAG_UNUSABLE, FLAG_ARTEFACT, FLAG_UNSURE)
# Whole micrographs only: none of the class table's classes (kept out of training, noted).
FLAG_NONE = "none of these classes"
IMAGE_FLAGS = (*FLAGS, FLAG_NONE)
REJECTING_FLAGS = {FLAG_UNUSABLE, FLAG_ARTEFACT, FLAG_NONE}


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb)


def label_config(config: ProjectConfig) -> str:
    """The XML labelling config for this project's classes."""
    colors = class_colors(config.classes)
    labels = "\n".join(
        f"    <Label value={quoteattr(c.name)} background={quoteattr(_hex(color))}/>"
        for c, color in zip(config.classes, colors)
    )
    flags = "\n".join(f"    <Choice value={quoteattr(f)}/>" for f in FLAGS)
    return (
        "<View>\n"
        f'  <Image name="{IMAGE_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <BrushLabels name="{BRUSH_NAME}" toName="{IMAGE_NAME}">\n{labels}\n  </BrushLabels>\n'
        '  <Header value="Tile flags (optional)"/>\n'
        f'  <Choices name="{FLAGS_NAME}" toName="{IMAGE_NAME}" choice="multiple" showInline="true">\n'
        f"{flags}\n  </Choices>\n"
        "</View>\n"
    )


def check_label_config(xml: str, config: ProjectConfig, source: str = "label config") -> None:
    """Refuse a labelling config whose brush labels differ from the class table."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise ConfigError(f"{source}: not valid XML ({error})") from None
    brushes = root.findall(f".//BrushLabels[@name='{BRUSH_NAME}']")
    if len(brushes) != 1:
        raise ConfigError(f'{source}: needs exactly one <BrushLabels name="{BRUSH_NAME}">')
    labels = [label.get("value") for label in brushes[0].findall("Label")]
    if labels != config.class_names:
        raise ConfigError(f"{source}: brush labels {labels} differ from the class table {config.class_names}")
    if root.find(f".//Image[@name='{IMAGE_NAME}']") is None:
        raise ConfigError(f'{source}: needs <Image name="{IMAGE_NAME}" value="$image">')


def image_label_config(config: ProjectConfig) -> str:
    """The XML labelling config for classifying whole micrographs: one class each, and flags."""
    classes = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in config.class_names)
    flags = "\n".join(f"    <Choice value={quoteattr(f)}/>" for f in IMAGE_FLAGS)
    return (
        "<View>\n"
        f'  <Image name="{IMAGE_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        '  <Header value="Microstructure class"/>\n'
        f'  <Choices name="{CLASS_NAME}" toName="{IMAGE_NAME}" choice="single-radio" showInline="true">\n'
        f"{classes}\n  </Choices>\n"
        '  <Header value="Image flags (optional)"/>\n'
        f'  <Choices name="{FLAGS_NAME}" toName="{IMAGE_NAME}" choice="multiple" showInline="true">\n'
        f"{flags}\n  </Choices>\n"
        "</View>\n"
    )
