"""What the suites measure on: a model of the zoo in a compute dtype, and a batch for it."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sn_jax.nn import models

DTYPES = ("float32", "bfloat16")


def check_model(name: str) -> None:
  """Raises ValueError, naming ``model``, unless ``name`` is a model of :mod:`sn_jax.models`."""
  if name not in models.INPUT_SHAPES:
    raise ValueError(f"`model` must be one of {sorted(models.INPUT_SHAPES)}, got {name!r}.")


def check_dtype(dtype: str, model: str | None) -> None:
  """Raises ValueError, naming ``dtype``, unless the suites can compute in it.

  float32 always; another dtype of :data:`DTYPES` only with a model that takes it as its
  ``dtype`` attribute (the compute dtype its layers pass on), and never for the operator norms
  (``model`` None), which compute in float32.
  """
  if dtype not in DTYPES:
    raise ValueError(f"`dtype` must be one of {DTYPES}, got {dtype!r}.")
  if dtype == "float32":
    return
  if model is None:
    raise ValueError(f"`dtype`={dtype!r}: the operator norms compute in float32 only.")
  cls = type(models.get_model(model))
  if "dtype" not in {f.name for f in dataclasses.fields(cls)}:
    raise ValueError(
      f"`dtype`={dtype!r}: model {model!r} ({cls.__name__}) takes no compute dtype yet; only "
      "float32 can be measured."
    )


def get_model(name: str, dtype: str, **attributes: Any) -> nn.Module:
  """The zoo's model ``name`` with ``attributes``, computing in ``dtype`` (:func:`check_dtype`)."""
  check_dtype(dtype, name)
  if dtype != "float32":
    attributes["dtype"] = jnp.dtype(dtype)
  return models.get_model(name, **attributes)


def batch(model: str, batch_size: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``(x, y)`` on the host: float32 inputs ``(batch_size, *INPUT_SHAPES[model])`` uniform in
  [0, 1) and integer labels in [0, 10). A model casts its input to its compute dtype."""
  x_key, y_key = jax.random.split(jax.random.key(seed))
  x = jax.random.uniform(x_key, (batch_size, *models.INPUT_SHAPES[model]))
  y = jax.random.randint(y_key, (batch_size,), 0, 10)
  return np.asarray(x), np.asarray(y)


def devices(num_devices: int) -> list[jax.Device]:
  """The first ``num_devices`` of ``jax.devices()``.

  Raises:
    ValueError: naming ``num_devices``, unless ``1 <= num_devices <= jax.device_count()``.
  """
  available = jax.devices()
  if not 1 <= num_devices <= len(available):
    raise ValueError(
      f"`num_devices` must be between 1 and the {len(available)} device(s) of this machine, "
      f"got {num_devices}."
    )
  return available[:num_devices]
