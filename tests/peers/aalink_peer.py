"""A real Ableton Link peer (aalink, built on Ableton's Link library) for Lockstep's tests.

Joins Link with TEMPO BPM, start/stop sync on, optionally playing, for SECONDS; prints
{"event": "ready"} and then once a second {"event": "state", "tempo": ..., "beat": ...,
"playing": ..., "peers": ...}; with CHANGE_AT NEW_TEMPO pairs it sets each tempo after that
many seconds (NEW_TEMPO "play" or "stop" starts or stops the session instead). With AALINK_SAMPLE_MS=N in the environment it also prints, every N ms,
{"event": "beat", "t": T, "beat": B, "tempo": X}: B is Link's session beat at T, microseconds on
CLOCK_MONOTONIC_RAW (Link's own clock on Linux; T is the middle of the two clock reads around
the beat read, and "err" half their distance).
Usage: aalink_peer.py TEMPO PLAYING(0|1) SECONDS [CHANGE_AT NEW_TEMPO]...
(inside the test network namespace only: Link multicasts)
"""

import asyncio
import json
import os
import sys
import time

from aalink import Link


def emit(**fields):
    print(json.dumps(fields), flush=True)


def raw_us():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) / 1e3


async def sample(link, every):
    while True:
        t0 = raw_us()
        beat = link.beat
        t1 = raw_us()
        emit(event="beat", t=(t0 + t1) / 2, err=(t1 - t0) / 2, beat=beat, tempo=link.tempo)
        await asyncio.sleep(every)


async def main():
    tempo, playing, seconds = float(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3])
    changes = {int(sys.argv[i]): sys.argv[i + 1] for i in range(4, len(sys.argv) - 1, 2)}
    link = Link(tempo, asyncio.get_running_loop())
    link.start_stop_sync_enabled = True
    link.enabled = True
    if playing:
        link.playing = True
    emit(event="ready")
    every = os.environ.get("AALINK_SAMPLE_MS")
    sampler = asyncio.ensure_future(sample(link, float(every) / 1e3)) if every else None
    for second in range(int(seconds)):
        await asyncio.sleep(1)
        change = changes.get(second + 1)
        if change in ("play", "stop"):
            link.playing = change == "play"
            emit(event=change, t=raw_us(), beat=link.beat)
        elif change is not None:
            link.tempo = float(change)
            emit(event="changed", tempo=float(change), t=raw_us())
        emit(event="state", tempo=link.tempo, beat=link.beat, playing=link.playing,
             peers=link.num_peers)
    if sampler:
        sampler.cancel()
    link.enabled = False
    await asyncio.sleep(0.3)


asyncio.run(main())
