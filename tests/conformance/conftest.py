"""Fixtures: a real clustercred server on an ephemeral port, and the official Google clients pointed at it."""

import os
import queue
import subprocess
import tempfile
import threading
import uuid

import google.auth.credentials
import grpc
import pytest

PROJECT = "conformance-project"
LOCATION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"


class StaticTokenCredentials(google.auth.credentials.Credentials):
    """A fixed bearer token. refresh() is a no-op so a 401 surfaces as Unauthenticated instead of RefreshError."""

    def __init__(self, token):
        super().__init__()
        self.token = token

    def refresh(self, request):
        pass

    @property
    def valid(self):
        return True


class NoCredentials(StaticTokenCredentials):
    """Sends no authorization header at all (the agent-token exchange, and unauthenticated probes)."""

    def __init__(self):
        super().__init__(None)

    def apply(self, headers, token=None):
        pass


class AuthInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token):
        self._token = token

    def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or [])
        if self._token is not None:
            metadata.append(("authorization", f"Bearer {self._token}"))
        return continuation(details._replace(metadata=metadata), request)


class Server:
    def __init__(self, data_dir, extra_args=()):
        self.data_dir = data_dir
        self.tls = "--tls-auto" in extra_args
        binary = os.environ["CLUSTERCRED_BIN"]
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, *extra_args],
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(data_dir, "server.log"), "ab"),
            text=True,
        )
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            self.stop()
            raise RuntimeError("clustercred did not announce its address within 60 s")
        assert line.startswith("listening on "), line
        self.addr = line.split()[-1]
        with open(os.path.join(data_dir, "admin.token")) as f:
            self.token = f.read().strip()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://{self.addr}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def channel(self, token="admin"):
        token = self.token if token == "admin" else token
        return grpc.intercept_channel(grpc.insecure_channel(self.addr), AuthInterceptor(token))

    def alloydb(self, transport, version="v1", token="admin"):
        if version == "v1":
            from google.cloud import alloydb_v1 as mod
            from google.cloud.alloydb_v1.services.alloy_db_admin.transports import AlloyDBAdminGrpcTransport as T
        else:
            from google.cloud import alloydb_v1beta as mod
            from google.cloud.alloydb_v1beta.services.alloy_db_admin.transports import (
                AlloyDBAdminGrpcTransport as T,
            )
        return self._client(mod.AlloyDBAdminClient, T, "alloydb", transport, token)

    def edge(self, transport, token="admin"):
        from google.cloud import edgecontainer_v1 as mod
        from google.cloud.edgecontainer_v1.services.edge_container.transports import EdgeContainerGrpcTransport as T

        return self._client(mod.EdgeContainerClient, T, "edgecontainer", transport, token)

    def gke(self, transport, token="admin"):
        from google.cloud import gke_multicloud_v1 as mod
        from google.cloud.gke_multicloud_v1.services.attached_clusters.transports import (
            AttachedClustersGrpcTransport as T,
        )

        return self._client(mod.AttachedClustersClient, T, "gkemulticloud", transport, token)

    def _client(self, cls, grpc_transport, prefix, transport, token):
        token = self.token if token == "admin" else token
        if transport == "grpc":
            return cls(transport=grpc_transport(channel=self.channel(token)))
        credentials = (
            NoCredentials() if token is None else StaticTokenCredentials(token)
        )
        return cls(
            transport="rest", client_options={"api_endpoint": f"{self.url}/{prefix}"}, credentials=credentials
        )


@pytest.fixture(scope="session")
def server():
    with tempfile.TemporaryDirectory(prefix="clustercred-conformance-") as d:
        s = Server(d)
        yield s
        s.stop()


@pytest.fixture
def start_server():
    """Starts servers on data directories of the test's choosing (for restarts); stops them afterwards."""
    started = []

    def start(data_dir, extra_args=()):
        s = Server(data_dir, extra_args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(params=["rest", "grpc"])
def transport(request):
    return request.param


@pytest.fixture
def uid():
    return "t" + uuid.uuid4().hex[:10]
