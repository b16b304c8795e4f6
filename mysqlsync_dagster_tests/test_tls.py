"""TLS: with a CA and verification on, certificate and host name are checked on every source
connection (extraction included: connectorx reads over TLS too); turning verification off is an
explicit choice."""

import datetime as dt
import ipaddress
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pyarrow as pa
import pymysql
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.errors import ConfigError, SourceReadError
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.pipeline.extract import backend_name
from mysqlsync_dagster.pipeline.source_stream import SourceStream
from mysqlsync_dagster.settings import DatabaseSettings, Settings, database_settings
from mysqlsync_dagster.tools.mariadb_server import MariaDBServer, ServerError
from mysqlsync_dagster_tests.harness import fetch_comparable, table_resources

PASSWORD = "tls-Pa55@word"

# Values that a driver or a type mapping could bend: read over TLS, they must arrive exactly.
TRICKY_DDL = """CREATE TABLE shop.tricky (id INT PRIMARY KEY, bu BIGINT UNSIGNED,
    d65 DECIMAL(65,30), dt6 DATETIME(6), ts6 TIMESTAMP(6) NULL DEFAULT NULL, tneg TIME,
    tbig TIME(6), u4 VARCHAR(50), bl BLOB, js JSON, b64 BIT(64), b5 BIT(5), yr YEAR,
    en ENUM('a', 'b c', 'dé', ''), st SET('x', 'y', 'z'), f FLOAT, db DOUBLE)
    DEFAULT CHARSET=utf8mb4"""
TRICKY_ROWS = """INSERT INTO shop.tricky VALUES
    (1, 18446744073709551615, '99999999999999999999999999999999999.999999999999999999999999999999',
     '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '-838:59:59',
     '100:00:00.000001', '😀 𝄞 ü', 0x00FF00FE0D0A5C, '{"k": [1, 2.5, "ü", null]}',
     b'1111111111111111111111111111111111111111111111111111111111111111', b'10101', 2155, 'dé',
     'x,z', 3.40282e38, 1.7976931348623157e308),
    (2, 0, '-0.000000000000000000000000000001', '1000-01-01 00:00:00.000001',
     '1970-01-01 00:00:01', '-00:00:01', '838:59:59', '', X'', '[]', b'0', b'0', 1901, '', '',
     -16777217, -4.9e-324),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL)"""


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
        conn.exec_driver_sql(TRICKY_DDL)
        conn.exec_driver_sql(TRICKY_ROWS)
        for host in ("127.0.0.1", "localhost"):
            conn.exec_driver_sql(
                f"CREATE USER 'tls_only'@'{host}' IDENTIFIED BY %(pw)s REQUIRE SSL",
                {"pw": PASSWORD},
            )
            conn.exec_driver_sql(f"GRANT SELECT ON shop.* TO 'tls_only'@'{host}'")
    engine.dispose()
    yield server, certs
    server.stop()


def _sync(sync_env, server, certs, host, verify, table="t", modifier="updated_at"):
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
    entry = {"table": table, "primary_key": "id"} | ({"modifier": modifier} if modifier else {})
    tables = parse_tables_config([entry])
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


def _settings(server, certs, host="127.0.0.1", **extra) -> DatabaseSettings:
    values = {
        "SOURCE_DB_HOST": host,
        "SOURCE_DB_PORT": str(server.port),
        "SOURCE_DB_NAME": "shop",
        "SOURCE_DB_USER": "tls_only",
        "SOURCE_DB_PASS": PASSWORD,
        "SOURCE_DB_SSL_CA": certs["ca"],
    }
    return database_settings("SOURCE", values | extra)


def test_connectorx_url_asks_for_the_same_tls_checks_as_pymysql(tmp_path):
    certs = {"ca": str(tmp_path / "my certs" / "ca&1.pem")}
    server = type("Server", (), {"port": 3307})
    verified = _settings(server, certs)
    assert verified.connectorx_url().endswith(
        "?prefer_socket=false&ssl-mode=VERIFY_IDENTITY&ssl-ca="
        + quote(str(tmp_path), safe="/")
        + "/my%20certs/ca%261.pem"
    )
    unverified = _settings(server, certs, SOURCE_DB_SSL_VERIFY="false")
    assert unverified.connectorx_url().endswith("?prefer_socket=false&ssl-mode=REQUIRED")
    plain = database_settings("SOURCE", {"SOURCE_DB_URL": "mysql://u@h/shop"})
    assert plain.connectorx_url() == "mysql://u@h:3306/shop?prefer_socket=false"
    assert backend_name(verified) == backend_name(unverified) == backend_name(plain)
    assert backend_name(plain) == "connectorx"
    # a client certificate (mutual TLS): connectorx cannot present one, PyMySQL reads
    mutual = _settings(server, certs, SOURCE_DB_SSL_CERT="c.pem", SOURCE_DB_SSL_KEY="k.pem")
    assert backend_name(mutual) == "pyarrow"
    with pytest.raises(ConfigError, match="client certificate"):
        mutual.connectorx_url()


def test_extraction_reads_over_verified_tls(tls_source):
    """The reader's own connection is encrypted; the account refuses plaintext; and a host
    name the certificate does not name is refused by the reader itself (not only by the
    PyMySQL connections a sync makes first)."""
    server, certs = tls_source
    with SourceStream() as stream:
        query = "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')"
        batches = list(stream.read(_settings(server, certs).connectorx_url(), query, 10))
    table = pa.Table.from_batches(batches)
    status = dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
    assert status["Ssl_version"].startswith("TLS"), status
    assert status["Ssl_cipher"], status
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        pymysql.connect(
            host="127.0.0.1",
            port=server.port,
            user="tls_only",
            password=PASSWORD,
            ssl_disabled=True,  # PyMySQL would otherwise encrypt when the server offers TLS
        ).close()
    wrong_host = _settings(server, certs, host="localhost").connectorx_url()
    with SourceStream() as stream, pytest.raises(SourceReadError) as failure:
        list(stream.read(wrong_host, "SELECT 1", 10))  # the driver retries for 30 s
    assert "hostname mismatch" in str(failure.value) or "certificate" in str(failure.value)
    assert PASSWORD not in str(failure.value)


def test_tls_extraction_is_connectorx_and_exact(sync_env, tls_source):
    server, certs = tls_source
    result = _sync(sync_env, server, certs, "127.0.0.1", "true", table="tricky", modifier=None)
    assert result.success, _failure_text(result)
    [mat] = result.asset_materializations_for_node("sync_tricky")
    assert "reader_peak_rss_mb" in mat.metadata  # read by connectorx's child process
    source = sa.create_engine(
        server.url("shop"),
        connect_args={"charset": "utf8mb4", "init_command": "SET time_zone = '+00:00'"},
    )
    try:
        expected = fetch_comparable(source, "tricky")
    finally:
        source.dispose()
    assert len(expected) == 3
    assert sync_env.target_rows("tricky") == expected
