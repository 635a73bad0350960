"""The endpoints the user saved: names, addresses and the models each served when last asked, in a
JSON file; each API key where the hub tokens are (TokenStore: the OS keyring, else a file only the
user can read), so no key ever sits beside the addresses in plain sight."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from app.downloader.tokens import TokenStore
from app.paths import data_dir


@dataclass(frozen=True)
class Endpoint:
    id: str  # stable across renames: the key is stored under it
    name: str
    url: str  # as the user typed it; api_base is what requests go to
    key: str = field(default="", repr=False)  # repr=False: a logged or printed endpoint never shows it
    models: tuple[str, ...] = ()  # what it served when last listed, so a sleeping server's models stay pickable

    @property
    def api_base(self) -> str:
        """The address /models and /chat/completions hang off. As typed, like OpenAI clients'
        base_url, except that a bare server address (http://host:port) gets the usual /v1."""
        url = self.url.strip().rstrip("/")
        return url if urlsplit(url).path else f"{url}/v1"


def check_url(url: str) -> str:
    """The address, trimmed, or a ValueError that says what is wrong with it."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"“{url}” is not a web address: it should look like http://127.0.0.1:23333/v1 "
                         "or https://api.example.com/v1")
    return url


def new_endpoint_id() -> str:
    return uuid.uuid4().hex[:12]


def _key_name(endpoint_id: str) -> str:
    return f"endpoint:{endpoint_id}"


class EndpointStore:
    def __init__(self, file: Path | None = None, tokens: TokenStore | None = None):
        self.file = file or data_dir() / "endpoints.json"
        self.tokens = tokens or TokenStore()

    def load(self) -> list[Endpoint]:
        return [Endpoint(e["id"], e["name"], e["url"], self.tokens.get(_key_name(e["id"])) or "", tuple(e["models"]))
                for e in self._read()]

    def put(self, endpoint: Endpoint) -> None:
        """Adds the endpoint, or replaces the one with its id (in place: the list keeps its order)."""
        entry = {"id": endpoint.id, "name": endpoint.name, "url": endpoint.url, "models": list(endpoint.models)}
        entries = self._read()
        at = next((i for i, e in enumerate(entries) if e["id"] == endpoint.id), len(entries))
        entries[at:at + 1] = [entry]
        if endpoint.key:
            self.tokens.set(_key_name(endpoint.id), endpoint.key)
        else:
            self.tokens.delete(_key_name(endpoint.id))
        self._write(entries)

    def set_models(self, endpoint_id: str, models: tuple[str, ...]) -> None:
        """What the endpoint served when last listed (its key is left alone)."""
        self._write([{**e, "models": list(models)} if e["id"] == endpoint_id else e for e in self._read()])

    def remove(self, endpoint_id: str) -> None:
        self.tokens.delete(_key_name(endpoint_id))
        self._write([e for e in self._read() if e["id"] != endpoint_id])

    def _read(self) -> list[dict]:
        try:
            entries = json.loads(self.file.read_text(encoding="utf-8"))["endpoints"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [{**e, "models": e.get("models", [])} for e in entries
                if isinstance(e, dict) and {"id", "name", "url"} <= set(e)]

    def _write(self, entries: list[dict]) -> None:
        """Whole or not at all: a crash mid-write leaves the previous file."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.file.with_name(self.file.name + ".part")
        partial.write_text(json.dumps({"endpoints": entries}, indent=1), encoding="utf-8")
        os.replace(partial, self.file)
