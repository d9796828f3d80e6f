"""Tests of the ``sn-jax`` command and the experiment configs."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from sn_jax.training import cli, data, farnia2019
from sn_jax.training import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The Table 1 configs (the runners beside them have no get_config).
EXPERIMENTS = sorted(
  p for p in (ROOT / "experiments" / "farnia2019").glob("*.py") if "def get_config" in p.read_text()
)

TINY_CONFIG = """
from sn_jax.training.config import default_config


def get_config():
  config = default_config()
  config.model, config.beta = "tiny", 1.0
  config.attack.name, config.eval_attack.name = "none", "fgm"
  config.batch_size, config.eval_batch_size, config.num_steps = 32, 500, 3
  config.num_eval_train, config.log_every = 500, 1
  config.robustness.enabled = False  # the report has its own tests (test_eval_report.py)
  return config
"""


def test_no_arguments_is_the_main_job_with_the_default_config():
  command, config, workdir, betas = cli.parse([])
  assert command == "compare" and workdir is None
  assert config.to_dict() == config_lib.default_config().to_dict()
  assert betas == [math.inf, 1.6]


def test_overrides_apply_to_the_default_and_to_a_file(tmp_path):
  _, config, _, betas = cli.parse(["--config.beta=1.6", "--config.attack.name=wrm", "--betas=4"])
  assert config.beta == 1.6 and config.attack.name == "wrm" and betas == [4.0]
  path = tmp_path / "tiny.py"
  path.write_text(TINY_CONFIG)
  command, config, workdir, _ = cli.parse(
    ["train", "--config", str(path), "--workdir", "w", "--config.num_steps=7"]
  )
  assert (command, config.model, config.num_steps, workdir) == ("train", "tiny", 7, "w")


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["fit"], r"unknown command 'fit'; expected one of \('compare', 'train', 'eval', 'bench'\)"),
    (["train"], r"`sn-jax train` needs --workdir DIR"),
    (["--config.no_such_field=1"], r"no_such_field"),
    (["--config.beta=abc"], r"beta"),
    (["--config", "/no/such/config.py"], r"/no/such/config.py"),
  ],
)
def test_bad_command_lines(argv, message):
  with pytest.raises(cli.UsageError, match=message):
    cli.parse(argv)


def test_a_bad_config_value_fails_before_loading_data_or_compiling(tmp_path, monkeypatch, capsys):
  def no_loading(*args, **kwargs):
    raise AssertionError("data loaded before the config was validated")

  monkeypatch.setattr(data, "load", no_loading)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--workdir", str(tmp_path), "--config.beta=-1"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "sn-jax: error: config.beta must be > 0 (inf: no normalization), got -1.0." in err
  with pytest.raises(SystemExit):
    cli.main(["train", "--workdir", str(tmp_path), "--config.model=vgg99"])
  assert "config.model: `name` must be one of" in capsys.readouterr().err


def test_eval_without_a_checkpoint(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["eval", "--workdir", str(tmp_path), "--config.model=tiny"])
  assert exit_info.value.code == 2
  assert "No complete checkpoint in" in capsys.readouterr().err


def test_train_then_eval_print_the_same_table(tmp_path, capsys):
  path = tmp_path / "tiny.py"
  path.write_text(TINY_CONFIG)
  args = ["--config", str(path), "--workdir", str(tmp_path / "run")]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", *args])
  assert exit_info.value.code == 0
  trained = capsys.readouterr().out
  assert "tiny on mnist_embedded, trained with ERM" in trained
  with pytest.raises(SystemExit):
    cli.main(["eval", *args])
  evaluated = capsys.readouterr().out
  row = [line for line in trained.splitlines() if line.startswith("beta=1")]
  assert len(row) == 1 and row == [
    line for line in evaluated.splitlines() if line.startswith("beta=1")
  ]


def test_python_dash_m_sn_jax_prints_the_commands():
  out = subprocess.run(
    [sys.executable, "-m", "sn_jax", "--help"], capture_output=True, text=True, check=True
  ).stdout
  assert out.startswith("usage: sn-jax [COMMAND] [OPTIONS]")
  commands = out[out.index("Commands:") :].splitlines()[1:]
  names = [line.split()[0] for line in commands if line[:3].startswith("  ") and line[2:3] != " "]
  assert names == list(cli.COMMANDS)
  # Plain text: no reST markup, and the example's line continuations kept.
  assert "``" not in out and ":func:" not in out and ":data:" not in out
  assert "--config.regularizer.weight=1 \\\n    --config.regularizer.options.lmbd=32" in out


@pytest.mark.parametrize("command", cli.CONFIG_COMMANDS)  # bench: tests/bench
def test_each_command_help_lists_every_config_field_with_its_default(command, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main([command, "--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: sn-jax {'[compare]' if command == 'compare' else command}")
  assert "--workdir DIR" in out and "--verbose" in out
  fields = out[out.index("Config fields") :]
  for name, default in config_lib.field_values(config_lib.default_config()).items():
    default = default.to_dict() if hasattr(default, "to_dict") else default
    assert f"  {name} = {default!r} " in fields
  assert "  beta = inf" in fields and "bound on each layer's spectral norm" in fields
  assert "  attack.eps = 0.15 " in fields and "  seed = 0 " in fields
  assert "``" not in out and ":func:" not in out
  assert max(len(line) for line in out.splitlines()) <= 100


def test_every_config_field_has_a_meaning():
  assert list(config_lib.FIELDS) == [
    n for n in config_lib.FIELDS if n in config_lib.field_values(config_lib.default_config())
  ]
  assert set(config_lib.FIELDS) == set(config_lib.field_values(config_lib.default_config()))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_configs_are_valid(path):
  namespace = {}
  exec(compile(path.read_text(), str(path), "exec"), namespace)
  for spec in ("erm", "fgm", "pgm,runlocal", "wrm"):
    config_lib.validate_config(namespace["get_config"](spec), num_devices=4)
  assert "sn-jax train --config experiments/farnia2019/" in namespace["__doc__"]


def test_farnia2019_config_follows_the_paper():
  config = farnia2019.farnia2019_config("cifar10", "alexnet", "pgm,linf")
  assert (config.optimizer, config.learning_rate, config.momentum) == ("sgd", 0.01, 0.9)
  assert (config.attack.norm, config.attack.eps, config.attack.relative) == (math.inf, 0.1, False)
  assert config.batch_size == 128 and config.num_validation == 500
  assert config.early_stop_accuracy == 0.999 and config.num_epochs == 200
  assert (config.attack.name, config.eval_attack.name) == ("pgm", "pgm")
  l2 = farnia2019.farnia2019_config("cifar10", "mlp1", "fgm")
  assert (l2.attack.eps, l2.attack.relative, l2.attack.gamma) == (0.05, True, 0.002)
  assert (l2.optimizer, l2.eval_attack.name) == ("adam", "pgm")
  mnist = farnia2019.farnia2019_config("mnist", "elunet", "wrm")
  assert (mnist.optimizer, mnist.learning_rate) == ("adam", 1e-3)
  assert (mnist.attack.gamma, mnist.attack.relative) == (0.04, True)
  with pytest.raises(ValueError, match=r"`linf` applies to 'fgm' and 'pgm' only, got attack='wrm'"):
    farnia2019.farnia2019_config("mnist", "elunet", "wrm,linf")
  with pytest.raises(
    ValueError, match=r"`spec` options must be 'linf' or 'runlocal', got \['fast'\]"
  ):
    farnia2019.farnia2019_config("mnist", "elunet", "pgm,fast")


@pytest.mark.parametrize(
  ("name", "options", "expected"),
  [
    ("data_dependent", ["eps=0.25", "p=inf", "num_iters=3"], {"eps": 0.25, "p": math.inf}),
    ("spectral_norm", ["sigmas=operator", "tol=1e-3", "num_iters=50"], {"sigmas": "operator"}),
    (
      "amm",
      ["lmbd=32", "c=2.0", "d=1", "aggregation=avg", "use_failed=true", "num_candidates=3"],
      {"lmbd": 32, "aggregation": "avg", "use_failed": True},
    ),
  ],
)
def test_regularizer_options_are_set_from_the_command_line(tmp_path, name, options, expected):
  path = tmp_path / "tiny.py"
  path.write_text(TINY_CONFIG)
  for base in ([], ["--config", str(path)]):  # the default config and a locked config file
    argv = [*base, f"--config.regularizer.name={name}", "--config.regularizer.weight=1"]
    _, config, _, _ = cli.parse(argv + [f"--config.regularizer.options.{o}" for o in options])
    for key, value in expected.items():
      assert config.regularizer.options[key] == value
      assert type(config.regularizer.options[key]) is type(value)
    config_lib.validate_config(config, num_devices=4)


def test_model_options_are_set_from_the_command_line():
  _, config, _, _ = cli.parse(["--config.model_options.hidden=64", "--config.model=mlp2"])
  assert config.model_options.to_dict() == {"hidden": 64}
  assert config_lib.make_model(config).hidden == 64


def test_bad_regularizer_options_on_the_command_line(tmp_path, capsys):
  with pytest.raises(cli.UsageError, match=r"expected --config.regularizer.options.NAME=VALUE"):
    cli.parse(["--config.regularizer.options.eps", "0.1"])
  with pytest.raises(SystemExit) as exit_info:
    cli.main(
      ["train", "--workdir", str(tmp_path), "--config.regularizer.name=amm"]
      + [f"--config.regularizer.options.{o}" for o in ("lmbd=1", "c=1", "d=1", "gamma=2")]
    )
  assert exit_info.value.code == 2
  assert "config.regularizer: regularizer 'amm' takes the options" in capsys.readouterr().err


def test_train_with_roth_et_al_alternation_from_the_command_line(tmp_path, capsys):
  path = tmp_path / "tiny.py"
  path.write_text(TINY_CONFIG)
  workdir = tmp_path / "run"
  argv = ["train", "--config", str(path), "--workdir", str(workdir), "--config.num_steps=4"]
  argv += ["--config.num_eval_train=32", "--config.eval_attack.name=none"]
  argv += ["--config.attack.name=fgm", "--config.regularizer.name=data_dependent"]
  argv += ["--config.regularizer.weight=1", "--config.regularizer.alternate=true"]
  argv += ["--config.regularizer.options.eps=0.1", "--config.regularizer.options.num_iters=2"]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 0, capsys.readouterr().err
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [r for r in records if "loss" in r]  # one per step (log_every = 1)
  assert [r["step"] for r in steps] == [1, 2, 3, 4]
  # Step 1 (index 0) is adversarial, step 2 regularized, and so on.
  assert ["regularizer" in r for r in steps] == [False, True, False, True]
  assert all(r["regularizer"] > 0 for r in steps if "regularizer" in r)
