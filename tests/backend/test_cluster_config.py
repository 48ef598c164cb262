"""cluster.yaml and cluster-onprem.yaml: Ray's own validation offline, and a real `ray up` of the
on-premise config against this machine (sshd on a spare loopback port), a `microal train` job
submitted to it, and `ray down`."""

import copy
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, quick_config_dict


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def _validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_ray_accepts_the_cluster_configs(name):
    prepared = _validate(_load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    commands = " ".join(prepared["setup_commands"])
    assert "microal" in commands and "ray start" in " ".join(prepared["head_start_ray_commands"])


def test_ray_rejects_a_broken_cluster_config():
    from jsonschema.exceptions import ValidationError

    broken = _load("cluster.yaml")
    broken["max_worker"] = 3  # typo
    with pytest.raises(ValidationError, match="max_worker"):
        _validate(broken)


def test_aws_node_configs_fit_run_instances():
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    operation = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances")
    config = _load("cluster.yaml")
    gpu_types = 0
    for name, node_type in config["available_node_types"].items():
        report = ParamValidator().validate(
            {**node_type["node_config"], "MinCount": 1, "MaxCount": 1}, operation.input_shape
        )
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        gpu_types += node_type["node_config"]["InstanceType"].startswith(("g", "p"))
    assert gpu_types >= 1 and config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


# ---- a real `ray up` of the on-premise config on loopback ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def loopback_sshd(tmp_path):
    """sshd on a spare loopback port in its own PID and mount namespace.

    Inside the namespace, root's home is a fresh folder (authorized key, a .bashrc that puts
    this venv first on PATH), so nothing of the machine's own /root is used or changed, and
    `ray stop` run by Ray's start commands only sees the namespace's processes. Ending the
    namespace's first process ends everything started in it.
    """
    for tool in ("sshd", "unshare", "nc", "rsync", "ssh"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (.ci/run installs openssh-server, netcat-openbsd, rsync)")
    if os.geteuid() != 0:
        pytest.skip("needs root to create PID and mount namespaces for sshd")
    home, port = tmp_path / "home", _free_port()
    (home / ".ssh").mkdir(parents=True)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_key")], check=True)
    shutil.copy(f"{key}.pub", home / ".ssh" / "authorized_keys")
    venv_bin = Path(sys.executable).parent
    (home / ".bashrc").write_text(f"export PATH={venv_bin}:$PATH\nexport RAY_AUTH_MODE=disabled\n")
    (home / ".profile").write_text(". ~/.bashrc\n")
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host_key'}\nPidFile {tmp_path / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    # What the remote side needs from the real /root (e.g. pyenv's python behind the venv) is
    # bound into the fresh home before that home covers /root.
    needed = {Path(os.path.realpath(sys.executable)), REPO.resolve(), tmp_path.resolve()}
    keep = sorted({p.relative_to("/root").parts[0] for p in needed if Path("/root") in p.parents})
    binds = ""
    for name in keep:
        (home / name).mkdir(exist_ok=True)
        binds += f"mount --bind /root/{name} {home / name} && "
    process = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--mount",
            "bash",
            "-c",
            f"{binds}mount --rbind {home} /root && exec /usr/sbin/sshd -D -e -f {config}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_port(port)
        yield {"port": port, "key": key}
    finally:
        os.killpg(process.pid, 9)  # sshd is the namespace's first process: all in it end
        process.wait(timeout=30)


def test_ray_up_job_submit_and_down_on_loopback(loopback_sshd, synth_dir, tiled, tmp_path):
    ws, _, _ = tiled
    gcs, dashboard = _free_port(), _free_port()
    config = _load("cluster-onprem.yaml")
    config["cluster_name"] = f"microal-test-{gcs}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["min_workers"] = config["max_workers"] = 0
    config["auth"] = {
        "ssh_user": "root",
        "ssh_private_key": str(loopback_sshd["key"]),
        # Ray has no ssh port option; the proxy command reaches sshd's port.
        "ssh_proxy_command": f"nc 127.0.0.1 {loopback_sshd['port']}",
    }
    config["setup_commands"] = []  # microal is installed in the venv the .bashrc puts on PATH
    # Every port of the head chosen free: other Ray instances on this machine (the tests' own)
    # hold the defaults, and a head whose job agent cannot bind never takes a job.
    ports = " ".join(
        f"--{name}={_free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
            "ray-client-server-port",
            "node-manager-port",
            "object-manager-port",
        )
    )
    config["head_start_ray_commands"] = [
        "ray stop",
        f"ray start --head --port={gcs} --dashboard-port={dashboard} --dashboard-host=127.0.0.1 --num-cpus=2 "
        f"{ports} --autoscaling-config=~/ray_bootstrap_config.yaml",
    ]
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    ray = str(Path(sys.executable).parent / "ray")

    up = subprocess.run(
        [ray, "up", "-y", "--no-config-cache", str(cluster_file)], capture_output=True, text=True, timeout=300, env=env
    )
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        train_config = tmp_path / "job.yaml"
        train_config.write_text(yaml.safe_dump(quick_config_dict(synth_dir, epochs=1)))
        work = tmp_path / "w"
        work.mkdir()
        (work / "tiles").symlink_to(ws.tiles)
        for _ in range(20):  # the head's job agent may need a few seconds after `ray up`
            job = subprocess.run(
                [
                    ray,
                    "job",
                    "submit",
                    "--address",
                    f"http://127.0.0.1:{dashboard}",
                    "--",
                    "microal",
                    "train",
                    "-c",
                    str(train_config),
                    "-w",
                    str(work),
                    "--name",
                    "onprem",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                env=env,
            )
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        assert (work / "runs" / "onprem" / "best_model.pt").exists()
    finally:
        down = subprocess.run(
            [ray, "down", "-y", str(cluster_file)], capture_output=True, text=True, timeout=120, env=env
        )
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    with socket.socket() as s:  # the head is gone: nothing listens on its GCS port any more
        assert s.connect_ex(("127.0.0.1", gcs)) != 0
