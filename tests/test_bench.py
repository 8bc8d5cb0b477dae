"""scripts/bench_official.py's pieces that do not need the official package: its import
error, the interleaved best-of-rounds timing, and the table."""

import time

import pytest

from scripts import bench_official


def test_official_path_without_the_package_fails_in_one_line(tmp_path):
  with pytest.raises(SystemExit, match=r"--official_path=.* has no importable maskgit package"):
    bench_official.import_official(str(tmp_path))
  assert str(tmp_path) not in __import__("sys").path  # the path does not stay on sys.path


def test_interleaved_seconds_threads_state_and_keeps_each_sides_best_round():
  calls = []

  def make(name, delays):
    def step(state, scale):
      calls.append(name)
      time.sleep(delays[min(state, len(delays) - 1)] * scale)
      return state + 1, state
    return step

  # Side "a" is slow in its second timed round only; "b" in its first.
  sides = {"a": (make("a", [0.0, 0.01, 0.08, 0.01]), 0, (1.0,)),
           "b": (make("b", [0.0, 0.08, 0.01, 0.01]), 0, (1.0,))}
  best = bench_official.interleaved_seconds(sides, rounds=3, steps=1)
  assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then alternating rounds
  assert 0.01 <= best["a"] < 0.05 and 0.01 <= best["b"] < 0.05


def test_markdown_table_has_the_ratio_and_mfu():
  row = {"workload": "Stage II, 257 tokens", "official_step_s": 16.0, "ours_step_s": 12.0,
         "ours_over_official": 0.75, "official_mfu": 0.3, "ours_mfu": 0.4}
  lines = bench_official.markdown([row]).splitlines()
  assert lines[0].startswith("| workload | official s/step | ours s/step | ours / official")
  assert lines[2] == "| Stage II, 257 tokens | 16.00 | 12.00 | 0.750 | 30.0% | 40.0% |"


def test_input_throughput_times_each_pipeline_on_the_jpeg_folder(tmp_path, monkeypatch):
  from scripts import bench_input  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(bench_input, "NUM_IMAGES", 16)
  monkeypatch.setattr(bench_input, "BATCH_SIZE", 4)
  monkeypatch.setattr(bench_input, "BATCHES", 1)
  # A stand-in for an earlier pipeline.py: a module file with the two functions it needs.
  earlier = tmp_path / "earlier_pipeline.py"
  earlier.write_text("from fsq_repro.data.pipeline import create_split, num_examples\n")
  report = bench_input.input_throughput([16, 24], str(earlier), workers=(0,))
  assert [(r["pipeline"], r["image_size"]) for r in report["rows"]] == [
      ("tf.data (before)", 16), ("grain, 0 workers, 2 threads", 16),
      ("tf.data (before)", 24), ("grain, 0 workers, 2 threads", 24)]
  assert all(r["images_per_s"] > 0 for r in report["rows"])
  lines = report["markdown"].splitlines()
  assert lines[0] == "| pipeline | 16 px images/s | 24 px images/s |" and len(lines) == 4


@pytest.mark.slow  # compiles and times both UViM steps
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_uvim_steps_are_timed_with_their_flops(stage, monkeypatch):
  import os
  import tiny_configs
  from fsq_repro import parallel
  monkeypatch.syspath_prepend(os.path.dirname(bench_official.__file__))  # bench.py's imports
  import bench
  config = tiny_configs.tiny_uvim_config("quantizer=vq")
  bench_stage = bench.bench_uvim_stage1 if stage == "stage1" else bench.bench_uvim_stage2
  report = bench_stage(config, parallel.make_mesh(), steps=3)
  step = report if stage == "stage1" else report["teacher_forcing"]
  assert step["batch_size"] == 8 and step["step_s"] > 0
  assert step["flops_per_step_per_device"] > 0 and step["images_per_s"] > 0
