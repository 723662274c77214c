"""A real Ableton Link peer (aalink, built on Ableton's Link library) for Lockstep's tests.

Joins Link with TEMPO BPM, start/stop sync on, optionally playing, for SECONDS; prints
{"event": "ready"} and then once a second {"event": "state", "tempo": ..., "beat": ...,
"playing": ..., "peers": ...}. Usage: aalink_peer.py TEMPO PLAYING(0|1) SECONDS
(inside the test network namespace only: Link multicasts)
"""

import asyncio
import json
import sys

from aalink import Link


def emit(**fields):
    print(json.dumps(fields), flush=True)


async def main():
    tempo, playing, seconds = float(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3])
    link = Link(tempo, asyncio.get_running_loop())
    link.start_stop_sync_enabled = True
    link.enabled = True
    if playing:
        link.playing = True
    emit(event="ready")
    for _ in range(int(seconds)):
        await asyncio.sleep(1)
        emit(event="state", tempo=link.tempo, beat=link.beat, playing=link.playing,
             peers=link.num_peers)
    link.enabled = False
    await asyncio.sleep(0.3)


asyncio.run(main())
