"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1 for the test suite.

It implements the part of the Hub API that ``huggingface_hub`` uses for ``create_repo``,
``upload_folder``/``create_commit``, ``model_info``, ``list_repo_tree``, ``hf_hub_download`` and
``snapshot_download`` (see ``ecosystem.md`` §3). Repos are stored under ``root``: each commit is a JSON
manifest ``{path: blob sha1}`` with a parent; blobs are content-addressed files; the branch ``main``
points at the newest commit. Revisions are ``main`` or a full commit sha.

Uploads are always answered ``"regular"`` at preupload, so files arrive base64-encoded in the commit
NDJSON (no LFS, no Xet). The ``README.md`` front matter is parsed with PyYAML at ``validate-yaml``
and for ``model_info`` (``cardData``, ``tags``, ``library_name``), so a malformed card fails the push.

Usage::

    server = HubServer(tmp_dir)
    server.start()          # server.endpoint == "http://127.0.0.1:<port>"
    ...
    server.stop()
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO = rf"(?P<repo>{_NAME}/{_NAME})"
_REV = r"(?P<rev>[^/]+)"
_SHA = re.compile(r"^[0-9a-f]{40}$")
_GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.zip filter=lfs diff=lfs merge=lfs -text\n"
)


class HubError(Exception):
    """An HTTP error answered with the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block of a model card (``---`` ... ``---``), ``{}`` if there is none.

    Raises:
        ValueError: when the block is not valid YAML or not a mapping.
    """
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("YAML metadata must be a mapping")
    return data


class RepoStore:
    """Repos on disk: ``<root>/<org>/<name>/{blobs/<sha1>, commits/<sha>.json, refs.json}``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._counter = 0

    def _dir(self, repo: str) -> Path:
        return self.root / repo

    def exists(self, repo: str) -> bool:
        return (self._dir(repo) / "refs.json").is_file()

    def create(self, repo: str, private: bool = False) -> bool:
        """Create ``repo`` with an initial commit holding ``.gitattributes``; False if it exists."""
        with self.lock:
            if self.exists(repo):
                return False
            d = self._dir(repo)
            (d / "blobs").mkdir(parents=True)
            (d / "commits").mkdir()
            (d / "meta.json").write_text(json.dumps({"private": private, "created": _now()}))
            (d / "refs.json").write_text(json.dumps({}))
            self.commit(repo, "main", "initial commit", [("file", ".gitattributes", _GITATTRIBUTES)])
            return True

    def _require(self, repo: str) -> Path:
        if not self.exists(repo):
            raise HubError(404, f"Repository Not Found for url: {repo}", "RepoNotFound")
        return self._dir(repo)

    def resolve(self, repo: str, rev: str) -> str:
        """Commit sha of ``rev`` (``main`` or a full commit sha)."""
        d = self._require(repo)
        rev = unquote(rev)
        refs = json.loads((d / "refs.json").read_text())
        if rev in refs:
            return refs[rev]
        if _SHA.match(rev) and (d / "commits" / f"{rev}.json").is_file():
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def manifest(self, repo: str, sha: str) -> dict[str, Any]:
        return json.loads((self._dir(repo) / "commits" / f"{sha}.json").read_text())

    def blob(self, repo: str, blob_sha: str) -> Path:
        return self._dir(repo) / "blobs" / blob_sha

    def info(self, repo: str) -> dict[str, Any]:
        return json.loads((self._require(repo) / "meta.json").read_text())

    def commit(
        self,
        repo: str,
        branch: str,
        message: str,
        operations: list[tuple[str, str, Any]],
        parent_commit: str | None = None,
    ) -> str:
        """Apply ``operations`` (``("file", path, bytes)``, ``("delete", path, None)``,
        ``("delete_folder", path, None)``, ``("copy", dest, (src, src_rev))``) on top of ``branch``."""
        with self.lock:
            d = self._require(repo)
            refs = json.loads((d / "refs.json").read_text())
            if branch not in refs and refs:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = refs.get(branch)
            if parent_commit is not None and parent_commit != parent:
                raise HubError(412, f"parentCommit {parent_commit} is not the head of {branch} ({parent})")
            files: dict[str, dict[str, Any]] = dict(self.manifest(repo, parent)["files"]) if parent else {}
            for kind, path, value in operations:
                if kind == "file":
                    blob_sha = _git_blob_sha(value)
                    blob_path = d / "blobs" / blob_sha
                    if not blob_path.exists():
                        tmp = blob_path.with_suffix(".tmp")
                        tmp.write_bytes(value)
                        tmp.replace(blob_path)
                    files[path] = {"oid": blob_sha, "size": len(value)}
                elif kind == "delete":
                    if path not in files:
                        raise HubError(404, f"deletedFile: {path} does not exist", "EntryNotFound")
                    del files[path]
                elif kind == "delete_folder":
                    prefix = path.rstrip("/") + "/"
                    for name in [p for p in files if p.startswith(prefix)]:
                        del files[name]
                elif kind == "copy":
                    src, src_rev = value
                    src_files = self.manifest(repo, self.resolve(repo, src_rev or branch))["files"]
                    if src not in src_files:
                        raise HubError(404, f"copyFile: {src} does not exist", "EntryNotFound")
                    files[path] = dict(src_files[src])
                else:
                    raise HubError(400, f"unsupported commit operation {kind!r}")
            self._counter += 1
            record = {
                "parent": parent,
                "message": message,
                "date": _now(),
                "files": dict(sorted(files.items())),
                "n": self._counter,
            }
            sha = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()
            (d / "commits" / f"{sha}.json").write_text(json.dumps(record))
            refs[branch] = sha
            tmp = d / "refs.json.tmp"
            tmp.write_text(json.dumps(refs))
            tmp.replace(d / "refs.json")
            return sha


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet; requests are kept in server.log
        pass

    # -- plumbing -------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.server.log.append((self.command, url.path))
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            for method, pattern, handler in self.server.routes:
                if method != self.command and not (method == "GET" and self.command == "HEAD"):
                    continue
                match = re.fullmatch(pattern, url.path)
                if match:
                    handler(self, query=query, **match.groupdict())
                    return
            raise HubError(404, f"no route for {self.command} {url.path}")
        except HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message}, headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- endpoints --------------------------------------------------------------------------------
    def create_repo(self, query: dict[str, str]) -> None:
        payload = json.loads(self._body() or b"{}")
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "this test server only stores model repos")
        name = payload.get("name", "")
        org = payload.get("organization") or "user"
        if not re.fullmatch(_NAME, name) or not re.fullmatch(_NAME, org):
            raise HubError(400, f"invalid repo name {org}/{name}")
        repo = f"{org}/{name}"
        created = self.server.store.create(repo, private=payload.get("visibility") == "private")
        url = f"{self.server.endpoint}/{repo}"
        if not created:
            self._json(409, {"error": "You already created this model repo", "url": url})
        else:
            self._json(200, {"url": url, "name": repo})

    def whoami(self, query: dict[str, str]) -> None:
        self._json(200, {"type": "user", "name": "user", "orgs": [], "auth": {"type": "access_token"}})

    def validate_yaml(self, query: dict[str, str]) -> None:
        content = json.loads(self._body() or b"{}").get("content", "")
        try:
            meta = front_matter(content)
        except (yaml.YAMLError, ValueError) as e:
            self._json(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
            return
        errors = []
        index = meta.get("model-index")
        if index is not None and not (
            isinstance(index, list) and all(isinstance(m, dict) and "name" in m for m in index)
        ):
            errors.append({"message": "model-index must be a list of {name, results}"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def preupload(self, query: dict[str, str], repo: str, rev: str) -> None:
        self.server.store.resolve(repo, rev)
        files = json.loads(self._body() or b"{}").get("files", [])
        self._json(
            200,
            {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
        )

    def commit(self, query: dict[str, str], repo: str, rev: str) -> None:
        if query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by this test server")
        message, parent_commit, operations = "", None, []
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                parent_commit = value.get("parentCommit")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"file {value['path']}: unsupported encoding {value.get('encoding')}")
                operations.append(("file", value["path"], base64.b64decode(value["content"])))
            elif key == "deletedFile":
                operations.append(("delete", value["path"], None))
            elif key == "deletedFolder":
                operations.append(("delete_folder", value["path"], None))
            elif key == "copyFile":
                operations.append(("copy", value["path"], (value["from"], value.get("srcRevision"))))
            elif key == "lfsFile":
                raise HubError(400, f"lfsFile {value.get('path')}: this server answers uploadMode 'regular'")
            else:
                raise HubError(400, f"unknown commit key {key!r}")
        sha = self.server.store.commit(repo, unquote(rev), message, operations, parent_commit)
        self._json(
            200,
            {
                "commitUrl": f"{self.server.endpoint}/{repo}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
                "success": True,
            },
        )

    def repo_info(self, query: dict[str, str], repo: str, rev: str | None = None) -> None:
        store = self.server.store
        sha = store.resolve(repo, rev or "main")
        record = store.manifest(repo, sha)
        meta: dict[str, Any] = {}
        if "README.md" in record["files"]:
            text = store.blob(repo, record["files"]["README.md"]["oid"]).read_text(errors="replace")
            try:
                meta = front_matter(text)
            except (yaml.YAMLError, ValueError):
                meta = {}
        config = None
        if "config.json" in record["files"]:
            try:
                config = json.loads(store.blob(repo, record["files"]["config.json"]["oid"]).read_text())
            except ValueError:
                config = None
        org = repo.split("/")[0]
        tags = list(meta.get("tags") or [])
        self._json(
            200,
            {
                "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "author": org,
                "sha": sha,
                "lastModified": record["date"],
                "createdAt": store.info(repo)["created"],
                "private": store.info(repo)["private"],
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": tags,
                "library_name": meta.get("library_name"),
                "pipeline_tag": meta.get("pipeline_tag"),
                "cardData": meta or None,
                "model-index": meta.get("model-index"),
                "config": config,
                "siblings": [
                    {"rfilename": path, "size": f["size"], "blobId": f["oid"]}
                    for path, f in record["files"].items()
                ],
            },
        )

    def tree(self, query: dict[str, str], repo: str, rev: str, path: str | None = None) -> None:
        store = self.server.store
        files = store.manifest(repo, store.resolve(repo, rev))["files"]
        prefix = (unquote(path).strip("/") + "/") if path else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        entries: dict[str, dict[str, Any]] = {}
        for p, f in files.items():
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :].split("/")
            for depth in range(1, len(rest)):  # folders on the way
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    oid = hashlib.sha1(folder.encode()).hexdigest()
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": oid, "size": 0})
            if recursive or len(rest) == 1:
                entries[p] = {"type": "file", "path": p, "size": f["size"], "oid": f["oid"]}
        self._json(200, [entries[k] for k in sorted(entries)])

    def paths_info(self, query: dict[str, str], repo: str, rev: str) -> None:
        store = self.server.store
        files = store.manifest(repo, store.resolve(repo, rev))["files"]
        body = self._body()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = [
            {"type": "file", "path": p, "size": files[p]["size"], "oid": files[p]["oid"]}
            for p in paths
            if p in files
        ]
        self._json(200, out)

    def resolve_file(self, query: dict[str, str], repo: str, rev: str, path: str) -> None:
        store = self.server.store
        sha = store.resolve(repo, rev)
        path = unquote(path)
        files = store.manifest(repo, sha)["files"]
        if path not in files:
            raise HubError(404, f"Entry not found: {path} at {rev}", "EntryNotFound")
        entry = files[path]
        data = store.blob(repo, entry["oid"]).read_bytes()
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry["oid"]}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        status = 200
        range_header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(len(data))
        self._send(status, data, headers)

    def not_found(self, query: dict[str, str]) -> None:
        raise HubError(404, "not served by the test server")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: RepoStore) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = store
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.log: list[tuple[str, str]] = []
        h = _Handler
        api = rf"/api/models/{_REPO}"
        self.routes = [
            ("POST", r"/api/repos/create", h.create_repo),
            ("GET", r"/api/whoami-v2", h.whoami),
            ("POST", r"/api/validate-yaml", h.validate_yaml),
            ("GET", r"/api/agent-harnesses", h.not_found),
            ("POST", rf"{api}/preupload/{_REV}", h.preupload),
            ("POST", rf"{api}/commit/{_REV}", h.commit),
            ("POST", rf"{api}/paths-info/{_REV}", h.paths_info),
            ("GET", rf"{api}/tree/{_REV}(?:/(?P<path>.+))?", h.tree),
            ("GET", rf"{api}/revision/{_REV}", h.repo_info),
            ("GET", api, h.repo_info),
            ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", h.resolve_file),
        ]


class HubServer:
    """The server in a daemon thread; ``endpoint`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, root: str | Path) -> None:
        self.store = RepoStore(Path(root))
        self._server = _Server(self.store)
        self.endpoint = self._server.endpoint
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)

    @property
    def log(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request served, in order."""
        return self._server.log

    def start(self) -> HubServer:
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
