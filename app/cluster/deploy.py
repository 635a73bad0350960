"""Connecting to a Ray cluster, deploying a cluster file's models on it, and taking them down.

Each model becomes a Serve deployment of ``EngineReplica`` (its CPUs and GPUs per replica, fixed
or autoscaled replica counts, the conversation-affinity router); one ``Ingress`` deployment
serves HTTP in front of them all. The deployment outlives the command: Serve's controller and the
board are detached actors, stopped by ``shutdown``.
"""

from __future__ import annotations

import logging

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from app.cluster.board import NAMESPACE, find_board, open_board
from app.cluster.config import DEFAULT_APP, ClusterConfig, ModelDeployment
from app.cluster.ingress import Ingress
from app.cluster.replica import EngineReplica
from app.cluster.routing import ConversationAffinityRouter

INGRESS = "Ingress"
# A replica whose engine fails to start (a missing folder, too little memory) is tried this many
# times more, not Serve's default 20: each try loads the model again.
CONSTRUCTOR_RETRIES = 3


class ClusterError(RuntimeError):
    """What keeps a cluster command from doing its job, said for the person who ran it."""


def connect(address: str | None) -> None:
    """Joins the Ray cluster at ``address`` (None: the one `ray start` left on this machine, or $RAY_ADDRESS)."""
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        ray.init(address=address or "auto", namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as exc:
        raise ClusterError(f"no Ray cluster at {address or 'this machine'} ({exc}); start one with "
                           "`ray start --head` (see docs/scale-out.md)") from exc


def deploy(config: ClusterConfig) -> None:
    """Deploys (or updates) the application and returns once every replica is running."""
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    models = [model.on_cluster(has_gpus) for model in config.models]
    open_board({"app": config.app_name, "url": config.base_url, "models": [m.name for m in models]})
    serve.start(http_options={"host": config.host, "port": config.port}, proxy_location=config.proxy_location)
    handles = {model.name: _model_deployment(model).bind(model) for model in models}
    ingress = serve.deployment(Ingress, name=INGRESS, num_replicas=config.ingress_replicas,
                               max_ongoing_requests=config.max_requests + 1,  # the app itself answers 429
                               ray_actor_options={"num_cpus": 0})
    try:
        serve.run(ingress.bind(config, handles), name=config.app_name, route_prefix="/")
    except RuntimeError as exc:  # a deployment failed: Serve says which and why
        raise ClusterError(f"the deployment failed: {exc}") from exc


def _model_deployment(model: ModelDeployment) -> serve.Deployment:
    scaling = ({"autoscaling_config": {"min_replicas": model.min_replicas, "max_replicas": model.max_replicas,
                                       "target_ongoing_requests": model.target_ongoing_requests}}
               if model.autoscaling else {"num_replicas": model.min_replicas})
    return serve.deployment(
        EngineReplica, name=model.name, max_ongoing_requests=model.max_ongoing_requests,
        ray_actor_options={"num_cpus": model.cpus_per_replica, "num_gpus": model.gpus_per_replica},
        request_router_config=RequestRouterConfig(request_router_class=ConversationAffinityRouter),
        max_constructor_retry_count=CONSTRUCTOR_RETRIES, **scaling)


def shutdown() -> list[str]:
    """Deletes the application (every replica's engine shuts down) and the board; Serve itself
    stops too unless other applications still run on it. Returns what was stopped."""
    board = find_board()
    app_name = ray.get(board.read.remote())[0].get("app", DEFAULT_APP) if board is not None else DEFAULT_APP
    stopped = []
    running = serve.status()  # empty where Serve was never started
    if app_name in running.applications:
        serve.delete(app_name)
        stopped.append(f"application {app_name}")
    if (running.proxies or running.applications) and not set(running.applications) - {app_name}:
        serve.shutdown()
        stopped.append("Ray Serve")
    if board is not None:
        ray.kill(board)
        stopped.append("the replica board")
    return stopped
