import albumentations as A
import numpy as np
import pytest

from microal.data.augment import builtin_pipelines, load_pipeline, trained_symmetries
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


def test_strong_loads_microal_transforms_by_their_full_names():
    pipeline = load_pipeline("strong", seed=0)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert "LocalBlur" in names and "EdgeView" in names
    out = pipeline(image=IMAGE)["image"]
    assert out.shape == IMAGE.shape and out.dtype == np.float32


def test_local_blur_blurs_inside_its_disc_only_and_edge_view_keeps_only_edges():
    from microal.data.augment import EdgeView, LocalBlur

    noisy = rng.random((80, 80)).astype(np.float32)
    blur = LocalBlur(radius_fraction=(0.2, 0.2), sigma=3.0, p=1.0)
    out = blur.apply(noisy, centre=(40.0, 40.0), radius=16.0)
    assert out[40, 40] != pytest.approx(noisy[40, 40], abs=1e-6)
    assert np.std(out[34:46, 34:46]) < 0.5 * np.std(noisy[34:46, 34:46])  # smooth inside
    np.testing.assert_array_equal(out[:10, :10], noisy[:10, :10])  # untouched far away
    step = np.zeros((40, 40), np.float32)
    step[:, 20:] = 1.0
    edges = EdgeView(p=1.0).apply(step)
    assert edges[:, :15].max() == 0 and edges[:, 25:].max() == 0 and edges[:, 19:21].max() == 1.0


def test_an_error_names_the_setting_that_gave_the_pipeline():
    with pytest.raises(ConfigError, match=r"^pretrain\.augmentation: unknown pipeline 'fancy'"):
        load_pipeline("fancy", key="pretrain.augmentation")
    with pytest.raises(ConfigError, match=r"^classify\.augmentation: .*missing\.yaml does not exist"):
        load_pipeline("missing.yaml", key="classify.augmentation")


def test_the_symmetries_a_pipeline_trains_decide_the_test_time_views(tmp_path):
    assert trained_symmetries("basic") == trained_symmetries("extended") == "dihedral"
    assert trained_symmetries("none") == "none"
    mirrors = tmp_path / "mirrors.yaml"
    A.save(A.Compose([A.HorizontalFlip(), A.VerticalFlip(), A.GaussNoise()]), str(mirrors), data_format="yaml")
    assert trained_symmetries(str(mirrors)) == "flips"
    one = tmp_path / "one.yaml"
    A.save(A.Compose([A.HorizontalFlip(), A.RandomBrightnessContrast()]), str(one), data_format="yaml")
    assert trained_symmetries(str(one)) == "none"  # one mirror alone: not the four views of "flips"
