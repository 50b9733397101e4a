"""OPC UA client sessions to a line's PLC: one way to build, secure, open and close them.

Shared by the reject gate (`pipeline.actuation.plc.gate`) and the line signals the camera gateway
reads (`pipeline.gateway.triggers`), which sit in one layer and may not import each other. The
settings come in structurally (`PlcConnection`, which `PlcSettings` satisfies) because this layer
may not import `pipeline.settings`. Imports asyncua: import it only where a PLC is talked to.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError

log = logging.getLogger(__name__)

# Keyed by the policy/mode names as asyncua spells them (the settings' StrEnum values).
_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
# What a broken/unreachable connection looks like from asyncua.
LINK_ERRORS = (OSError, ConnectionError, TimeoutError, UaError, EOFError)


class PlcConnection(Protocol):
    """What a session needs from the settings (`pipeline.settings.actuation.PlcSettings`)."""

    @property
    def endpoint(self) -> str | None: ...
    @property
    def security_policy(self) -> str: ...
    @property
    def security_mode(self) -> str: ...
    @property
    def certificate(self) -> Path | None: ...
    @property
    def private_key(self) -> Path | None: ...
    @property
    def server_certificate(self) -> Path | None: ...
    @property
    def application_uri(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def request_timeout_s(self) -> float: ...
    @property
    def heartbeat_poll_s(self) -> float: ...
    def resolved_password(self) -> str: ...
    def resolved_private_key_password(self) -> str | None: ...


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def make_client(s: PlcConnection, name: str) -> Client:
    """A client for ``s.endpoint`` (not yet connected); ``name`` is how the PLC sees this session."""
    assert s.endpoint is not None
    client = Client(s.endpoint, timeout=s.request_timeout_s, watchdog_intervall=max(s.heartbeat_poll_s, 0.5))
    client.application_uri = s.application_uri
    client.name = client.description = name
    client.session_timeout = 60_000
    if s.username:
        client.set_user(s.username)
        client.set_password(s.resolved_password())
    return client


async def open_session(client: Client, s: PlcConnection) -> None:
    """Set the configured security, then connect."""
    if s.security_policy != "None":
        assert s.certificate is not None and s.private_key is not None
        await client.set_security(
            _POLICIES[s.security_policy],
            str(s.certificate),
            str(s.private_key),
            s.resolved_private_key_password(),
            str(s.server_certificate) if s.server_certificate else None,
            _MODES[s.security_mode],
        )
    await client.connect()


async def close_session(client: Client, timeout_s: float) -> None:
    """Disconnect; a link already gone is only closed locally."""
    try:
        await asyncio.wait_for(client.disconnect(), timeout_s)
    except Exception as exc:  # the link is already gone; nothing more to clean up remotely
        log.debug("PLC disconnect: %s", describe(exc))
        try:
            client.disconnect_socket()
        except Exception:
            pass
