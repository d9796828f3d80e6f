"""How sn_jax measures: the first call apart, warm-up, repeated calls, medians and quartiles.

Every timed call ends with ``jax.block_until_ready``, so a time is the computation's and not
its dispatch's. The first call (trace, compile and run) is reported apart as ``compile_s``;
then ``warmup`` untimed calls; then the timed ones, summarized by their median and
interquartile range. :func:`environment` describes the machine and software a time was
measured on.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jaxlib
import numpy as np

from sn_jax._backend import host_memory


class Timing(NamedTuple):
  """Seconds: ``compile_s`` is the first call (trace + compile + run); the rest are steady state.

  Attributes:
    compile_s: the first call.
    median_s: the median of the timed calls.
    q25_s: their first quartile.
    q75_s: their third quartile.
    repeats: the number of timed calls.
  """

  compile_s: float
  median_s: float
  q25_s: float
  q75_s: float
  repeats: int


def _summary(compile_s: float, samples: list[float]) -> Timing:
  quartiles = (
    statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else samples * 3
  )
  return Timing(compile_s, statistics.median(samples), quartiles[0], quartiles[2], len(samples))


def _timed_call(fn: Callable[..., Any], *args: Any) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def time_fn(
  fn: Callable[..., Any],
  *args: Any,
  repeats: int = 20,
  warmup: int = 2,
  min_total_s: float = 0.0,
) -> Timing:
  """Times ``fn(*args)``: the first call apart, then ``warmup`` untimed and ``repeats`` timed calls.

  Args:
    fn: the function; its result is waited for with ``jax.block_until_ready``.
    *args: its arguments, the same at every call.
    repeats: timed calls, >= 1.
    warmup: untimed calls after the first, >= 0.
    min_total_s: adds timed calls until they sum to at least that many seconds, for functions
      so fast that ``repeats`` calls are noise.

  Returns:
    A :class:`Timing`.

  Raises:
    ValueError: for ``repeats`` < 1 or ``warmup`` < 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from sn_jax import bench
    >>> t = bench.time_fn(jnp.sin, jnp.ones(3), repeats=3, warmup=1)
    >>> t.repeats, t.q25_s <= t.median_s <= t.q75_s
    (3, True)
  """
  _check_counts(repeats=repeats, warmup=warmup)
  compile_s = _timed_call(fn, *args)
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  samples: list[float] = []
  while len(samples) < repeats or sum(samples) < min_total_s:
    samples.append(_timed_call(fn, *args))
  return _summary(compile_s, samples)


def time_side_by_side(
  fns: dict[Hashable, Callable[[], Any]],
  *,
  repeats: int | dict[Hashable, int] = 20,
  warmup: int = 2,
  rounds: int = 5,
) -> dict[Hashable, Timing]:
  """Times several zero-argument functions interleaved, so drift in the machine hits all alike.

  Each function is called once (``compile_s``) and ``warmup`` times first; then ``rounds``
  rounds each call every function ``max(1, repeats // rounds)`` times, in turn.

  Args:
    fns: name (any hashable key) to zero-argument function.
    repeats: timed calls per function, >= 1, or a dict by name, so that slow functions take
      fewer samples.
    warmup: untimed calls after the first, >= 0.
    rounds: rounds of interleaved calls, >= 1.

  Returns:
    Name to :class:`Timing`, in the order of ``fns``.

  Raises:
    ValueError: for ``repeats`` or ``rounds`` < 1, or ``warmup`` < 0.
  """
  counts = repeats if isinstance(repeats, dict) else dict.fromkeys(fns, repeats)
  _check_counts(repeats=min(counts.values(), default=1), warmup=warmup, rounds=rounds)
  compile_s = _first_calls(fns, warmup)
  samples: dict[Hashable, list[float]] = {name: [] for name in fns}
  per_round = {name: max(1, counts[name] // rounds) for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      samples[name] += [_timed_call(fn) for _ in range(per_round[name])]
  return {name: _summary(compile_s[name], values) for name, values in samples.items()}


class PairedRatio(NamedTuple):
  """A function's time over its baseline's, from calls paired in rounds (:func:`time_paired`).

  Attributes:
    median: the median over the rounds of the function's time over the baseline's time in
      the same round.
    low: the 2.5th percentile of that median over bootstrap resamples of the rounds.
    high: the 97.5th percentile: ``[low, high]`` is a 95% interval for the median ratio.
    rounds: the number of rounds.
  """

  median: float
  low: float
  high: float
  rounds: int


def time_paired(
  fns: dict[Hashable, Callable[[], Any]],
  baselines: dict[Hashable, Hashable],
  *,
  rounds: int = 100,
  warmup: int = 2,
  seed: int = 0,
) -> tuple[dict[Hashable, Timing], dict[Hashable, PairedRatio]]:
  """Times functions in rounds and gives each one's ratio to its baseline, round by round.

  Each function is called once (``compile_s``) and ``warmup`` times first; then each of the
  ``rounds`` rounds calls every function once, in an order shuffled anew (seeded by ``seed``).
  A function's ratio is the median over the rounds of its time over its baseline's time in the
  same round: pairing the calls cancels the machine's drift, which moves a small ratio (a few
  percent) by more than itself when medians of separate runs are divided. The interval is a
  bootstrap over the rounds (2000 resamples).

  Args:
    fns: name (any hashable key) to zero-argument function.
    baselines: name of a function to the name of its baseline, both keys of ``fns``; a
      function's ratio to itself is 1.
    rounds: rounds of calls, >= 2.
    warmup: untimed calls after the first, >= 0.
    seed: seeds the call order and the bootstrap.

  Returns:
    ``(timings, ratios)``: name to :class:`Timing` over the ``rounds`` calls, in the order of
    ``fns``; name to :class:`PairedRatio` for each name of ``baselines``.

  Raises:
    ValueError: for ``rounds`` < 2, ``warmup`` < 0, or a name in ``baselines`` (key or value)
      that is not a key of ``fns``.
  """
  _check_counts(repeats=1, warmup=warmup)
  if rounds < 2:
    raise ValueError(f"`rounds` must be >= 2 to pair calls, got {rounds}.")
  unknown = [name for pair in baselines.items() for name in pair if name not in fns]
  if unknown:
    raise ValueError(f"`baselines` names functions not in `fns`: {unknown!r}.")
  compile_s = _first_calls(fns, warmup)
  rng = np.random.default_rng(seed)
  names = list(fns)
  samples = {name: np.empty(rounds) for name in names}
  for r in range(rounds):
    for i in rng.permutation(len(names)):
      samples[names[i]][r] = _timed_call(fns[names[i]])
  timings = {name: _summary(compile_s[name], list(samples[name])) for name in names}
  resamples = rng.integers(0, rounds, size=(2000, rounds))
  ratios = {}
  for name, baseline in baselines.items():
    ratio = samples[name] / samples[baseline]
    low, high = np.percentile(np.median(ratio[resamples], axis=1), [2.5, 97.5])
    ratios[name] = PairedRatio(float(np.median(ratio)), float(low), float(high), rounds)
  return timings, ratios


def _first_calls(fns: dict[Hashable, Callable[[], Any]], warmup: int) -> dict[Hashable, float]:
  """Calls each function once, timed (trace, compile and run), then ``warmup`` times untimed;
  returns name to the first call's seconds."""
  compile_s = {}
  for name, fn in fns.items():
    compile_s[name] = _timed_call(fn)
    for _ in range(warmup):
      jax.block_until_ready(fn())
  return compile_s


def _check_counts(*, repeats: int, warmup: int, rounds: int = 1) -> None:
  if repeats < 1:
    raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
  if warmup < 0:
    raise ValueError(f"`warmup` must be >= 0, got {warmup}.")
  if rounds < 1:
    raise ValueError(f"`rounds` must be >= 1, got {rounds}.")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
  """What a measurement ran on: the accelerator, the host and the software.

  Returns:
    A JSON-ready dict: ``backend`` (``jax.default_backend()``), ``device_kind`` and
    ``device_count`` (of ``jax.devices()``), ``cpu`` (the CPU model), ``cpu_count``, ``jax``,
    ``jaxlib`` and ``python`` versions, and ``host_memory_retained``
    (:func:`sn_jax.host_memory.retain` was called).

  Example:
    >>> from sn_jax import bench
    >>> sorted(bench.environment())[:3]
    ['backend', 'cpu', 'cpu_count']
  """
  devices = jax.devices()
  return {
    "backend": jax.default_backend(),
    "device_kind": devices[0].device_kind if devices else "?",
    "device_count": len(devices),
    "cpu": _cpu_model(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "python": platform.python_version(),
    "host_memory_retained": host_memory.retained(),
  }


def machine() -> str:
  """:func:`environment` in one line, for the head of a table."""
  env = environment()
  memory = "retained" if env["host_memory_retained"] else "not retained (glibc defaults)"
  return (
    f"{env['backend']} ({env['device_count']} x {env['device_kind']}); CPU {env['cpu']}, "
    f"{env['cpu_count']} cores; jax {env['jax']}, jaxlib {env['jaxlib']}; python "
    f"{env['python']}; host memory {memory}"
  )
