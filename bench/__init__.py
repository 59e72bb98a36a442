"""Herald's benchmark: `python -m bench.run` measures it and writes bench/RESULTS.md.

Every figure comes from real parts started for the run: the daemon as a subprocess, a private
mosquitto, the fake Deepgram server of the tests in a process of its own, ALSA devices defined
in a private asoundrc (a `file` PCM feeding a FIFO, a PulseAudio null sink) and a cold-connect
client for comparison. `--smoke` runs every part briefly; CI runs that (tests/test_bench_smoke.py).
"""
