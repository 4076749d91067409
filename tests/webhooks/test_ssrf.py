"""The SSRF policy: which URLs and addresses a webhook may reach."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from agentcore.errors import UnsafeUrl
from agentcore.webhooks.ssrf import AddressPolicy, Unresolvable, embedded_ipv4, parse_url


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # AWS/GCP metadata
        "100.100.100.200",  # Alibaba metadata (shared address space)
        "168.63.129.16",  # Azure wire server
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not AddressPolicy().permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert AddressPolicy().permits(ipaddress.ip_address(address))


#: IPv6 forms that carry an IPv4 address: (form, refused example, carried IPv4, public example).
EMBEDDED = [
    ("IPv4-mapped", "::ffff:7f00:1", "127.0.0.1", "::ffff:808:808"),
    ("IPv4-translated", "::ffff:0:7f00:1", "127.0.0.1", "::ffff:0:808:808"),
    ("IPv4-translated", "::ffff:0:a9fe:a9fe", "169.254.169.254", "::ffff:0:5db8:d822"),
    ("IPv4-compatible", "::127.0.0.1", "127.0.0.1", "::8.8.8.8"),
    ("IPv4-compatible", "::a00:1", "10.0.0.1", "::5db8:d822"),
    ("NAT64", "64:ff9b::a9fe:a9fe", "169.254.169.254", "64:ff9b::808:808"),
    ("NAT64", "64:ff9b::a00:1", "10.0.0.1", "64:ff9b::5db8:d822"),
    ("NAT64", "64:ff9b::a83f:8110", "168.63.129.16", "64:ff9b::101:101"),
    # Local-use NAT64: the /48 position is loopback although the /96 one is public.
    ("NAT64 local-use", "64:ff9b:1:7f00:0:100:808:808", "127.0.0.1", "64:ff9b:1:808:8:808:808:808"),
    ("NAT64 local-use", "64:ff9b:1::a9fe:a9fe", "169.254.169.254", "64:ff9b:1:808:8:808:808:808"),
    ("6to4", "2002:7f00:1::", "127.0.0.1", "2002:808:808::1"),
    ("6to4", "2002:a9fe:a9fe::1", "169.254.169.254", "2002:5db8:d822::"),
    # Teredo: server 8.8.8.8, client obfuscated (~0xf5fffffe = 10.0.0.1 / ~0xfefefefe = 1.1.1.1).
    ("Teredo client", "2001:0:808:808::f5ff:fffe", "10.0.0.1", "2001:0:808:808::fefe:fefe"),
    ("Teredo server", "2001:0:7f00:1::fefe:fefe", "127.0.0.1", "2001:0:808:808::fefe:fefe"),
]


@pytest.mark.parametrize(("form", "refused", "carried", "public"), EMBEDDED)
def test_ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4(
    form: str, refused: str, carried: str, public: str
) -> None:
    refused_address = ipaddress.IPv6Address(refused)
    carries = embedded_ipv4(refused_address) or ()
    assert ipaddress.IPv4Address(carried) in carries, form
    assert not AddressPolicy().permits(refused_address), form
    assert AddressPolicy().permits(ipaddress.IPv6Address(public)), form
    # The same rules: allowing the IPv4 addresses opens the IPv6 form that carries them.
    assert AddressPolicy([f"{a}/32" for a in carries]).permits(refused_address), form


@pytest.mark.parametrize("address", ["fec0::1", "fec0:1::2", "feff::1"])
def test_site_local_ipv6_is_refused(address: str) -> None:
    assert not AddressPolicy().permits(ipaddress.ip_address(address))


def test_plain_ipv6_carries_no_ipv4() -> None:
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700:4700::1111")) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/hook",
        "http://[64:ff9b::a00:1]/hook",
        "http://[::127.0.0.1]/hook",
        "http://[::ffff:0:7f00:1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://[fec0::1]/hook",
    ],
)
async def test_registration_refuses_ipv6_literals_that_reach_internal_ipv4(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        await AddressPolicy().check_registration(url)


@pytest.mark.parametrize("answer", ["64:ff9b::a9fe:a9fe", "2002:7f00:1::", "fec0::1", "10.0.0.1"])
async def test_resolved_addresses_get_the_same_check(
    monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    # A name whose DNS answer is an embedded form is refused like the literal, at
    # registration and at delivery time (resolve): one public answer does not hide it.
    async def getaddrinfo(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        family = socket.AF_INET6 if ":" in answer else socket.AF_INET
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (family, socket.SOCK_STREAM, 6, "", (answer, port)),
        ]

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    policy = AddressPolicy()
    with pytest.raises(UnsafeUrl, match="non-public"):
        await policy.resolve(parse_url("https://hooks.example.net/x"))
    with pytest.raises(UnsafeUrl, match="non-public"):
        await policy.check_registration("https://hooks.example.net/x")


def test_allowed_networks_open_exactly_what_they_name() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "10.0.0.0/24"])
    assert policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert policy.permits(ipaddress.ip_address("10.0.0.9"))
    assert not policy.permits(ipaddress.ip_address("10.0.1.9"))
    assert not policy.permits(ipaddress.ip_address("169.254.169.254"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http:///nohost",
        "https://user:pw@example.com/",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/" + "a" * 2100,
        "example.com/hook",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        parse_url(url)


def test_default_ports() -> None:
    assert parse_url("https://example.com/x").port == 443
    assert parse_url("http://example.com/x").port == 80
    assert parse_url("http://example.com:8080/x").port == 8080


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
    ],
)
async def test_registration_refuses_urls_that_reach_internal_addresses(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        await AddressPolicy().check_registration(url)


async def test_registration_accepts_loopback_when_allowed() -> None:
    target = await AddressPolicy(["127.0.0.0/8"]).check_registration("http://127.0.0.1:9/hook")
    assert target.host == "127.0.0.1"


async def test_an_address_literal_is_checked_on_the_spot_and_not_cached() -> None:
    policy = AddressPolicy(["127.0.0.0/8"])
    for port in range(50):
        await policy.check_registration(f"http://127.0.0.1:{port}/hook")
    with pytest.raises(UnsafeUrl):
        await policy.check_registration("http://10.0.0.1/hook")
    assert policy._registration == {}


async def test_a_refused_host_name_stays_refused_from_the_cache() -> None:
    policy = AddressPolicy()
    for _ in range(3):
        with pytest.raises(UnsafeUrl):
            await policy.check_registration("http://localhost/hook")
    assert list(policy._registration) == ["localhost:80"]


async def test_a_name_that_does_not_resolve_is_accepted_at_registration() -> None:
    target = await AddressPolicy().check_registration("https://webhook-test.example.com/endpoint")
    assert target.host == "webhook-test.example.com"
    with pytest.raises(Unresolvable):
        await AddressPolicy().resolve(target)


async def test_every_resolved_address_is_checked() -> None:
    # localhost resolves to 127.0.0.1 (and maybe ::1): allowing only IPv4 loopback
    # must still refuse an IPv6 answer, so allow both and check what comes back.
    policy = AddressPolicy(["127.0.0.0/8", "::1/128"])
    addresses = await policy.resolve(parse_url("http://localhost/"))
    assert addresses
    assert all(a.is_loopback for a in addresses)
