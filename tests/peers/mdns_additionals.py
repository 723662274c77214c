"""Ask for each DNS-SD service type given, one query after another within a second, the way a
querier on port 5353 does (python-zeroconf, Apple's mDNSResponder), and report for every
service instance in the answers its SRV target and the A records that came with it.

A responder that rate-limits records per name (RFC 6762 §6) and shares one host name between
its services answers the second query without the address: the querier then cannot reach the
service without asking again. zeroconf is used only to encode and decode the packets (a full
Zeroconf instance would send queries of its own).

Prints one JSON line per answered service instance:
{"event": "answer", "type": ..., "name": ..., "server": ..., "port": ..., "a": [...]}
and {"event": "done"} at the end.
Usage: mdns_additionals.py TYPE...  (run only inside the test network namespace)
"""

import json
import socket
import struct
import sys
import time

from zeroconf import DNSIncoming, DNSOutgoing, DNSQuestion
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_A, _TYPE_PTR, _TYPE_SRV

GROUP = "224.0.0.251"
PORT = 5353


def emit(**fields):
    print(json.dumps(fields), flush=True)


def main():
    types = sys.argv[1:]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Port 5353: a query from any other port is a "legacy" one, answered by unicast without
    # the per-record rate limit, which would hide what a real querier sees.
    s.bind(("", PORT))
    s.setsockopt(
        socket.IPPROTO_IP,
        socket.IP_ADD_MEMBERSHIP,
        socket.inet_aton(GROUP) + socket.inet_aton("127.0.0.1"),
    )
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", 255))
    for ty in types:
        out = DNSOutgoing(_FLAGS_QR_QUERY)
        out.add_question(DNSQuestion(ty, _TYPE_PTR, _CLASS_IN))
        for packet in out.packets():
            s.sendto(packet, (GROUP, PORT))
        time.sleep(0.1)
    s.settimeout(0.1)
    deadline = time.monotonic() + 1.5
    records = []
    while time.monotonic() < deadline:
        try:
            data, _ = s.recvfrom(9000)
        except socket.timeout:
            continue
        msg = DNSIncoming(data)
        if not msg.is_response():
            continue
        # One response at a time: the A records must come with the service's own answer.
        answers = msg.answers()
        for ptr in (r for r in answers if r.type == _TYPE_PTR and r.name in types):
            srv = next(
                (r for r in answers if r.type == _TYPE_SRV and r.name == ptr.alias), None
            )
            if srv is None:
                emit(event="answer", type=ptr.name, name=ptr.alias, server=None, port=None, a=[])
                continue
            a = sorted(
                {
                    socket.inet_ntoa(r.address)
                    for r in answers
                    if r.type == _TYPE_A and r.name.lower() == srv.server.lower()
                }
            )
            records.append(ptr.alias)
            emit(event="answer", type=ptr.name, name=ptr.alias, server=srv.server,
                 port=srv.port, a=a)
    emit(event="done")


if __name__ == "__main__":
    main()
