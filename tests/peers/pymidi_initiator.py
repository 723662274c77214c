"""An AppleMIDI initiator for Lockstep's interop tests: it invites Lockstep, built on the
packet definitions of the `pymidi` package (pymidi's own Client cannot send yet).

Binds PORT and PORT+1 on 127.0.0.1, invites TARGET_PORT (control) then TARGET_PORT+1 (data),
runs CK0 exchanges, decodes every RTP-MIDI packet with pymidi and prints one JSON line per
event: {"event": "connected"|"rejected"|"timeout"}, {"event": "midi", "status", "data"},
{"event": "latency", "rtt_us"}. Sends BY and exits after SECONDS.
Usage: pymidi_initiator.py PORT TARGET_PORT SECONDS
"""

import json
import random
import select
import socket
import sys
import time

from pymidi import packets


def emit(**fields):
    print(json.dumps(fields), flush=True)


def exchange(command, token, ssrc, name=None):
    return packets.AppleMIDIExchangePacket.build(dict(
        preamble=b"\xff\xff", command=command, protocol_version=2,
        initiator_token=token, ssrc=ssrc, name=name))


def ticks():
    return int(time.monotonic() * 10000)


def invite(sock, target, token, ssrc):
    """Send IN until OK or NO (1 s apart, 5 tries). True when accepted."""
    for _ in range(5):
        sock.sendto(exchange(b"IN", token, ssrc, "pymidi initiator"), target)
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            continue
        data, _ = sock.recvfrom(2048)
        if data[2:4] == b"OK":
            return True
        if data[2:4] == b"NO":
            return False
    emit(event="timeout")
    return None


def main():
    port, target_port, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    control.bind(("127.0.0.1", port))
    data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    data.bind(("127.0.0.1", port + 1))
    token, ssrc = random.randrange(1, 2**32), random.randrange(1, 2**32)
    accepted = invite(control, ("127.0.0.1", target_port), token, ssrc)
    if accepted is False:
        emit(event="rejected")
        return
    if not accepted or not invite(data, ("127.0.0.1", target_port + 1), token, ssrc):
        return
    emit(event="connected")
    deadline = time.monotonic() + seconds
    next_ck = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_ck:
            ck = packets.AppleMIDITimestampPacket.build(dict(
                preamble=b"\xff\xff", command=b"CK", ssrc=ssrc, count=0,
                timestamp_1=ticks(), timestamp_2=0, timestamp_3=0))
            data.sendto(ck, ("127.0.0.1", target_port + 1))
            next_ck = time.monotonic() + 1.0
        ready, _, _ = select.select([data, control], [], [], 0.05)
        for sock in ready:
            payload, addr = sock.recvfrom(2048)
            if payload[:2] == b"\xff\xff":
                if payload[2:4] == b"CK":
                    ck = packets.AppleMIDITimestampPacket.parse(payload)
                    if ck.count == 1:
                        emit(event="latency", rtt_us=(ticks() - ck.timestamp_1) * 100)
                        reply = packets.AppleMIDITimestampPacket.build(dict(
                            preamble=b"\xff\xff", command=b"CK", ssrc=ssrc, count=2,
                            timestamp_1=ck.timestamp_1, timestamp_2=ck.timestamp_2,
                            timestamp_3=ticks()))
                        data.sendto(reply, addr)
                continue
            packet = packets.MIDIPacket.parse(payload)
            for command in packet.command.midi_list:
                params = command.params
                values = list(params.get("unknown", b"")) if params is not None else []
                emit(event="midi", status=command.command_byte, data=values)
    control.sendto(exchange(b"BY", token, ssrc), ("127.0.0.1", target_port))


if __name__ == "__main__":
    main()
