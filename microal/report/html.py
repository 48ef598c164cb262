"""A self-contained HTML page: headings, text, tables from DataFrames and figures embedded as
PNG data, so that the one file can be mailed or archived and still shows everything."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime
from pathlib import Path

import pandas as pd

from microal.files import write_text_atomic
from microal.plots import plt

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #bbb; }
table.data { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
table.data th, table.data td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
table.data th { background: #f0f0f0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
p.missing { color: #8a5a00; background: #fff6e0; padding: .4em .8em; border-left: 4px solid #e0a000; }
"""


class Page:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def missing(self, text: str) -> None:
        """What is not in the report and how to add it."""
        self.parts.append(f'<p class="missing">{html.escape(text)}</p>')

    def table(self, frame: pd.DataFrame, caption: str = "", digits: int = 3) -> None:
        body = frame.to_html(index=False, classes="data", border=0, float_format=lambda v: f"{v:.{digits}f}")
        caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure class="table">{body}{caption_html}</figure>')

    def figure(self, figure_or_png, caption: str) -> None:
        """A matplotlib figure (closed here) or a PNG file, embedded."""
        if isinstance(figure_or_png, str | Path):
            data = Path(figure_or_png).read_bytes()
        else:
            buffer = io.BytesIO()
            figure_or_png.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            plt.close(figure_or_png)
            data = buffer.getvalue()
        encoded = base64.b64encode(data).decode("ascii")
        self.parts.append(
            f'<figure class="plot"><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        made = f"made by microal on {datetime.now():%Y-%m-%d %H:%M}"
        document = (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
            f'<p class="made">{made}</p>' + "\n".join(self.parts) + "</body></html>"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, document)
        return path
