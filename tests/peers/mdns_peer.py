"""A real mDNS peer for Lockstep's discovery tests, built on python-zeroconf.

Registers an AppleMIDI service NAME on 127.0.0.1:PORT (as rtpMIDI or macOS Network MIDI would)
and browses `_apple-midi._udp.local.` for SECONDS, printing one JSON line per event:
{"event": "ready"}, {"event": "found", "name": ..., "port": ..., "addresses": [...],
"server": ...} for every service it resolves, {"event": "removed", "name": ...}.
Usage: mdns_peer.py NAME PORT SECONDS  (run only inside the test network namespace)
"""

import json
import socket
import sys
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

TYPE = "_apple-midi._udp.local."


def emit(**fields):
    print(json.dumps(fields), flush=True)


def main():
    name, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    info = ServiceInfo(
        TYPE,
        f"{name}.{TYPE}",
        addresses=[socket.inet_aton("127.0.0.1")],
        port=port,
        server="mdns-peer.local.",
    )
    zc.register_service(info)

    def changed(zeroconf, service_type, name, state_change):
        short = name[: -len(service_type) - 1]
        if state_change is ServiceStateChange.Removed:
            emit(event="removed", name=short)
            return
        if state_change is not ServiceStateChange.Added:
            return
        found = zeroconf.get_service_info(service_type, name, timeout=3000)
        if found is None:
            emit(event="unresolved", name=short)
            return
        emit(
            event="found",
            name=short,
            port=found.port,
            addresses=found.parsed_addresses(),
            server=found.server,
        )

    ServiceBrowser(zc, TYPE, handlers=[changed])
    emit(event="ready")
    time.sleep(seconds)
    zc.unregister_service(info)
    zc.close()


if __name__ == "__main__":
    main()
