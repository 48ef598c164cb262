"""The package's shape: stages import only from the stages before them, and Ray and the Label
Studio SDK each have exactly one importer."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "microal"
# The data flow; a stage may import from itself and from the stages before it.
STAGES = [
    "data",
    "models",
    "planning",
    "backend",
    "training",
    "inference",
    "classify",
    "active",
    "report",
    "labelstudio",
    "cli",
]
SHARED = {"config", "errors", "files", "workspace", "plots", "console"}  # may be imported by any stage
COMPOSED = {"demo"}  # the whole pipeline at once: only the command line imports it


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules():
    return [(path, path.relative_to(PACKAGE).parts) for path in sorted(PACKAGE.rglob("*.py"))]


def test_every_stage_imports_only_from_earlier_stages_and_the_shared_modules():
    wrong = []
    for path, parts in _modules():
        stage = parts[0] if len(parts) > 1 else None
        for name in _imports(path):
            if not name.startswith("microal."):
                continue
            target = name.split(".")[1]
            if target in SHARED or stage is None or (target in COMPOSED and stage == "cli"):
                continue
            if target not in STAGES or STAGES.index(target) > STAGES.index(stage):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, wrong


def test_ray_and_the_label_studio_sdk_each_have_one_importer():
    def importers(package: str) -> list[str]:
        return [
            "/".join(parts)
            for path, parts in _modules()
            if any(name == package or name.startswith(package + ".") for name in _imports(path))
        ]

    assert importers("ray") == ["backend/ray.py"]
    assert importers("label_studio_sdk") == ["labelstudio/client.py"]


def test_the_loops_run_without_ray():
    """benchmarks/throughput.py goes to machines with only PyTorch: what it imports must not need Ray."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['ray'] = None\n"  # any `import ray` now fails
        "import microal.training.supervised, microal.training.local, microal.active.scoring, "
        "microal.data.catalog, microal.data.tiles, microal.data.synth"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
