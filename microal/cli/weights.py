"""`microal weights`: pretrained encoder weights in the cache (download ahead, import, list)."""

from __future__ import annotations

ENCODER_HELP = "smp encoder name, e.g. resnet18 (as model.encoder)"


def cmd_download(args) -> None:
    from microal.models.weights import download

    print(f"cached: {download(args.encoder, args.weights)}")


def cmd_import(args) -> None:
    from microal.models.weights import import_file

    print(f"cached: {import_file(args.file, args.encoder, args.weights)} (use model.encoder_weights: {args.weights})")


def cmd_list(args) -> None:
    from microal.models.weights import cache_dir

    folder = cache_dir()
    files = sorted(p for p in folder.glob("*.*") if not p.name.endswith(".sha256")) if folder.exists() else []
    print(f"weights cache: {folder}")
    for path in files:
        print(f"  {path.name}  ({path.stat().st_size / 1e6:.1f} MB)")
    if not files:
        print("  (empty)")


def add_weights(p) -> None:
    from microal.models.weights import PRETRAINED

    sub = p.add_subparsers(dest="weights_command", required=True, metavar="STEP")
    for name, summary, handler in (
        ("download", "download pretrained encoder weights into the cache (needs the network)", cmd_download),
        ("import", "put a weights file downloaded elsewhere into the cache (offline machines)", cmd_import),
    ):
        q = sub.add_parser(name, help=summary, description=summary)
        if name == "import":
            q.add_argument("file", help="the downloaded file (.pth.tar for MicroNet, .safetensors for ImageNet)")
        q.add_argument("--encoder", required=True, help=ENCODER_HELP)
        q.add_argument("--weights", required=True, choices=PRETRAINED, help="which pretraining")
        q.set_defaults(handler=handler)
    q = sub.add_parser("list", help="the cached weight files")
    q.set_defaults(handler=cmd_list)
