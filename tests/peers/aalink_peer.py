"""A real Ableton Link peer (aalink, built on Ableton's Link library) for Lockstep's tests.

Joins Link with TEMPO BPM, start/stop sync on, optionally playing, for SECONDS; prints
{"event": "ready"} and then once a second {"event": "state", "tempo": ..., "beat": ...,
"playing": ..., "peers": ...}; with CHANGE_AT and NEW_TEMPO it sets that tempo after that many
seconds. Usage: aalink_peer.py TEMPO PLAYING(0|1) SECONDS [CHANGE_AT NEW_TEMPO]
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
    change_at = int(sys.argv[4]) if len(sys.argv) > 5 else None
    new_tempo = float(sys.argv[5]) if len(sys.argv) > 5 else None
    link = Link(tempo, asyncio.get_running_loop())
    link.start_stop_sync_enabled = True
    link.enabled = True
    if playing:
        link.playing = True
    emit(event="ready")
    for second in range(int(seconds)):
        await asyncio.sleep(1)
        if change_at is not None and second + 1 == change_at:
            link.tempo = new_tempo
            emit(event="changed", tempo=new_tempo)
        emit(event="state", tempo=link.tempo, beat=link.beat, playing=link.playing,
             peers=link.num_peers)
    link.enabled = False
    await asyncio.sleep(0.3)


asyncio.run(main())
