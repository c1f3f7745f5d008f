"""Network namespaces for workers: each its own, reaching the host only over a veth pair.

The host side is a bridge with a private address; every namespace gets one end of a veth
pair plugged into it and an address of its own in the same /24. A process started in a
namespace reaches the services only through the bridge's address (its loopback is its
own), and cutting the host end of its veth cuts it off, as a pulled cable would.
Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import selectors
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.postgres import require_service


def _ip(*args: str) -> None:
    """Run ``ip ARGS``; AssertionError with its message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    words = [word for line in out.splitlines() for word in line.split()]
    return [
        ipaddress.IPv4Interface(word).network for word in words if "/" in word and word[0].isdigit()
    ]


class Namespace:
    """One namespace with its address; processes started in it see only the veth."""

    def __init__(self, name: str, host_end: str, address: str) -> None:
        self.name = name
        self.host_end = host_end
        self.address = address

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace (the pid is the program's: ip execs it)."""
        with open(log, "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def cut(self) -> None:
        """Pull the cable: the host end of the veth goes down."""
        _ip("link", "set", self.host_end, "down")

    def restore(self) -> None:
        """Plug it back in."""
        _ip("link", "set", self.host_end, "up")


class Network:
    """A bridge on the host and the namespaces plugged into it."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randrange(100)}"
        self.bridge = f"ob{tag}"
        self._tag = tag
        used = _used_networks()
        while True:  # a private /24 that no interface of this machine is in
            subnet = ipaddress.IPv4Network(
                f"10.{random.randrange(64, 250)}.{random.randrange(256)}.0/24"
            )
            if not any(subnet.overlaps(other) for other in used):
                break
        self.subnet = subnet
        self.host_address = str(subnet[1])
        self.namespaces: list[Namespace] = []
        _ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add(self) -> Namespace:
        """A new namespace plugged into the bridge, with the next free address."""
        index = len(self.namespaces)
        name, host_end, inner = f"orc{self._tag}n{index}", f"ov{self._tag}h{index}", "eth0"
        address = str(self.subnet[index + 2])
        _ip("netns", "add", name)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", f"ov{self._tag}p{index}")
        _ip("link", "set", f"ov{self._tag}p{index}", "netns", name)
        _ip("-n", name, "link", "set", f"ov{self._tag}p{index}", "name", inner)
        _ip("link", "set", host_end, "master", self.bridge)
        _ip("link", "set", host_end, "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        namespace = Namespace(name, host_end, address)
        self.namespaces.append(namespace)
        return namespace

    def close(self) -> None:
        """Remove the namespaces, their veths and the bridge (their processes must be gone)."""
        for namespace in self.namespaces:
            with contextlib.suppress(AssertionError):
                _ip("link", "del", namespace.host_end)
            with contextlib.suppress(AssertionError):
                _ip("netns", "del", namespace.name)
        with contextlib.suppress(AssertionError):
            _ip("link", "del", self.bridge)


class Forwarder:
    """Relays TCP connections from ``listen`` to ``target``: a loopback service on the bridge."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="forwarder")
        self._thread.start()

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        with client, upstream, selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.5):
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return

    def close(self) -> None:
        """Stop accepting and end the relays (each relay closes its own sockets)."""
        self._stop.set()
        # joined before the close: a descriptor closed under a waiting thread is reused by
        # the next socket opened, which that thread would then accept on
        self._thread.join(timeout=5)
        self._server.close()


def require_namespaces() -> None:
    """Skip (or fail in CI) unless this process may make network namespaces."""
    if os.geteuid() != 0:
        require_service("network namespaces", "ip netns needs root")
    if shutil.which("ip") is None:
        require_service("network namespaces", "iproute2 (ip) is not installed")


@pytest.fixture
def network() -> Iterator[Network]:
    """A bridge for this test's namespaces, removed afterwards."""
    require_namespaces()
    net = Network()
    try:
        yield net
    finally:
        net.close()
