"""A throwaway PKI for the dev control plane, made with the openssl command line.

One CA signs the API server's serving certificate, the admin's client certificate (in the
system:masters group) and the aggregation layer's front-proxy client certificate; a separate key pair signs service-account tokens. ECDSA P-256 keys are
used because they are generated in milliseconds and every component accepts them. The same CA
signs webhook servers' certificates (`sign_serving_cert`, the LeaderWorkerSet controller's), so
the API server trusts them through a caBundle of the one CA.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ADMIN_USER = "kiban-admin"
ADMIN_GROUP = "system:masters"
FRONT_PROXY_USER = "front-proxy-client"
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_pub: Path
    front_proxy_cert: Path
    front_proxy_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make the dev cluster's certificates; install openssl")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def create_pki(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Pki:
    """Write the CA, serving, admin and service-account keys into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(*(directory / name for name in (
        "ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "admin.crt", "admin.key", "sa.key", "sa.pub",
        "front-proxy-client.crt", "front-proxy-client.key",
    )))
    _openssl("req", "-x509", "-new", *_EC_KEY, "-keyout", pki.ca_key.name, "-out", pki.ca_cert.name,
             "-subj", "/CN=kiban-dev-ca", "-days", "3650", cwd=directory)
    san = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in (*hosts, "kubernetes", "kubernetes.default"))
    signed_leaf = ["-x509", "-new", *_EC_KEY, "-days", "365", "-CA", pki.ca_cert.name, "-CAkey", pki.ca_key.name,
                   "-addext", "basicConstraints=critical,CA:FALSE"]
    _openssl("req", *signed_leaf, "-keyout", pki.serving_key.name, "-out", pki.serving_cert.name,
             "-subj", "/CN=kube-apiserver", "-addext", f"subjectAltName={san}",
             "-addext", "extendedKeyUsage=serverAuth", cwd=directory)
    _openssl("req", *signed_leaf, "-keyout", pki.admin_key.name, "-out", pki.admin_cert.name,
             "-subj", f"/O={ADMIN_GROUP}/CN={ADMIN_USER}", "-addext", "extendedKeyUsage=clientAuth", cwd=directory)
    # the aggregation layer's client identity (request-header authentication for extension API servers)
    _openssl("req", *signed_leaf, "-keyout", pki.front_proxy_key.name, "-out", pki.front_proxy_cert.name,
             "-subj", f"/CN={FRONT_PROXY_USER}", "-addext", "extendedKeyUsage=clientAuth", cwd=directory)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", pki.service_account_key.name, cwd=directory)
    _openssl("pkey", "-in", pki.service_account_key.name, "-pubout", "-out", pki.service_account_pub.name,
             cwd=directory)
    return pki


def sign_serving_cert(pki: Pki, directory: Path, common_name: str,
                      hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
    """A serving certificate for `hosts` signed by the cluster CA, as directory/tls.crt and tls.key
    (the names controller-runtime's webhook server reads from its cert dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    san = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts)
    _openssl("req", "-x509", "-new", *_EC_KEY, "-days", "365", "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
             "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", key.name, "-out", cert.name,
             "-subj", f"/CN={common_name}", "-addext", f"subjectAltName={san}",
             "-addext", "extendedKeyUsage=serverAuth", cwd=directory)
    return cert, key
