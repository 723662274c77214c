"""A real OSC controller for Lockstep's tests, built on python-osc.

Sends each message given as JSON on the command line, from one UDP socket bound to
127.0.0.1:LISTEN, to 127.0.0.1:PORT, pausing 50 ms between them, then keeps listening for
SECONDS and prints every packet it receives as a JSON line: {"address": ..., "args": [...]}
(bundles are flattened). First line: {"event": "ready"}.
Usage: osc_client.py PORT LISTEN SECONDS '["/addr", "f", 0.5]' ...
A spec may also be '{"in": 0.3, "messages": [[...], ...]}': a bundle timed that many seconds
from now (python-osc's own NTP conversion); its Unix time is printed as {"event": "bundle"}.
Types: f float, i int, d double, h int64, s string, S symbol (as string), T/F bools.
"""

import json
import socket
import sys
import time

from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder


def emit(**fields):
    print(json.dumps(fields), flush=True)


def build(spec):
    if isinstance(spec, dict):
        # {"in": seconds from now, "messages": [...]}: a bundle with that time tag.
        at = time.time() + spec["in"]
        bundle = OscBundleBuilder(at)
        for m in spec["messages"]:
            bundle.add_content(OscMessage(build(m)))
        emit(event="bundle", at=at)
        return bundle.build().dgram
    address, *rest = spec
    builder = OscMessageBuilder(address=address)
    for tag, value in zip(rest[0::2], rest[1::2]):
        kind = {"S": "s"}.get(tag, tag)
        if tag in ("T", "F"):
            builder.add_arg(tag == "T")
        else:
            builder.add_arg(value, arg_type=kind)
    return builder.build().dgram


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
    port, listen, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", listen))
    sock.settimeout(0.05)
    emit(event="ready")
    for spec in sys.argv[4:]:
        sock.sendto(build(json.loads(spec)), ("127.0.0.1", port))
        time.sleep(0.05)
    emit(event="sent")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            dgram, _ = sock.recvfrom(65536)
        except socket.timeout:
            continue
        try:
            for message in flatten(dgram):
                emit(address=message.address, args=list(message.params))
        except Exception as e:  # a packet python-osc cannot parse: say so, the test fails
            emit(event="unparsed", error=str(e))


if __name__ == "__main__":
    main()
