"""The cluster's YAML file, read into dataclasses and checked before anything is deployed (a typo
should fail on the command line, not minutes later in a replica on another machine).

```yaml
host: 127.0.0.1            # where Ray Serve's HTTP proxy listens (beyond this machine: set api_key)
port: 8000
models:
  - model: SmolLM2-135M-Instruct   # a folder or library name, present on every machine
    replicas: 2                    # fixed; or min_replicas / max_replicas / target_ongoing_requests
    device: cpu                    # and any other EngineConfig field (tensor_parallel, max_num_seqs...)
```
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.engine.config import EngineConfig
from app.engine.starter import STARTER_NAME
from app.server.config import ServerConfig, ServerConfigError

PROXY_LOCATIONS = ("HeadOnly", "EveryNode")
DEFAULT_APP = "lmstation"  # the Serve application's name


class ClusterConfigError(ValueError):
    """A cluster file the deployment refuses, with what is wrong and where."""


@dataclass(frozen=True)
class ModelDeployment:
    """One model: a Ray Serve deployment whose replicas each run one Engine."""

    name: str  # what requests name in "model"; also the Serve deployment's name
    model: str | None = None  # folder or library name, resolved on each replica's machine; None: the starter
    engine: dict[str, Any] = field(default_factory=dict)  # EngineConfig fields other than model
    min_replicas: int = 1
    max_replicas: int = 1  # above min_replicas: Serve autoscales between them
    target_ongoing_requests: float = 16.0  # per replica, what autoscaling aims for
    max_ongoing_requests: int = 64  # a replica's room: past it, requests go to another replica or wait
    cpus_per_replica: float = 1.0

    @property
    def device(self) -> str:
        return self.engine.get("device", "auto")

    @property
    def gpus_per_replica(self) -> int:
        """A replica holds all the GPUs its tensor-parallel split needs (on one machine); none on the CPU."""
        return 0 if self.device == "cpu" else int(self.engine.get("tensor_parallel", 1))

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.min_replicas

    def on_cluster(self, has_gpus: bool) -> ModelDeployment:
        """The deployment with device "auto" settled for this cluster: GPUs where it has any."""
        if self.device != "auto":
            return self
        return dataclasses.replace(self, engine={**self.engine, "device": "cuda" if has_gpus else "cpu"})

    def engine_config(self, model_dir: Path) -> EngineConfig:
        return EngineConfig(model=model_dir, **self.engine)


@dataclass(frozen=True)
class ClusterConfig:
    models: tuple[ModelDeployment, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # required when host is beyond this machine (as for `lmstation serve`)
    cors_origins: tuple[str, ...] = ()
    max_requests: int = 256  # in flight per ingress replica; more are answered 429
    ingress_replicas: int = 1
    proxy_location: str = "HeadOnly"  # HeadOnly: clients call the head node; EveryNode: any node
    app_name: str = DEFAULT_APP

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def server_config(self) -> ServerConfig:
        """The HTTP app's settings (app/server checks them: an API key beyond this machine...)."""
        return ServerConfig(host=self.host, port=self.port, api_key=self.api_key, max_requests=self.max_requests,
                            cors_origins=self.cors_origins)


_DEPLOYMENT_KEYS = {"name", "model", "replicas", "min_replicas", "max_replicas", "target_ongoing_requests",
                    "max_ongoing_requests", "cpus_per_replica"}
_TOP_KEYS = {"models", "host", "port", "api_key", "cors_origins", "max_requests", "ingress_replicas",
             "proxy_location", "app_name"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # usable as a Serve deployment name and a model id


def load_config(path: str | Path) -> ClusterConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ClusterConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(raw)


def parse_config(raw: Any) -> ClusterConfig:
    if not isinstance(raw, dict):
        raise ClusterConfigError("the cluster file must be a mapping with a 'models' list")
    _no_unknown(raw, _TOP_KEYS, "the cluster file")
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise ClusterConfigError("'models' must list at least one model")
    parsed = tuple(_model(entry, i) for i, entry in enumerate(models))
    names = [m.name for m in parsed]
    if len(set(names)) != len(names):
        raise ClusterConfigError(f"model names must differ: {', '.join(names)}")
    top = {key: raw[key] for key in _TOP_KEYS - {"models"} if key in raw}
    if "cors_origins" in top:
        top["cors_origins"] = tuple(top["cors_origins"])
    config = ClusterConfig(models=parsed, **top)
    _numbers(config, {"port": int, "max_requests": int, "ingress_replicas": int}, "the cluster file")
    if config.proxy_location not in PROXY_LOCATIONS:
        raise ClusterConfigError(f"proxy_location must be one of {', '.join(PROXY_LOCATIONS)}")
    if config.ingress_replicas < 1:
        raise ClusterConfigError("ingress_replicas must be at least 1")
    if config.app_name in names:
        raise ClusterConfigError(f"a model may not be named like the application ({config.app_name!r})")
    if not config.api_key and not config.server_config().is_local():
        raise ClusterConfigError(f"host {config.host} makes the endpoint reachable from other machines: "
                                 "set an API key first (api_key in the cluster file)")
    try:
        config.server_config().validate()
    except ServerConfigError as exc:
        raise ClusterConfigError(str(exc)) from exc
    return config


def _model(entry: Any, index: int) -> ModelDeployment:
    where = f"models[{index}]"
    if not isinstance(entry, dict):
        raise ClusterConfigError(f"{where} must be a mapping (model: ..., replicas: ...)")
    # gpus: Ray picks a replica's GPUs (and makes only those visible to it)
    engine_keys = {f.name for f in dataclasses.fields(EngineConfig)} - {"model", "gpus"}
    _no_unknown(entry, _DEPLOYMENT_KEYS | engine_keys, where)
    model = entry.get("model")
    name = str(entry.get("name") or (Path(str(model)).name if model else STARTER_NAME))
    if not _NAME.match(name):
        raise ClusterConfigError(f"{where}: the name {name!r} may hold only letters, digits, '.', '_' and '-'")
    replicas = entry.get("replicas")
    low = entry.get("min_replicas", replicas if replicas is not None else 1)
    high = entry.get("max_replicas", replicas if replicas is not None else low)
    if replicas is not None and ("min_replicas" in entry or "max_replicas" in entry):
        raise ClusterConfigError(f"{where}: give either replicas or min_replicas/max_replicas")
    engine = {key: entry[key] for key in engine_keys if key in entry}
    deployment = ModelDeployment(name=name, model=None if model is None else str(model), engine=engine,
                                 min_replicas=low, max_replicas=high,
                                 **{k: entry[k] for k in ("target_ongoing_requests", "max_ongoing_requests",
                                                          "cpus_per_replica") if k in entry})
    _numbers(deployment, {"min_replicas": int, "max_replicas": int, "max_ongoing_requests": int,
                          "target_ongoing_requests": float, "cpus_per_replica": float}, where)
    if not 0 <= deployment.min_replicas <= deployment.max_replicas or deployment.max_replicas < 1:
        raise ClusterConfigError(f"{where}: replicas must satisfy 0 <= min_replicas <= max_replicas, max >= 1")
    if deployment.max_ongoing_requests < 1 or deployment.target_ongoing_requests <= 0:
        raise ClusterConfigError(f"{where}: max_ongoing_requests and target_ongoing_requests must be positive")
    if deployment.cpus_per_replica < 0:
        raise ClusterConfigError(f"{where}: cpus_per_replica must not be negative")
    try:  # the engine's own checks (dtype names, tensor-parallel sizes...), here rather than on a replica
        deployment.engine_config(Path("."))
    except (TypeError, ValueError) as exc:
        raise ClusterConfigError(f"{where}: {exc}") from exc
    return deployment


def _numbers(settings: object, kinds: dict[str, type], where: str) -> None:
    """Refuses a setting of the wrong type (`replicas: two`); a float setting takes whole numbers too."""
    for name, kind in kinds.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise ClusterConfigError(f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, "
                                     f"not {value!r}")


def _no_unknown(entry: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ClusterConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(known))})")

