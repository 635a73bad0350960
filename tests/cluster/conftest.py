"""A two-node Ray cluster on this machine (Ray's own test cluster: a head and a worker node, both on
127.0.0.1, CPUs only, no dashboard), and ``lmstation cluster`` commands run against it as a user
runs them. One cluster serves the whole module: starting one takes most of a minute on two cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

# Ray turns a loopback address into this machine's outward one unless told it runs one-machine
# clusters (read when ray is imported, so set here first); this keeps every node, and every port
# Ray opens, on 127.0.0.1. The cluster's processes, and the commands run against it, inherit it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
if sys.platform != "linux":  # the test extra installs Ray on Linux only; there a missing Ray is a failure
    pytest.skip("the test extra installs ray[serve] on Linux only", allow_module_level=True)
import ray.serve  # noqa: E402,F401

LMSTATION = str(Path(sys.executable).parent / "lmstation")


def ray_processes() -> dict[int, str]:
    """Ray's processes on this machine (GCS, raylets, workers, actors): PID -> command line, where
    an actor's shows its class (``ray::ServeReplica:lmstation:Ingress``, ``ray::Board``...)."""
    found = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        name, cmdline = process.info["name"] or "", process.info["cmdline"] or []
        if (name in ("raylet", "gcs_server") or name.startswith("ray::") or (cmdline and cmdline[0].startswith("ray::"))
                or any("site-packages/ray/" in part for part in cmdline)):
            found[process.pid] = " ".join(cmdline) or name
    return found


class RunningCluster:
    """The running cluster: its address, and the cluster commands pointed at it."""

    def __init__(self, cluster, folder: Path, ray_before: dict[int, str]):
        self.cluster, self.address, self.folder = cluster, cluster.address, folder
        self.ray_before = ray_before  # Ray processes that were here before it (none, normally)

    def command(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([LMSTATION, "cluster", *args, "--address", self.address], check=False,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        import ray

        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None


@pytest.fixture(scope="module")
def ray_cluster(lmstation_home, tmp_path_factory):
    """Started after LMSTATION_HOME is set: its nodes, and the replicas they start, inherit it."""
    from ray.cluster_utils import Cluster

    from app.cluster.deploy import connect

    before = ray_processes()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    running = RunningCluster(cluster, tmp_path_factory.mktemp("cluster"), before)
    connect(cluster.address)  # this process reads the board and Serve's status too
    yield running
    running.stop()
