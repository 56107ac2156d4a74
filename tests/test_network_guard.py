"""The network guard the real-size tests put on their children's PYTHONPATH
(tests/support/netguard): it refuses every connection, datagram and name lookup for a host
that is not loopback, before the kernel is asked, and records each attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.netguard_env import guarded_env

REPO = Path(__file__).resolve().parent.parent

# Each attempt reports what it raised and the socket's local port afterwards: a connect or
# send that reached the kernel would have bound the socket to an ephemeral port (non-zero)
# even when it then failed, so port 0 shows that nothing was sent.
ATTEMPTS = r"""
import json, socket, threading, urllib.request

def attempt(what, call, sock=None):
    try:
        call()
        outcome = "allowed"
    except Exception as exc:
        reason = exc.reason if isinstance(getattr(exc, "reason", None), Exception) else exc
        outcome = type(reason).__name__
    port = sock.getsockname()[1] if sock is not None else None
    return {"what": what, "outcome": outcome, "port": port}

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
threading.Thread(target=lambda: server.accept()[0].sendall(b"hi"), daemon=True).start()
local = socket.create_connection(("localhost", server.getsockname()[1]), timeout=10)
results = [{"what": "loopback", "outcome": local.recv(2).decode(), "port": None}]
tcp = socket.socket()
results.append(attempt("tcp", lambda: tcp.connect(("192.0.2.1", 9)), tcp))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
results.append(attempt("udp", lambda: udp.sendto(b"x", ("8.8.8.8", 53)), udp))
results.append(attempt("dns", lambda: socket.getaddrinfo("huggingface.co", 443)))
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # whatever *_proxy says
results.append(attempt("http", lambda: direct.open("https://huggingface.co", timeout=5)))
print(json.dumps(results))
"""


def test_the_guard_refuses_remote_hosts_before_sending_and_records_them(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    done = subprocess.run(
        [sys.executable, "-c", ATTEMPTS], cwd=tmp_path, env=guarded_env(log, base=os.environ),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = {r["what"]: r for r in json.loads(done.stdout)}
    assert results["loopback"]["outcome"] == "hi"  # loopback traffic still flows
    for what in ("tcp", "udp", "dns", "http"):
        assert results[what]["outcome"] == "NetworkBlocked", results[what]
    assert results["tcp"]["port"] == 0 and results["udp"]["port"] == 0  # never reached the kernel
    recorded = log.read_text().splitlines()
    assert [line.split(" refused")[0] for line in recorded] == [
        "network guard: connect to '192.0.2.1'",
        "network guard: sendto to '8.8.8.8'",
        "network guard: getaddrinfo to 'huggingface.co'",
        "network guard: getaddrinfo to 'huggingface.co'",
    ]
