"""The CLI in this process: bad input ends in one "error: ..." line before any training, and a
rerun compares the workdir's saved configs before it skips anything."""

import json
import logging
import os
import sys
from unittest import mock

import jax
import pytest
from absl import flags
from absl import logging as absl_logging
from absl.testing import flagsaver

from configs import demo, uvim_demo
from fsq_repro import main as cli
from fsq_repro import workdir as workdir_lib
from fsq_repro.eval import evaluate, generate, uvim_evaluate
from fsq_repro.models import factory
from fsq_repro.train import stage1, stage2, uvim_stage1, uvim_stage2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")


@pytest.fixture
def parsed_flags():
  """The CLI's flags marked as parsed (values are set per test), as they were afterwards."""
  parsed = flags.FLAGS.is_parsed()
  if not parsed:
    flags.FLAGS.mark_as_parsed()
  yield flags.FLAGS
  if not parsed:
    flags.FLAGS.unparse_flags()


@pytest.fixture
def jobs(monkeypatch):
  """Replaces every job by a recorder: {mode: [workdir, ...]} of the jobs that started."""
  started = {}
  for module, name, mode in ((stage1, "train_and_evaluate", "stage1"),
                             (stage2, "train_and_evaluate", "stage2"),
                             (generate, "write_samples", "sample"),
                             (evaluate, "evaluate", "eval"),
                             (uvim_stage1, "train_and_evaluate", "stage1"),
                             (uvim_stage2, "train_and_evaluate", "stage2"),
                             (uvim_evaluate, "evaluate", "eval")):
    monkeypatch.setattr(module, name,
                        lambda config, workdir, mode=mode: started.setdefault(mode, []).append(
                            workdir))
  return started


@pytest.fixture
def run_main(parsed_flags, jobs, capsys):
  """Runs cli.main on a config object: (exit code, stdout, stderr).

  main() quiets absl's logging; the verbosity is restored afterwards for the other tests.
  """
  del parsed_flags, jobs
  verbosity = absl_logging.get_verbosity()

  def run(config, mode, workdir, allow_config_change=False):
    with flagsaver.flagsaver(config=config, mode=mode, workdir=str(workdir),
                             allow_config_change=allow_config_change):
      try:
        cli.main([])
        code = 0
      except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err

  yield run
  absl_logging.set_verbosity(verbosity)


def single_error_line(stderr: str) -> str:
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, stderr
  return errors[0]


def fake_run(workdir, stage, config, step=8):
  """A finished-looking run of `stage`: its saved config and an (empty) checkpoint step."""
  os.makedirs(os.path.join(workdir_lib.checkpoint_dir(str(workdir), stage), str(step)),
              exist_ok=True)
  workdir_lib.write_run_config(workdir_lib.stage_dir(str(workdir), stage), config)


def fake_eval(workdir, config):
  with open(workdir_lib.results_path(str(workdir)), "w") as f:
    json.dump({"recon_fid": 1.0}, f)
  workdir_lib.write_run_config(workdir_lib.eval_dir(str(workdir)), config)


def demo_config(arg="quantizer=fsq,codebook_bits=6", *, get_config=demo.get_config, **fields):
  """`get_config(arg)` with `section__name=value` fields set."""
  config = get_config(arg)
  for path, value in fields.items():
    section, name = path.split("__")
    config[section][name] = value
  return config


# --- bad input --------------------------------------------------------------------------------


def with_dataset(name, data_dir=None):
  config = demo.get_config()
  config.dataset.name = name
  config.dataset.data_dir = data_dir
  return config


@pytest.mark.parametrize("make_config,message", [
    (lambda tmp: demo_config(quantizer__levels=(8, 1, 5)), "every level must be an integer >= 2"),
    (lambda tmp: demo_config(quantizer__levels=(2,) * 31 + (3,)), "the product must"),
    (lambda tmp: demo_config(quantizer__codebook_size=1024),
     "quantizer.codebook_size=1024 is VQ's number of codes; FSQ has prod(levels) = 64 codes"),
    (lambda tmp: demo_config(model__name="unet"), "model.name='unet' is unknown"),
    (lambda tmp: demo_config(model__kernel_gradient="fast"),
     "model.kernel_gradient='fast' is unknown; use one of ['auto', 'xla']"),
    (lambda tmp: demo_config(dataset__num_workers=-1),
     "dataset.num_workers=-1 must be a non-negative int"),
    (lambda tmp: demo_config(stage2__attention="flash"),
     "stage2.attention='flash' is unknown; use one of "
     "['custom_vjp', 'dot_product_attention', 'flax']"),
    (lambda tmp: demo_config(stage1__perceptual_loss="lpips",
                             stage1__perceptual_weights=str(tmp / "lpips.msgpack")),
     "stage1.perceptual_weights="),
    (lambda tmp: demo_config(stage1__perceptual_loss="resnet50"),
     "stage1.perceptual_loss='resnet50' needs its ImageNet weights"),
    (lambda tmp: with_dataset("no_such_dataset"), "dataset_name='no_such_dataset' is not"),
    (lambda tmp: with_dataset("imagenet2012", str(tmp / "tfds")),
     "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org"),
    (lambda tmp: with_dataset(f"image_folder:{tmp / 'nowhere'}"), "is not a directory"),
], ids=["level_below_2", "codebook_too_large", "fsq_codebook_size", "unknown_model",
        "unknown_kernel_gradient", "negative_workers", "unknown_attention", "missing_perceptual_weights", "no_perceptual_weights",
        "unknown_dataset",
        "manual_download", "missing_image_folder"])
def test_bad_stage1_config_fails_in_one_line(run_main, jobs, tmp_path, make_config, message):
  code, _, stderr = run_main(make_config(tmp_path), "stage1", tmp_path / "run")
  assert code == 2
  assert message in single_error_line(stderr)
  assert not jobs and not os.path.exists(tmp_path / "run" / "stage1")


def uvim_config(arg="quantizer=fsq", **fields):
  return demo_config(arg, get_config=uvim_demo.get_config, **fields)


@pytest.mark.parametrize("make_config,mode,message", [
    (lambda tmp: uvim_config(model__dropped_code="zero"), "stage1",
     "model.dropped_code='zero' with quantizer.levels=(7, 5, 5, 5, 5): all levels are odd"),
    (lambda tmp: uvim_config(model__code_len=15), "stage1", "model.code_len=15 with"),
    (lambda tmp: uvim_config(task__name="depthh"), "stage1", "task.name='depthh' is unknown"),
    (lambda tmp: uvim_config("quantizer=vq", quantizer__momentum=1.5), "stage1",
     "momentum=1.5: UViM's VQ needs"),
    (lambda tmp: uvim_config(dataset__exclude_classes=("cat",)), "stage1",
     "dataset.exclude_classes=('cat',): ['cat'] are not classes of fsq_photo_crops"),
    (lambda tmp: uvim_config(stage2__encoder_init=str(tmp / "vit.npz")), "stage2",
     "stage2.encoder_init="),
    (lambda tmp: uvim_config(eval__temperature=0.0), "eval", "eval.temperature=0.0 must be > 0"),
    (lambda tmp: uvim_config(), "sample", "--mode=sample is not one of UViM's"),
    (lambda tmp: uvim_config(task__name="panoptic"), "stage1",
     "dataset.name='fsq_photo_crops' does not give task.name='panoptic' its labels (instances, "
     "semantics); use 'coco/2017_panoptic'"),
    (lambda tmp: uvim_config(eval__panoptic_categories=str(tmp / "cats.json")), "eval",
     "eval.panoptic_categories="),
], ids=["zero_code_with_odd_fsq", "code_len_not_square", "unknown_task", "vq_momentum",
        "unknown_excluded_class", "missing_vit_npz", "zero_temperature", "sample_mode",
        "panoptic_on_images", "missing_panoptic_categories"])
def test_bad_uvim_config_fails_in_one_line(run_main, jobs, tmp_path, make_config, mode, message):
  code, _, stderr = run_main(make_config(tmp_path), mode, tmp_path / "run")
  assert code == 2
  assert message in single_error_line(stderr)
  assert not jobs and not os.path.exists(tmp_path / "run" / mode)


def test_batch_not_divisible_by_devices_fails_in_one_line(run_main, tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  config = demo.get_config()
  config.stage1.batch_size = 7
  code, _, stderr = run_main(config, "stage1", tmp_path)
  assert code == 2
  assert "stage1.batch_size=7 is not divisible by the 2 devices" in single_error_line(stderr)


@pytest.mark.parametrize("mode", ["stage2", "sample", "eval"])
def test_later_modes_without_stage1_checkpoint_fail_in_one_line(run_main, tmp_path, mode):
  code, _, stderr = run_main(demo.get_config(), mode, tmp_path)
  assert code == 2
  assert "no stage1 checkpoint in" in single_error_line(stderr)


def test_sampling_without_stage2_checkpoint_fails_in_one_line(run_main, tmp_path):
  config = demo_config()
  fake_run(tmp_path, "stage1", config)
  code, _, stderr = run_main(config, "sample", tmp_path)
  assert code == 2
  assert f"no stage2 checkpoint in {tmp_path}/stage2/checkpoints" in single_error_line(stderr)


def test_stage2_quantizer_differing_from_stage1_fails_in_one_line(run_main, jobs, tmp_path):
  fake_run(tmp_path, "stage1", demo.get_config("quantizer=vq,codebook_bits=8"))
  code, _, stderr = run_main(demo.get_config("quantizer=vq,codebook_bits=10"), "stage2", tmp_path)
  assert code == 2
  line = single_error_line(stderr)
  assert "the stage1 run in" in line and "quantizer.codebook_size: 256 -> 1024" in line
  assert not jobs


@pytest.mark.usefixtures("parsed_flags")
def test_unreadable_image_in_image_folder_is_skipped_and_counted(tmp_path, caplog):
  import PIL.Image  # pylint: disable=g-import-not-at-top
  for name in ("a", "b"):
    os.makedirs(tmp_path / "photos" / name)
    PIL.Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "photos" / name / "ok.png")
  (tmp_path / "photos" / "b" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
  config = with_dataset(f"image_folder:{tmp_path / 'photos'}", str(tmp_path / "tfds"))
  with flagsaver.flagsaver(allow_config_change=False), caplog.at_level(logging.WARNING):
    cli.preflight(config, "stage1", str(tmp_path / "run"))
  messages = [r.getMessage() for r in caplog.records if "skipped 1 of 3" in r.getMessage()]
  assert len(messages) == 1 and "b/truncated.jpg" in messages[0]
  assert "\n" not in messages[0]


# --- flags ------------------------------------------------------------------------------------


def parse(*args, config_file=DEMO):
  """cli.parse_flags on a command line of the demo config and `args`; returns its config.

  ml_collections finds --config.* overrides in sys.argv, so the command line goes there too.
  """
  argv = ["main", f"--config={config_file}", "--mode=stage1", "--workdir=/tmp/x", *args]
  with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
    cli.parse_flags(argv)
    return flags.FLAGS.config


def test_readme_levels_override_gives_an_fsq_config_that_validates():
  config = parse("--config.quantizer.levels=(8,8,8,5,5,5)")
  assert tuple(config.quantizer.levels) == (8, 8, 8, 5, 5, 5)
  cli.config_lib.validate(config, num_devices=1, stage="stage1")
  assert factory.codebook_size(config.quantizer) == 64_000
  assert factory.build_quantizer(config.quantizer).codebook_size == 64_000


def test_unknown_config_field_fails_in_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    parse("--config.stage1.no_such_field=1")
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err
  assert "a --config.* override names no config field" in single_error_line(stderr)
  assert "no_such_field" in stderr and len(stderr.strip().splitlines()) == 1


def test_a_bug_inside_a_config_file_is_not_reported_as_an_unknown_field(tmp_path):
  buggy = tmp_path / "buggy.py"
  buggy.write_text("import ml_collections\n"
                   "def get_config(arg=None):\n"
                   "  c = ml_collections.ConfigDict({'a': 1})\n"
                   "  return c.misspelled\n")
  with pytest.raises(AttributeError, match="misspelled"):
    parse(config_file=buggy)


# --- reruns: compare the saved configs, then skip what is complete ----------------------------


def test_a_finished_stage_is_skipped_on_rerun(run_main, jobs, tmp_path):
  config = demo_config(stage1__num_train_steps=8)
  fake_run(tmp_path, "stage1", config)
  code, out, _ = run_main(config, "stage1", tmp_path)
  assert code == 0 and "stage1: already complete" in out and not jobs
  config.stage1.num_train_steps = 10  # extending a finished run is the same run
  code, out, _ = run_main(config, "stage1", tmp_path)
  assert code == 0 and jobs == {"stage1": [str(tmp_path)]}


def test_a_finished_stage_with_another_config_is_refused_not_skipped(run_main, jobs, tmp_path):
  fake_run(tmp_path, "stage1", demo_config(stage1__num_train_steps=8))
  config = demo_config(stage1__num_train_steps=8, stage1__learning_rate=1e-3)
  code, out, stderr = run_main(config, "stage1", tmp_path)
  assert code == 2 and "already complete" not in out and not jobs
  line = single_error_line(stderr)
  assert "holds a stage1 run with a different config (stage1.learning_rate: 0.0003 -> 0.001)" in line
  assert "--allow_config_change" in line
  code, _, stderr = run_main(config, "stage1", tmp_path, allow_config_change=True)
  assert code == 0 and "error:" not in stderr


def trained_workdir(tmp_path, config):
  for stage in ("stage1", "stage2"):
    fake_run(tmp_path, stage, config)


def test_the_attention_implementation_is_not_a_different_run(run_main, jobs, tmp_path):
  # Runs made when flax's attention was the default resume under the custom_vjp default.
  trained_workdir(tmp_path, demo_config(stage2__attention="flax", stage2__num_train_steps=8))
  code, out, stderr = run_main(demo_config(stage2__num_train_steps=8), "stage2", tmp_path)
  assert code == 0 and "stage2: already complete" in out and not jobs, stderr


def test_eval_is_complete_only_for_the_config_that_computed_it(run_main, jobs, tmp_path):
  config = demo_config()
  trained_workdir(tmp_path, config)
  code, _, _ = run_main(config, "eval", tmp_path)
  assert code == 0 and jobs == {"eval": [str(tmp_path)]}  # no results yet
  fake_eval(tmp_path, config)
  code, out, _ = run_main(config, "eval", tmp_path)
  assert code == 0 and "eval: already complete" in out and len(jobs["eval"]) == 1

  for field, value in (("eval__cfg_sweep", (0.0, 0.5)), ("eval__feature_network", "offline"),
                       ("sample__num_steps", 8), ("stage2__num_train_steps", 400)):
    changed = demo_config(**{field: value})
    fake_run(tmp_path, "stage2", changed)  # Stage II itself matches the changed config
    code, out, stderr = run_main(changed, "eval", tmp_path)
    assert code == 2 and "already complete" not in out, field
    assert "holds a eval run with a different config" in single_error_line(stderr), field
    code, _, _ = run_main(changed, "eval", tmp_path, allow_config_change=True)
    assert code == 0 and len(jobs["eval"]) == 2, field
    jobs["eval"].pop()
    fake_run(tmp_path, "stage2", config)

  # What only --mode=sample reads does not change evaluation results.
  code, out, _ = run_main(demo_config(sample__num_images=7, sample__cfg=0.1), "eval", tmp_path)
  assert code == 0 and "eval: already complete" in out


def test_earlier_stage_of_another_config_is_refused(run_main, jobs, tmp_path):
  config = demo_config()
  trained_workdir(tmp_path, config)
  changed = demo_config(stage2__learning_rate=5e-4)
  for mode in ("sample", "eval"):
    code, _, stderr = run_main(changed, mode, tmp_path)
    assert code == 2, mode
    assert "the stage2 run in" in single_error_line(stderr), mode
  assert not jobs
