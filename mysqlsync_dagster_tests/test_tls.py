"""TLS: with a CA and verification on, certificate and host name are checked on every source
connection (extraction included); turning verification off is an explicit choice."""

import datetime as dt
import ipaddress
from pathlib import Path

import dagster as dg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.tools.mariadb_server import MariaDBServer, ServerError
from mysqlsync_dagster_tests.harness import table_resources

PASSWORD = "tls-Pa55@word"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def make_certificates(directory: Path) -> dict[str, str]:
    """A CA, and a server certificate valid for IP 127.0.0.1 only (not for "localhost")."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mysqlsync test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = _key()
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "ca": _write(directory / "ca.pem", ca.public_bytes(pem)),
        "cert": _write(directory / "server.pem", server.public_bytes(pem)),
        "key": _write(
            directory / "server-key.pem",
            server_key.private_bytes(
                pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            ),
        ),
    }


@pytest.fixture(scope="module")
def tls_source(tmp_path_factory, mariadb_servers):
    """A MariaDB source that speaks TLS; its sync user may only connect over TLS."""
    mariadb_servers.target.require_control()  # harness-started servers: this is a CI run
    base = tmp_path_factory.mktemp("tls")
    certs = make_certificates(base)
    server = MariaDBServer(
        base / "server",
        extra_args=(
            f"--ssl-ca={certs['ca']}",
            f"--ssl-cert={certs['cert']}",
            f"--ssl-key={certs['key']}",
        ),
    )
    try:
        server.start()
    except ServerError as error:
        pytest.fail(f"could not start a TLS MariaDB server: {error}")
    engine = MySQLResource(side="SOURCE", url=server.url("")).engine
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE DATABASE shop")
        conn.exec_driver_sql(
            "CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(10), updated_at DATETIME NOT NULL)"
        )
        conn.exec_driver_sql("INSERT INTO shop.t VALUES (1, 'a', NOW()), (2, 'b', NOW())")
        for host in ("127.0.0.1", "localhost"):
            conn.exec_driver_sql(
                f"CREATE USER 'tls_only'@'{host}' IDENTIFIED BY %(pw)s REQUIRE SSL",
                {"pw": PASSWORD},
            )
            conn.exec_driver_sql(f"GRANT SELECT ON shop.* TO 'tls_only'@'{host}'")
    engine.dispose()
    yield server, certs
    server.stop()


def _sync(sync_env, server, certs, host, verify):
    source = MySQLResource(
        side="SOURCE",
        host=host,
        port=str(server.port),
        name="shop",
        user="tls_only",
        password=PASSWORD,
        ssl_ca=certs["ca"],
        ssl_verify=verify,
    )
    resources = table_resources(source, MySQLResource(side="TARGET", url=sync_env.target_url()))
    tables = parse_tables_config([{"table": "t", "primary_key": "id", "modifier": "updated_at"}])
    defs = build_definitions(tables, Settings.from_environ({}))
    return dg.materialize(list(defs.assets), resources=resources, raise_on_error=False)


def _failure_text(result) -> str:
    texts = []
    for event in result.get_step_failure_events():
        error = event.event_specific_data.error
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return "\n".join(texts)


def test_verified_tls_syncs_and_every_source_connection_is_encrypted(sync_env, tls_source):
    server, certs = tls_source
    result = _sync(sync_env, server, certs, "127.0.0.1", "true")
    assert result.success, _failure_text(result)
    assert [r[:2] for r in sync_env.target_rows("t")] == [(1, "a"), (2, "b")]


def test_wrong_host_name_fails_when_verifying(sync_env, tls_source):
    server, certs = tls_source
    result = _sync(sync_env, server, certs, "localhost", "true")
    assert not result.success
    text = _failure_text(result)
    assert "certificate" in text.lower() or "hostname" in text.lower(), text
    assert PASSWORD not in text
    assert "t" not in [r[0] for r in sync_env.target.connect().exec_driver_sql("SHOW TABLES")]


def test_verification_off_is_an_explicit_choice(sync_env, tls_source):
    server, certs = tls_source
    result = _sync(sync_env, server, certs, "localhost", "false")
    assert result.success, _failure_text(result)
    assert len(sync_env.target_rows("t")) == 2
