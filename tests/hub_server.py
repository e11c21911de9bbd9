"""A loopback Hugging Face Hub for tests: the part of the Hub HTTP API that ``huggingface_hub`` 2.x uses to create a
repository, commit files and serve them back, in memory, on 127.0.0.1 only.

What it speaks (paths as ``huggingface_hub`` builds them, ``{repo}`` is ``namespace/name``):

- ``GET /api/whoami-v2``; ``POST /api/repos/create``; ``POST /api/validate-yaml`` (parses the card's front matter
  with ``yaml.safe_load``, as the Hub does, and rejects a block that is not a mapping);
- ``POST /api/models/{repo}/preupload/{rev}`` answers ``uploadMode: "regular"`` for every file, so file bytes travel
  inline (base64) in the commit: no LFS batch call and no Xet upload is ever made. ``lfsFile`` lines in a commit are
  refused, and any request the server does not know is answered 404 and recorded in ``unhandled``;
- ``POST /api/models/{repo}/commit/{rev}`` (ndjson: header, file, deletedFile, deletedFolder) and
  ``POST /api/models/{repo}/branch/{name}``;
- ``GET /api/models/{repo}[/revision/{rev}]`` (sha, siblings), ``GET /api/models/{repo}/tree/{rev}[/{path}]``;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (the git blob id) and
  ``Content-Length``, and the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``)
  on 404s. No ``X-Xet-Hash`` header is sent, so downloads are plain HTTP.

Writes need ``Authorization: Bearer <token>`` with the server's token; reads are public. Every request is recorded
(method, path, whether the token was sent) so tests can check what reached the server.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "loopback-user"
INITIAL_FILES = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"


def git_blob_id(content: bytes) -> str:
    """The git object id of a file (what the Hub calls a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a full commit id."""
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubError(Exception):
    """An HTTP error with the Hub's error code header."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class LoopbackHub:
    """An in-memory Hub on ``127.0.0.1`` and a random free port; use as a context manager.

    Attributes:
        endpoint: the URL to put in ``HF_ENDPOINT``.
        repos: repo id -> `Repo` (every commit keeps a full snapshot of the files).
        requests: (method, path, authorized) of every request received.
        unhandled: (method, path) of requests the server does not speak (a test should expect none).
        errors: requests that made a route fail (a test should expect none).
    """

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="loopback-hub", daemon=True
        )

    def __enter__(self) -> "LoopbackHub":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # -- views for tests --------------------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of a repository at a revision."""
        commit = self.repos[repo_id].resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return dict(commit.files)

    def commit_count(self) -> int:
        """Commits received over all repositories (initial commits of new repositories not counted)."""
        return sum(len(repo.commits) - 1 for repo in self.repos.values())

    # -- state changes (called with the lock held) --------------------------------------------------------------------
    def create_repo(self, payload: dict) -> dict:
        namespace = payload.get("organization") or USER
        repo_id = f"{namespace}/{payload['name']}"
        if repo_id in self.repos:
            raise HubError(409, f"You already created this model repo: {repo_id}")
        repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._add_commit(repo, None, "initial commit", dict(INITIAL_FILES))
        repo.branches["main"] = next(iter(repo.commits))
        self.repos[repo_id] = repo
        return {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}

    def _add_commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, bytes]) -> Commit:
        digest = hashlib.sha1(json.dumps([repo.repo_id, parent, message, len(repo.commits)]).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_id(files[path]).encode())
        commit = Commit(digest.hexdigest(), parent, message, files)
        repo.commits[commit.oid] = commit
        return commit

    def commit(self, repo: Repo, revision: str, lines: list[dict]) -> dict:
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        header = lines[0]["value"] if lines and lines[0].get("key") == "header" else {}
        parent = header.get("parentCommit")
        if parent and not head.oid.startswith(parent):
            raise HubError(412, f"parentCommit {parent} is not the head of {revision}")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: data for path, data in files.items() if not path.startswith(prefix)}
            else:
                raise HubError(400, f"commit line {key!r} is not accepted: this server takes regular uploads only")
        commit = self._add_commit(repo, head.oid, header.get("summary", ""), files)
        repo.branches[revision] = commit.oid
        return {"commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{commit.oid}", "commitOid": commit.oid}


def _handler_class(hub: LoopbackHub) -> type:
    routes = [
        ("GET", r"/api/whoami-v2", _whoami),
        ("GET", r"/api/agent-harnesses", _agent_harnesses),
        ("POST", r"/api/repos/create", _create_repo),
        ("POST", r"/api/validate-yaml", _validate_yaml),
        ("POST", rf"/api/models/{REPO}/preupload/{REV}", _preupload),
        ("POST", rf"/api/models/{REPO}/commit/{REV}", _commit),
        ("POST", rf"/api/models/{REPO}/branch/{REV}", _create_branch),
        ("GET", rf"/api/models/{REPO}(?:/revision/{REV})?", _repo_info),
        ("GET", rf"/api/models/{REPO}/tree/{REV}(?:/(?P<path>.+))?", _tree),
        ("GET", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", _resolve),
        ("HEAD", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", _resolve),
    ]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002  (quiet: tests read hub.requests instead)
            pass

        def do_GET(self):
            self._dispatch()

        def do_HEAD(self):
            self._dispatch()

        def do_POST(self):
            self._dispatch()

        def _dispatch(self):
            url = urlsplit(self.path)
            authorized = self.headers.get("Authorization") == f"Bearer {hub.token}"
            body = self._read_body()
            with hub.lock:
                hub.requests.append((self.command, url.path, authorized))
                for method, pattern, handler in routes:
                    match = re.fullmatch(pattern, url.path)
                    if method == self.command and match:
                        params = {key: unquote(value) for key, value in match.groupdict().items() if value}
                        try:
                            self._send(*handler(hub, self, params, parse_qs(url.query), body, authorized))
                        except HubError as error:
                            self._send_error(error)
                        except Exception as error:  # a request this server misread: a 500 the test can see
                            hub.errors.append(f"{self.command} {url.path}: {error!r}")
                            self._send_error(HubError(500, f"loopback hub failed: {error!r}"))
                        return
                hub.unhandled.append((self.command, url.path))
            self._send_error(HubError(404, f"loopback hub does not serve {self.command} {url.path}"))

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload, headers: dict | None = None):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            content_type = "application/octet-stream" if isinstance(payload, bytes) else "application/json"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _send_error(self, error: HubError):
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            self._send(error.status, {"error": error.message}, headers)

    return Handler


# -- route handlers: (hub, request, path params, query, body, authorized) -> (status, payload[, headers]) ----------


def _require_token(authorized: bool) -> None:
    if not authorized:
        raise HubError(401, "Invalid credentials in Authorization header")


def _find_repo(hub: LoopbackHub, params: dict, authorized: bool) -> Repo:
    repo = hub.repos.get(params["repo"])
    if repo is None or (repo.private and not authorized):
        raise HubError(404, "Repository not found", "RepoNotFound")
    return repo


def _find_commit(repo: Repo, revision: str) -> Commit:
    commit = repo.resolve(revision)
    if commit is None:
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    return commit


def _whoami(hub, request, params, query, body, authorized):
    _require_token(authorized)
    return 200, {
        "type": "user",
        "name": USER,
        "fullname": "Loopback User",
        "orgs": [],
        "auth": {"type": "access_token"},
    }


def _agent_harnesses(hub, request, params, query, body, authorized):
    return 200, {"standardEnvVars": [], "harnesses": {}}


def _create_repo(hub, request, params, query, body, authorized):
    _require_token(authorized)
    return 200, hub.create_repo(json.loads(body))


def _validate_yaml(hub, request, params, query, body, authorized):
    content = json.loads(body).get("content", "")
    match = YAML_BLOCK.search(content)
    if match is None:
        return 200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as error:
        return 400, {"errors": [{"message": f"invalid yaml: {error}"}]}
    if not isinstance(data, dict):
        return 400, {"errors": [{"message": "metadata must be a mapping"}]}
    return 200, {"warnings": []}


def _preupload(hub, request, params, query, body, authorized):
    _require_token(authorized)
    repo = _find_repo(hub, params, authorized)
    head = _find_commit(repo, params["rev"])
    files = [
        {
            "path": item["path"],
            "uploadMode": "regular",
            "shouldIgnore": False,
            "oid": git_blob_id(head.files[item["path"]]) if item["path"] in head.files else None,
        }
        for item in json.loads(body)["files"]
    ]
    return 200, {"files": files, "commitOid": head.oid}


def _commit(hub, request, params, query, body, authorized):
    _require_token(authorized)
    repo = _find_repo(hub, params, authorized)
    if "create_pr" in query:
        raise HubError(400, "pull requests are not served by the loopback hub")
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    return 200, hub.commit(repo, params["rev"], lines)


def _create_branch(hub, request, params, query, body, authorized):
    _require_token(authorized)
    repo = _find_repo(hub, params, authorized)
    if params["rev"] in repo.branches:
        raise HubError(409, f"Reference refs/heads/{params['rev']} already exists")
    start = (json.loads(body) if body else {}).get("startingPoint") or "main"
    repo.branches[params["rev"]] = _find_commit(repo, start).oid
    return 200, {}


def _repo_info(hub, request, params, query, body, authorized):
    repo = _find_repo(hub, params, authorized)
    commit = _find_commit(repo, params.get("rev", "main"))
    siblings = [{"rfilename": path} for path in sorted(commit.files)]
    return 200, {"id": repo.repo_id, "sha": commit.oid, "private": repo.private, "siblings": siblings}


def _tree(hub, request, params, query, body, authorized):
    repo = _find_repo(hub, params, authorized)
    commit = _find_commit(repo, params["rev"])
    prefix = params.get("path", "").strip("/")
    recursive = query.get("recursive", ["False"])[0].lower() == "true"
    entries, folders = [], set()
    for path in sorted(commit.files):
        if prefix and not path.startswith(prefix + "/"):
            continue
        rest = Path(path[len(prefix) + 1 :] if prefix else path)
        if len(rest.parts) > 1:
            folder = f"{prefix}/{rest.parts[0]}" if prefix else rest.parts[0]
            folders.add(folder)
            if not recursive:
                continue
        data = commit.files[path]
        entries.append({"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)})
    entries += [{"type": "directory", "path": folder, "oid": "0" * 40, "size": 0} for folder in sorted(folders)]
    return 200, entries


def _resolve(hub, request, params, query, body, authorized):
    repo = _find_repo(hub, params, authorized)
    commit = _find_commit(repo, params["rev"])
    data = commit.files.get(params["path"])
    if data is None:
        raise HubError(404, f"Entry not found: {params['path']}", "EntryNotFound", commit=commit.oid)
    return 200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_id(data)}"'}


def use_loopback_hub(monkeypatch, hub: LoopbackHub, hf_home: Path) -> dict[str, str]:
    """Points ``huggingface_hub`` and ``transformers`` in this process at ``hub`` (undone by ``monkeypatch``).

    ``huggingface_hub.constants`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache folders once, at import, and
    derives more values from them (the resolve-URL template, the hosts it trusts, the module-level ``HfApi``);
    transformers keeps its own ``HfApi`` instance. Setting the environment is therefore not enough in a process
    that has imported them already: the derived values are patched too. Returns the environment a subprocess needs.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http
    from transformers.utils import hub as transformers_hub

    env = {
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
    old_home = constants.HF_HOME
    for name, value in vars(constants).copy().items():  # HF_HOME, the caches, the token file, ...
        if name.isupper() and isinstance(value, str) and value.startswith(old_home):
            monkeypatch.setattr(constants, name, str(hf_home) + value[len(old_home) :])
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(hub.endpoint)})
    monkeypatch.setattr(transformers_hub, "_hf_api", None)
    _http.close_session()  # a fresh client: no connection kept to an earlier server
    return env
