"""A local hub on 127.0.0.1 that answers the way the Hugging Face Hub and ModelScope file endpoints do,
so the real clients can be pointed at it. It logs every request and can misbehave on purpose."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".pth")


@dataclass
class Fault:
    """How the next ``times`` content requests for one file go wrong.
    drop: close the connection after ``after`` body bytes; corrupt: same size, one byte flipped;
    stall: send the headers, then nothing for ``seconds``; status: answer ``status`` with no body
    (also for the model info API, keyed "/api/models/org/name")."""

    kind: str
    after: int = 0
    status: int = 500
    seconds: float = 5.0
    times: int = 1


@dataclass
class Logged:
    method: str
    path: str  # the file path inside the repository, or the raw URL path for API calls
    range: str | None
    authorization: str | None
    status: int


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None  # gated: file requests need "Bearer <token>"; the listing stays public
    private: bool = False  # the listing needs the token too, and says "not found" without it
    commit: str = ""

    def __post_init__(self) -> None:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha256(self.files[name]).digest())
        self.commit = digest.hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # ends stalls at shutdown
    rate_bps: float | None = None  # file bodies trickle at this many bytes per second (None: at once)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def cdn(self) -> str:
        """Another host name for the same server, like the hub's storage: auth headers must not follow."""
        return f"http://localhost:{self.server.server_address[1]}"

    def add(self, name: str, files: dict[str, bytes], **options) -> Repo:
        self.repos[name] = Repo(dict(files), **options)
        return self.repos[name]

    def requests_for(self, path: str) -> list[Logged]:
        return [r for r in self.log if r.path == path]

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def take_fault(self, path: str) -> Fault | None:
        fault = self.faults.get(path)
        if fault is None or fault.times <= 0:
            return None
        fault.times -= 1
        return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing --------------------------------------------------------------------------------

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if path == "/api/models":
            return self._hf_search(query)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
            return self._hf_info(m[1], m[2] or "main")
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._hf_resolve(m[1], m[2], m[3], head)
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            return self._cdn(m[1], head)
        if m := re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)/repo/files", path):
            return self._ms_files(m[1], query)
        if m := re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)/repo", path):
            return self._ms_file(m[1], query, head)
        if path == "/openapi/v1/models":
            return self._ms_search(query)
        self._reply(404, path, b"no such endpoint")

    # -- Hugging Face ------------------------------------------------------------------------------

    def _hf_info(self, name: str, revision: str) -> None:
        if fault := self.hub.take_fault(f"/api/models/{name}"):
            return self._reply(fault.status, f"/api/models/{name}", b"busy")
        repo = self._repo_or_error(name, listing=True)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            return self._reply(404, self.path, b"Invalid rev id", {"X-Error-Code": "RevisionNotFound"})
        siblings = []
        for rel, data in sorted(repo.files.items()):
            entry = {"rfilename": rel, "size": len(data), "blobId": git_sha1(data)}
            if is_lfs(rel):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(entry)
        info = {"_id": name, "id": name, "modelId": name, "sha": repo.commit, "private": repo.private,
                "gated": "manual" if repo.token else False, "siblings": siblings, "tags": [], "downloads": 0}
        self._json(info)

    def _hf_search(self, query: dict[str, list[str]]) -> None:
        text = query.get("search", [""])[0].lower()
        task = query.get("pipeline_tag", [None])[0]
        library = query.get("filter", [None])[0]
        found = [
            {"_id": name, "id": name, "pipeline_tag": "text-generation", "library_name": "transformers",
             "downloads": 100 * len(name), "likes": 1, "tags": ["transformers", "text-generation"]}
            for name in sorted(self.hub.repos) if text in name.lower()
            and task in (None, "text-generation") and library in (None, "transformers")
        ]
        self._json(found[: int(query.get("limit", ["1000"])[0])])

    def _hf_resolve(self, name: str, revision: str, rel: str, head: bool) -> None:
        repo = self._repo_or_error(name, listing=False)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            return self._reply(404, rel, b"Invalid rev id", {"X-Error-Code": "RevisionNotFound"})
        if rel not in repo.files:
            return self._reply(404, rel, b"Entry not found", {"X-Error-Code": "EntryNotFound"})
        data = repo.files[rel]
        headers = {"X-Repo-Commit": repo.commit}
        if is_lfs(rel):
            sha = hashlib.sha256(data).hexdigest()
            headers |= {"X-Linked-Size": str(len(data)), "X-Linked-Etag": f'"{sha}"', "ETag": f'"{git_sha1(data)}"',
                        "Location": f"{self.hub.cdn}/cdn/{sha}"}
            return self._reply(302, rel, b"", headers)
        self._content(rel, data, {**headers, "ETag": f'"{git_sha1(data)}"'}, head)

    def _cdn(self, sha: str, head: bool) -> None:
        for repo in self.hub.repos.values():
            for rel, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha:
                    if self.headers.get("Authorization"):  # like S3: a signed URL plus a token is refused
                        return self._reply(400, rel, b"Only one auth mechanism allowed")
                    return self._content(rel, data, {"ETag": f'"{sha}"'}, head)
        self._reply(404, self.path, b"no such blob")

    # -- ModelScope --------------------------------------------------------------------------------

    def _ms_files(self, name: str, query: dict[str, list[str]]) -> None:
        repo = self._repo_or_error(name, listing=True, modelscope=True)
        if repo is None:
            return
        files = [{"Name": rel.rsplit("/", 1)[-1], "Path": rel, "Size": len(data), "Type": "blob",
                  "Sha256": hashlib.sha256(data).hexdigest(), "Revision": repo.commit}
                 for rel, data in sorted(repo.files.items())]
        self._json({"Code": 200, "Data": {"Files": files}, "Message": "success", "Success": True})

    def _ms_file(self, name: str, query: dict[str, list[str]], head: bool) -> None:
        repo = self._repo_or_error(name, listing=False, modelscope=True)
        if repo is None:
            return
        rel = query.get("FilePath", [""])[0]
        if rel not in repo.files:
            return self._reply(404, rel, b"file not found")
        self._content(rel, repo.files[rel], {}, head)

    def _ms_search(self, query: dict[str, list[str]]) -> None:
        text = query.get("search", [""])[0].lower()
        models = [{"id": name, "owner": name.split("/")[0], "name": name.split("/")[1], "downloads": 7,
                   "likes": 1, "tasks": ["text-generation"], "tags": []}
                  for name in sorted(self.hub.repos) if text in name.lower()]
        self._json({"success": True, "data": {"models": models, "total_count": len(models), "page_number": 1,
                                              "page_size": 10}})

    # -- helpers -----------------------------------------------------------------------------------

    def _repo_or_error(self, name: str, listing: bool, modelscope: bool = False) -> Repo | None:
        repo = self.hub.repos.get(name)
        authorized = repo is not None and (repo.token is None or
                                           self.headers.get("Authorization") == f"Bearer {repo.token}")
        if repo is None or (repo.private and not authorized):
            body = b'{"error": "Repository not found"}'
            self._reply(404 if modelscope else 401, self.path, body, {"X-Error-Code": "RepoNotFound"})
            return None
        if not authorized and not (listing and not repo.private):
            status = 403 if self.headers.get("Authorization") else 401
            message = f"Access to model {name} is restricted and you are not in the authorized list."
            self._reply(status, self.path, message.encode(), {"X-Error-Code": "GatedRepo",
                                                                "X-Error-Message": message})
            return None
        return repo

    def _content(self, rel: str, data: bytes, headers: dict[str, str], head: bool) -> None:
        """The file with Range support, after any fault planned for it."""
        fault = None if head else self.hub.take_fault(rel)
        if fault and fault.kind == "status":
            return self._reply(fault.status, rel, b"")
        if fault and fault.kind == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, status = 0, 200
        if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start, status = int(m[1]), 206
            if start >= len(data):
                return self._reply(416, rel, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        self._log(rel, status)
        self.send_response(status)
        for key, value in {**headers, "Accept-Ranges": "bytes", "Content-Length": str(len(body)),
                           "Content-Type": "application/octet-stream"}.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        if fault and fault.kind == "stall":
            self.hub.release.wait(fault.seconds)
            self.close_connection = True
            return
        if fault and fault.kind == "drop":
            self.wfile.write(body[: fault.after])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send_body(body)

    def _send_body(self, body: bytes) -> None:
        """At the hub's rate, in small pieces, so a client sees a transfer in progress (and can pause it)."""
        if not self.hub.rate_bps:
            self.wfile.write(body)
            return
        piece = 16 * 1024
        for start in range(0, len(body), piece):
            if self.hub.release.wait(piece / self.hub.rate_bps):
                return  # the hub is shutting down
            self.wfile.write(body[start:start + piece])

    def _json(self, value) -> None:
        self._reply(200, urlsplit(self.path).path, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _reply(self, status: int, logged_path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._log(logged_path, status)
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _log(self, path: str, status: int) -> None:
        self.hub.log.append(Logged(self.command, path, self.headers.get("Range"),
                                   self.headers.get("Authorization"), status))
