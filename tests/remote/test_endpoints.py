"""Saved endpoints: addresses in a JSON file, keys where the hub tokens go (a file only the user can
read, when there is no keyring), renames keeping the key, removal forgetting it."""

from __future__ import annotations

import json
import stat

import pytest

from app.downloader import TokenStore
from app.remote import Endpoint, EndpointStore, check_url


def test_endpoints_are_kept_and_their_keys_stored_like_hub_tokens(tmp_path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json", use_keyring=False)
    tokens.set("hf", "hf_abc")  # a hub token already there stays
    store = EndpointStore(tmp_path / "endpoints.json", tokens)
    lab = Endpoint("a1", "Lab server", "http://10.0.0.5:23333/v1", "sk-lab", ("SmolLM2-135M-Instruct",))
    provider = Endpoint("b2", "Provider", "https://api.example.com/v1/")
    store.put(lab)
    store.put(provider)
    again = EndpointStore(tmp_path / "endpoints.json", TokenStore(tmp_path / "tokens.json", use_keyring=False))
    assert again.load() == [lab, provider]
    assert "sk-lab" not in (tmp_path / "endpoints.json").read_text()
    assert json.loads((tmp_path / "tokens.json").read_text()) == {"hf": "hf_abc", "endpoint:a1": "sk-lab"}
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600

    store.put(Endpoint("a1", "Lab (renamed)", lab.url, lab.key, lab.models))  # in place, key kept
    store.set_models("a1", ("SmolLM2-135M-Instruct", "Qwen3-0.6B"))
    assert [(e.name, e.key, e.models) for e in again.load()] == [
        ("Lab (renamed)", "sk-lab", ("SmolLM2-135M-Instruct", "Qwen3-0.6B")), ("Provider", "", ())]
    store.remove("a1")
    assert again.load() == [provider]
    assert json.loads((tmp_path / "tokens.json").read_text()) == {"hf": "hf_abc"}


def test_addresses_are_checked_and_a_bare_server_gets_v1() -> None:
    assert Endpoint("x", "x", "http://127.0.0.1:23333").api_base == "http://127.0.0.1:23333/v1"
    assert Endpoint("x", "x", "https://api.example.com/openai/v1/").api_base == "https://api.example.com/openai/v1"
    assert check_url("  http://box:8000/v1 ") == "http://box:8000/v1"
    for bad in ("127.0.0.1:23333", "ftp://box/v1", "http://", ""):
        with pytest.raises(ValueError, match="is not a web address"):
            check_url(bad)
