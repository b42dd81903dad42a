"""The operator's own Kubernetes API client: JSON over one urllib3 connection pool, plain dicts in
and out, nothing generated.

It replaces the official `kubernetes` package, whose import alone (about 700 generated model
classes) cost every operator process 15-20 MiB of memory it never used: the adapter (kube.py)
only ever handled plain dicts. Kopf, too, loads `kubernetes.client` whenever it is installed, so
the package is not installed at all.

What it does:

- Configuration (`Configuration.load`): a kubeconfig (an explicit path, else ``$KUBECONFIG``,
  which may list several files merged as kubectl merges them: the first file that sets a name or
  the current context wins, else ``~/.kube/config``), any of its contexts; or the in-cluster
  ServiceAccount. Relative file paths in a kubeconfig are resolved against that file's directory.
  Authentication: client certificates (files or ``-data``), ``token``, ``tokenFile`` and the
  ServiceAccount token (both re-read at least once a minute: bound tokens rotate), ``username``/
  ``password``, and exec credential plugins (``client.authentication.k8s.io/v1`` and ``v1beta1``;
  a token or a client certificate, cached until its ``expirationTimestamp``, the plugin run again
  once when the API server answers 401). ``auth-provider`` entries (the removed gcp/azure/oidc
  plugins) are refused with an error naming them. TLS is verified unless the kubeconfig says
  ``insecure-skip-tls-verify``; ``tls-server-name`` is honoured.
- Requests (`ApiClient.request`): keep-alive pool of `CONNECTIONS` connections per host, connect
  and read timeouts, no blind retries (a request is retried once only when its connection could
  not be opened, which means it was never sent). A refused request raises `ApiException` (status,
  reason, the Status JSON text as `body`, headers); a network failure raises urllib3's
  `HTTPError` subclasses, as the official client did.
- Watches (`Watch`): the chunked stream of JSON lines, one event dict per line, BOOKMARK and
  ERROR events (410 Gone) included; `stop()` ends it from another thread.
- `CustomObjectsApi`, `CoreV1Api`, `CoordinationV1Api`: the operations the operator, its sandbox
  and its benchmarks call, with the official client's method names and argument order.

Tokens and keys are never logged, and never part of an exception's text.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from urllib3.util import Retry

log = logging.getLogger(__name__)

__all__ = [
    "CONNECTIONS", "ApiClient", "ApiException", "ConfigException", "Configuration", "CoordinationV1Api",
    "CoreV1Api", "CustomObjectsApi", "Watch", "core_path", "custom_path", "list_kubeconfig_contexts",
]

# Connections kept open to the API server: one per thread that may call at once (the controller's
# handler threads, its webhook and event threads); past the pool's size every call would open and
# close a TLS connection of its own.
CONNECTIONS = 32
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # between two reads of one answer, not for the whole answer
TOKEN_REREAD_SECONDS = 60.0  # a token file is read again at least this often
EXEC_TIMEOUT = 60.0

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiException(Exception):
    """The API server refused a request. `body` is the answer's text (a Status object in JSON)."""

    def __init__(self, status: int = 0, reason: str | None = None, body: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.headers = dict(headers or {})
        super().__init__(status, reason)

    def __str__(self) -> str:
        message = ""
        try:
            parsed = json.loads(self.body) if self.body else None
            if isinstance(parsed, dict):
                message = str(parsed.get("message") or "")
        except ValueError:
            message = (self.body or "")[:200]
        text = f"({self.status}) Reason: {self.reason}"
        return f"{text}: {message}" if message else text


class ConfigException(Exception):
    """The kubeconfig or the in-cluster configuration cannot be used."""


# -- kubeconfig ----------------------------------------------------------------------------------

@dataclass
class _Entry:
    """A named cluster, user or context of a kubeconfig, with the directory of the file it came
    from (its relative paths are relative to that)."""

    value: dict[str, Any]
    base: Path


@dataclass
class KubeConfig:
    """One or several kubeconfig files merged as kubectl merges them (first one wins)."""

    clusters: dict[str, _Entry] = field(default_factory=dict)
    users: dict[str, _Entry] = field(default_factory=dict)
    contexts: dict[str, _Entry] = field(default_factory=dict)
    current_context: str = ""
    files: list[Path] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | os.PathLike[str] | None = None) -> KubeConfig:
        files = kubeconfig_paths(path)
        if not files:
            raise ConfigException("no kubeconfig: none given, $KUBECONFIG names no file and ~/.kube/config "
                                  "does not exist")
        merged = cls(files=files)
        for file in files:
            try:
                data = yaml.safe_load(file.read_text()) or {}
            except OSError as exc:
                raise ConfigException(f"cannot read kubeconfig {file}: {exc.strerror}") from exc
            except yaml.YAMLError as exc:
                raise ConfigException(f"kubeconfig {file} is not YAML: {exc}") from exc
            if not isinstance(data, dict):
                raise ConfigException(f"kubeconfig {file} is not a mapping")
            base = file.resolve().parent
            for key, into in (("clusters", merged.clusters), ("users", merged.users),
                              ("contexts", merged.contexts)):
                inner = key[:-1]  # clusters -> cluster
                for item in data.get(key) or []:
                    if isinstance(item, dict) and item.get("name") and str(item["name"]) not in into:
                        into[str(item["name"])] = _Entry(dict(item.get(inner) or {}), base)
            if not merged.current_context and data.get("current-context"):
                merged.current_context = str(data["current-context"])
        return merged

    def context(self, name: str | None = None) -> tuple[str, dict[str, Any]]:
        """(name, context) of `name` or of the current context."""
        name = name or self.current_context
        if not name:
            raise ConfigException(f"kubeconfig {_names(self.files)} has no current-context; name a context")
        if name not in self.contexts:
            raise ConfigException(f"kubeconfig {_names(self.files)} has no context {name!r}")
        return name, self.contexts[name].value


def _names(files: Sequence[Path]) -> str:
    return ":".join(str(f) for f in files)


def kubeconfig_paths(path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The kubeconfig files to read, as kubectl picks them: `path`, else every existing file of
    $KUBECONFIG (a list separated by os.pathsep; missing files are skipped), else ~/.kube/config."""
    if path:
        return [Path(path).expanduser()]
    env = os.environ.get("KUBECONFIG", "")
    if env:
        files: list[Path] = []
        for part in env.split(os.pathsep):
            p = Path(part).expanduser()
            if part and p.is_file() and p not in files:
                files.append(p)
        return files
    default = Path("~/.kube/config").expanduser()
    return [default] if default.is_file() else []


def list_kubeconfig_contexts(path: str | os.PathLike[str] | None = None
                             ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(every context as {"name", "context"}, the current one or None), as the official client's
    `config.list_kube_config_contexts`."""
    cfg = KubeConfig.read(path)
    contexts = [{"name": name, "context": entry.value} for name, entry in cfg.contexts.items()]
    current = next((c for c in contexts if c["name"] == cfg.current_context), None)
    return contexts, current


def _file(base: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def _pem(entry: _Entry, data_key: str, file_key: str, what: str) -> bytes | None:
    """The PEM of `<key>-data` (base64) or of the file `<key>` (relative to the kubeconfig)."""
    if entry.value.get(data_key):
        try:
            return base64.b64decode(str(entry.value[data_key]), validate=True)
        except ValueError as exc:
            raise ConfigException(f"{what}: {data_key} is not base64") from exc
    if entry.value.get(file_key):
        path = _file(entry.base, entry.value[file_key])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigException(f"{what}: cannot read {file_key} {path}: {exc.strerror}") from exc
    return None


# -- credentials -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientCert:
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # never the key
        return "ClientCert(...)"


class Credentials:
    """How requests authenticate: a bearer token (static, from a file, or from an exec plugin),
    basic auth, and/or a client certificate. Thread-safe."""

    def __init__(self, *, token: str | None = None, token_file: Path | None = None,
                 basic: tuple[str, str] | None = None, cert: ClientCert | None = None,
                 exec_plugin: ExecPlugin | None = None) -> None:
        self._token = token
        self._token_file = token_file
        self._basic = basic
        self._cert = cert
        self.exec_plugin = exec_plugin
        self._file_token: str | None = None
        self._file_read_at = -1e18
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "Credentials(...)"

    def resolve(self) -> tuple[dict[str, str], ClientCert | None]:
        """(the Authorization header, if any; the client certificate, if any) for one request: an
        exec plugin's credential is fetched once for both."""
        cred = self.exec_plugin.credential() if self.exec_plugin is not None else None
        cert = cred.cert if cred is not None and cred.cert is not None else self._cert
        tok = cred.token if cred is not None and cred.token else self._file_or_static_token()
        if tok:
            return {"Authorization": f"Bearer {tok}"}, cert
        if self._basic:
            raw = f"{self._basic[0]}:{self._basic[1]}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}, cert
        return {}, cert

    def _file_or_static_token(self) -> str | None:
        if self._token_file is not None:
            with self._lock:
                now = time.monotonic()
                if self._file_token is None or now - self._file_read_at >= TOKEN_REREAD_SECONDS:
                    try:
                        self._file_token = self._token_file.read_text().strip()
                        self._file_read_at = now
                    except OSError as exc:
                        if self._file_token is None:
                            raise ConfigException(f"cannot read token file {self._token_file}: "
                                                  f"{exc.strerror}") from exc
                        log.warning("cannot read token file %s again (%s); using the token read before",
                                    self._token_file, exc.strerror)
                return self._file_token
        return self._token

    def unauthorized(self) -> bool:
        """The API server answered 401: True when trying again may help (an exec plugin's
        credential, which is then dropped so the plugin runs again; a token file, read again)."""
        if self.exec_plugin is not None:
            self.exec_plugin.invalidate()
            return True
        if self._token_file is not None:
            with self._lock:
                self._file_token, self._file_read_at = None, -1e18
            return True
        return False


@dataclass(frozen=True)
class ExecCredential:
    token: str | None
    cert: ClientCert | None
    expires: float | None  # time.time() after which the credential is stale; None: until a 401

    def __repr__(self) -> str:
        return f"ExecCredential(expires={self.expires})"


class ExecPlugin:
    """A kubeconfig user's `exec` credential plugin (client.authentication.k8s.io/v1 or v1beta1)."""

    def __init__(self, spec: Mapping[str, Any], base: Path, user: str,
                 cluster: Mapping[str, Any] | None = None) -> None:
        self.api_version = str(spec.get("apiVersion") or "")
        if self.api_version not in EXEC_API_VERSIONS:
            raise ConfigException(f"user {user!r}: exec plugin apiVersion {self.api_version!r} is not supported "
                                  f"(supported: {', '.join(EXEC_API_VERSIONS)})")
        command = str(spec.get("command") or "")
        if not command:
            raise ConfigException(f"user {user!r}: exec plugin without a command")
        # As kubectl: a command with a path separator is relative to the kubeconfig's directory,
        # a bare name is looked up in PATH.
        self.command = str(_file(base, command)) if os.sep in command else command
        self.args = [str(a) for a in spec.get("args") or []]
        self.env = {str(e["name"]): str(e.get("value", "")) for e in spec.get("env") or []
                    if isinstance(e, dict) and e.get("name")}
        self.install_hint = str(spec.get("installHint") or "")
        self.user = user
        self.cluster = dict(cluster) if spec.get("provideClusterInfo") and cluster else None
        self._cached: ExecCredential | None = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def credential(self) -> ExecCredential:
        with self._lock:
            cached = self._cached
            if cached is None or (cached.expires is not None and time.time() >= cached.expires):
                cached = self._cached = self._run()
            return cached

    def _run(self) -> ExecCredential:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = self.cluster
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(
            {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec})}
        what = f"user {self.user!r}: exec plugin {self.command}"
        if shutil.which(self.command, path=env.get("PATH")) is None and not Path(self.command).is_file():
            hint = f" ({self.install_hint.strip()})" if self.install_hint else ""
            raise ConfigException(f"{what}: command not found{hint}")
        try:
            done = subprocess.run([self.command, *self.args], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=EXEC_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigException(f"{what}: {exc}") from exc
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()[-500:]
            raise ConfigException(f"{what} exited with {done.returncode}: {stderr}")
        try:
            out = json.loads(done.stdout)
        except ValueError as exc:
            raise ConfigException(f"{what}: its output is not JSON") from exc
        if not isinstance(out, dict) or out.get("kind") != "ExecCredential":
            raise ConfigException(f"{what}: its output is not an ExecCredential")
        if out.get("apiVersion") != self.api_version:
            raise ConfigException(f"{what}: answered apiVersion {out.get('apiVersion')!r}, "
                                  f"expected {self.api_version!r}")
        status = out.get("status") or {}
        token = status.get("token") or None
        cert = None
        if status.get("clientCertificateData") or status.get("clientKeyData"):
            if not (status.get("clientCertificateData") and status.get("clientKeyData")):
                raise ConfigException(f"{what}: clientCertificateData and clientKeyData come together")
            cert = ClientCert(str(status["clientCertificateData"]).encode(), str(status["clientKeyData"]).encode())
        if token is None and cert is None:
            raise ConfigException(f"{what}: the ExecCredential has neither a token nor a client certificate")
        expires = None
        if status.get("expirationTimestamp"):
            try:
                stamp = str(status["expirationTimestamp"]).replace("Z", "+00:00")
                expires = dt.datetime.fromisoformat(stamp).timestamp()
            except ValueError as exc:
                raise ConfigException(f"{what}: bad expirationTimestamp") from exc
        log.debug("%s: new credential%s", what, f" until {status['expirationTimestamp']}" if expires else "")
        return ExecCredential(token, cert, expires)


# -- configuration ---------------------------------------------------------------------------------

@dataclass
class Configuration:
    """Where the API server is and how to talk to it."""

    host: str
    ca_pem: bytes | None = None  # None: the system's CAs
    verify: bool = True
    tls_server_name: str | None = None
    credentials: Credentials = field(default_factory=Credentials)
    namespace: str = "default"
    connections: int = CONNECTIONS
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT

    def __repr__(self) -> str:
        return f"Configuration(host={self.host!r}, verify={self.verify}, namespace={self.namespace!r})"

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str] | None = None, context: str | None = None) -> Configuration:
        cfg = KubeConfig.read(path)
        ctx_name, ctx = cfg.context(context)
        cluster_name, user_name = str(ctx.get("cluster") or ""), str(ctx.get("user") or "")
        if cluster_name not in cfg.clusters:
            raise ConfigException(f"context {ctx_name!r}: no cluster {cluster_name!r} in {_names(cfg.files)}")
        cluster = cfg.clusters[cluster_name]
        server = str(cluster.value.get("server") or "")
        if not server:
            raise ConfigException(f"cluster {cluster_name!r} has no server")
        what = f"cluster {cluster_name!r}"
        if cluster.value.get("proxy-url"):
            raise ConfigException(f"{what}: proxy-url is not supported")
        ca = _pem(cluster, "certificate-authority-data", "certificate-authority", what)
        insecure = bool(cluster.value.get("insecure-skip-tls-verify"))
        user = cfg.users.get(user_name, _Entry({}, cluster.base)) if user_name else _Entry({}, cluster.base)
        if user_name and user_name not in cfg.users:
            raise ConfigException(f"context {ctx_name!r}: no user {user_name!r} in {_names(cfg.files)}")
        return cls(
            host=server.rstrip("/"), ca_pem=ca, verify=not insecure,
            tls_server_name=str(cluster.value.get("tls-server-name") or "") or None,
            credentials=_user_credentials(user, user_name, cluster.value),
            namespace=str(ctx.get("namespace") or "default"))

    @classmethod
    def in_cluster(cls, sa_dir: Path = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] | None = None) -> Configuration:
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ConfigException("not in a cluster: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set")
        token_file = sa_dir / "token"
        if not token_file.is_file():
            raise ConfigException(f"not in a cluster: no ServiceAccount token at {token_file}")
        try:
            ca = (sa_dir / "ca.crt").read_bytes()
        except OSError as exc:
            raise ConfigException(f"cannot read {sa_dir / 'ca.crt'}: {exc.strerror}") from exc
        try:
            namespace = (sa_dir / "namespace").read_text().strip() or "default"
        except OSError:
            namespace = "default"
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return cls(host=f"https://{host}:{port}", ca_pem=ca,
                   credentials=Credentials(token_file=token_file), namespace=namespace)

    @classmethod
    def load(cls, kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> Configuration:
        """`kubeconfig`/`context` when given; else in-cluster when in a pod, else the default kubeconfig."""
        if kubeconfig or context:
            return cls.from_kubeconfig(kubeconfig, context)
        try:
            return cls.in_cluster()
        except ConfigException as not_in_cluster:
            try:
                return cls.from_kubeconfig()
            except ConfigException as exc:
                raise ConfigException(f"{exc}; {not_in_cluster}") from exc


def _user_credentials(user: _Entry, name: str, cluster: Mapping[str, Any]) -> Credentials:
    v = user.value
    what = f"user {name!r}"
    if v.get("auth-provider"):
        provider = (v["auth-provider"] or {}).get("name") or "?"
        raise ConfigException(f"{what}: auth-provider {provider!r} is not supported (the gcp/azure/oidc providers "
                              "were removed from Kubernetes clients; use an exec credential plugin)")
    cert_pem = _pem(user, "client-certificate-data", "client-certificate", what)
    key_pem = _pem(user, "client-key-data", "client-key", what)
    if (cert_pem is None) != (key_pem is None):
        raise ConfigException(f"{what}: a client certificate needs both client-certificate and client-key")
    token_file = _file(user.base, v["tokenFile"]) if v.get("tokenFile") else None
    exec_plugin = None
    if v.get("exec"):
        info = {"server": cluster.get("server"), "tls-server-name": cluster.get("tls-server-name"),
                "insecure-skip-tls-verify": bool(cluster.get("insecure-skip-tls-verify"))}
        if cluster.get("certificate-authority-data"):
            info["certificate-authority-data"] = cluster["certificate-authority-data"]
        exec_plugin = ExecPlugin(v["exec"], user.base, name, info)
    basic = (str(v["username"]), str(v.get("password") or "")) if v.get("username") else None
    return Credentials(
        token=str(v["token"]) if v.get("token") else None,
        token_file=None if v.get("token") else token_file,
        basic=basic, cert=ClientCert(cert_pem, key_pem) if cert_pem and key_pem else None,
        exec_plugin=exec_plugin)


# -- requests ----------------------------------------------------------------------------------------

def _ssl_context(cfg: Configuration, cert: ClientCert | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=cfg.ca_pem.decode() if cfg.ca_pem else None)
    if not cfg.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        # ssl loads a key pair only from files: written to a private directory, loaded, removed.
        with tempfile.TemporaryDirectory(prefix="fvm-kube-") as tmp:
            crt, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            for path, data in ((crt, cert.cert_pem), (key, cert.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            try:
                ctx.load_cert_chain(str(crt), str(key))
            except ssl.SSLError as exc:
                raise ConfigException(f"client certificate or key unusable: {exc.reason}") from None
    return ctx


def _quote(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


def custom_path(group: str, version: str, plural: str, name: str | None = None, namespace: str | None = None,
                subresource: str | None = None) -> str:
    """/apis/<group>/<version>[/namespaces/<ns>]/<plural>[/<name>[/<subresource>]]"""
    return _path(f"/apis/{_quote(group)}/{_quote(version)}", plural, name, namespace, subresource)


def core_path(plural: str, name: str | None = None, namespace: str | None = None,
              subresource: str | None = None) -> str:
    """/api/v1[/namespaces/<ns>]/<plural>[/<name>[/<subresource>]]"""
    return _path("/api/v1", plural, name, namespace, subresource)


def _path(prefix: str, plural: str, name: str | None, namespace: str | None, subresource: str | None) -> str:
    out = prefix + (f"/namespaces/{_quote(namespace)}" if namespace else "") + f"/{_quote(plural)}"
    if name is not None:
        out += f"/{_quote(name)}"
        if subresource:
            out += f"/{_quote(subresource)}"
    return out


# Query parameters as the callers name them (the official client's snake_case) -> the API's names.
_QUERY_NAMES = {
    "label_selector": "labelSelector", "field_selector": "fieldSelector", "resource_version": "resourceVersion",
    "timeout_seconds": "timeoutSeconds", "allow_watch_bookmarks": "allowWatchBookmarks", "limit": "limit",
    "_continue": "continue", "grace_period_seconds": "gracePeriodSeconds",
    "propagation_policy": "propagationPolicy", "dry_run": "dryRun", "field_manager": "fieldManager",
    "resource_version_match": "resourceVersionMatch", "watch": "watch",
}


def _query(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        name = _QUERY_NAMES.get(key)
        if name is None:
            raise TypeError(f"unknown query parameter {key!r}")
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


class ApiClient:
    """Requests to one API server over a pool of kept-alive connections. Thread-safe."""

    def __init__(self, configuration: Configuration) -> None:
        self.configuration = configuration
        self._lock = threading.Lock()
        self._cert: ClientCert | None = None
        self._pool: urllib3.PoolManager | None = None

    def __repr__(self) -> str:
        return f"ApiClient({self.configuration!r})"

    def _pool_manager(self, cert: ClientCert | None = None) -> urllib3.PoolManager:
        """The pool for the client certificate `cert` (an exec plugin may rotate it: a new pool)."""
        with self._lock:
            if self._pool is None or cert != self._cert:
                old = self._pool
                cfg = self.configuration
                kw: dict[str, Any] = {}
                if cfg.host.startswith("https:"):
                    kw["ssl_context"] = _ssl_context(cfg, cert)
                    if cfg.tls_server_name:
                        kw["server_hostname"] = cfg.tls_server_name
                        kw["assert_hostname"] = cfg.tls_server_name if cfg.verify else False
                    if not cfg.verify:
                        kw["cert_reqs"] = "CERT_NONE"
                        kw["assert_hostname"] = False
                self._pool = urllib3.PoolManager(
                    num_pools=4, maxsize=cfg.connections, block=False,
                    # Once, and only a connection that could not be opened (the request never left).
                    retries=Retry(total=1, connect=1, read=0, redirect=0, status=0, other=0, raise_on_status=False),
                    timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout), **kw)
                self._cert = cert
                if old is not None:
                    old.clear()
            return self._pool

    def _send(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any,
              content_type: str | None, stream: bool, read_timeout: float | None) -> urllib3.BaseHTTPResponse:
        url = self.configuration.host + path
        q = _query(query or {})
        if q:
            url += "?" + urllib.parse.urlencode(q)
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            auth, cert = self.configuration.credentials.resolve()
            headers = {"Accept": JSON, "User-Agent": "failovervm-operator", **auth}
            if data is not None:
                headers["Content-Type"] = content_type or JSON
            timeout = urllib3.Timeout(connect=self.configuration.connect_timeout,
                                      read=read_timeout if read_timeout is not None or stream
                                      else self.configuration.read_timeout)
            resp = self._pool_manager(cert).request(method, url, body=data, headers=headers, timeout=timeout,
                                                preload_content=not stream, redirect=False)
            if resp.status == 401 and attempt == 0 and self.configuration.credentials.unauthorized():
                resp.drain_conn()
                resp.release_conn()
                continue
            if resp.status >= 400:
                text = resp.data.decode(errors="replace")
                resp.release_conn()
                raise ApiException(resp.status, resp.reason, text, dict(resp.headers))
            return resp
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, timeout: float | None = None) -> Any:
        """One request; returns the answer's JSON (an empty answer: {}). Raises ApiException when
        the API server refuses it, urllib3.exceptions.HTTPError when it cannot be reached."""
        resp = self._send(method, path, query, body, content_type, False, timeout)
        raw = resp.data
        return json.loads(raw) if raw else {}

    def stream(self, path: str, query: Mapping[str, Any], read_timeout: float | None) -> urllib3.BaseHTTPResponse:
        """A GET whose answer is read as it comes (a watch)."""
        return self._send("GET", path, query, None, None, True, read_timeout)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.clear()


# -- watches -----------------------------------------------------------------------------------------

def iter_json_lines(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a stream of newline-separated JSON (chunks split anywhere)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while True:
            line, sep, rest = buf.partition(b"\n")
            if not sep:
                break
            buf = rest
            if line.strip():
                yield _event(line)
    if buf.strip():
        yield _event(buf)


def _event(line: bytes) -> dict[str, Any]:
    try:
        ev = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"watch: not a JSON event: {line[:200]!r}") from exc
    if not isinstance(ev, dict) or "type" not in ev:
        raise ValueError(f"watch: not an event: {line[:200]!r}")
    return ev


class Watch:
    """One watch request at a time: `stream()` yields its events ({"type", "object"}: ADDED,
    MODIFIED, DELETED, BOOKMARK, ERROR with a Status object, e.g. 410 Gone when the
    resourceVersion is too old) until the server ends it (timeoutSeconds) or `stop()` is called
    (from any thread)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self._stopped = False
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._lock = threading.Lock()

    def stream(self, path: str, *, resource_version: str | None = None, timeout_seconds: int | None = None,
               allow_watch_bookmarks: bool = False, read_timeout: float | None = None,
               on_open: Callable[[], None] | None = None, **query: Any) -> Iterator[dict[str, Any]]:
        """`read_timeout`: seconds of silence after which the connection counts as dead (default:
        timeoutSeconds + 30, when the server ends the watch itself); `on_open()` is called once the
        server has accepted the watch (before its first event, which may be a while coming)."""
        q = {**query, "watch": True, "resource_version": resource_version, "timeout_seconds": timeout_seconds,
             "allow_watch_bookmarks": allow_watch_bookmarks or None}
        if read_timeout is None and timeout_seconds:
            read_timeout = timeout_seconds + 30.0
        resp = self.api.stream(path, q, read_timeout)
        if on_open is not None:
            on_open()
        with self._lock:
            if self._stopped:
                resp.release_conn()
                return
            self._resp = resp
        try:
            for ev in iter_json_lines(resp.stream(65536, decode_content=True)):
                if self._stopped:
                    return
                yield ev
        except Exception:
            if self._stopped:
                return
            raise
        finally:
            with self._lock:
                self._resp = None
            resp.release_conn()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()  # wakes a read blocked in another thread
            except Exception:  # noqa: S110 (already closed)
                pass


# -- the operations the project calls, by the official client's names -------------------------------

class _Api:
    def __init__(self, api: ApiClient | None = None) -> None:
        if api is None:
            api = ApiClient(Configuration.load())
        self.api_client = api

    def _req(self, method: str, path: str, body: Any = None, content_type: str | None = None,
             **query: Any) -> dict[str, Any]:
        return dict(self.api_client.request(method, path, query=query, body=body, content_type=content_type))


class CustomObjectsApi(_Api):
    """Custom resources; patches are JSON merge patches (a list: a JSON patch)."""

    @staticmethod
    def _patch_type(body: Any, content_type: str | None) -> str:
        return content_type or (JSON_PATCH if isinstance(body, list) else MERGE_PATCH)

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> dict[str, Any]:
        return self._req("GET", custom_path(group, version, plural, name, namespace))

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str) -> dict[str, Any]:
        return self._req("GET", custom_path(group, version, plural, name))

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                      **query: Any) -> dict[str, Any]:
        return self._req("GET", custom_path(group, version, plural, namespace=namespace), **query)

    def list_cluster_custom_object(self, group: str, version: str, plural: str, **query: Any) -> dict[str, Any]:
        return self._req("GET", custom_path(group, version, plural), **query)

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: Any) -> dict[str, Any]:
        return self._req("POST", custom_path(group, version, plural, namespace=namespace), body)

    def create_cluster_custom_object(self, group: str, version: str, plural: str, body: Any) -> dict[str, Any]:
        return self._req("POST", custom_path(group, version, plural), body)

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                       body: Any, content_type: str | None = None) -> dict[str, Any]:
        return self._req("PATCH", custom_path(group, version, plural, name, namespace), body,
                         self._patch_type(body, content_type))

    def patch_cluster_custom_object(self, group: str, version: str, plural: str, name: str, body: Any,
                                    content_type: str | None = None) -> dict[str, Any]:
        return self._req("PATCH", custom_path(group, version, plural, name), body, self._patch_type(body, content_type))

    def patch_namespaced_custom_object_status(self, group: str, version: str, namespace: str, plural: str,
                                              name: str, body: Any, content_type: str | None = None) -> dict[str, Any]:
        return self._req("PATCH", custom_path(group, version, plural, name, namespace, "status"), body,
                         self._patch_type(body, content_type))

    def replace_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                         body: Any) -> dict[str, Any]:
        return self._req("PUT", custom_path(group, version, plural, name, namespace), body)

    def replace_cluster_custom_object(self, group: str, version: str, plural: str, name: str,
                                      body: Any) -> dict[str, Any]:
        return self._req("PUT", custom_path(group, version, plural, name), body)

    def replace_namespaced_custom_object_status(self, group: str, version: str, namespace: str, plural: str,
                                                name: str, body: Any) -> dict[str, Any]:
        return self._req("PUT", custom_path(group, version, plural, name, namespace, "status"), body)

    def replace_cluster_custom_object_status(self, group: str, version: str, plural: str, name: str,
                                             body: Any) -> dict[str, Any]:
        return self._req("PUT", custom_path(group, version, plural, name, None, "status"), body)

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                        body: Any = None, **query: Any) -> dict[str, Any]:
        return self._req("DELETE", custom_path(group, version, plural, name, namespace), body, **query)

    def delete_cluster_custom_object(self, group: str, version: str, plural: str, name: str,
                                     body: Any = None, **query: Any) -> dict[str, Any]:
        return self._req("DELETE", custom_path(group, version, plural, name), body, **query)


class CoreV1Api(_Api):
    """core/v1 objects; patches of a dict are strategic merge patches unless `content_type` says
    otherwise (a list: a JSON patch)."""

    @staticmethod
    def _patch_type(body: Any, content_type: str | None) -> str:
        return content_type or (JSON_PATCH if isinstance(body, list) else STRATEGIC_MERGE_PATCH)

    def _patch(self, path: str, body: Any, content_type: str | None) -> dict[str, Any]:
        return self._req("PATCH", path, body, self._patch_type(body, content_type))

    # Nodes
    def list_node(self, **query: Any) -> dict[str, Any]:
        return self._req("GET", core_path("nodes"), **query)

    def read_node(self, name: str) -> dict[str, Any]:
        return self._req("GET", core_path("nodes", name))

    def create_node(self, body: Any) -> dict[str, Any]:
        return self._req("POST", core_path("nodes"), body)

    def patch_node(self, name: str, body: Any, content_type: str | None = None) -> dict[str, Any]:
        return self._patch(core_path("nodes", name), body, content_type)

    def patch_node_status(self, name: str, body: Any, content_type: str | None = None) -> dict[str, Any]:
        return self._patch(core_path("nodes", name, None, "status"), body, content_type)

    def delete_node(self, name: str, body: Any = None, **query: Any) -> dict[str, Any]:
        return self._req("DELETE", core_path("nodes", name), body, **query)

    # Namespaces
    def read_namespace(self, name: str) -> dict[str, Any]:
        return self._req("GET", core_path("namespaces", name))

    def list_namespace(self, **query: Any) -> dict[str, Any]:
        return self._req("GET", core_path("namespaces"), **query)

    def create_namespace(self, body: Any) -> dict[str, Any]:
        return self._req("POST", core_path("namespaces"), body)

    def delete_namespace(self, name: str, body: Any = None, **query: Any) -> dict[str, Any]:
        return self._req("DELETE", core_path("namespaces", name), body, **query)

    # Pods
    def create_namespaced_pod(self, namespace: str, body: Any) -> dict[str, Any]:
        return self._req("POST", core_path("pods", namespace=namespace), body)

    def read_namespaced_pod(self, name: str, namespace: str) -> dict[str, Any]:
        return self._req("GET", core_path("pods", name, namespace))

    def list_namespaced_pod(self, namespace: str, **query: Any) -> dict[str, Any]:
        return self._req("GET", core_path("pods", namespace=namespace), **query)

    def list_pod_for_all_namespaces(self, **query: Any) -> dict[str, Any]:
        return self._req("GET", core_path("pods"), **query)

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any,
                             content_type: str | None = None) -> dict[str, Any]:
        return self._patch(core_path("pods", name, namespace), body, content_type)

    def delete_namespaced_pod(self, name: str, namespace: str, body: Any = None, **query: Any) -> dict[str, Any]:
        return self._req("DELETE", core_path("pods", name, namespace), body, **query)

    def delete_collection_namespaced_pod(self, namespace: str, body: Any = None, **query: Any) -> dict[str, Any]:
        return self._req("DELETE", core_path("pods", namespace=namespace), body, **query)

    # Events, ServiceAccounts
    def create_namespaced_event(self, namespace: str, body: Any) -> dict[str, Any]:
        return self._req("POST", core_path("events", namespace=namespace), body)

    def list_namespaced_event(self, namespace: str, **query: Any) -> dict[str, Any]:
        return self._req("GET", core_path("events", namespace=namespace), **query)

    def list_namespaced_service_account(self, namespace: str, **query: Any) -> dict[str, Any]:
        return self._req("GET", core_path("serviceaccounts", namespace=namespace), **query)


class CoordinationV1Api(_Api):
    """coordination.k8s.io/v1 Leases (the sandbox's node heartbeats)."""

    def create_namespaced_lease(self, namespace: str, body: Any) -> dict[str, Any]:
        return self._req("POST", custom_path("coordination.k8s.io", "v1", "leases", namespace=namespace), body)

    def patch_namespaced_lease(self, name: str, namespace: str, body: Any,
                               content_type: str | None = None) -> dict[str, Any]:
        return self._req("PATCH", custom_path("coordination.k8s.io", "v1", "leases", name, namespace), body,
                         content_type or (JSON_PATCH if isinstance(body, list) else STRATEGIC_MERGE_PATCH))

