"""Finding agents on the local network: mDNS/DNS-SD with zeroconf.

The agent advertises ``<name>.`` :data:`~inspector.link.protocol.SERVICE_TYPE` with TXT properties
``agent_id``, ``name``, ``tls`` ("1"/"0"), ``cert_sha256`` (the first
:data:`CERT_PREFIX_HEX` hex digits of the certificate fingerprint: enough for the app to tell
agents apart and to check the certificate it meets before pairing; the full fingerprint comes
with the pairing answer) and ``api`` (the API prefix).

Multicast is often unavailable (containers, some Wi-Fi, VPNs): every failure here is logged and
otherwise ignored; the agent works without discovery (the app can be given host:port).
Registration runs on a background thread, so a slow network never delays the agent's start.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
from typing import Any

from inspector.link import protocol
from inspector.errors import InspectorError

log = logging.getLogger(__name__)

CERT_PREFIX_HEX = 16
RESOLVE_TIMEOUT_MS = 1500
STOP_JOIN_S = 5.0


def _instance_name(name: str) -> str:
    # DNS-SD instance labels may hold most characters but not the dot that separates labels
    # (zeroconf would read it as one); at most 63 bytes.
    clean = re.sub(r"[.\x00-\x1f]", "-", name).strip() or "crack-agent"
    return clean.encode("utf-8")[:63].decode("utf-8", "ignore")


def _addresses(host: str) -> list[str]:
    """IPv4 addresses to advertise: ``host`` itself, or every non-loopback one for a wildcard."""
    if host not in ("", "0.0.0.0", "::"):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return [socket.gethostbyname(host)]
        return [str(ip)] if ip.version == 4 else []
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for a in adapter.ips:
            if isinstance(a.ip, str):
                ip = ipaddress.ip_address(a.ip)
                if not ip.is_loopback and not ip.is_link_local:
                    found.append(str(ip))
    return sorted(set(found))


class Advertiser:
    """Registers the agent's service on a background thread; :meth:`stop` unregisters."""

    def __init__(self, *, name: str, port: int, agent_id: str, tls: bool, cert_sha256: str,
                 host: str = "0.0.0.0"):
        self.name, self.port, self.host = name, int(port), host
        self.properties = {"agent_id": agent_id, "name": name, "tls": "1" if tls else "0",
                           "cert_sha256": cert_sha256[:CERT_PREFIX_HEX], "api": protocol.API}
        self._zc: Any = None
        self._info: Any = None
        self._lock = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._register, name="agent-mdns", daemon=True)
        self._thread.start()

    def _register(self) -> None:
        try:
            from zeroconf import IPVersion, ServiceInfo, Zeroconf

            addresses = _addresses(self.host)
            if not addresses:
                log.warning("mDNS: no IPv4 address to advertise for host %r; not advertising", self.host)
                return
            info = ServiceInfo(protocol.SERVICE_TYPE, f"{_instance_name(self.name)}.{protocol.SERVICE_TYPE}",
                               addresses=[socket.inet_aton(a) for a in addresses], port=self.port,
                               properties=self.properties,
                               server=f"{_instance_name(socket.gethostname())}.local.")
            zc = Zeroconf(ip_version=IPVersion.V4Only)
            with self._lock:
                if self._stopped:
                    zc.close()
                    return
                self._zc = zc
            zc.register_service(info, allow_name_change=True)
            with self._lock:
                self._info = info
            log.info("mDNS: advertising %s on %s port %d", info.name, ", ".join(addresses), self.port)
        except Exception as exc:  # noqa: BLE001 - discovery is optional; OSError, zeroconf's errors...
            log.warning("mDNS: cannot advertise (%s: %s); the app must be given host:port", type(exc).__name__, exc)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)
        with self._lock:
            zc, info, self._zc, self._info = self._zc, self._info, None, None
        if zc is None:
            return
        try:
            if info is not None:
                zc.unregister_service(info)
        except Exception as exc:  # noqa: BLE001
            log.debug("mDNS: unregistering failed: %s", exc)
        finally:
            zc.close()


def start_advertising(*, name: str, port: int, agent_id: str, tls: bool, cert_sha256: str,
                      host: str = "0.0.0.0") -> Advertiser:
    """Advertise the agent (in the background); call ``.stop()`` on the result when done."""
    adv = Advertiser(name=name, port=port, agent_id=agent_id, tls=tls, cert_sha256=cert_sha256, host=host)
    adv.start()
    return adv


class DiscoveryError(InspectorError, OSError):
    """mDNS browsing cannot work here (no zeroconf, no multicast, no network): not the same
    answer as "no agent found", so the app can say "enter host:port" with the reason."""


def browse(timeout: float = 3.0) -> list[tuple[str, str, int, dict[str, str]]]:
    """Agents answering within ``timeout`` s: ``[(instance name, host address, port, properties)]``.

    An empty list when none answered. :class:`DiscoveryError` when browsing itself fails; an
    agent that was seen but cannot be resolved is left out (logged)."""
    try:
        from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf
    except ImportError as exc:  # pragma: no cover - zeroconf is a dependency
        raise DiscoveryError(f"mDNS: zeroconf is not installed ({exc})") from None
    names: list[str] = []
    lock = threading.Lock()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            with lock:
                if name not in names:
                    names.append(name)

    try:
        zc = Zeroconf(ip_version=IPVersion.V4Only)
    except Exception as exc:  # noqa: BLE001 - zeroconf raises its own types and OSError
        raise DiscoveryError(f"mDNS does not work on this network ({type(exc).__name__}: {exc})") from None
    found: list[tuple[str, str, int, dict[str, str]]] = []
    try:
        try:
            browser = ServiceBrowser(zc, protocol.SERVICE_TYPE, handlers=[on_change])
            time.sleep(max(0.0, float(timeout)))
            browser.cancel()
        except Exception as exc:  # noqa: BLE001
            raise DiscoveryError(f"mDNS browsing failed ({type(exc).__name__}: {exc})") from None
        with lock:
            candidates = list(names)
        for name in candidates:
            try:
                info = zc.get_service_info(protocol.SERVICE_TYPE, name, timeout=RESOLVE_TIMEOUT_MS)
            except Exception as exc:  # noqa: BLE001 - one bad answer must not hide the others
                log.warning("mDNS: cannot resolve %s (%s: %s)", name, type(exc).__name__, exc)
                continue
            if info is None or not info.parsed_addresses(IPVersion.V4Only) or not info.port:
                log.info("mDNS: %s did not resolve to an IPv4 address and port", name)
                continue
            props = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)):
                     (v.decode("utf-8", "replace") if isinstance(v, bytes) else ("" if v is None else str(v)))
                     for k, v in (info.properties or {}).items()}
            instance = name[: -len(protocol.SERVICE_TYPE) - 1] if name.endswith("." + protocol.SERVICE_TYPE) else name
            found.append((instance, info.parsed_addresses(IPVersion.V4Only)[0], int(info.port), props))
    finally:
        zc.close()
    return found
