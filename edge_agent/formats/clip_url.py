"""The clip API's base URL, written once: the one the CSU is told (status) and the one a local client uses.

The rule for the advertised URL (published in the status as `clip_url`):
- an explicit `clip_server.advertise_url` wins (NAT, a DNS name the CSU knows);
- a specific bind address is advertised as it is;
- a wildcard bind is advertised under the local address this device uses to reach the MQTT broker:
  that route leads to the CSU network, where the collector is. `0.0.0.0` listens on IPv4 only and `::`
  on IPv6 only (asyncio sets IPV6_V6ONLY), so an address of the other family is not advertised;
  `""` listens on both;
- a configured certificate means `https`.
An address that cannot be worked out gives `""`: no URL is better than one the CSU cannot reach.
"""

from __future__ import annotations

from edge_agent.formats.config import ClipServerConfig

IPV4_ANY = "0.0.0.0"
IPV6_ANY = "::"
WILDCARD_BINDS = frozenset({"", IPV4_ANY, IPV6_ANY})


def base_url(settings: ClipServerConfig, host: str, port: int) -> str:
    """`scheme://host:port` (IPv6 hosts in brackets); https when a certificate is configured."""
    scheme = "https" if settings.tls_cert is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def advertised_clip_url(
    settings: ClipServerConfig, broker_facing_address: str, port: int | None = None
) -> str:
    """The URL the CSU should fetch clips from ("" when the server is disabled or no address fits).

    `broker_facing_address` is the local address of this device's connection to the MQTT broker;
    `port` the one the server listens on (the configured one when None; it differs when that is 0).
    """
    if not settings.enabled:
        return ""
    if settings.advertise_url:
        return settings.advertise_url.rstrip("/")
    host = settings.bind
    if host in WILDCARD_BINDS:
        host = broker_facing_address
        is_ipv6 = ":" in host
        if not host or (settings.bind == IPV4_ANY and is_ipv6) or (settings.bind == IPV6_ANY and not is_ipv6):
            return ""
    return base_url(settings, host, settings.port if port is None else port)


def local_clip_url(settings: ClipServerConfig, port: int | None = None) -> str:
    """The URL a client on this same host uses (tests, the demo): a wildcard bind is reached on loopback."""
    host = settings.bind
    if host in WILDCARD_BINDS:
        host = "::1" if host == IPV6_ANY else "127.0.0.1"
    return base_url(settings, host, settings.port if port is None else port)
