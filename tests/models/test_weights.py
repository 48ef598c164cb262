"""Pretrained encoder weights: downloaded once from a real HTTP server (a local one standing in
for the release hosts through MICROAL_WEIGHTS_MIRROR), checked against the server's digest and
the recorded SHA-256, imported offline, and adapted to one grey channel."""

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

from microal.config import ModelConfig
from microal.errors import ConfigError, InputError, MicroalError
from microal.models import weights
from microal.models.factory import adapt_first_conv, build_model


class _Files(http.server.SimpleHTTPRequestHandler):
    etags: dict[str, str] = {}

    def end_headers(self):
        etag = self.etags.get(self.path.lstrip("/"))
        if etag:
            self.send_header("ETag", f'"{etag}"')
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server over a folder; MICROAL_WEIGHTS_MIRROR points at it, the cache is fresh."""
    served = tmp_path / "served"
    served.mkdir()
    handler = type("Handler", (_Files,), {"etags": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MICROAL_WEIGHTS_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("MICROAL_WEIGHTS_CACHE", str(tmp_path / "cache"))
    yield served, handler.etags
    server.shutdown()


def _encoder_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return smp.encoders.get_encoder("resnet18", in_channels=3, weights=None).state_dict()


def _serve_micronet(served: Path, etags: dict, etag: str | None = "md5") -> tuple[str, dict]:
    name = weights.source("resnet18", "micronet").url.rsplit("/", 1)[-1]
    state = {f"module.{k}": v for k, v in _encoder_state().items()}  # saved from DataParallel, as NASA's are
    torch.save(state, served / name)
    if etag == "md5":
        etags[name] = hashlib.md5((served / name).read_bytes()).hexdigest()
    elif etag:
        etags[name] = etag
    return name, state


def test_micronet_url_follows_the_release_naming():
    assert weights.source("resnet18", "micronet").url.endswith("resnet18_pretrained_microscopynet_v1.0.pth.tar")
    assert weights.source("resnet50", "micronet").url.endswith("resnet50_pretrained_microscopynet_v1.1.pth.tar")
    assert weights.source("se_resnet50", "image-micronet").url.endswith(
        "se_resnet50_pretrained_imagenet-microscopynet_v1.0.pth.tar"
    )
    imagenet = weights.source("resnet18", "imagenet")
    assert "smp-hub/resnet18.imagenet/resolve/" in imagenet.url and imagenet.file_name.endswith(".safetensors")
    for source in ("micronet", "imagenet"):
        with pytest.raises(ConfigError, match=f"{source} weights are published for smp's own encoder names"):
            weights.source("tu-regnetx_002", source)


def test_download_once_checked_against_the_servers_digest_then_from_the_cache(mirror):
    served, etags = mirror
    name, _ = _serve_micronet(served, etags)
    path = weights.download("resnet18", "micronet", progress=False)
    assert path.parent == weights.cache_dir() and path.read_bytes() == (served / name).read_bytes()
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == weights.sha256_of(path)
    (served / name).unlink()  # the second time needs no server
    assert weights.download("resnet18", "micronet", progress=False) == path


def test_a_corrupted_download_is_refused_and_nothing_is_cached(mirror):
    served, etags = mirror
    _serve_micronet(served, etags, etag="0" * 32)  # the server states another MD5
    with pytest.raises(MicroalError, match="download corrupted"):
        weights.download("resnet18", "micronet", progress=False)
    assert not any(weights.cache_dir().glob("*"))  # no file, no half-written file, no checksum


def test_an_altered_cached_file_is_refused(mirror):
    served, etags = mirror
    _serve_micronet(served, etags)
    path = weights.download("resnet18", "micronet", progress=False)
    with open(path, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(InputError, match="do not match their recorded SHA-256"):
        weights.download("resnet18", "micronet", progress=False)


def test_offline_the_message_says_what_to_fetch_and_how_to_import_it(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MICROAL_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MICROAL_WEIGHTS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MicroalError) as error:
        build_model(ModelConfig(encoder_weights="micronet"), 2)
    message = str(error.value)
    assert "resnet18_pretrained_microscopynet_v1.0.pth.tar" in message
    assert "microal weights import FILE --encoder resnet18 --weights micronet" in message
    assert str(tmp_path / "cache" / "resnet18.micronet.pth") in message


def test_import_puts_a_fitting_file_in_the_cache_and_refuses_one_that_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROAL_WEIGHTS_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "resnet18_pretrained_microscopynet_v1.0.pth.tar"
    torch.save(_encoder_state(), good)
    cached = weights.import_file(good, "resnet18", "micronet")
    assert weights.cached_file("resnet18", "micronet") == cached
    wrong = tmp_path / "other.pth.tar"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InputError, match="does not fit encoder 'resnet18'"):
        weights.import_file(wrong, "resnet18", "image-micronet")
    assert weights.cached_file("resnet18", "image-micronet") is None


def test_the_model_gets_the_downloaded_encoder_with_its_first_layer_adapted_to_grey(mirror):
    served, etags = mirror
    _, state = _serve_micronet(served, etags)
    net = build_model(ModelConfig(encoder_weights="micronet"), 3)
    rgb_kernel = state["module.conv1.weight"]
    assert torch.equal(net.encoder.layer4[1].conv2.weight, state["module.layer4.1.conv2.weight"])
    assert net.encoder.conv1.weight.shape[1] == 1
    assert torch.allclose(net.encoder.conv1.weight, rgb_kernel.sum(dim=1, keepdim=True))


def test_first_layer_adaptation_keeps_the_response_to_a_grey_image():
    torch.manual_seed(0)
    kernel = torch.randn(8, 3, 7, 7)
    grey = torch.rand(1, 1, 32, 32)
    as_rgb = torch.nn.functional.conv2d(grey.expand(1, 3, 32, 32), kernel)
    for channels in (1, 2):
        adapted = adapt_first_conv(kernel, channels)
        assert adapted.shape == (8, channels, 7, 7)
        response = torch.nn.functional.conv2d(grey.expand(1, channels, 32, 32), adapted)
        assert torch.allclose(response, as_rgb, atol=1e-4)
    assert adapt_first_conv(kernel, 3) is kernel


def test_weights_import_and_list_on_the_command_line(tmp_path, monkeypatch, capsys):
    from microal.cli.main import main

    monkeypatch.setenv("MICROAL_WEIGHTS_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "resnet18_pretrained_imagenet-microscopynet_v1.0.pth.tar"
    torch.save(_encoder_state(), file)
    assert main(["weights", "import", str(file), "--encoder", "resnet18", "--weights", "image-micronet"]) == 0
    assert main(["weights", "list"]) == 0
    assert "resnet18.image-micronet.pth" in capsys.readouterr().out
    assert (
        main(["weights", "import", str(tmp_path / "gone.pth"), "--encoder", "resnet18", "--weights", "micronet"]) == 2
    )
    assert "gone.pth: file does not exist" in capsys.readouterr().err
