"""Matplotlib figures of the analysis quantities: histograms and curves, written to files.

Figures are drawn on the Agg canvas directly (no ``pyplot``), so importing this module never
changes a user's matplotlib backend and works without a display. Needs the ``plots`` extra
(``pip install 'sn-jax[plots]'``); without matplotlib, importing it raises a
:class:`ModuleNotFoundError` that says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

try:
  from matplotlib import colormaps
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
except ModuleNotFoundError as e:
  raise ModuleNotFoundError(
    "sn_jax.analysis.plots needs matplotlib, which the `plots` extra installs: "
    f"pip install 'sn-jax[plots]' ({e})",
    name=e.name,
  ) from e


def _check_series(series: Mapping[str, jax.typing.ArrayLike], name: str) -> dict[str, np.ndarray]:
  if not isinstance(series, Mapping) or not series:
    raise ValueError(f"`{name}` must be a non-empty dict from label to values, got {series!r}.")
  out = {}
  for label, values in series.items():
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
      raise ValueError(f"`{name}[{label!r}]` is empty; every series needs at least one value.")
    out[str(label)] = values
  return out


def _save(figure: Figure, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  FigureCanvasAgg(figure)
  figure.tight_layout()
  figure.savefig(path)
  return path


def histograms(
  series: Mapping[str, jax.typing.ArrayLike],
  path: str | os.PathLike,
  *,
  xlabel: str = "",
  title: str = "",
  bins: int = 50,
) -> str:
  """Overlaid, normalized histograms, one per label (margins, confidence, kappa, ...).

  Args:
    series: label -> values (any shape; flattened).
    path: the image file to write (the extension picks the format, e.g. ``.png``).
    xlabel, title: axis label and title.
    bins: number of bins shared by all series.

  Returns:
    The path written.

  Raises:
    ValueError: for an empty ``series`` or an empty value array.

  Example:
    >>> import numpy as np
    >>> from sn_jax.analysis import plots
    >>> plots.histograms({'beta=inf': np.random.randn(100)}, '/tmp/margins.png')
    '/tmp/margins.png'
  """
  data = _check_series(series, "series")
  every = np.concatenate(list(data.values()))
  edges = np.histogram_bin_edges(every[np.isfinite(every)], bins=bins)
  figure = Figure(figsize=(6, 4))
  axes = figure.add_subplot()
  for label, values in data.items():
    axes.hist(values, bins=edges, density=True, histtype="stepfilled", alpha=0.45, label=label)
  axes.set_xlabel(xlabel)
  axes.set_ylabel("density")
  axes.set_title(title)
  axes.legend()
  return _save(figure, path)


def curves(
  x: jax.typing.ArrayLike | Sequence[float],
  series: Mapping[str, jax.typing.ArrayLike],
  path: str | os.PathLike,
  *,
  xlabel: str = "",
  ylabel: str = "",
  title: str = "",
  log_y: bool = False,
) -> str:
  """Curves sharing one x axis (certified accuracy vs radius, accuracy vs eps, spectra).

  Args:
    x: shape ``(N,)``.
    series: label -> values of shape ``(N,)``.
    path: the image file to write.
    xlabel, ylabel, title: labels.
    log_y: logarithmic y axis (for singular value spectra).

  Returns:
    The path written.

  Raises:
    ValueError: for an empty ``series`` or a series whose length differs from ``x``.

  Example:
    >>> import numpy as np
    >>> from sn_jax.analysis import plots
    >>> radii = np.linspace(0.0, 1.0, 11)
    >>> plots.curves(radii, {'SN': 1 - radii}, '/tmp/certified.png', xlabel='radius')
    '/tmp/certified.png'
  """
  x = np.asarray(x, dtype=np.float64).ravel()
  data = _check_series(series, "series")
  for label, values in data.items():
    if values.shape != x.shape:
      raise ValueError(
        f"`series[{label!r}]` must have one value per x, {x.shape[0]}, got {values.shape[0]}."
      )
  figure = Figure(figsize=(6, 4))
  axes = figure.add_subplot()
  for label, values in data.items():
    axes.plot(x, values, marker="o", markersize=3, label=label)
  if log_y:
    axes.set_yscale("log")
  axes.set_xlabel(xlabel)
  axes.set_ylabel(ylabel)
  axes.set_title(title)
  axes.legend()
  return _save(figure, path)


def layer_spectra(
  spectra: Mapping[str, Mapping[str, jax.typing.ArrayLike]],
  path: str | os.PathLike,
  *,
  title: str = "",
  columns: int = 4,
) -> str:
  """Each layer's singular values, one panel per layer and one curve per run, log scale.

  Wen et al.'s comparison of standard and adversarial training: a run whose curves lie lower and
  flatter has layers that are smoother in all directions.

  Args:
    spectra: run label -> {layer name -> singular values, shape ``(k,)``, descending}; every run
      names the same layers (:func:`sn_jax.analysis.spectra.layer_singular_values` gives the
      values).
    path: the image file to write.
    title: the figure's title.
    columns: panels per row, >= 1.

  Returns:
    The path written.

  Raises:
    ValueError: for an empty ``spectra``, a run with other layers than the first run, an empty
      value array, or ``columns`` < 1.

  Example:
    >>> import numpy as np
    >>> from sn_jax.analysis import plots
    >>> runs = {'ERM': {'conv1': [3.0, 2.0, 1.0]}, 'PGD': {'conv1': [2.0, 1.5, 1.2]}}
    >>> plots.layer_spectra(runs, '/tmp/spectra.png')
    '/tmp/spectra.png'

  References:
    Wen, Li, Jia. Towards Understanding the Regularization of Adversarial Robustness on Neural
    Networks. ICML 2020. https://arxiv.org/abs/2011.07478
  """
  if not isinstance(spectra, Mapping) or not spectra:
    raise ValueError(
      f"`spectra` must be a non-empty dict from run label to layers, got {spectra!r}."
    )
  if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
    raise ValueError(f"`columns` must be an int >= 1, got {columns!r}.")
  runs = {str(run): _check_series(layers, f"spectra[{run!r}]") for run, layers in spectra.items()}
  names = list(next(iter(runs.values())))
  for run, layers in runs.items():
    if list(layers) != names:
      raise ValueError(
        f"every run must have the same layers; `spectra[{run!r}]` has {list(layers)}, the first "
        f"run {names}."
      )
  rows = -(-len(names) // columns)
  width = min(columns, len(names))
  figure = Figure(figsize=(3.2 * width, 2.8 * rows))
  for i, name in enumerate(names):
    axes = figure.add_subplot(rows, width, i + 1)
    for run, layers in runs.items():
      values = layers[name]
      axes.plot(np.arange(1, values.size + 1), values, marker="o", markersize=2, label=run)
    axes.set_yscale("log")
    axes.set_title(name, fontsize=9)
    axes.set_xlabel("index")
    if i % width == 0:
      axes.set_ylabel("singular value")
  figure.axes[0].legend(fontsize=8)
  if title:
    figure.suptitle(title)
  return _save(figure, path)


def robustness(
  report: Mapping[str, object],
  path: str | os.PathLike,
  *,
  title: str = "",
  shares: bool = True,
) -> str:
  """Accuracy against the radius: clean, certified and under AutoAttack, from a robustness report.

  Three curves over the report's ``eps``: the clean accuracy (flat), the accuracy under
  AutoAttack (an upper bound of the true robust accuracy) and the certified accuracy (a lower
  bound; absent when the model could not be bounded). The true robust accuracy lies between the
  last two. With ``shares``, the gap between the AutoAttack curve and the clean accuracy is
  filled with one band per attack, as thick as the share of the examples it was the first to
  break.

  Args:
    report: a dict of :func:`sn_jax.analysis.robustness_report` (or read back from its JSON).
    path: the image file to write.
    title: the figure's title.
    shares: draw the bands of the attacks' shares.

  Returns:
    The path written.

  Raises:
    ValueError: for a ``report`` without the entries of
      :func:`sn_jax.analysis.robustness_report`, or series of another length than ``eps``.

  Example:
    >>> from sn_jax.analysis import plots
    >>> report = {'norm': 'inf', 'eps': [0.0, 0.1, 0.2], 'clean_accuracy': 0.9,
    ...           'robust_accuracy': [0.9, 0.6, 0.2], 'certified_accuracy': [0.9, 0.3, 0.0],
    ...           'broken_by': {'apgd-ce': [0.0, 0.25, 0.6], 'square': [0.0, 0.05, 0.1]}}
    >>> plots.robustness(report, '/tmp/robustness.png')
    '/tmp/robustness.png'
  """
  needed = ("norm", "eps", "clean_accuracy", "robust_accuracy", "certified_accuracy", "broken_by")
  missing = [k for k in needed if not isinstance(report, Mapping) or k not in report]
  if missing:
    raise ValueError(
      f"`report` must be a dict of sn_jax.analysis.robustness_report, lacking {missing}."
    )
  eps = np.asarray(report["eps"], dtype=np.float64).ravel()
  clean = float(report["clean_accuracy"])
  series = {"AutoAttack": report["robust_accuracy"]}
  if report["certified_accuracy"] is not None:
    series["certified"] = report["certified_accuracy"]
  series.update({f"broken by {name}": v for name, v in dict(report["broken_by"]).items()})
  data = _check_series(series, "report")
  for label, values in data.items():
    if values.shape != eps.shape:
      raise ValueError(
        f"`report`'s {label!r} must have one value per eps, {eps.size}, got {values.size}."
      )
  figure = Figure(figsize=(6, 4))
  axes = figure.add_subplot()
  if shares:
    bottom, colors = data["AutoAttack"], colormaps["Pastel2"]
    bands = [label for label in data if label.startswith("broken by ")]
    for i, label in enumerate(bands):
      top = bottom + data[label]
      axes.fill_between(eps, bottom, top, color=colors(i % colors.N), label=label)
      bottom = top
  axes.plot(eps, np.full_like(eps, clean), color="black", linestyle="--", label="clean")
  axes.plot(eps, data["AutoAttack"], color="tab:red", marker="o", markersize=3, label="AutoAttack")
  if "certified" in data:
    axes.plot(eps, data["certified"], color="tab:blue", marker="s", markersize=3, label="certified")
  norm = r"\infty" if report["norm"] == "inf" else report["norm"]
  axes.set_xlabel(f"eps ($\\ell_{norm}$ radius)")
  axes.set_ylabel("accuracy")
  axes.set_ylim(0.0, 1.0)
  axes.set_title(title)
  axes.legend(fontsize=8)
  return _save(figure, path)
