"""The app's saved pairings: ``devices.json`` (a token and a certificate fingerprint per agent)
and the package-signing key beside it, in the per-user config folder; and how the app
introduces itself when pairing (:func:`client_name`).

``devices.json`` is mode 0600, replaced atomically; the app's package-signing key sits beside it
(``signing-key.pem``). The token is a bearer secret: whoever reads that file can act as this
app towards the device, exactly like an SSH key in ``~/.ssh``.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

from inspector.fsio import fsync_dir, write_atomic
from inspector.link.client import DeviceClient, Pairing
from inspector.link.connection import DeviceError

APP_DIR = "crack-inspector"             # platformdirs app name: the config folder
PAIRINGS_FILE = "devices.json"
SIGNING_KEY_FILE = "signing-key.pem"


class PairingStore:
    """The app's paired devices (``devices.json``) and its package-signing key path, in
    ``root`` (default: platformdirs ``user_config_dir("crack-inspector")``).

    The file is written 0600 to a temporary file, fsynced and renamed over the old one, so a
    crash leaves either the old or the new list, never half of one.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            import platformdirs

            root = platformdirs.user_config_dir(APP_DIR)
        self.root = Path(root)
        self.path = self.root / PAIRINGS_FILE
        self.signing_key_path = self.root / SIGNING_KEY_FILE
        self._lock = threading.Lock()

    def all(self) -> list[Pairing]:
        with self._lock:
            return self._read()

    def get(self, agent_id: str) -> Pairing | None:
        return next((p for p in self.all() if p.agent_id == agent_id), None)

    def find(self, host: str, port: int) -> Pairing | None:
        """The pairing for an address (the most recently saved if several)."""
        found = [p for p in self.all() if p.host == host and p.port == int(port)]
        return found[-1] if found else None

    def save(self, pairing: Pairing) -> None:
        """Add or replace (same ``agent_id``) a pairing."""
        with self._lock:
            items = [p for p in self._read() if p.agent_id != pairing.agent_id]
            items.append(pairing)
            self._write(items)

    def renew_token(self, pairing: Pairing) -> Pairing:
        """A new token from the device for ``pairing``, saved here; the saved pairing."""
        new = Pairing(**{**pairing.to_dict(), "token": DeviceClient.from_pairing(pairing).renew_token()})
        self.save(new)
        return new

    def unpair(self, pairing: Pairing) -> str | None:
        """Forget a device on both sides: unpair on the device (its token dies there), then forget
        it here. A device that cannot be reached (lost, off, far away) is forgotten here all the
        same; the answer (None when all went well) then says to revoke it on the device."""
        note = None
        try:
            DeviceClient.from_pairing(pairing).unpair()
        except DeviceError as exc:
            if exc.api is None or exc.api.status != 401:   # 401: it was already unpaired there
                note = (f"{exc}; forgotten on this computer only: on the device, run "
                        f"inspector-agent --revoke \"{client_name()}\"")
        self.forget(pairing.agent_id)
        return note

    def forget(self, agent_id: str) -> bool:
        """Forget a device on this computer only (see :meth:`unpair`)."""
        with self._lock:
            items = self._read()
            kept = [p for p in items if p.agent_id != agent_id]
            if len(kept) == len(items):
                return False
            self._write(kept)
            return True

    def signing_key(self):
        """The app's Ed25519 package-signing key (made on first use)."""
        from inspector.link.signing import SigningKey

        self._make_root()
        return SigningKey.load_or_create(self.signing_key_path)

    def _read(self) -> list[Pairing]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DeviceError(f"cannot read the saved devices {self.path}: {exc}") from None
        try:
            doc = json.loads(raw)
            return [Pairing.from_dict(d) for d in doc["devices"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DeviceError(f"the saved devices file {self.path} is damaged ({exc}); delete it and pair "
                              f"again") from None

    def _make_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _write(self, items: list[Pairing]) -> None:
        self._make_root()
        data = json.dumps({"version": 1, "devices": [p.to_dict() for p in items]}, indent=2).encode() + b"\n"
        write_atomic(self.path, lambda f: f.write(data), mode=0o600)   # tokens: owner only
        fsync_dir(self.root, best_effort=True)


def client_name() -> str:
    """How this app introduces itself when pairing: ``crack-inspector on <host>``."""
    return f"crack-inspector on {socket.gethostname()}"[:100]
