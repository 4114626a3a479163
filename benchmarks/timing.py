"""Timing shared by the benchmarks that alternate jaxvir and PyTorch rounds in one process.

`measure` counts, besides wall time, the process's CPU time, the kernel's share of it and the
minor page faults: what the host allocator changes (glibc's malloc maps and unmaps XLA's large
temporary buffers every step, tcmalloc keeps them) and what the load from other processes
barely touches, unlike wall time. The first rounds after compilation run slower while the
allocator and the caches settle; `warm_up` repeats rounds until they are steady.
"""

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Round:
  """Per call of the measured function: wall seconds, CPU seconds (all threads, user and
  kernel), the kernel's CPU seconds and minor page faults."""

  seconds: float
  cpu_seconds: float
  kernel_seconds: float
  minor_faults: float


def measure(fn: Callable[[], object], calls: int) -> Round:
  """Runs `fn` (which must block until its result is ready) `calls` times; per-call averages.

  Example:

    >>> measure(lambda: jax.block_until_ready(step()), 2).minor_faults
  """
  before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(calls):
    fn()
  seconds = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_SELF)
  kernel = after.ru_stime - before.ru_stime
  return Round(
    seconds=seconds / calls,
    cpu_seconds=(after.ru_utime - before.ru_utime + kernel) / calls,
    kernel_seconds=kernel / calls,
    minor_faults=(after.ru_minflt - before.ru_minflt) / calls,
  )


def medians(rounds: Sequence[Round], prefix: str) -> dict[str, float]:
  """`{prefix}_cpu_s`, `{prefix}_kernel_s` and `{prefix}_minor_faults`: medians per call."""
  return {
    f"{prefix}_{name}": statistics.median(getattr(r, field) for r in rounds)
    for name, field in (
      ("cpu_s", "cpu_seconds"),
      ("kernel_s", "kernel_seconds"),
      ("minor_faults", "minor_faults"),
    )
  }


def warm_up(
  rounds: Sequence[Callable[[], float]], *, tolerance: float = 0.05, max_rounds: int = 5
) -> int:
  """Runs every `round` (returns its seconds) in turn until each one's last two are within
  `tolerance` of each other, or `max_rounds` times; returns how many times they ran.

  Example:

    >>> warm_up([lambda: measure(jaxvir_step, 2).seconds, lambda: measure(torch_step, 2).seconds])
    3
  """
  last = None
  for count in range(1, max_rounds + 1):
    times = [round_() for round_ in rounds]
    if last and all(abs(t - s) <= tolerance * min(t, s) for t, s in zip(times, last, strict=True)):
      return count
    last = times
  return max_rounds
