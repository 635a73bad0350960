"""The cluster's one HTTP entry: app/server's OpenAI application (the same limits, errors and
streaming as ``lmstation serve``), sending each request to the deployment of the model it names."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from app.cluster.backend import ClusterBackend
from app.cluster.config import ClusterConfig
from app.server.app import create_app


@serve.ingress()
class Ingress:
    def __init__(self, config: ClusterConfig, models: dict[str, DeploymentHandle]):
        self.config, self.models = config, models

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve builds the app after the constructor, once the model deployments' handles are here."""
        return create_app(ClusterBackend(self.models), self.config.server_config())
