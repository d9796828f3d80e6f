"""Bad inputs to ``sn-jax`` and to configs: one line, exit status 2, nothing left behind."""

import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

from sn_jax.training import cli, data, farnia2019
from sn_jax.training import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MNIST_MLP1 = str(ROOT / "experiments" / "farnia2019" / "mnist_mlp1.py")

FILES = {
  "syntax.py": "from sn_jax.training.config import default_config\n\ndef get_config(:\n  pass\n",
  "no_get_config.py": "CONFIG = None\n",
  "returns_dict.py": "def get_config():\n  return {'beta': 1.0}\n",
  "import_error.py": "import sn_jax.no_such_module\n",
  "extra_field.py": (
    "from sn_jax.training.config import default_config\n\n"
    "def get_config():\n  config = default_config()\n  config.bta = 2.0\n  return config\n"
  ),
}


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (
      ["--config.nosuchfield=1"],
      r"no config field config\.nosuchfield \(closest: seed, num_iters, num_epochs\); "
      r"`sn-jax train --help` lists the fields\.",
    ),
    (["--config.btea=1"], r"no config field config\.btea \(closest: beta, "),
    (
      ["--config.attack.epss=1", "--config.sed=2"],
      r"config\.attack\.epss \(closest: attack\.eps, .*\), config\.sed \(closest: seed, ",
    ),
    (
      ["--config.model_options.foo=1"],
      r"config\.model_options: model 'mlp1' has no attribute\(s\) \['foo'\] \(closest to 'foo': "
      r".*\); its attributes are \['activation', 'beta', 'dtype', 'hidden', 'method', "
      r"'normalization', 'num_classes', 'num_iters'\]\.",
    ),
    (["--config.model_options.hiden=64"], r"\['hiden'\] \(closest to 'hiden': hidden, "),
    (
      ["--config.parallel=xla"],
      r"config\.parallel must be one of \('shard_map', 'pmap'\), got 'xla'\.",
    ),
    (
      ["--config.num_validation=5000"],
      r"config\.num_validation must be in \[0, 1000\) for dataset 'mnist_embedded' \(its test "
      r"split has 1000 images\), got 5000\.",
    ),
    (["--config.seed=-1"], r"config\.seed must be in \[0, 2\*\*32\), got -1\."),
    (["--config.seed=4294967296"], r"config\.seed must be in \[0, 2\*\*32\), got 4294967296\."),
    (
      ["--config.batch_size=5000"],
      r"config\.batch_size must be <= 4000 \(the training set of 'mnist_embedded'\), got 5000\.",
    ),
    (["--config.eval_batch_size=0"], r"config\.eval_batch_size must be >= 1, got 0\."),
    (["--config.attack.name=pgd"], r"config\.attack\.name must be one of \('none', 'fgm'"),
    (["--config.beta=abc"], r"flag --config\.beta=abc: could not convert string to float"),
    (
      ["--config", MNIST_MLP1 + ":pgd"],
      r"mnist_mlp1\.py:pgd: get_config\('pgd'\) raised ValueError: `spec` must be "
      r"ATTACK\[,linf\]\[,runlocal\] with ATTACK one of \('erm', 'fgm', 'pgm', 'wrm'\), "
      r"got 'pgd'\.",
    ),
    (
      ["--config", MNIST_MLP1 + ":pgm,fast"],
      r"`spec` options must be 'linf' or 'runlocal', got \['fast'\]",
    ),
    (["--config", "{tmp}/syntax.py"], r"--config \S+/syntax\.py, line 3: SyntaxError: "),
    (
      ["--config", "{tmp}/no_get_config.py"],
      r"no_get_config\.py: the file defines no get_config\(\) function\.",
    ),
    (
      ["--config", "{tmp}/returns_dict.py"],
      r"returns_dict\.py: get_config\(\) must return an ml_collections\.ConfigDict, got dict\.",
    ),
    (
      ["--config", "{tmp}/import_error.py"],
      r"import_error\.py: loading it raised ModuleNotFoundError: No module named",
    ),
    (["--config", "{tmp}/extra_field.py"], r"no config field config\.bta \(closest: beta"),
    (["--config", "{tmp}/missing.py"], r"--config \S+/missing\.py: no such file"),
    (["--config"], r"--config needs a value: --config FILE\[:ARGS\]\."),
    (["--betas=1,x"], r"--betas must be numbers separated by commas, got '1,x'\."),
    (["--workdir={tmp}/a_file/run"], r"--workdir \S+/a_file/run: \S+/a_file is a file"),
    (["--workdir={tmp}/a_file"], r"--workdir \S+/a_file: \S+/a_file is a file, not a directory\."),
    (["--no_such_flag=1"], r"unknown flag --no_such_flag; `sn-jax train --help` lists them\."),
    (
      ["--config.attack.relative=maybe"],
      r"--config\.attack\.relative must be true or false, got 'maybe'\.",
    ),
    (["--config.seed=1.5"], r"flag --config\.seed=1\.5: invalid literal for int\(\)"),
  ],
)
def test_a_bad_command_line_ends_in_one_line_and_leaves_nothing(
  args, message, tmp_path, monkeypatch, capsys
):
  def no_loading(*args, **kwargs):
    raise AssertionError("data loaded before the inputs were checked")

  monkeypatch.setattr(data, "load", no_loading)
  for name, text in FILES.items():
    (tmp_path / name).write_text(text)
  (tmp_path / "a_file").write_text("")
  workdir = tmp_path / "run"
  argv = ["train", "--workdir", str(workdir), *(a.format(tmp=tmp_path) for a in args)]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("sn-jax: error: "), err
  assert "Traceback" not in err and "\\n" not in err
  assert re.search(message, err), err
  assert not workdir.exists()


def test_the_real_command_line_prints_one_line_and_the_traceback_only_with_verbose(tmp_path):
  workdir = tmp_path / "x"
  command = [sys.executable, "-m", "sn_jax", "train", "--workdir", str(workdir)]
  quiet = subprocess.run([*command, "--config.nosuchfield=1"], capture_output=True, text=True)
  assert quiet.returncode == 2
  assert quiet.stderr.splitlines() == [
    "sn-jax: error: no config field config.nosuchfield (closest: seed, num_iters, num_epochs); "
    "`sn-jax train --help` lists the fields."
  ]
  verbose = subprocess.run(
    [*command, "--config.seed=-1", "--verbose"], capture_output=True, text=True
  )
  assert verbose.returncode == 2
  assert verbose.stderr.startswith("Traceback (most recent call last):")
  assert "ConfigError: config.seed must be in [0, 2**32), got -1." in verbose.stderr
  assert verbose.stderr.splitlines()[-1] == (
    "sn-jax: error: config.seed must be in [0, 2**32), got -1."
  )
  assert not workdir.exists()


@pytest.mark.parametrize(
  ("change", "message"),
  [
    (
      lambda c: ml_collections.ConfigDict({**c.to_dict(), "batch_size": "128"}),
      r"config\.batch_size must be an int, got '128'\.",
    ),
    (
      lambda c: ml_collections.ConfigDict({**c.to_dict(), "beta": "inf"}),
      r"config\.beta must be a number, got 'inf'\.",
    ),
    (
      lambda c: ml_collections.ConfigDict({**c.to_dict(), "parallel": None}),
      r"config\.parallel must be a str, got None\.",
    ),
    (
      lambda c: ml_collections.ConfigDict(
        {**c.to_dict(), "regularizer": {**c.regularizer.to_dict(), "alternate": 1}}
      ),
      r"config\.regularizer\.alternate must be a bool, got 1\.",
    ),
    (
      lambda c: ml_collections.ConfigDict({"dataset": "mnist"}),
      r"config lacks the fields \['adv_weight', 'attack\.eps', .*; build configs from "
      r"sn_jax\.training\.config\.default_config\(\)\.",
    ),
    (
      lambda c: ml_collections.ConfigDict(
        {**c.to_dict(), "attack": {**c.attack.to_dict(), "epss": 1.0}}
      ),
      r"no config field config\.attack\.epss \(closest: attack\.eps",
    ),
  ],
)
def test_validate_config_refuses_fields_of_the_wrong_kind_unknown_or_missing(change, message):
  config = change(config_lib.default_config())
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(config, num_devices=1)


def test_the_default_and_the_paper_configs_pass_every_check():
  config_lib.validate_config(config_lib.default_config(), num_devices=1)
  config_lib.validate_config(config_lib.default_config(), num_devices=None)
  config = farnia2019.farnia2019_config("svhn_cropped", "alexnet", "pgm")
  config.num_validation = 26031
  config_lib.validate_config(config, num_devices=4)
  config.num_validation = 26032
  with pytest.raises(config_lib.ConfigError, match=r"in \[0, 26032\) for dataset 'svhn_cropped'"):
    config_lib.validate_config(config, num_devices=4)
