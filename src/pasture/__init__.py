"""pasture: grow Llama-family language models end to end."""

import os

__version__ = "0.1.0"

# libgomp (torch's OpenMP on Linux) lets a thread waiting for work spin only ~1,000 turns before it
# sleeps once more threads have used OpenMP than there are cores, which a process reaches as soon as
# two of its threads have run torch ops: the serving engine's thread and the main thread. Its workers
# then sleep and wake between the hundreds of parallel regions of a decode step, half of a compiled
# batch-1 step on 2 cores (benchmarks/RESULTS.md, session 12). ACTIVE with a bounded count keeps them
# spinning 300,000 turns (libgomp's own default when not throttled), then sleeping, so an idle server
# uses no CPU. libgomp reads these when torch loads it: they count only if pasture is imported first.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
    os.environ["GOMP_SPINCOUNT"] = "300000"
