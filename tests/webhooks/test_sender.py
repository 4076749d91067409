"""The HTTP sender on its own, against real servers on loopback (plain and TLS):
the checked address is the one dialled, the name is what TLS verifies, and an
endpoint's answer is read no further than the sender needs."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentcore import outbound
from agentcore.webhooks.sender import MAX_ERROR_BODY, HttpSender, SendResult
from agentcore.webhooks.ssrf import AddressPolicy

LOOPBACK = ["127.0.0.0/8"]

#: (method, path, request headers) -> (status, response headers, body).
Answer = Callable[[dict[str, str]], tuple[int, dict[str, str], bytes]]


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused TLS handshake or a client that left: the test checks what it got


class Server:
    """A keep-alive HTTP/1.1 server in a thread, optionally TLS; records what it got."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        self.connections = 0
        self.server_names: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(headers)
                status, extra, body = answer(headers)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _Quiet(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(answer: Answer, tls: ssl.SSLContext | None = None) -> Server:
        started.append(Server(answer, tls))
        return started[-1]

    yield make
    for server in started:
        server.close()


def ok(_headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b"ok"


@pytest.fixture
async def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the event loop resolves, and to what; every lookup is recorded under ``"asked"``."""
    answers: dict[str, list[str]] = {"asked": []}
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_: object) -> list[tuple[Any, ...]]:
        answers["asked"].append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return answers


async def send(sender: HttpSender, url: str, timeout_s: float = 5.0) -> SendResult:
    try:
        return await sender.send(url, {"content-type": "application/json"}, b"{}", timeout_s)
    finally:
        await sender.close()


async def test_the_checked_address_is_dialled_and_the_name_kept(
    serve: Callable[..., Server], dns: dict[str, list[str]]
) -> None:
    server = serve(ok)
    dns["hooks.example.test"] = ["127.0.0.1"]
    result = await send(
        HttpSender(AddressPolicy(LOOPBACK)), f"http://hooks.example.test:{server.port}/h"
    )
    assert result.ok, result
    assert server.requests[0]["host"] == f"hooks.example.test:{server.port}"
    assert dns["asked"] == ["hooks.example.test"]  # the policy's lookup, and no second one


async def test_a_refused_answer_sends_nothing(
    serve: Callable[..., Server], dns: dict[str, list[str]]
) -> None:
    server = serve(ok)
    dns["rebound.example.test"] = ["127.0.0.1"]
    result = await send(HttpSender(AddressPolicy()), f"http://rebound.example.test:{server.port}/")
    assert result.status_code is None and "non-public" in str(result.error)
    assert server.requests == []


async def test_the_next_address_is_tried_when_one_refuses(
    serve: Callable[..., Server], dns: dict[str, list[str]]
) -> None:
    server = serve(ok)  # listens on 127.0.0.1 only: 127.0.0.2 refuses the connection
    dns["two.example.test"] = ["127.0.0.2", "127.0.0.1"]
    result = await send(
        HttpSender(AddressPolicy(LOOPBACK)), f"http://two.example.test:{server.port}/"
    )
    assert result.ok, result
    assert len(server.requests) == 1


async def test_an_error_body_is_read_up_to_the_cap_and_never_decompressed(
    serve: Callable[..., Server],
) -> None:
    big = b"x" * (MAX_ERROR_BODY * 100)
    server = serve(lambda _h: (500, {}, big))
    result = await send(HttpSender(AddressPolicy(LOOPBACK)), f"http://127.0.0.1:{server.port}/")
    assert result.status_code == 500
    assert result.error == "HTTP 500: " + "x" * MAX_ERROR_BODY
    assert "accept-encoding" not in server.requests[0]

    packed = gzip.compress(b"y" * 1_000_000)
    server = serve(lambda _h: (503, {"content-encoding": "gzip"}, packed))
    result = await send(HttpSender(AddressPolicy(LOOPBACK)), f"http://127.0.0.1:{server.port}/")
    assert result.status_code == 503
    assert "y" not in str(result.error)  # the wire bytes, not a megabyte unpacked


async def test_redirects_are_reported_not_followed(serve: Callable[..., Server]) -> None:
    elsewhere = serve(ok)
    server = serve(lambda _h: (307, {"location": f"http://127.0.0.1:{elsewhere.port}/"}, b""))
    result = await send(HttpSender(AddressPolicy(LOOPBACK)), f"http://127.0.0.1:{server.port}/")
    assert result.status_code == 307 and "not followed" in str(result.error)
    assert elsewhere.requests == []


async def test_a_slow_endpoint_times_out(serve: Callable[..., Server]) -> None:
    def slow(_headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        threading.Event().wait(1.0)
        return 200, {}, b"late"

    server = serve(slow)
    result = await send(
        HttpSender(AddressPolicy(LOOPBACK)), f"http://127.0.0.1:{server.port}/", timeout_s=0.2
    )
    assert result.status_code is None and result.error == "timed out after 0.2 s"


# -- TLS -------------------------------------------------------------------------


def certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (it is its own CA): (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def tls_server(serve: Callable[..., Server], cert: tuple[Path, Path]) -> Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return serve(ok, context)


async def test_certificates_are_verified_against_certifi(
    serve: Callable[..., Server], dns: dict[str, list[str]], tmp_path: Path
) -> None:
    server = tls_server(serve, certificate(tmp_path, "hooks.example.test"))
    dns["hooks.example.test"] = ["127.0.0.1"]
    url = f"https://hooks.example.test:{server.port}/"
    result = await send(HttpSender(AddressPolicy(LOOPBACK)), url)
    assert result.status_code is None
    assert "CERTIFICATE_VERIFY_FAILED" in str(result.error), result.error
    assert server.requests == []


async def test_tls_names_the_host_and_a_pooled_connection_serves_only_its_name(
    serve: Callable[..., Server],
    dns: dict[str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One server at one address, its certificate valid for a.example.test only, and
    # trusted here. A keep-alive connection verified for a.example.test must not
    # carry a request for b.example.test, which resolves to the same address.
    cert = certificate(tmp_path, "a.example.test")
    trusting = ssl.create_default_context(cafile=str(cert[0]))
    monkeypatch.setattr(outbound, "tls_context", lambda: trusting)
    server = tls_server(serve, cert)
    dns["a.example.test"] = dns["b.example.test"] = ["127.0.0.1"]
    sender = HttpSender(AddressPolicy(LOOPBACK))
    try:
        first = await sender.send(f"https://a.example.test:{server.port}/", {}, b"{}", 5.0)
        again = await sender.send(f"https://a.example.test:{server.port}/", {}, b"{}", 5.0)
        other = await sender.send(f"https://b.example.test:{server.port}/", {}, b"{}", 5.0)
    finally:
        await sender.close()
    assert first.ok and again.ok, (first, again)
    assert server.connections == 1  # kept alive for a.example.test, never used for b
    assert server.server_names[0] == "a.example.test"
    assert server.requests[0]["host"] == f"a.example.test:{server.port}"
    assert other.status_code is None and "CERTIFICATE_VERIFY_FAILED" in str(other.error), other
    assert "b.example.test" in server.server_names
    assert len(server.requests) == 2
