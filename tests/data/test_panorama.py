"""Sites in a panorama: every planted site found once, where it is, the size limits kept, and the
panorama read a block at a time."""

import tracemalloc

import numpy as np
import pytest

from microal.config import SitesConfig
from microal.data.panorama import find_sites, open_panorama
from microal.data.synth_panorama import generate_panorama
from microal.errors import InputError


@pytest.fixture(scope="module")
def panorama(tmp_path_factory):
    path = tmp_path_factory.mktemp("pano") / "pano.tif"
    planted = generate_panorama(path, shape=(2048, 1536), um_per_px=0.1, sites=20, boundary_rows=(512, 1024))
    return path, planted


def test_every_planted_site_is_found_once_at_its_place(panorama):
    path, planted = panorama
    settings = SitesConfig(threshold=0.5, min_area_um2=0.5, max_area_um2=20.0, block_px=512)
    sites = find_sites(open_panorama(path, 0.1), settings)
    assert len(sites) == len(planted)  # the big dark region and the speck are not sites
    for _, site in planted.iterrows():
        distance = np.hypot(sites.y - site.y, sites.x - site.x).min()
        assert distance < 1.5
    on_edge = planted[planted.y.isin([512.0, 1024.0])]
    for _, site in on_edge.iterrows():  # whole, and once, though it lies across two blocks
        match = sites[np.hypot(sites.y - site.y, sites.x - site.x) < 1.5]
        assert len(match) == 1 and match.area_um2.iloc[0] == pytest.approx(site.area_px * 0.01)


def test_the_size_limits_and_otsu_threshold(panorama):
    path, planted = panorama
    pano = open_panorama(path, 0.1)
    voids_only = find_sites(
        pano, SitesConfig(min_area_um2=1.5, max_area_um2=20.0, block_px=512)
    )  # streaks are 1.45 µm²
    assert len(voids_only) == (planted.kind == "void").sum()
    everything = find_sites(pano, SitesConfig(min_area_um2=0, max_area_um2=None, block_px=512))
    assert len(everything) == len(planted) + 2


def test_the_panorama_is_never_read_whole(tmp_path):
    path = tmp_path / "tall.tif"
    generate_panorama(path, shape=(8192, 1024), um_per_px=0.1, sites=8)
    pano = open_panorama(path, 0.1)
    whole = pano.shape[0] * pano.shape[1] * 4  # the float32 panorama
    tracemalloc.start()
    find_sites(pano, SitesConfig(threshold=0.5, max_area_um2=5.0, block_px=256))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.4 * whole


def test_a_file_that_is_not_a_panorama_is_named(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("not a tiff")
    with pytest.raises(InputError, match="notes.tif.*cannot open"):
        open_panorama(bad, 0.1)
    with pytest.raises(InputError, match="pixel size"):
        open_panorama(bad, 0.0)
