#!/usr/bin/env python3
"""Peer-runtime interop check: python-diameter's own `Node` talks to the
server on its own (its CER, its own watchdog timer, its own DPR at stop).

usage: node_peer.py [HOST [PORT]]       (defaults 127.0.0.1 3868)

Checks, one line each, exit 1 at the first failure:
  1. the Node's CER is answered with CEA 2001 from gyro.localdomain
  2. the Node's watchdog (idle timeout 2 s) sends a DWR that gets DWA 2001
  3. Node.stop() sends DPR (Disconnect-Cause REBOOTING) and gets DPA 2001,
     and the connection is gone afterwards

Environment overrides: GYRO_ORIGIN_HOST, GYRO_ORIGIN_REALM.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

try:
    from diameter.message import constants as C
    from diameter.node import Node
    from diameter.node.application import SimpleThreadingApplication
except ImportError as e:
    print(f"FAIL setup: python-diameter is not importable ({e}); "
          f"install it with: pip install python-diameter==0.9.0")
    sys.exit(2)

SERVER_HOST = os.environ.get("GYRO_ORIGIN_HOST", "gyro.localdomain")
SERVER_REALM = os.environ.get("GYRO_ORIGIN_REALM", "localdomain")
WAIT = 10.0


class WatchedNode(Node):
    """Node that records the base-protocol answers it receives."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.cea = threading.Event()
        self.dwa = threading.Event()
        self.dpa = threading.Event()
        self.got: dict[str, object] = {}

    def receive_cea(self, conn, message):
        self.got["cea_rc"] = message.result_code
        self.got["cea_host"] = message.origin_host
        self.got["cea_realm"] = message.origin_realm
        super().receive_cea(conn, message)
        self.cea.set()

    def receive_dwa(self, conn, message):
        self.got["dwa_rc"] = message.result_code
        super().receive_dwa(conn, message)
        self.dwa.set()

    def receive_dpa(self, conn, message):
        self.got["dpa_rc"] = message.result_code
        super().receive_dpa(conn, message)
        self.dpa.set()


def fail(msg: str) -> int:
    print(f"FAIL {msg}", flush=True)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) > 3 or (len(argv) > 1 and argv[1] in ("-h", "--help")):
        print(__doc__)
        return 2
    host = argv[1] if len(argv) > 1 else "127.0.0.1"
    port = int(argv[2]) if len(argv) > 2 else 3868
    logging.basicConfig(level=os.environ.get("NODE_PEER_LOG", "WARNING"),
                        format="  node: %(name)s %(levelname)s %(message)s")

    node = WatchedNode("pgw1.test.example", "test.example",
                       vendor_ids=[C.VENDOR_TGPP])
    node.vendor_id = C.VENDOR_TGPP
    node.product_name = "gyro-interop-node-peer"
    node.wakeup_interval = 1      # timers are only checked this often
    node.cea_timeout = 5
    node.dwa_timeout = 5
    node.idle_timeout = 2         # -> a DWR after ~2-3 s of silence

    peer = node.add_peer(f"aaa://{SERVER_HOST}:{port};transport=tcp",
                         SERVER_REALM, ip_addresses=[host],
                         is_persistent=True)
    # The CER advertises the Auth-Application-Ids of the added applications.
    app = SimpleThreadingApplication(
        C.APP_DIAMETER_CREDIT_CONTROL_APPLICATION, is_auth_application=True)
    node.add_application(app, [peer])

    node.start()
    rc = 0
    try:
        if not node.cea.wait(WAIT):
            return fail(f"Node CER -> CEA: no CEA within {WAIT:.0f} s "
                        f"(is the server on {host}:{port}?)")
        if node.got["cea_rc"] != 2001:
            return fail(f"Node CER -> CEA: Result-Code {node.got['cea_rc']}, want 2001")
        if node.got["cea_host"] != SERVER_HOST.encode():
            return fail(f"Node CER -> CEA: Origin-Host {node.got['cea_host']!r}, "
                        f"want {SERVER_HOST!r}")
        if node.got["cea_realm"] != SERVER_REALM.encode():
            return fail(f"Node CER -> CEA: Origin-Realm {node.got['cea_realm']!r}, "
                        f"want {SERVER_REALM!r}")
        if not peer.connection:
            return fail("Node CER -> CEA: peer connection not ready after CEA")
        print(f"PASS Node CER -> CEA 2001 (Origin-Host {SERVER_HOST})", flush=True)

        if not node.dwa.wait(WAIT):
            return fail(f"Node watchdog DWR -> DWA: no DWA within {WAIT:.0f} s")
        if node.got["dwa_rc"] != 2001:
            return fail(f"Node watchdog DWR -> DWA: Result-Code {node.got['dwa_rc']}")
        print("PASS Node watchdog DWR -> DWA 2001", flush=True)
    finally:
        t0 = time.time()
        node.stop(wait_timeout=int(WAIT))
        stop_s = time.time() - t0
    if not node.dpa.is_set():
        return fail("Node stop: DPR sent but no DPA received")
    if node.got["dpa_rc"] != 2001:
        return fail(f"Node stop: DPA Result-Code {node.got['dpa_rc']}, want 2001")
    if node.connections:
        return fail(f"Node stop: connection still open after {stop_s:.1f} s")
    print(f"PASS Node stop: DPR -> DPA 2001, connection closed ({stop_s:.1f} s)",
          flush=True)
    print("node_peer: all checks passed", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
