import numpy as np
import pytest

from microal.data.augment import builtin_pipelines, load_pipeline
from microal.errors import ConfigError

rng = np.random.default_rng(3)
IMAGE = rng.random((64, 64)).astype(np.float32)
MASK = rng.integers(0, 3, (64, 64)).astype(np.uint8)


@pytest.mark.parametrize("name", ["basic", "extended"])
def test_pipelines_are_seeded_and_keep_mask_labels(name):
    assert name in builtin_pipelines()
    outputs = []
    for seed in (5, 5, 6):
        pipeline = load_pipeline(name, seed=seed)
        outputs.append([pipeline(image=IMAGE, mask=MASK) for _ in range(4)])
    for first, again in zip(outputs[0], outputs[1]):
        np.testing.assert_array_equal(first["image"], again["image"])
        np.testing.assert_array_equal(first["mask"], again["mask"])
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(outputs[0], outputs[2]))
    for out in outputs[0]:
        assert out["image"].shape == IMAGE.shape and out["image"].dtype == np.float32
        assert set(np.unique(out["mask"])) <= {0, 1, 2}


def test_basic_is_a_square_symmetry():
    out = load_pipeline("basic", seed=0)(image=IMAGE, mask=MASK)
    candidates = [np.rot90(m, k) for m in (IMAGE, IMAGE.T) for k in range(4)]
    assert any(np.array_equal(out["image"], c) for c in candidates)


def test_custom_and_bad_pipelines(tmp_path):
    assert load_pipeline("none") is None
    with pytest.raises(ConfigError, match="unknown pipeline 'fancy'"):
        load_pipeline("fancy")
    bad = tmp_path / "bad.yaml"
    bad.write_text("transform: {__class_fullname__: NoSuchTransform}\n")
    with pytest.raises(ConfigError, match="bad.yaml: not a valid albumentations pipeline"):
        load_pipeline(str(bad))
