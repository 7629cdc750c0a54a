"""Source addresses (k6's --local-ips forms) and gateway endpoints."""

from __future__ import annotations

import ipaddress

from loadgen.errors import UsageError


def parse_local_ips(text: str) -> list[str]:
    """'127.0.0.2-127.0.0.5', '10.0.0.0/30' or 'a,b,c' (forms may be mixed by commas)."""
    out: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if "/" in part:
                net = ipaddress.ip_network(part, strict=False)
                hosts = list(net.hosts()) or [net.network_address]
                out.extend(str(h) for h in hosts)
            elif "-" in part:
                first, last = (ipaddress.ip_address(x.strip()) for x in part.split("-", 1))
                if int(last) < int(first) or int(last) - int(first) > 65535:
                    raise ValueError("range is reversed or too large")
                out.extend(str(ipaddress.ip_address(i)) for i in range(int(first), int(last) + 1))
            else:
                out.append(str(ipaddress.ip_address(part)))
        except ValueError as exc:
            raise UsageError(f"--local-ips {part!r}: {exc}") from None
    if not out:
        raise UsageError(f"--local-ips {text!r} names no address")
    return list(dict.fromkeys(out))


def parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = str(text).strip().rpartition(":")
    if not sep:
        host, port = str(text).strip(), str(default_port)
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"gateway endpoint {text!r}: port {port!r} is not a number") from None
    if not host or not 0 < number < 65536:
        raise UsageError(f"gateway endpoint {text!r} must be HOST:PORT with a port 1-65535")
    return host.strip("[]"), number

