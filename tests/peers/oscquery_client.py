"""A real OSCQuery client for Lockstep's tests: python-zeroconf to discover, urllib to query.

Browses `_oscjson._tcp.local.` and `_osc._udp.local.` on loopback, prints what it finds, then
queries the first OSCQuery server found: HOST_INFO, the namespace root, and
/lockstep/param/mac_1 until its VALUE is WANT (after sending it that value over OSC to the
advertised `_osc._udp` port), printing each reply as a JSON line.
Then opens a WebSocket on the same port, LISTENs to /lockstep/param/mac_1, sets it to 0.25 over
OSC and prints the binary OSC frames it gets ({"event": "ws-first"/"ws-update"}).
Usage: oscquery_client.py WANT SECONDS   (inside the test network namespace only)
"""

import json
import socket
import sys
import time
import urllib.request

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from websockets.sync.client import connect
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

found = {}


def emit(**fields):
    print(json.dumps(fields), flush=True)


def changed(zeroconf, service_type, name, state_change):
    if state_change is not ServiceStateChange.Added:
        return
    info = zeroconf.get_service_info(service_type, name, timeout=3000)
    if info is None:
        return
    found[service_type] = (info.parsed_addresses(), info.port)
    emit(event="found", type=service_type, name=name, port=info.port,
         addresses=info.parsed_addresses())


def get(port, target):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{target}", timeout=2) as r:
        return r.status, json.loads(r.read() or b"null")


def main():
    want, seconds = float(sys.argv[1]), float(sys.argv[2])
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    ServiceBrowser(zc, ["_oscjson._tcp.local.", "_osc._udp.local."], handlers=[changed])
    emit(event="ready")
    deadline = time.monotonic() + seconds
    while len(found) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    if len(found) < 2:
        emit(event="not-found", found=list(found))
        return
    http_port = found["_oscjson._tcp.local."][1]
    osc_port = found["_osc._udp.local."][1]
    status, info = get(http_port, "/?HOST_INFO")
    emit(event="host_info", status=status, body=info)
    status, root = get(http_port, "/")
    emit(event="root", status=status, params=sorted(
        root["CONTENTS"]["lockstep"]["CONTENTS"]["param"]["CONTENTS"].keys()))
    message = OscMessageBuilder(address="/lockstep/param/mac_1")
    message.add_arg(want, arg_type="f")
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
        message.build().dgram, ("127.0.0.1", osc_port))
    while time.monotonic() < deadline:
        status, node = get(http_port, "/lockstep/param/mac_1?VALUE")
        if node["VALUE"][0] == want:
            emit(event="value", status=status, body=node)
            break
        time.sleep(0.05)
    else:
        emit(event="value-timeout", body=node)
    # WebSocket on the same port: LISTEN to the macro, move it over OSC, get the new value as
    # a binary frame holding the OSC message.
    with connect(f"ws://127.0.0.1:{http_port}/") as ws:
        ws.send(json.dumps({"COMMAND": "LISTEN", "DATA": "/lockstep/param/mac_1"}))
        first = OscMessage(ws.recv(timeout=3))
        emit(event="ws-first", address=first.address, args=list(first.params))
        message = OscMessageBuilder(address="/lockstep/param/mac_1")
        message.add_arg(0.25, arg_type="f")
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
            message.build().dgram, ("127.0.0.1", osc_port))
        while True:
            update = OscMessage(ws.recv(timeout=3))
            if update.params[0] == 0.25:
                emit(event="ws-update", address=update.address, args=list(update.params))
                break
        # A clean close: the server answers with a status code (RFC 6455 §5.5.1).
        ws.close()
        emit(event="ws-closed", code=ws.close_code)
    # A browser's CORS preflight.
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/lockstep", method="OPTIONS",
        headers={"Origin": "http://example.test", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "content-type"})
    with urllib.request.urlopen(request, timeout=3) as reply:
        emit(event="preflight", status=reply.status,
             allow_origin=reply.headers.get("Access-Control-Allow-Origin"),
             allow_methods=reply.headers.get("Access-Control-Allow-Methods"))
    try:
        get(http_port, "/lockstep/param/nothing")
    except urllib.error.HTTPError as e:
        emit(event="missing", status=e.code)
    zc.close()


if __name__ == "__main__":
    main()
