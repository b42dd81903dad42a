"""failovervm.kubeclient, the operator's own Kubernetes client, against local HTTP(S) servers:
kubeconfig loading (merge, contexts, relative paths, certificates as files and as data, tokens,
token files, exec plugins, auth-provider), the in-cluster ServiceAccount with a rotating token,
TLS verification and tls-server-name, errors, and the watch stream."""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import json
import os
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from failovervm import kube, kubeclient, pki
from failovervm.kubeclient import ApiClient, ApiException, ConfigException, Configuration
from tests.fakes.http import FakeApiServer as Server
from tests.fakes.http import fake_api_server

REPO = Path(__file__).resolve().parents[2]

# -- a local API server ----------------------------------------------------------------------------


def _echo(_method: str, path: str) -> tuple[int, Any]:
    return 200, {"path": urllib.parse.urlsplit(path).path}


@dataclass
class PKI:
    ca: pki.KeyPair
    server: pki.KeyPair
    client: pki.KeyPair
    other_ca: pki.KeyPair


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = pki.make_ca(d, "ca", "test-ca")
    return PKI(ca=ca,
               server=pki.issue(ca, d, "server", "apiserver", server=True, dns_names=("api.example.internal",),
                                ip_addresses=()),
               client=pki.issue(ca, d, "client", "jane", org="devs", client=True),
               other_ca=pki.make_ca(d, "other", "other-ca"))


@pytest.fixture
def https(certs: PKI) -> Iterator[Server]:
    """An HTTPS server with a certificate for api.example.internal (no IP SAN), asking for a client
    certificate of the test CA (optional)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server.cert, certs.server.key)
    ctx.load_verify_locations(certs.ca.cert)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    with fake_api_server(_echo, ctx) as server:
        yield server


@pytest.fixture
def https_ip(certs: PKI, tmp_path: Path) -> Iterator[Server]:
    """An HTTPS server with a certificate for 127.0.0.1 (as an in-cluster API server's)."""
    pair = pki.issue(certs.ca, tmp_path, "ip", "apiserver", server=True, ip_addresses=("127.0.0.1",))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    with fake_api_server(_echo, ctx) as server:
        yield server


@pytest.fixture
def http() -> Iterator[Server]:
    with fake_api_server(_echo) as server:
        yield server


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _kubeconfig(path: Path, *, clusters: dict[str, dict[str, Any]], users: dict[str, dict[str, Any]],
                contexts: dict[str, dict[str, Any]], current: str | None = None) -> Path:
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
        "contexts": [{"name": n, "context": c} for n, c in contexts.items()],
    }
    if current:
        doc["current-context"] = current
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def _one(path: Path, cluster: dict[str, Any], user: dict[str, Any], namespace: str | None = None) -> Path:
    ctx: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        ctx["namespace"] = namespace
    return _kubeconfig(path, clusters={"c": cluster}, users={"u": user}, contexts={"ctx": ctx}, current="ctx")


def _get(cfg: Configuration, path: str = "/api/v1/namespaces/default") -> Any:
    api = ApiClient(cfg)
    try:
        return api.request("GET", path)
    finally:
        api.close()


# -- kubeconfig: TLS and client certificates ------------------------------------------------------------

def test_client_certificate_files_relative_to_the_kubeconfig(https: Server, certs: PKI, tmp_path: Path) -> None:
    """certificate-authority, client-certificate and client-key as paths relative to the kubeconfig's
    own directory (not the process's), tls-server-name naming the certificate's DNS name."""
    home = tmp_path / "conf"
    (home / "pki").mkdir(parents=True)
    for src, name in ((certs.ca.cert, "ca.crt"), (certs.client.cert, "me.crt"), (certs.client.key, "me.key")):
        (home / "pki" / name).write_bytes(src.read_bytes())
    path = _one(home / "config", {"server": https.url, "certificate-authority": "pki/ca.crt",
                                  "tls-server-name": "api.example.internal"},
                {"client-certificate": "pki/me.crt", "client-key": "pki/me.key"}, namespace="team-a")
    cfg = Configuration.from_kubeconfig(path)
    assert cfg.namespace == "team-a" and cfg.verify
    assert _get(cfg) == {"path": "/api/v1/namespaces/default"}
    assert https.seen[-1]["client_cn"] == "jane" and "Authorization" not in https.seen[-1]["headers"]


def test_client_certificate_data(https: Server, certs: PKI, tmp_path: Path) -> None:
    path = _one(tmp_path / "config", {"server": https.url, "certificate-authority-data": _b64(certs.ca.cert),
                                      "tls-server-name": "api.example.internal"},
                {"client-certificate-data": _b64(certs.client.cert), "client-key-data": _b64(certs.client.key)})
    _get(Configuration.from_kubeconfig(path))
    assert https.seen[-1]["client_cn"] == "jane"
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("fvm-kube-*")), "key files are removed"


def test_tls_is_verified(https: Server, certs: PKI, tmp_path: Path) -> None:
    """The server's certificate names api.example.internal, not 127.0.0.1: refused without
    tls-server-name; a certificate of another CA is refused; insecure-skip-tls-verify accepts both."""
    def get(cluster: dict[str, Any]) -> Any:
        return _get(Configuration.from_kubeconfig(_one(tmp_path / "config", {"server": https.url, **cluster},
                                                       {"token": "t"})))

    with pytest.raises(urllib3.exceptions.HTTPError, match=r"(?i)certificate|hostname|match"):
        get({"certificate-authority": str(certs.ca.cert)})
    with pytest.raises(urllib3.exceptions.HTTPError, match=r"(?i)certificate"):
        get({"certificate-authority": str(certs.other_ca.cert), "tls-server-name": "api.example.internal"})
    with pytest.raises(urllib3.exceptions.HTTPError):
        get({})  # the system's CAs do not know the test CA
    assert get({"certificate-authority": str(certs.ca.cert), "tls-server-name": "api.example.internal"})
    assert get({"insecure-skip-tls-verify": True})


def test_missing_or_bad_certificate_files_are_named(tmp_path: Path) -> None:
    path = _one(tmp_path / "config", {"server": "https://127.0.0.1:1", "certificate-authority": "nope/ca.crt"},
                {"token": "t"})
    with pytest.raises(ConfigException, match=r"certificate-authority .*nope/ca\.crt"):
        Configuration.from_kubeconfig(path)
    path = _one(tmp_path / "config", {"server": "https://127.0.0.1:1"}, {"client-certificate-data": "bm9wZQ=="})
    with pytest.raises(ConfigException, match="both client-certificate and client-key"):
        Configuration.from_kubeconfig(path)


# -- kubeconfig: merging, contexts ----------------------------------------------------------------------

def test_kubeconfig_list_merges_first_wins_and_contexts_are_chosen(
        http: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$KUBECONFIG lists files (missing ones skipped); the first file defining a name or the
    current-context wins, as kubectl merges them; a context is chosen by name."""
    first = _kubeconfig(tmp_path / "a" / "config", clusters={"c": {"server": http.url}},
                        users={"u": {"token": "from-a"}},
                        contexts={"ctx-a": {"cluster": "c", "user": "u", "namespace": "ns-a"}}, current="ctx-a")
    second = _kubeconfig(tmp_path / "b" / "config", clusters={"c": {"server": "http://127.0.0.1:1"},
                                                              "d": {"server": http.url}},
                         users={"u": {"token": "from-b"}, "v": {"token": "from-b-v"}},
                         contexts={"ctx-b": {"cluster": "d", "user": "v", "namespace": "ns-b"},
                                   "ctx-a": {"cluster": "c", "user": "u", "namespace": "ignored"}},
                         current="ctx-b")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "missing"), str(first), "", str(second)]))
    cfg = Configuration.from_kubeconfig()
    assert cfg.host == http.url and cfg.namespace == "ns-a"
    _get(cfg)
    assert http.seen[-1]["headers"]["Authorization"] == "Bearer from-a"
    cfg = Configuration.from_kubeconfig(context="ctx-b")
    assert cfg.namespace == "ns-b"
    _get(cfg)
    assert http.seen[-1]["headers"]["Authorization"] == "Bearer from-b-v"
    assert kube.current_namespace() == "ns-a" and kube.current_namespace(context="ctx-b") == "ns-b"
    contexts, current = kubeclient.list_kubeconfig_contexts()
    assert [c["name"] for c in contexts] == ["ctx-a", "ctx-b"] and current is not None and current["name"] == "ctx-a"
    with pytest.raises(ConfigException, match="no context 'nope'"):
        Configuration.from_kubeconfig(context="nope")
    # An explicit path is used alone.
    assert Configuration.from_kubeconfig(second).namespace == "ns-b"
    # Without KUBECONFIG: ~/.kube/config.
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "b"))
    (tmp_path / "b" / ".kube").mkdir()
    (tmp_path / "b" / ".kube" / "config").write_text(second.read_text())
    assert Configuration.from_kubeconfig().namespace == "ns-b"


def test_kubeconfig_errors_are_config_exceptions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigException, match="no kubeconfig"):
        Configuration.from_kubeconfig()
    with pytest.raises(ConfigException, match=r"no kubeconfig.*; not in a cluster"):
        Configuration.load()
    assert kube.current_namespace() == "default"
    bad = tmp_path / "bad"
    bad.write_text("clusters: [\n")
    with pytest.raises(ConfigException, match="not YAML"):
        Configuration.from_kubeconfig(bad)
    dangling = _kubeconfig(tmp_path / "d", clusters={}, users={}, contexts={"x": {"cluster": "c", "user": "u"}},
                           current="x")
    with pytest.raises(ConfigException, match="no cluster 'c'"):
        Configuration.from_kubeconfig(dangling)
    proxied = _one(tmp_path / "p", {"server": "https://127.0.0.1:1", "proxy-url": "http://proxy:3128"}, {"token": "t"})
    with pytest.raises(ConfigException, match="proxy-url is not supported"):
        Configuration.from_kubeconfig(proxied)


def test_auth_provider_is_refused_by_name(tmp_path: Path) -> None:
    path = _one(tmp_path / "config", {"server": "https://127.0.0.1:1"},
                {"auth-provider": {"name": "oidc", "config": {"id-token": "secret-id-token"}}})
    with pytest.raises(ConfigException, match="auth-provider 'oidc' is not supported") as err:
        Configuration.from_kubeconfig(path)
    assert "secret-id-token" not in str(err.value)


# -- tokens ------------------------------------------------------------------------------------------------

def test_token_file_is_read_again(http: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tokenFile (relative to the kubeconfig) is read again once a minute, and at once after a 401."""
    (tmp_path / "tok").write_text("one\n")
    cfg = Configuration.from_kubeconfig(_one(tmp_path / "config", {"server": http.url}, {"tokenFile": "tok"}))
    api = ApiClient(cfg)
    api.request("GET", "/x")
    assert http.seen[-1]["headers"]["Authorization"] == "Bearer one"
    (tmp_path / "tok").write_text("two\n")
    api.request("GET", "/x")
    assert http.seen[-1]["headers"]["Authorization"] == "Bearer one", "cached within the minute"
    monkeypatch.setattr(kubeclient, "TOKEN_REREAD_SECONDS", 0.0)
    api.request("GET", "/x")
    assert http.seen[-1]["headers"]["Authorization"] == "Bearer two"
    monkeypatch.setattr(kubeclient, "TOKEN_REREAD_SECONDS", 3600.0)
    (tmp_path / "tok").write_text("three\n")
    http.tokens = {"three"}
    assert api.request("GET", "/x") == {"path": "/x"}
    assert [s["headers"]["Authorization"] for s in http.seen[-2:]] == ["Bearer two", "Bearer three"]


def test_in_cluster_service_account_with_a_rotated_token(https_ip: Server, certs: PKI, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("bound-1")
    (sa / "ca.crt").write_bytes(certs.ca.cert.read_bytes())
    (sa / "namespace").write_text("failovervm-system")
    port = urllib.parse.urlsplit(https_ip.url).port
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    cfg = Configuration.in_cluster(sa, env)
    assert cfg.host == https_ip.url and cfg.namespace == "failovervm-system"
    api = ApiClient(cfg)
    https_ip.tokens = {"bound-1"}
    api.request("GET", "/api")
    (sa / "token").write_text("bound-2")  # the kubelet rotated it
    monkeypatch.setattr(kubeclient, "TOKEN_REREAD_SECONDS", 0.0)
    https_ip.tokens = {"bound-2"}
    api.request("GET", "/api")
    assert https_ip.seen[-1]["headers"]["Authorization"] == "Bearer bound-2"
    monkeypatch.setattr(kubeclient, "TOKEN_REREAD_SECONDS", 3600.0)
    (sa / "token").write_text("bound-3")
    https_ip.tokens = {"bound-3"}  # the old one is refused: read again at once
    api.request("GET", "/api")
    assert [s["headers"]["Authorization"] for s in https_ip.seen[-2:]] == ["Bearer bound-2", "Bearer bound-3"]
    assert "bound" not in repr(cfg) + repr(api) + repr(cfg.credentials)
    with pytest.raises(ConfigException, match="KUBERNETES_SERVICE_HOST"):
        Configuration.in_cluster(sa, {})
    assert Configuration.in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
                                    ).host == "https://[fd00::1]:443"


def test_load_prefers_in_cluster_unless_a_kubeconfig_is_named(http: Server, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = _one(tmp_path / "config", {"server": http.url}, {"token": "t"})
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert Configuration.load().host == http.url
    assert kube.load(str(path)).configuration.connections == kube.CONNECTIONS == 32


# -- exec credential plugins -----------------------------------------------------------------------------

PLUGIN = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    from pathlib import Path
    runs = Path(os.environ["RUNS"])
    n = int(runs.read_text() or 0) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
    assert info["spec"]["interactive"] is False
    if os.environ.get("FAIL"):
        sys.stderr.write("no credentials for you\\n")
        sys.exit(3)
    status = {{}}
    if os.environ.get("CERT"):
        status["clientCertificateData"] = Path(os.environ["CERT"]).read_text()
        status["clientKeyData"] = Path(os.environ["KEY"]).read_text()
    else:
        status["token"] = f"{{sys.argv[1]}}-{{os.environ['SUFFIX']}}-{{n}}"
    if os.environ.get("EXPIRES"):
        status["expirationTimestamp"] = os.environ["EXPIRES"]
    print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}}))
""")


def _exec_kubeconfig(tmp_path: Path, server: str, env: dict[str, str], api_version: str,
                     cluster: dict[str, Any] | None = None) -> Path:
    plugin = tmp_path / "bin" / "creds"
    plugin.parent.mkdir(exist_ok=True)
    plugin.write_text(PLUGIN.format(python=sys.executable))
    plugin.chmod(0o755)
    user = {"exec": {"apiVersion": api_version, "command": "./bin/creds", "args": ["tok"],
                     "env": [{"name": "RUNS", "value": str(tmp_path / "runs")}, {"name": "SUFFIX", "value": "x"},
                             *({"name": k, "value": v} for k, v in env.items())]}}
    return _one(tmp_path / "config", {"server": server, **(cluster or {})}, user)


@pytest.mark.parametrize("api_version", kubeclient.EXEC_API_VERSIONS)
def test_exec_plugin_token_is_cached_until_it_expires(http: Server, tmp_path: Path, api_version: str) -> None:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    api = ApiClient(Configuration.from_kubeconfig(_exec_kubeconfig(tmp_path, http.url, {"EXPIRES": later},
                                                                   api_version)))
    api.request("GET", "/a")
    api.request("GET", "/b")
    assert [s["headers"]["Authorization"] for s in http.seen] == ["Bearer tok-x-1"] * 2
    assert (tmp_path / "runs").read_text() == "1"


def test_exec_plugin_runs_again_once_expired_and_after_a_401(http: Server, tmp_path: Path) -> None:
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    path = _exec_kubeconfig(tmp_path, http.url, {"EXPIRES": past}, "client.authentication.k8s.io/v1")
    api = ApiClient(Configuration.from_kubeconfig(path))
    api.request("GET", "/a")
    api.request("GET", "/b")
    assert [s["headers"]["Authorization"] for s in http.seen] == ["Bearer tok-x-1", "Bearer tok-x-2"]

    # No expiry: kept until the API server refuses it; then the plugin runs once more.
    (tmp_path / "runs").unlink()
    path = _exec_kubeconfig(tmp_path, http.url, {}, "client.authentication.k8s.io/v1")
    api = ApiClient(Configuration.from_kubeconfig(path))
    http.seen.clear()
    http.tokens = {"tok-x-1"}
    api.request("GET", "/a")
    http.tokens = {"tok-x-2"}  # revoked
    assert api.request("GET", "/b") == {"path": "/b"}
    assert [s["headers"]["Authorization"] for s in http.seen] == ["Bearer tok-x-1", "Bearer tok-x-1", "Bearer tok-x-2"]
    # Refused again with the fresh credential: the 401 is the caller's, the plugin is not run in a loop.
    http.tokens = set()
    with pytest.raises(ApiException) as err:
        api.request("GET", "/c")
    assert err.value.status == 401 and (tmp_path / "runs").read_text() == "3"
    assert "tok-x" not in str(err.value)


def test_exec_plugin_client_certificate(https: Server, certs: PKI, tmp_path: Path) -> None:
    path = _exec_kubeconfig(tmp_path, https.url, {"CERT": str(certs.client.cert), "KEY": str(certs.client.key)},
                            "client.authentication.k8s.io/v1beta1",
                            {"certificate-authority": str(certs.ca.cert), "tls-server-name": "api.example.internal"})
    _get(Configuration.from_kubeconfig(path))
    assert https.seen[-1]["client_cn"] == "jane" and "Authorization" not in https.seen[-1]["headers"]


def test_exec_plugin_failures_are_config_exceptions(http: Server, tmp_path: Path) -> None:
    path = _exec_kubeconfig(tmp_path, http.url, {"FAIL": "1"}, "client.authentication.k8s.io/v1")
    with pytest.raises(ConfigException, match="exited with 3: no credentials for you"):
        _get(Configuration.from_kubeconfig(path))
    path = _one(tmp_path / "config2", {"server": http.url},
                {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "no-such-plugin-xyz",
                          "installHint": "install it from example.com"}})
    with pytest.raises(ConfigException, match=r"command not found \(install it from example\.com\)"):
        _get(Configuration.from_kubeconfig(path))
    path = _one(tmp_path / "config3", {"server": http.url},
                {"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}})
    with pytest.raises(ConfigException, match="v1alpha1"):
        Configuration.from_kubeconfig(path)


# -- requests and errors --------------------------------------------------------------------------------

def test_refusals_raise_api_exception_with_the_status(http: Server) -> None:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "AlreadyExists",
              "message": 'pods "p" already exists'}
    http.respond = lambda method, _path: (409, status) if method == "POST" else (404, {**status, "code": 404})
    api = ApiClient(Configuration(host=http.url, credentials=kubeclient.Credentials(token="sekrit")))
    with pytest.raises(ApiException) as err:
        kubeclient.CoreV1Api(api).create_namespaced_pod("ns", {"metadata": {"name": "p"}})
    exc = err.value
    assert (exc.status, exc.reason) == (409, "Conflict")
    assert json.loads(exc.body or "") == status and exc.headers["Audit-Id"] == "a-1"
    assert kube.api_error_message(exc) == 'pods "p" already exists'
    assert str(exc) == '(409) Reason: Conflict: pods "p" already exists'
    assert "sekrit" not in str(exc) + repr(exc) + str(exc.headers)
    assert kube.Kube(api).get_pod("ns", "p") is None  # 404: gone
    # Built by hand, as the tests' fakes do.
    assert kube.api_error_message(ApiException(status=500, reason="Internal Server Error")) == "Internal Server Error"


def test_requests_on_the_wire(http: Server) -> None:
    """Paths, query parameters, content types and bodies as the API expects them."""
    api = ApiClient(Configuration(host=http.url))
    custom, core = kubeclient.CustomObjectsApi(api), kubeclient.CoreV1Api(api)
    custom.list_cluster_custom_object("g.io", "v1", "things", label_selector="a=b,c!=d", resource_version="0")
    custom.patch_namespaced_custom_object("g.io", "v1", "ns", "things", "t 1", {"spec": {"x": None}})
    custom.patch_namespaced_custom_object("g.io", "v1", "ns", "things", "t", [{"op": "remove", "path": "/spec"}])
    custom.replace_cluster_custom_object_status("g.io", "v1", "things", "t", {"status": {}})
    core.patch_node("n", {"spec": {}})
    core.patch_namespaced_pod("p", "ns", {"metadata": {}}, content_type=kubeclient.MERGE_PATCH)
    core.delete_namespaced_pod("p", "ns", body={"gracePeriodSeconds": 0}, grace_period_seconds=0)
    got = [(s["method"], s["url_path"], s["query"], s["type"], s["body"]) for s in http.seen]
    assert got == [
        ("GET", "/apis/g.io/v1/things", {"labelSelector": ["a=b,c!=d"], "resourceVersion": ["0"]}, None, None),
        ("PATCH", "/apis/g.io/v1/namespaces/ns/things/t%201", {}, "application/merge-patch+json",
         {"spec": {"x": None}}),
        ("PATCH", "/apis/g.io/v1/namespaces/ns/things/t", {}, "application/json-patch+json",
         [{"op": "remove", "path": "/spec"}]),
        ("PUT", "/apis/g.io/v1/things/t/status", {}, "application/json", {"status": {}}),
        ("PATCH", "/api/v1/nodes/n", {}, "application/strategic-merge-patch+json", {"spec": {}}),
        ("PATCH", "/api/v1/namespaces/ns/pods/p", {}, "application/merge-patch+json", {"metadata": {}}),
        ("DELETE", "/api/v1/namespaces/ns/pods/p", {"gracePeriodSeconds": ["0"]}, "application/json",
         {"gracePeriodSeconds": 0}),
    ]
    with pytest.raises(TypeError, match="unknown query parameter"):
        core.list_node(labelSelector="x")


def test_unreachable_server_raises_urllib3_errors_quickly() -> None:
    api = ApiClient(Configuration(host="http://127.0.0.1:1"))
    t0 = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        api.request("GET", "/api")
    assert time.monotonic() - t0 < 5


def test_connection_pool_is_kept_alive_and_sized(http: Server) -> None:
    api = ApiClient(Configuration(host=http.url))
    for _ in range(5):
        api.request("GET", "/x")
    pool = api._pool_manager().connection_from_url(http.url)
    assert pool.num_connections == 1 and pool.pool is not None and pool.pool.maxsize == kubeclient.CONNECTIONS


# -- watches ---------------------------------------------------------------------------------------------

def test_json_lines_split_anywhere() -> None:
    events = [{"type": "ADDED", "object": {"metadata": {"name": f"o{i}", "resourceVersion": str(i)}}}
              for i in range(3)]
    raw = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    for size in (1, 7, 64, len(raw)):
        chunks = [raw[i:i + size] for i in range(0, len(raw), size)]
        assert list(kubeclient.iter_json_lines(iter(chunks))) == events
    assert list(kubeclient.iter_json_lines(iter([raw.rstrip(b"\n")]))) == events  # no final newline
    assert list(kubeclient.iter_json_lines(iter([b"\n", b"  \n"]))) == []
    with pytest.raises(ValueError, match="not a JSON event"):
        list(kubeclient.iter_json_lines(iter([b"{oops\n"])))
    with pytest.raises(ValueError, match="not an event"):
        list(kubeclient.iter_json_lines(iter([b"[1]\n"])))


@pytest.fixture
def watch_server() -> Iterator[tuple[str, list[dict[str, Any]], threading.Event]]:
    """Answers a watch with chunked events: ADDED, BOOKMARK, ERROR 410; `/hang` sends one event and
    then nothing until the test ends."""
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            seen.append({"path": url.path, "query": urllib.parse.parse_qs(url.query)})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = [
                {"type": "ADDED", "object": {"kind": "Node", "metadata": {"name": "n1", "resourceVersion": "11"}}},
                {"type": "BOOKMARK", "object": {"kind": "Node", "metadata": {"resourceVersion": "12"}}},
                {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                             "code": 410, "reason": "Expired", "message": "too old resource version"}},
            ]
            raw = b"".join(json.dumps(e).encode() + b"\n" for e in events)
            if url.path == "/hang":
                raw = json.dumps(events[0]).encode() + b"\n"
            for piece in (raw[:10], raw[10:50], raw[50:]):  # events split across chunks
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
            if url.path == "/hang":
                done.wait(30)
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen, done
    finally:
        done.set()
        httpd.shutdown()
        httpd.server_close()


def test_watch_yields_bookmarks_and_errors(watch_server: tuple[str, list[dict[str, Any]], threading.Event]) -> None:
    url, seen, _ = watch_server
    w = kubeclient.Watch(ApiClient(Configuration(host=url)))
    events = list(w.stream(kubeclient.core_path("nodes"), resource_version="10", timeout_seconds=300,
                           allow_watch_bookmarks=True, field_selector="metadata.name=n1"))
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK", "ERROR"]
    assert events[2]["object"]["code"] == 410
    assert seen[0] == {"path": "/api/v1/nodes", "query": {
        "watch": ["true"], "resourceVersion": ["10"], "timeoutSeconds": ["300"], "allowWatchBookmarks": ["true"],
        "fieldSelector": ["metadata.name=n1"]}}


def test_watch_stop_ends_a_blocked_stream(watch_server: tuple[str, list[dict[str, Any]], threading.Event]) -> None:
    url, _, _ = watch_server
    w = kubeclient.Watch(ApiClient(Configuration(host=url)))
    got: list[str] = []
    ended = threading.Event()

    def consume() -> None:
        for ev in w.stream("/hang"):
            got.append(ev["type"])
        ended.set()

    threading.Thread(target=consume, daemon=True).start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == ["ADDED"]
    w.stop()
    assert ended.wait(5), "stop() ends a stream blocked in a read"


# -- no `kubernetes` package in any operator process -----------------------------------------------------

def test_operator_processes_do_not_import_the_kubernetes_package() -> None:
    code = ("import sys, failovervm.controller.main, failovervm.agent.main, failovervm.cli, kopf; "
            "print(sorted(m for m in sys.modules if m == 'kubernetes' or m.startswith('kubernetes.')))")
    # Not even installed: Kopf imports it whenever it can (kopf/_cogs/helpers/thirdparty.py).
    assert importlib.util.find_spec("kubernetes") is None, "remove it: hack/install-deps.sh does"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "operator")})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
