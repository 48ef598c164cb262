"""Pretrained encoder weights a lab would choose, downloaded once into a cache.

Sources (``model.encoder_weights``):

- ``imagenet``: smp's ImageNet weights of the encoder (the file smp itself loads, from the
  Hugging Face hub at the revision smp pins).
- ``micronet``: NASA's encoders pretrained on MicroNet, over 100,000 micrographs (Stuckner et al.,
  npj Comput. Mater. 2022; MIT licence), from the release bucket of pretrained-microscopy-models.
- ``image-micronet``: ImageNet first, then MicroNet.

A file is downloaded once (with a progress bar) into the cache, ``$MICROAL_WEIGHTS_CACHE`` or
``~/.cache/microal/weights``. The download is checked against the digest the server publishes
(the hub's SHA-256 of the file, the bucket's MD5 ETag) where it gives one, and its SHA-256 is
kept beside it and checked on every later load, so a truncated or altered file is never used.
``$MICROAL_WEIGHTS_MIRROR`` replaces the download hosts with a lab's own mirror (same file names).

Offline, the error says which URL to fetch elsewhere and how to put the file in place:
``microal weights import FILE --encoder resnet18 --weights micronet``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from microal.errors import ConfigError, InputError, MicroalError
from microal.files import atomic_path

PRETRAINED = ("imagenet", "micronet", "image-micronet")
MICRONET_BUCKET = "https://nasa-public-data.s3.amazonaws.com/microscopy_segmentation_models"
HUB = "https://huggingface.co"
CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsSource:
    encoder: str
    weights: str  # imagenet, micronet, image-micronet
    url: str

    @property
    def file_name(self) -> str:
        suffix = ".safetensors" if self.url.endswith(".safetensors") else ".pth"
        return f"{self.encoder}.{self.weights}{suffix}"


def cache_dir() -> Path:
    return Path(os.environ.get("MICROAL_WEIGHTS_CACHE") or Path.home() / ".cache" / "microal" / "weights")


def _micronet_url(encoder: str, weights: str) -> str:
    # The release's naming (pretrained_microscopy_models.util): v1.1 exists only for resnet50/micronet.
    if encoder == "resnext101_32x8d":
        return f"{MICRONET_BUCKET}/resnext101_pretrained_microscopynet_v1.0.pth.tar"
    version = "1.1" if (encoder, weights) == ("resnet50", "micronet") else "1.0"
    dataset = "microscopynet" if weights == "micronet" else "imagenet-microscopynet"
    return f"{MICRONET_BUCKET}/{encoder}_pretrained_{dataset}_v{version}.pth.tar"


def _imagenet_url(encoder: str) -> str:
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet")
    if not settings:
        raise ConfigError(f"model.encoder_weights: smp has no ImageNet weights for encoder {encoder!r}")
    return f"{HUB}/{settings['repo_id']}/resolve/{settings['revision']}/model.safetensors"


def source(encoder: str, weights: str) -> WeightsSource:
    if weights not in PRETRAINED:
        raise ConfigError(f"model.encoder_weights: unknown source {weights!r}; valid: {list(PRETRAINED)} or a file")
    if encoder.startswith("tu-"):
        # MicroNet's release and smp's hub name smp's own encoders; timm's come from elsewhere.
        raise ConfigError(
            f"model.encoder_weights: {weights} weights are published for smp's own encoder names "
            f"(e.g. resnet18), not for the timm encoder {encoder!r}: use encoder_weights: none or a local file"
        )
    url = _imagenet_url(encoder) if weights == "imagenet" else _micronet_url(encoder, weights)
    mirror = os.environ.get("MICROAL_WEIGHTS_MIRROR")
    if mirror:
        url = f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}"
    return WeightsSource(encoder, weights, url)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_file(encoder: str, weights: str) -> Path | None:
    """The verified cached file of these weights, or None when there is none."""
    path = cache_dir() / source(encoder, weights).file_name
    if not path.exists():
        return None
    recorded = _checksum_file(path)
    if not recorded.exists() or recorded.read_text().split()[0] != sha256_of(path):
        raise InputError(
            path,
            "cached weights do not match their recorded SHA-256 (truncated or altered); delete the file "
            "and its .sha256 and download or import it again",
        )
    return path


def _published_digest(headers) -> tuple[str, str] | None:
    """(algorithm, hex) the server states for the file: the hub's SHA-256, an S3 single-part MD5 ETag."""
    linked = (headers.get("X-Linked-Etag") or "").strip('"')
    if re.fullmatch(r"[0-9a-f]{64}", linked):
        return "sha256", linked
    etag = (headers.get("ETag") or "").strip('"')
    if re.fullmatch(r"[0-9a-f]{32}", etag):
        return "md5", etag
    return None


def _offline_message(src: WeightsSource, error: Exception) -> str:
    return (
        f"model.encoder_weights: {src.weights}: could not download the {src.weights} weights of encoder "
        f"{src.encoder!r} ({type(error).__name__}: {getattr(error, 'reason', error)}; no network access?). "
        f"Fetch {src.url} on a machine that has access, then: "
        f"microal weights import FILE --encoder {src.encoder} --weights {src.weights} "
        f"(it goes to {cache_dir() / src.file_name}). Or use encoder_weights: none."
    )


def download(encoder: str, weights: str, progress: bool = True, timeout: float = 30) -> Path:
    """The cached file, downloaded first if needed; verified against the server's digest."""
    found = cached_file(encoder, weights)
    if found is not None:
        return found
    src = source(encoder, weights)
    target = cache_dir() / src.file_name
    try:
        response = urllib.request.urlopen(src.url, timeout=timeout)
    except (urllib.error.URLError, OSError) as error:
        raise MicroalError(_offline_message(src, error)) from None
    with response, atomic_path(target) as tmp:
        published = _published_digest(response.headers)
        sha, md5 = hashlib.sha256(), hashlib.md5()
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            open(tmp, "wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, desc=src.file_name, disable=not progress) as bar,
        ):
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                sha.update(block)
                md5.update(block)
                bar.update(len(block))
        if published is not None:
            algorithm, expected = published
            got = (sha if algorithm == "sha256" else md5).hexdigest()
            if got != expected:
                raise MicroalError(f"{src.url}: download corrupted ({algorithm} {got}, the server says {expected})")
        read_state(tmp)  # refuse a file that is not a state dict before it enters the cache
        _checksum_file(target).write_text(f"{sha.hexdigest()}  {src.file_name}\n")
    return target


def import_file(path: str | Path, encoder: str, weights: str) -> Path:
    """Put a file downloaded elsewhere into the cache, after checking it fits the encoder."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    src = source(encoder, weights)
    if path.name.endswith(".safetensors") != src.file_name.endswith(".safetensors"):
        raise InputError(path, f"expected a {src.url.rsplit('/', 1)[-1]} file ({src.url})")
    fits_encoder(read_state(path), encoder, path)
    target = cache_dir() / src.file_name
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
        _checksum_file(target).write_text(f"{sha256_of(tmp)}  {src.file_name}\n")
    return target


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or a torch file; `module.` prefixes (DataParallel) dropped."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: say which and why
        raise InputError(path, f"cannot read encoder weights ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise InputError(path, "not a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def fits_encoder(state: dict[str, torch.Tensor], encoder: str, path: Path) -> None:
    import segmentation_models_pytorch as smp

    own = smp.encoders.get_encoder(encoder, in_channels=3, weights=None).state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise InputError(path, f"does not fit encoder {encoder!r}: missing {missing[:3]}")


def encoder_state(encoder: str, weights: str, progress: bool = True) -> tuple[dict[str, torch.Tensor], Path]:
    """The pretrained state dict of an encoder (downloaded once) and the file it came from."""
    path = download(encoder, weights, progress=progress)
    return read_state(path), path
