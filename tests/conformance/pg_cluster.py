"""A throwaway PostgreSQL cluster from the installed server binaries (as the postgres user when run as root),
with TLS on and `cert` authentication for everyone but the administrator: the backend of IAM logins."""

import datetime
import glob
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _server_cert():
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca_pem, cert_pem, key_pem)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test backend server CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pem(ca), pem(cert), key_pem


class TlsPostgres:
    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        assert bins, "the PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are a test requirement"
        self.bin = os.path.dirname(bins[-1])
        # Under /tmp directly: the server's user must reach it (pytest's own temporary tree is private).
        base = tempfile.mkdtemp(prefix="clustercred-pg-")
        self.base = base
        self.data = os.path.join(base, "data")
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(base, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-N")
        ca, cert, key = _server_cert()
        self.server_ca_file = os.path.join(base, "backend-server-ca.pem")
        with open(self.server_ca_file, "w") as f:
            f.write(ca)
        self._write("server.crt", cert)
        self._write("server.key", key, 0o600)
        self._write("clients.crt", ca)  # replaced by clustercred's backend client CA, then reloaded
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                    "ssl_ca_file = 'clients.crt'\n")
        self._write("pg_hba.conf", "local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                                   "hostssl all all 127.0.0.1/32 cert\n")
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(base, "server.log"), "-w", "-t", "30", "-o",
                  f"-p {self.port} -k {base} -c listen_addresses=127.0.0.1", "start")

    def _run(self, tool, *args):
        subprocess.run([*self.as_owner, os.path.join(self.bin, tool), *args], check=True, capture_output=True,
                       timeout=60)

    def _write(self, name, text, mode=0o644):
        path = os.path.join(self.data, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        if self.as_owner:
            shutil.chown(path, "postgres")

    @property
    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres?sslrootcert={self.server_ca_file}"

    def sql(self, statement):
        out = subprocess.run(["psql", f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                              "-v", "ON_ERROR_STOP=1", "-tAc", statement], check=True, capture_output=True,
                             text=True, timeout=60)
        return out.stdout.strip()

    def trust_clients_of(self, ca_pem):
        """The operator's step: trust clustercred's backend client CA (ssl_ca_file), then reload."""
        self._write("clients.crt", ca_pem)
        self._run("pg_ctl", "-D", self.data, "reload")
        time.sleep(0.5)

    def stop(self):
        subprocess.run([*self.as_owner, os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
