"""The local control plane's pure parts: listening sockets read from /proc, its kwokctl config."""

from __future__ import annotations

from pathlib import Path

from qscale.dev.cluster import (
    LOOPBACK,
    ClusterOptions,
    _kwokctl_config,
    is_loopback,
    listening_sockets,
)

# /proc/net/tcp and tcp6 as the kernel prints them (trimmed to the columns read): 127.0.0.1:2379
# and 0.0.0.0:10250 listening, one established connection, [::1]:9090 and [::]:6443 listening,
# and an IPv4-mapped 127.0.0.1:8080
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111
   1: 00000000:280A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222
   2: 0100007F:094B 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3333
"""
TCP6 = """\
  sl local_address remote_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
   0: 00000000000000000000000001000000:2382 Z:0000 0A 0:0 00:0 0 0 0 4444
   1: 00000000000000000000000000000000:192B Z:0000 0A 0:0 00:0 0 0 0 5555
   2: 0000000000000000FFFF00000100007F:1F90 Z:0000 0A 0:0 00:0 0 0 0 6666
""".replace("Z", "0" * 32)


def test_listening_sockets_from_proc_text():
    got = listening_sockets({"tcp": TCP, "tcp6": TCP6})
    assert got == {
        "1111": "127.0.0.1:2379",
        "2222": "0.0.0.0:10250",
        "4444": "[::1]:9090",
        "5555": "[::]:6443",
        "6666": "127.0.0.1:8080",
    }
    assert [is_loopback(got[k]) for k in sorted(got)] == [True, False, True, False, True]


def test_listening_sockets_of_this_machine_parse():
    # whatever listens here now: every line of the real tables parses
    for addr in listening_sockets().values():
        is_loopback(addr)


def test_kwokctl_config_binds_every_component_to_loopback():
    text = _kwokctl_config(Path("/nonexistent/bin"), ClusterOptions(metrics_server=True))
    lines = text.splitlines()
    assert lines[2:4] == ["options:", f"  bindAddress: {LOOPBACK}"]
    assert text.count("options:") == 1
