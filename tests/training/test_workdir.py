"""Tests of a run's workdir: config.json (provenance), the lock, checkpoint fallback, metrics.jsonl.

Modules: sn_jax.training.workdir, .checkpoints, .metrics, and the loop and command line over them.
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from test_train import _config

from sn_jax.training import checkpoints, cli, data, loop, metrics
from sn_jax.training import config as config_lib
from sn_jax.training import step as train
from sn_jax.training import workdir as workdir_lib


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 6-step run with checkpoints at steps 3 and 6."""
  workdir = tmp_path_factory.mktemp("trained")
  result = loop.train_and_evaluate(_config(), str(workdir))
  return workdir, result


def _copy(trained, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(trained[0], copy)
  return copy


def _template(config):
  state = train.create_train_state(
    config_lib.make_model(config),
    config_lib.make_optimizer(config),
    input_shape=(28, 28, 1),
    seed=config.seed,
  )
  return jax.device_get(state)


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ---- config.json: provenance ----


def test_every_config_field_is_classified():
  fields = set(config_lib.default_config())
  assert set(workdir_lib.TRAINING_FIELDS) | set(workdir_lib.FREE_FIELDS) == fields
  assert not set(workdir_lib.TRAINING_FIELDS) & set(workdir_lib.FREE_FIELDS)


def test_the_first_run_records_its_config(trained):
  workdir, _ = trained
  record = json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())
  assert record["config"] == json.loads(json.dumps(_config().to_dict()))
  assert record["sn_jax_version"] == __import__("sn_jax").__version__
  assert record["command"] == sys.argv and record["history"] == []
  recorded = workdir_lib.recorded_config(str(workdir))
  assert recorded.to_dict() == _config().to_dict()
  config_lib.validate_config(recorded, num_devices=4)


def test_training_fields_may_not_change_evaluation_fields_may(tmp_path):
  workdir_lib.write(str(tmp_path), workdir_lib.check(_config(), str(tmp_path)))
  changed = _config(seed=1, beta=2.0)
  changed.attack.eps = 0.3
  with pytest.raises(workdir_lib.WorkdirError) as info:
    workdir_lib.check(changed, str(tmp_path))
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(f"{tmp_path / 'config.json'} records a different training run: ")
  assert "config.attack.eps was 0.15, now 0.3; config.beta was 1.0, now 2.0; " in message
  assert "config.seed was 0, now 1. Pass --override (override=True)" in message
  free = _config(num_eval_train=10, eval_batch_size=40, log_every=1, keep_checkpoints=5)
  free.eval_attack.name = "pgm"
  assert workdir_lib.check(free, str(tmp_path)) is None


def test_an_override_is_recorded_in_the_history(tmp_path, capsys):
  workdir_lib.write(str(tmp_path), workdir_lib.check(_config(), str(tmp_path)))
  record = workdir_lib.check(_config(num_steps=9), str(tmp_path), override=True, command=["x"])
  workdir_lib.write(str(tmp_path), record)
  assert "warning: overriding the recorded config.num_steps" in capsys.readouterr().err
  saved = workdir_lib.read(str(tmp_path))
  assert saved["config"]["num_steps"] == 9
  assert saved["history"][-1]["override"] == {"config.num_steps": [6, 9]}
  assert saved["history"][-1]["command"] == ["x"]


def test_a_model_option_added_or_removed_is_a_difference(tmp_path):
  workdir_lib.write(str(tmp_path), workdir_lib.check(_config(), str(tmp_path)))
  with pytest.raises(workdir_lib.WorkdirError, match=r"config.model_options.width was None, now 8"):
    workdir_lib.check(_config(model_options={"width": 8}), str(tmp_path))


def test_a_run_recorded_before_dtype_and_random_labels_existed_resumes_with_their_defaults():
  old = _config().to_dict()
  del old["dtype"], old["random_labels"]  # a config.json written before the fields were added
  assert workdir_lib.differences(old, _config().to_dict()) == {}
  changed = workdir_lib.differences(old, _config(dtype="bfloat16").to_dict())
  assert changed == {"config.dtype": ("float32", "bfloat16")}


def test_an_unreadable_config_json(tmp_path):
  (tmp_path / "config.json").write_text('{"config": ')
  with pytest.raises(workdir_lib.WorkdirError, match=r"config.json cannot be read \(.*\); move"):
    workdir_lib.check(_config(), str(tmp_path))
  (tmp_path / "config.json").write_text("[]")
  with pytest.raises(workdir_lib.WorkdirError, match=r"config.json has no 'config' entry"):
    workdir_lib.recorded_config(str(tmp_path))


def test_the_command_line_refuses_a_changed_network_in_one_line(trained, tmp_path, capsys):
  copy = _copy(trained, tmp_path)
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "--workdir", str(copy), "--config.seed=1", "--config.num_iters=2"])
  assert info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err == (
    f"sn-jax: error: {copy / 'config.json'} records a different training run: "
    "config.num_iters was 1, now 2; config.seed was 0, now 1. Pass --override (override=True) "
    "to continue with the new values, or use another --workdir."
  )
  assert not (copy / ".lock").exists()
  with pytest.raises(SystemExit) as info:
    cli.main(["eval", "--workdir", str(copy), "--override"])
  assert info.value.code == 2
  assert "`sn-jax eval` takes no --override" in capsys.readouterr().err


def test_eval_from_the_workdir_alone(trained, capsys):
  workdir, result = trained
  with pytest.raises(SystemExit) as info:
    cli.main(["eval", "--workdir", str(workdir)])
  assert info.value.code == 0
  out, err = capsys.readouterr()
  expected = cli.table(_config(), {"beta=1": result}).splitlines()
  assert [line for line in out.splitlines() if line.startswith("beta=1")] == expected[3:4]
  assert "evaluating 1/2: the train split (200 examples)." in err


def test_train_with_override_continues_and_records_it(trained, tmp_path, capsys):
  copy = _copy(trained, tmp_path)
  argv = ["train", "--workdir", str(copy), "--config.num_steps=7", "--override"]
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  assert info.value.code == 0, capsys.readouterr().err
  record = workdir_lib.read(str(copy))
  assert record["config"]["num_steps"] == 7
  assert record["history"][-1]["override"] == {"config.num_steps": [6, 7]}
  assert sorted(os.listdir(copy / "checkpoints")) == ["6", "7"]


# ---- The lock ----


def test_a_live_holder_is_named_and_refused(tmp_path):
  host = socket.gethostname()
  holder = {"pid": os.getppid(), "host": host}
  (tmp_path / ".lock").write_text(json.dumps(holder))
  message = rf"another run \(pid {os.getppid()} on host {host}\) is training in {tmp_path}; wait"
  with pytest.raises(workdir_lib.WorkdirError, match=message):
    loop.train_and_evaluate(_config(), str(tmp_path))
  assert json.loads((tmp_path / ".lock").read_text()) == holder  # left alone
  (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
  with pytest.raises(workdir_lib.WorkdirError, match=r"\(pid 1 on host elsewhere\)"):
    workdir_lib.RunLock(str(tmp_path)).__enter__()


LOCK_HOLDER = """
import sys
from sn_jax.training.workdir import RunLock
with RunLock(sys.argv[1]):
  print("locked", flush=True)
  sys.stdin.readline()
"""


def test_a_second_process_is_refused_until_the_first_releases(tmp_path):
  holder = subprocess.Popen(
    [sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(workdir_lib.WorkdirError, match=rf"another run \(pid {holder.pid} on"):
      workdir_lib.RunLock(str(tmp_path)).__enter__()
  finally:
    holder.communicate("done\n", timeout=60)
  assert holder.returncode == 0 and not (tmp_path / ".lock").exists()
  with workdir_lib.RunLock(str(tmp_path)):
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  assert not (tmp_path / ".lock").exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()  # its pid now names no process
  (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
  with workdir_lib.RunLock(str(tmp_path)):
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  assert not (tmp_path / ".lock").exists()
  err = capsys.readouterr().err
  assert f"sn-jax: warning: taking over {tmp_path / '.lock'}, left by pid {dead.pid} " in err


def test_a_lock_without_a_holder(tmp_path):
  (tmp_path / ".lock").write_text("")
  with pytest.raises(workdir_lib.WorkdirError, match=r"\.lock exists but does not name its holder"):
    workdir_lib.RunLock(str(tmp_path)).__enter__()


def test_the_lock_is_released_when_the_run_raises(tmp_path, monkeypatch):
  def failing_batches(*args, **kwargs):
    raise RuntimeError("disk on fire")
    yield

  monkeypatch.setattr(data, "batches", failing_batches)
  with pytest.raises(RuntimeError, match="disk on fire"):
    loop.train_and_evaluate(_config(), str(tmp_path))
  assert not (tmp_path / ".lock").exists()


# ---- Checkpoints that do not restore ----


def _truncate_array(step_dir):
  path = max(
    glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True), key=os.path.getsize
  )
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _truncate_metadata(step_dir):
  with open(step_dir / "state" / "_METADATA", "r+b") as f:
    f.truncate(50)


def _delete_item(step_dir):
  shutil.rmtree(step_dir / "progress")


@pytest.mark.parametrize(
  ("corrupt", "what"),
  [
    (_truncate_array, "ValueError: OUT_OF_RANGE: Error reading"),
    (_truncate_metadata, "JSONDecodeError: "),
    (_delete_item, 'KeyError: \'Item "progress" was not found in the checkpoint.'),
  ],
)
def test_a_checkpoint_that_does_not_restore_is_moved_aside(
  trained, tmp_path, capsys, corrupt, what
):
  copy = _copy(trained, tmp_path)
  config = _config()
  with checkpoints.manager(str(trained[0]), config, create=False) as intact:
    expected, expected_progress = checkpoints._restore_step(intact, 3, _template(config))
  corrupt(copy / "checkpoints" / "6")
  capsys.readouterr()
  with checkpoints.manager(str(copy), config, create=False) as manager:
    step, state, progress = checkpoints.restore(manager, _template(config), move_aside=True)
    assert manager.all_steps() == [3]
  assert step == 3 and progress == expected_progress
  chex.assert_trees_all_equal(state, expected)
  assert sorted(os.listdir(copy / "checkpoints")) == ["3", "corrupt-6"]
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 2
  assert lines[0].startswith(f"sn-jax: warning: checkpoint at step 6 does not restore ({what}")
  assert lines[0].endswith(f"); moved it to {copy / 'checkpoints' / 'corrupt-6'}.")
  assert (
    lines[1] == "sn-jax: warning: resuming from the checkpoint at step 3, the newest that restores."
  )


def test_no_checkpoint_restores(trained, tmp_path, capsys):
  copy = _copy(trained, tmp_path)
  _truncate_metadata(copy / "checkpoints" / "6")
  _delete_item(copy / "checkpoints" / "3")
  config = _config()
  where = copy / "checkpoints"
  with checkpoints.manager(str(copy), config, create=False) as manager:
    message = rf"no checkpoint in {where} restores \(steps 6, 3\); to start afresh, re-run `sn-jax"
    with pytest.raises(workdir_lib.WorkdirError, match=message):
      checkpoints.restore(manager, _template(config), move_aside=False)
    assert sorted(os.listdir(where)) == ["3", "6"]  # evaluation only reads
    message = r"\(steps 6, 3, moved to corrupt-STEP\); re-run to start afresh from step 0, or"
    with pytest.raises(workdir_lib.WorkdirError, match=message):
      checkpoints.restore(manager, _template(config), move_aside=True)
  assert sorted(os.listdir(where)) == ["corrupt-3", "corrupt-6"]
  assert "Traceback" not in capsys.readouterr().err


def _wider(template):
  params = jax.tree.map(
    lambda a: np.zeros((*a.shape[:-1], a.shape[-1] + 1), a.dtype), template.params
  )
  return template.replace(params=params)


def _deeper(template):
  return template.replace(params={**template.params, "extra": np.zeros(3, np.float32)})


@pytest.mark.parametrize(
  ("change", "what"),
  [
    (_wider, "its arrays have other shapes"),
    (_deeper, r"it holds \d+ arrays, the config's network \d+"),
  ],
)
def test_a_checkpoint_of_another_network_is_not_called_corrupt(trained, change, what):
  message = (
    rf"^the checkpoint at step 6 in .* does not fit the config's network \({what}.*\); train"
  )
  with (
    checkpoints.manager(str(trained[0]), _config(), create=False) as manager,
    pytest.raises(workdir_lib.WorkdirError, match=message),
  ):
    checkpoints.restore(manager, change(_template(_config())), move_aside=True)
  assert sorted(os.listdir(trained[0] / "checkpoints")) == ["3", "6"]


def _final_state(workdir):
  config = _config()
  with checkpoints.manager(str(workdir), config, create=False) as manager:
    return checkpoints.restore(manager, _template(config), move_aside=False)[1]


def test_a_run_resumes_past_a_corrupt_checkpoint_bit_identical(trained, tmp_path):
  # As if killed after step 6 was logged but while its checkpoint was being corrupted: the run
  # goes back to step 3, drops the records after it, and ends as the uninterrupted run did.
  workdir, result = trained
  copy = _copy(trained, tmp_path)
  _truncate_array(copy / "checkpoints" / "6")
  resumed = loop.train_and_evaluate(_config(), str(copy))
  assert resumed["step"] == 6 and resumed["test"] == result["test"]
  chex.assert_trees_all_equal(_final_state(copy), _final_state(workdir))
  # Each step once, and the same records as the uninterrupted run, but for the timing.
  got, want = _records(copy), _records(workdir)
  assert [r["step"] for r in got] == [2, 3, 4, 6, 6]
  for record in (*got, *want):
    record.pop("steps_per_sec", None)
  assert got == want
  assert not (copy / ".lock").exists()


# ---- metrics.jsonl and the console ----


def test_truncation_keeps_each_step_once(tmp_path):
  log = metrics.MetricsLog(str(tmp_path), active=True)
  for step in (2, 4, 6):
    log.write({"step": step, "loss": 1.0})
  log.write({"step": 6, "test": {}})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 8, "lo')  # cut off by a kill
  log.truncate(6)
  assert [r for r in _records(tmp_path)] == [{"step": s, "loss": 1.0} for s in (2, 4, 6)]
  log.truncate(3)
  assert _records(tmp_path) == [{"step": 2, "loss": 1.0}]


def test_averages_are_over_the_steps_that_report_a_metric():
  steps = [{"loss": 1.0, "accuracy": 0.5}, {"loss": 3.0, "accuracy": 1.0, "regularizer": 4.0}]
  assert metrics.average(steps) == {"loss": 2.0, "accuracy": 0.75, "regularizer": 4.0}


def test_the_rate_starts_after_the_compiling_steps():
  console = metrics.Console(active=False, step=4, total=10, compile_steps=2)
  console.update(5, None)
  assert console.rate(5) is None and console.bar is None  # still compiling
  console.update(6, None)
  assert console.rate(6) is None and console.bar is not None
  time.sleep(0.01)
  console.update(7, None)
  assert 0 < console.rate(7) <= 1 / 0.01
  console.close()
