"""`microal labelstudio config` and `serve`: the labelling config, and a local Label Studio server."""

from __future__ import annotations

import os
from pathlib import Path

from microal.cli.common import DEFAULT_WORKDIR, add_config, project_config


def cmd_config(args) -> None:
    from microal.labelstudio.config import label_config

    print(label_config(project_config(args)), end="")


def cmd_serve(args) -> None:
    import signal
    import time

    from microal.labelstudio.server import TOKEN_ENV, new_token_file, read_token, start_server

    data_dir = Path(args.data_dir).resolve()
    token_file = Path(args.token_file) if args.token_file else data_dir / "token"
    if args.token_file or os.environ.get(TOKEN_ENV):
        token = read_token(args.token_file)
    elif token_file.exists():
        token = read_token(token_file)
    else:
        token = new_token_file(token_file)
        print(f"new API token written to {token_file} (readable by you only)")
    files_root = Path(args.files_root or args.workdir).resolve()
    extra = {"SSRF_PROTECTION_ENABLED": "false"} if args.allow_local_webhooks else {}
    print(
        f"starting Label Studio on 127.0.0.1:{args.port} (data {data_dir}, tiles served from {files_root}) ...",
        flush=True,
    )

    def interrupt(*_):
        raise KeyboardInterrupt

    # SIGTERM as Ctrl-C from the start: a stop while Label Studio is still starting must stop it too.
    signal.signal(signal.SIGTERM, interrupt)
    server = None
    try:
        server = start_server(data_dir, args.port, files_root, token, username=args.username, extra_env=extra)
        print(f"Label Studio is up: {server.url}  (user {args.username}; stop with Ctrl-C)", flush=True)
        while server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping
        if server is not None:
            server.stop()
        print("Label Studio stopped")


def add_labelstudio(p) -> None:
    sub = p.add_subparsers(dest="ls_command", required=True, metavar="STEP")
    q = sub.add_parser("config", help="print the labelling config made from the class table")
    add_config(q)
    q.set_defaults(handler=cmd_config)
    q = sub.add_parser("serve", help="run a local Label Studio (its own venv) on 127.0.0.1 until Ctrl-C")
    q.add_argument("--data-dir", default="labelstudio-data", help="Label Studio's data folder (SQLite database)")
    q.add_argument("--port", type=int, default=8080)
    q.add_argument(
        "--workdir", "-w", default=DEFAULT_WORKDIR, help="served as the Local Files root unless --files-root"
    )
    q.add_argument("--files-root", help="LOCAL_FILES_DOCUMENT_ROOT: tiles for experts must be below it")
    q.add_argument(
        "--token-file", help="API token file (default: LABEL_STUDIO_TOKEN, else DATA_DIR/token, made if missing)"
    )
    q.add_argument("--username", default="expert@microal.local", help="the first user (created at the first start)")
    q.add_argument("--allow-local-webhooks", action="store_true", help="let Label Studio call webhooks on 127.0.0.1")
    q.set_defaults(handler=cmd_serve)
