"""``host``, ``host:port``, ``[IPv6]`` or ``[IPv6]:port``: one entry of a broker URL's host list,
read the same way for every broker."""

from __future__ import annotations

__all__ = ["split_host_port"]


def split_host_port(entry: str) -> tuple[str, int | None]:
    """The host (without brackets) and the port (None: the scheme's default). ``ValueError``
    saying what is wrong, in words an error message can carry: "an empty or malformed host"
    (no host, an unclosed bracket, a port that is not a number) or "a port out of range in"."""
    if entry.startswith("["):
        host, bracket, after = entry[1:].partition("]")
        port_text: str | None = after[1:] if after.startswith(":") else (None if after or not bracket else "")
    else:
        host, colon, port_text = entry.partition(":")
        port_text = port_text if colon else ""
    if not host or port_text is None or (port_text and not port_text.isdigit()):
        raise ValueError("an empty or malformed host")
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        raise ValueError("a port out of range in")
    return host, port
