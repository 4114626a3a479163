"""Warm-up until steady, shared by the benchmarks that alternate jaxvir and PyTorch rounds.

The first rounds after compilation run slower (up to 1.4x the median measured under glibc's
malloc, while the allocator and the caches settle); a fixed count of warm-up rounds is either
too short or wasted. `warm_up` repeats the rounds until each function's last two are close.
"""

from collections.abc import Callable, Sequence


def warm_up(
  rounds: Sequence[Callable[[], float]], *, tolerance: float = 0.05, max_rounds: int = 5
) -> int:
  """Runs every `round` (returns its seconds) in turn until each one's last two are within
  `tolerance` of each other, or `max_rounds` times; returns how many times they ran.

  Example:

    >>> warm_up([lambda: timed(jaxvir_step, 2), lambda: timed(torch_step, 2)])
    3
  """
  last = None
  for count in range(1, max_rounds + 1):
    times = [round_() for round_ in rounds]
    if last and all(abs(t - s) <= tolerance * min(t, s) for t, s in zip(times, last, strict=True)):
      return count
    last = times
  return max_rounds
