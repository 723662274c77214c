"""An OSC 1.1 controller over TCP with SLIP framing (python-osc builds and parses the packets).

Connects to 127.0.0.1:PORT, sends each message given as JSON ('["/addr", "f", 0.5]'), SLIP
framed (END, escaped packet, END), then reads SLIP frames back for SECONDS and prints every
message as a JSON line {"address": ..., "args": [...]} (bundles flattened).
Usage: osc_tcp_client.py PORT SECONDS SPEC...
"""

import json
import socket
import sys
import time

from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD


def emit(**fields):
    print(json.dumps(fields), flush=True)


def slip(packet):
    out = bytearray([END])
    for b in packet:
        if b == END:
            out += bytes([ESC, ESC_END])
        elif b == ESC:
            out += bytes([ESC, ESC_ESC])
        else:
            out.append(b)
    out.append(END)
    return bytes(out)


def flatten(dgram):
    if OscBundle.dgram_is_bundle(dgram):
        for element in OscBundle(dgram):
            if isinstance(element, OscBundle):
                yield from flatten(element.dgram)
            else:
                yield element
    else:
        yield OscMessage(dgram)


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    for spec in sys.argv[3:]:
        address, *rest = json.loads(spec)
        builder = OscMessageBuilder(address=address)
        for tag, value in zip(rest[0::2], rest[1::2]):
            builder.add_arg(value, arg_type=tag)
        sock.sendall(slip(builder.build().dgram))
    emit(event="sent")
    sock.settimeout(0.05)
    frame, escaped = bytearray(), False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        for b in data:
            if b == END and not escaped:
                if frame:
                    for m in flatten(bytes(frame)):
                        emit(address=m.address, args=list(m.params))
                frame = bytearray()
            elif b == ESC and not escaped:
                escaped = True
            else:
                frame.append({ESC_END: END, ESC_ESC: ESC}.get(b, b) if escaped else b)
                escaped = False


if __name__ == "__main__":
    main()
