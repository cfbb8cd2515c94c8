"""Fixtures: a real clustercred server on an ephemeral port, and the official Google clients pointed at it."""

import base64
import os
import queue
import secrets
import shutil
import socket
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
    def __init__(self, data_dir, extra_args=(), token=None):
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
        if token is None:
            with open(os.path.join(data_dir, "admin.token")) as f:
                token = f.read().strip()
        self.token = token

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


class RoundRobin:
    """A TCP proxy on loopback that hands each new connection to the next backend in turn, as a load balancer
    in front of replicas does."""

    def __init__(self, backends):
        self.backends = backends
        self.next = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            host, port = self.backends[self.next % len(self.backends)].rsplit(":", 1)
            self.next += 1
            try:
                upstream = socket.create_connection((host, int(port)))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


class ReplicaPair(Server):
    """Two replicas on one fresh PostgreSQL database behind a round-robin proxy, looking like one Server."""

    def __init__(self, base, admin_url, extra_args=()):
        self.tls = False
        self.dbname = "conformance_%d_%s" % (os.getpid(), secrets.token_hex(4))
        self.admin_url = admin_url
        psql = shutil.which("psql")
        assert psql, "the replica-pair conformance run needs psql"
        subprocess.run([psql, admin_url, "-qc", f"CREATE DATABASE {self.dbname}"], check=True)
        url = admin_url.rsplit("/", 1)[0] + "/" + self.dbname
        key = os.path.join(base, "master.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(32)).decode())
        self.proxy = RoundRobin([])
        # One issuer behind the balancer; caches read the change epoch on every read, so a change made through
        # one replica is seen by the next request on the other (the suite's steps depend on that).
        args = ["--database", url, "--master-key-file", key, "--issuer-url", f"http://{self.proxy.addr}",
                "--cache-staleness-ms", "0", *extra_args]
        dirs = [os.path.join(base, n) for n in ("a", "b")]
        for d in dirs:
            os.mkdir(d, 0o700)
        self.replicas = [Server(dirs[0], args)]
        self.replicas.append(Server(dirs[1], args, token=self.replicas[0].token))
        self.proxy.backends = [r.addr for r in self.replicas]
        self.addr = self.proxy.addr
        self.token = self.replicas[0].token

    def stop(self):
        self.proxy.close()
        for r in self.replicas:
            r.stop()
        subprocess.run(["psql", self.admin_url, "-qc", f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)"])


@pytest.fixture(scope="session")
def server():
    """One server on SQLite; or, with CLUSTERCRED_CONFORMANCE_POSTGRES set, a replica pair on PostgreSQL."""
    with tempfile.TemporaryDirectory(prefix="clustercred-conformance-") as d:
        postgres = os.environ.get("CLUSTERCRED_CONFORMANCE_POSTGRES")
        s = ReplicaPair(d, postgres) if postgres else Server(d)
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
