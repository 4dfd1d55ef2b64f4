"""A local stand-in for Google Cloud Storage that TensorFlow's own `gs://` client talks to.

TF's GCS filesystem has its endpoints built in (`https://storage.googleapis.com/BUCKET/OBJECT`
for reads, `https://www.googleapis.com/storage/v1/` for metadata), but its libcurl honours
`https_proxy` and `CURL_CA_BUNDLE`, and its auth provider `GOOGLE_AUTH_TOKEN_FOR_TESTING`.
`Store` is that proxy: it answers each CONNECT itself, ends TLS with a throwaway self-signed
certificate for both hosts (made with the `openssl` command), and serves the objects of
ROOT/BUCKET/OBJECT read-only: ranged media GETs, object metadata, listings. Before every
HTTP request it sleeps `latency_s`, the round trip a bucket charges per request; it counts
requests and the body bytes it sends. What it does not model: bandwidth (loopback, bounded
by this machine's CPU), the real TLS and TCP round trips (the latency stands for them),
throttling and errors.

    with Store(root, latency_s=0.03) as store:
      env = store.client_env()   # for a process started after: its TF reads gs://BUCKET/...
"""

import dataclasses
import datetime
import http.server
import json
import os
import pathlib
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

_HOSTS = ("storage.googleapis.com", "www.googleapis.com")


@dataclasses.dataclass
class Request:
  """One HTTP request served: kind (`media` or `json`), object path, range start, body bytes."""
  kind: str
  path: str
  start: int
  bytes: int


def _certificate(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """(certificate, key) of a self-signed P-256 certificate naming both GCS hosts."""
  cert, key = folder / "cert.pem", folder / "key.pem"
  subprocess.run(
      ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-days", "2", "-subj", f"/CN={_HOSTS[0]}", "-addext",
       "subjectAltName=" + ",".join(f"DNS:{h}" for h in _HOSTS), "-keyout", str(key),
       "-out", str(cert)], check=True, capture_output=True)
  return cert, key


class _Api(http.server.BaseHTTPRequestHandler):
  """The requests inside one TLS tunnel: GCS's media and JSON APIs, read-only."""

  protocol_version = "HTTP/1.1"
  store: "Store"  # Set on the subclass each Store makes.

  def log_message(self, *args):
    del args

  def _send(self, code: int, body: bytes = b"", headers=()) -> None:
    self.send_response(code)
    for k, v in headers:
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _json(self, value, path: str) -> None:
    body = json.dumps(value).encode()
    self.store.record(Request("json", path, 0, len(body)))
    self._send(200, body, [("Content-Type", "application/json")])

  def do_GET(self):  # pylint: disable=invalid-name
    time.sleep(self.store.latency_s)
    url = urllib.parse.urlsplit(self.path)
    parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
    query = dict(urllib.parse.parse_qsl(url.query))
    if parts[:3] == ["storage", "v1", "b"] and len(parts) >= 4:
      bucket, rest = parts[3], parts[4:]
      if not rest:
        return self._json({"name": bucket, "location": "US"}, bucket)
      if rest == ["o"]:
        return self._json(self.store.listing(bucket, query.get("prefix", ""),
                                             query.get("delimiter")), bucket)
      if rest[0] == "o" and len(rest) == 2:
        file = self.store.file(bucket, rest[1])
        if file is None:
          return self._send(404)
        stat = file.stat()
        updated = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc)
        return self._json({"name": rest[1], "size": str(stat.st_size), "generation": "1",
                           "updated": updated.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                          f"{bucket}/{rest[1]}")
      return self._send(404)
    return self._media(parts[0], "/".join(parts[1:]))

  def _media(self, bucket: str, name: str) -> None:
    file = self.store.file(bucket, name)
    if file is None:
      return self._send(404)
    size = file.stat().st_size
    first, last = 0, size - 1
    if rng := self.headers.get("Range"):
      a, _, b = rng.removeprefix("bytes=").partition("-")
      first, last = int(a), min(int(b), size - 1) if b else size - 1
      if first >= size:
        self.store.record(Request("media", f"{bucket}/{name}", first, 0))
        return self._send(416, headers=[("Content-Range", f"bytes */{size}")])
    with open(file, "rb") as f:
      f.seek(first)
      body = f.read(last - first + 1)
    self.store.record(Request("media", f"{bucket}/{name}", first, len(body)))
    self._send(206 if rng else 200, body,
               [("Content-Range", f"bytes {first}-{last}/{size}")] if rng else [])

  def _refuse(self):
    time.sleep(self.store.latency_s)
    self._send(403, b'{"error": {"code": 403, "message": "read-only store"}}',
               [("Content-Type", "application/json")])

  do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


class _Proxy(socketserver.StreamRequestHandler):
  """An `https_proxy` connection: CONNECT, then TLS ended here and `_Api` inside."""

  def handle(self):
    line = self.rfile.readline().decode("latin-1").split()
    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
      pass
    if len(line) < 2 or line[0] != "CONNECT" or line[1].split(":")[0] not in _HOSTS:
      self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      return
    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    self.wfile.flush()
    try:
      tls = self.server.tls.wrap_socket(self.connection, server_side=True)
    except (ssl.SSLError, OSError):
      return
    try:
      self.server.api(tls, self.client_address, self.server)
    except (ssl.SSLError, OSError):
      pass
    finally:
      tls.close()


class _Server(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 128


class Store:
  """Serves ROOT/BUCKET/OBJECT as gs://BUCKET/OBJECT on a local port (module docstring)."""

  def __init__(self, root: pathlib.Path, *, latency_s: float = 0.0):
    self.root = pathlib.Path(root)
    self.latency_s = latency_s
    self._lock = threading.Lock()
    self.requests: list[Request] = []
    self._dir = tempfile.TemporaryDirectory(prefix="object_store_")
    self.cert, key = _certificate(pathlib.Path(self._dir.name))
    self._server = _Server(("127.0.0.1", 0), _Proxy)
    self._server.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self._server.tls.load_cert_chain(self.cert, key)
    self._server.api = type("Api", (_Api,), {"store": self})
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()
    self._dir.cleanup()

  @property
  def port(self) -> int:
    return self._server.server_address[1]

  def client_env(self) -> dict[str, str]:
    """The variables that send a TensorFlow process's `gs://` requests here."""
    return {"https_proxy": f"http://127.0.0.1:{self.port}", "CURL_CA_BUNDLE": str(self.cert),
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "local", "NO_GCE_CHECK": "true"}

  def record(self, request: Request) -> None:
    with self._lock:
      self.requests.append(request)

  def take(self) -> list[Request]:
    """The requests served since the last call."""
    with self._lock:
      taken, self.requests = self.requests, []
    return taken

  def file(self, bucket: str, name: str) -> pathlib.Path | None:
    path = self.root / bucket / name
    return path if name and path.is_file() else None

  def listing(self, bucket: str, prefix: str, delimiter: str | None) -> dict:
    """GCS's objects.list: names under prefix; with delimiter "/", one level and `prefixes`."""
    base = self.root / bucket
    names = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    items, prefixes = [], set()
    for name in (n for n in names if n.startswith(prefix)):
      rest = name[len(prefix):]
      if delimiter and delimiter in rest:
        prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
      else:
        items.append({"name": name})
    return {"items": items, "prefixes": sorted(prefixes)}


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
  """`env` (default os.environ) without proxy exclusions that would bypass the store."""
  env = dict(os.environ if env is None else env)
  for k in ("no_proxy", "NO_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
    env.pop(k, None)
  return env
