"""TLS end to end: a real agent serving HTTPS on 127.0.0.1 with a certificate made in the test; a
client trusting another CA is refused with one clear line, the right CA measures."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509  # the dev extra: certificates are made in the test

from edge_search.cli import main
from edge_search.testing.chaos import free_port
from tests.agent.conftest import TOKEN, auth


def _ca(folder: Path, name: str) -> tuple[object, object]:
    """A self-signed CA (key, certificate), its certificate written to `folder/name.pem`."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edge-search test CA {name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _server_cert(folder: Path, ca_key: object, ca_cert: object) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost signed by the CA; (cert file, key file)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_cert.subject)  # type: ignore[attr-defined]
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_file, key_file = folder / "agent.pem", folder / "agent.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture()
def tls_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A real `edge-search agent serve` over HTTPS on 127.0.0.1 (certificate signed by `ca.pem`),
    killed after the test; yields (url, folder holding ca.pem, wrong-ca.pem and the token file)."""
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    ca_key, ca_cert = _ca(tmp_path, "ca")
    _ca(tmp_path, "wrong-ca")
    cert_file, key_file = _server_cert(tmp_path, ca_key, ca_cert)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_port()
    log = tmp_path / "agent.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "edge_search", "agent", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--token-file", str(token), "--cache", str(tmp_path / "cache"),
                                 "--ssl-certfile", str(cert_file), "--ssl-keyfile", str(key_file),
                                 "--max-measure-time", "5"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                httpx.get(f"{url}/health", headers=auth(), timeout=1.0,
                          verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")))
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
        yield url, tmp_path
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _profile(folder: Path, name: str, url: str, token: Path, tls: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(f"""\
schema_version: 1
name: {name}
description: an agent over TLS on loopback (test)
cpu: {{architecture: x86_64, core_type: vcpu, cores: 2, clock_ghz: 2.5}}
memory: {{ram_mb: 8192, bandwidth_gb_s: 10, reserve_mb: 512}}
precisions: [fp32, int8]
latency:
  method: agent
  agents: [{{url: "{url}", token_file: "{token}"{tls}}}]
""")


def test_wrong_ca_is_refused_in_one_line_and_the_right_ca_measures(
        tls_agent: tuple[str, Path], tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, root = tls_agent
    profiles = root / "profiles"
    token = root / "token"
    _profile(profiles, "tls-wrong", url, token, f', ca_file: "{root / "wrong-ca.pem"}"')
    _profile(profiles, "tls-system", url, token, "")  # the system's trust store does not know the test CA
    _profile(profiles, "tls-right", url, token, f', ca_file: "{root / "ca.pem"}"')
    _profile(profiles, "tls-unchecked", url, token, ", verify: false")
    measure = ["measure", str(tiny_model), "--profiles", str(profiles), "--json", "--max-time", "0.3",
               "--precision-target", "0.2", "--device"]
    for device in ("tls-wrong", "tls-system"):
        capsys.readouterr()
        assert main([*measure, device]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "TLS certificate is not trusted" in err[0] and "certificate verify failed" in err[0]
        assert "ca_file" in err[0] and url in err[0]
    for device in ("tls-right", "tls-unchecked"):
        assert main([*measure, device]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["source"] == "measured" and stats["device"] == device and stats["extra"]["agent"] == url
        assert len(stats["samples_ms"]) >= 2

    # `agent status` checks the certificate the same way
    status = ["agent", "status", url, "--token-file", str(token), "--json", "--ca-file"]
    assert main([*status, str(root / "ca.pem")]) == 0
    assert json.loads(capsys.readouterr().out)["url"] == url
    assert main([*status, str(root / "wrong-ca.pem")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TLS certificate is not trusted" in err[0]


@pytest.mark.parametrize(("tls", "message"), [
    (', ca_file: "ca.pem"', "ca_file and verify apply to https:// agents"),
    (", verify: false", "ca_file and verify apply to https:// agents"),
])
def test_tls_options_on_a_plain_http_agent_are_a_profile_error(tmp_path: Path, tiny_model: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               tls: str, message: str) -> None:
    _profile(tmp_path / "p", "plain", "http://127.0.0.1:9", tmp_path / "token", tls)
    assert main(["measure", str(tiny_model), "--profiles", str(tmp_path / "p"), "--device", "plain"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_unreadable_ca_file_is_one_line(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _profile(tmp_path / "p", "tls", "https://127.0.0.1:9", tmp_path / "token", f', ca_file: "{tmp_path / "none.pem"}"')
    (tmp_path / "token").write_text(TOKEN)
    assert main(["measure", str(tiny_model), "--profiles", str(tmp_path / "p"), "--device", "tls"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read ca_file" in err[0] and "none.pem" in err[0], err
