"""Loaded at start-up by every Python process the test suite starts (tests/conftest.py puts this
folder first on PYTHONPATH): a connection or datagram to any address outside 127.0.0.0/8 / ::1 is
refused here and recorded in $CEM_NETGUARD_LOG, and the suite fails at its end if anything was
recorded. Tests and benchmarks talk only to this machine; a library that phones home (usage
telemetry, update checks) is caught even when it swallows the error."""
import ipaddress
import os
import socket

_LOG = os.environ.get("CEM_NETGUARD_LOG")


def _allowed(family, address) -> bool:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return True  # unix sockets, netlink...
    host = address[0] if isinstance(address, tuple) else address
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _refuse(family, address):
    line = f"pid {os.getpid()}: connection to {address!r} refused by tests/netguard (tests talk to 127.0.0.0/8 only)"
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(line + "\n")
    raise ConnectionRefusedError(line)


_connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    """A name lookup is traffic too (to the resolver): only literals, localhost and this host's name."""
    name = host.decode() if isinstance(host, bytes) else host
    if name not in (None, "", "localhost", socket.gethostname()):
        try:
            ipaddress.ip_address(name.split("%")[0])
        except ValueError:
            _refuse(socket.AF_INET, (name, args[0] if args else None))
    return _getaddrinfo(host, *args, **kwargs)


def connect(self, address):
    if not _allowed(self.family, address):
        _refuse(self.family, address)
    return _connect(self, address)


def connect_ex(self, address):
    if not _allowed(self.family, address):
        _refuse(self.family, address)
    return _connect_ex(self, address)


def sendto(self, data, *args):
    address = args[-1]
    if not _allowed(self.family, address):
        _refuse(self.family, address)
    return _sendto(self, data, *args)


def install() -> None:
    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
    socket.getaddrinfo = getaddrinfo


if os.environ.get("CEM_NETGUARD_LOG"):
    install()
