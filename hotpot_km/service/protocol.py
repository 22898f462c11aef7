"""The wire format between the pool service and its clients: versioned JSON lines.

Every connection opens with a hello from the client, ``{"protocol": "hotpot-km",
"version": 1}``. The service answers with its own hello (its pid and package
version) or, for another protocol or version, with an error naming both versions,
and closes. Then each request ``{"op": ..., ...}`` gets one reply, ``{"ok": true,
...}`` or ``{"ok": false, "error": ..., "refused": bool}``. A client may send its
hello and first request together; replies come in order.
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL = "hotpot-km"
VERSION = 1
#: Longest line either side accepts (an env can be large; nothing legitimate is this large).
LINE_LIMIT = 16 * 2**20


class ProtocolError(ValueError):
    """A peer sent something this side does not understand."""


def hello() -> dict[str, Any]:
    return {"protocol": PROTOCOL, "version": VERSION}


def check_hello(message: dict[str, Any]) -> None:
    """Raise :class:`ProtocolError`, saying what would work, unless ``message`` is our hello."""
    if message.get("protocol") != PROTOCOL:
        raise ProtocolError(f"not a {PROTOCOL} peer (hello was {message!r:.200})")
    version = message.get("version")
    if version != VERSION:
        raise ProtocolError(
            f"unsupported {PROTOCOL} protocol version {version!r}; this side speaks version "
            f"{VERSION}: run the same hotpot_km version for the service and its clients"
        )


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"not a JSON line: {error}") from None
    except RecursionError:  # json's decoder recurses once per level of nesting
        raise ProtocolError("a JSON line nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def info_to_wire(info: dict[str, Any]) -> dict[str, Any]:
    """Connection info as JSON: the session key (bytes in jupyter_client) as text."""
    out = dict(info)
    if isinstance(out.get("key"), bytes):
        out["key"] = out["key"].decode()
    return out


def info_from_wire(data: dict[str, Any]) -> dict[str, Any]:
    """Connection info as jupyter_client's managers hold it (the key as bytes)."""
    out = dict(data)
    if isinstance(out.get("key"), str):
        out["key"] = out["key"].encode()
    return out
