"""A real AppleMIDI peer for Lockstep's interop tests, built on the `pymidi` package.

Runs pymidi's server (a responder) on HOST:PORT (127.0.0.1 unless HOST is given) for SECONDS
and prints one JSON line per event: {"event": "ready"}, {"event": "connected", "name": ...}, {"event": "midi", "status": S,
"data": [...], "t": T} for every MIDI command pymidi decoded (in arrival order; T = when its
packet was handled, microseconds on CLOCK_MONOTONIC_RAW, Ableton Link's clock on Linux), and
{"event": "disconnected"}. Usage: pymidi_peer.py PORT SECONDS [HOST]
"""

import json
import sys
import time

from pymidi import server


def emit(**fields):
    print(json.dumps(fields), flush=True)


class Recorder(server.Handler):
    def on_peer_connected(self, peer):
        emit(event="connected", name=str(peer.name))

    def on_peer_disconnected(self, peer):
        emit(event="disconnected", name=str(peer.name))

    def on_midi_commands(self, peer, command_list):
        t = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) / 1e3
        for command in command_list:
            params = command.params
            # pymidi decodes channel messages; system messages (F8, FA, FB, FC, F2) come
            # through its fallback with the raw data bytes.
            data = list(params.get("unknown", b"")) if params is not None else []
            emit(event="midi", status=command.command_byte, data=data, t=t)


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    srv = server.Server([(host, port)])
    srv.add_handler(Recorder())
    srv._init_protocols()
    emit(event="ready")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        srv._loop_once(timeout=0.05)


if __name__ == "__main__":
    main()
