"""Server settings, checked before anything binds a port."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


class ServerConfigError(ValueError):
    """Settings the server refuses to start with."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 23333
    api_key: str | None = None  # required when bound beyond this machine
    max_body_bytes: int = 32 * 1024 * 1024  # a request's JSON, pictures (data URLs) included
    max_requests: int = 256  # in flight at once (queued or running); more are answered 429
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call it; none by default

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ServerConfigError(f"port must be between 0 and 65535, not {self.port}")
        if not self.is_local() and not self.api_key:
            raise ServerConfigError(f"binding to {self.host} makes the server reachable from other machines: "
                                    "set an API key first (--api-key, or in the Server page)")
        if self.max_body_bytes < 1024 or self.max_requests < 1:
            raise ServerConfigError("max_body_bytes must be at least 1024 and max_requests at least 1")

    def is_local(self) -> bool:
        """Whether only this machine can connect (a loopback address or localhost)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name other than localhost: may resolve to anything
            return False
