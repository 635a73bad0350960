"""The cluster file: what it turns into, and the mistakes it is refused for before anything deploys."""

from __future__ import annotations

import pytest

from app.cluster.config import ClusterConfigError, load_config, parse_config
from app.cluster.request import conversation_key

EXAMPLE = """
host: 0.0.0.0
port: 8100
api_key: secret
models:
  - model: /models/Llama-3.1-8B-Instruct
    tensor_parallel: 2
    min_replicas: 1
    max_replicas: 4
    target_ongoing_requests: 24
  - name: small
    model: SmolLM2-135M-Instruct
    replicas: 2
    device: cpu
    cpus_per_replica: 4
    max_num_seqs: 32
"""


def test_a_cluster_file_becomes_deployments(tmp_path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert (config.host, config.port, config.base_url) == ("0.0.0.0", 8100, "http://0.0.0.0:8100/v1")
    big, small = config.models
    assert big.name == "Llama-3.1-8B-Instruct" and big.autoscaling
    assert (big.min_replicas, big.max_replicas, big.target_ongoing_requests) == (1, 4, 24)
    assert big.on_cluster(has_gpus=True).gpus_per_replica == 2  # one GPU per tensor-parallel rank
    assert big.on_cluster(has_gpus=False).engine["device"] == "cpu"
    assert small.name == "small" and not small.autoscaling and (small.min_replicas, small.max_replicas) == (2, 2)
    assert small.gpus_per_replica == 0 and small.cpus_per_replica == 4
    assert small.engine == {"device": "cpu", "max_num_seqs": 32}
    engine = small.engine_config(tmp_path)
    assert (engine.model, engine.device, engine.max_num_seqs) == (tmp_path, "cpu", 32)


def test_the_starter_model_is_the_default(starter_model) -> None:
    (model,) = parse_config({"models": [{"replicas": 1}]}).models
    assert model.model is None and model.name == starter_model.name


@pytest.mark.parametrize("raw, message", [
    ({"models": []}, "'models' must list at least one model"),
    ({"models": [{"model": "a", "replica": 2}]}, "unknown setting(s) replica"),
    ({"models": [{"model": "a"}], "hots": "x"}, "unknown setting(s) hots"),
    ({"models": [{"model": "a"}, {"model": "b/a"}]}, "model names must differ"),
    ({"models": [{"model": "a", "replicas": 2, "max_replicas": 3}]}, "either replicas or min_replicas"),
    ({"models": [{"model": "a", "min_replicas": 3, "max_replicas": 2}]}, "0 <= min_replicas <= max_replicas"),
    ({"models": [{"model": "a", "dtype": "float8"}]}, "models[0]: dtype must be one of"),
    ({"models": [{"model": "a", "tensor_parallel": 3}]}, "models[0]: tensor_parallel must be one of"),
    ({"models": [{"name": "my model", "model": "a"}]}, "may hold only letters"),
    ({"models": [{"model": "a"}], "host": "0.0.0.0"}, "set an API key first (api_key in the cluster file)"),
    ({"models": [{"model": "a"}], "port": 70000}, "port must be between 0 and 65535"),
    ({"models": [{"model": "a"}], "port": "8000"}, "port must be an integer, not '8000'"),
    ({"models": [{"model": "a", "replicas": "two"}]}, "models[0]: min_replicas must be an integer, not 'two'"),
    ({"models": [{"model": "a", "gpus": [0, 1]}]}, "unknown setting(s) gpus"),
    ({"models": [{"model": "a"}], "proxy_location": "Everywhere"}, "proxy_location must be one of"),
])
def test_mistakes_are_refused_with_what_is_wrong(raw, message) -> None:
    with pytest.raises(ClusterConfigError) as refused:
        parse_config(raw)
    assert message in str(refused.value)


def test_unreadable_files_are_refused(tmp_path) -> None:
    with pytest.raises(ClusterConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("models: [model: a\n")
    with pytest.raises(ClusterConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_every_turn_of_a_conversation_has_its_key() -> None:
    opening = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I am Ann."}]
    later = [*opening, {"role": "assistant", "content": "Hello Ann."}, {"role": "user", "content": "Bye."}]
    other = [opening[0], {"role": "user", "content": "Hi, I am Bob."}]
    assert conversation_key(None, opening) == conversation_key(None, later) != conversation_key(None, other)
    assert conversation_key("x" * 5000 + "a", None) == conversation_key("x" * 5000 + "b", None)
    assert conversation_key("Once upon", None) != conversation_key("The end", None)
