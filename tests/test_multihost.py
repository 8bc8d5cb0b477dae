"""Two local processes (jax.distributed, gloo CPU collectives) against one process.

The global batch at step s does not depend on the number of processes that read it (each
process materialises its rows of it, data/pipeline.py), so the reference is simply the same
command line on one process. It runs on two CPU devices: the same per-device programs as the
two processes, so the results agree to float32 round-off of the cross-device sums. Token
extraction writes each process's rows with their positions, so both runs load the same token
array and Stage II trains on the same batches. Evaluation reads exact, non-overlapping rows
of the eval split and puts the tokens back in split order, and sampling generates each
process's rows of the same global batches: usage counts, tokens and samples must be equal,
FID statistics and results.json equal up to round-off. A run stopped on two processes and
resumed on one (and the other way round) continues the same trajectory.
The training and evaluation runs take minutes and are marked slow (`make test-slow`).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from fsq_repro import checkpoints, config_lib, parallel
from fsq_repro import workdir as workdir_lib
from fsq_repro.data import tokens as tokens_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900

CONFIG = textwrap.dedent("""
    from tiny_configs import tiny_config

    def get_config(arg=None):
      c = tiny_config(arg or "quantizer=fsq,codebook_bits=6")
      s = c.stage1
      s.num_train_steps = 3
      s.checkpoint_every_steps = s.image_every_steps = 3
      s = c.stage2
      s.batch_size = 64  # 64 batches of token extraction over the 4096 training crops
      s.hidden_size, s.num_layers, s.num_heads, s.mlp_dim = 16, 1, 2, 32
      s.warmup_steps = 1
      s.num_train_steps = 3
      s.log_every_steps = 1
      s.checkpoint_every_steps = 3
      c.eval.num_images = 200  # the first 200: not a multiple of either process's batch
      c.eval.batch_size = 64
      c.eval.cfg_sweep = (0.0, 0.1)
      c.eval.num_sample_images = 48
      c.eval.num_reference_images = 256
      c.eval.compression_num_images = 64
      c.eval.range_coding_images = 4
      c.sample.num_images = 24
      c.sample.batch_size = 8
      c.sample.cfg = 0.1
      return c
""")

EVAL_RUN = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from fsq_repro import api, config_lib, parallel
    from fsq_repro.eval import evaluate, features

    config_path, workdir, out, address = sys.argv[1:5]
    num_processes, process_id = int(sys.argv[5]), int(sys.argv[6])
    if num_processes > 1:
      parallel.initialize(address, num_processes, process_id)
    config = config_lib.load_config(config_path)
    # A fixed random projection stands in for the feature network: same data flow, no
    # classifier to train.
    projection = np.random.default_rng(0).standard_normal((16 * 16 * 3, 8), np.float32)
    network = features.FeatureNetwork("projection", "test", jax.jit(
        lambda x: {"pool": x.reshape(len(x), -1) @ projection}))
    recon = evaluate.reconstruct_split(config, api.Tokenizer.from_workdir(workdir), network,
                                       parallel.make_mesh())
    stats = recon["pool_stats"]
    np.savez(out, counts=np.bincount(recon["tokens"].ravel(), minlength=64),
             num_images=len(recon["tokens"]),
             tokens=recon["tokens"], labels=recon["labels"], psnr=recon["psnr"],
             count=stats.count, feature_sum=stats.feature_sum, outer_sum=stats.outer_sum)
""")

EVAL_PIECES_RUN = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from fsq_repro.eval import fid
    from fsq_repro.eval.usage import CodebookUsage
    from fsq_repro import parallel

    address, num_processes, process_id, out = sys.argv[1], *map(int, sys.argv[2:4]), sys.argv[4]
    if num_processes > 1:
      parallel.initialize(address, num_processes, process_id)
    data = np.random.default_rng(0)
    images = data.random((16, 4, 4, 3), np.float32)  # the global batch
    codes = data.integers(0, 50, (16, 3))
    local = slice(process_id * 16 // num_processes, (process_id + 1) * 16 // num_processes)
    batch = parallel.global_batch({"image": images[local], "codes": codes[local]},
                                  parallel.make_mesh())
    projection = data.standard_normal((48, 5)).astype(np.float32)
    features = jax.jit(lambda x: x.reshape(len(x), -1) @ projection)(batch["image"])
    mean_pixel = jax.jit(lambda x: x.mean())(batch["image"])
    stats = fid.FeatureStats.empty(5).update(parallel.host_array(features))
    # As evaluation counts codes: every process gathers every row, then counts.
    usage = CodebookUsage(50).update(parallel.host_array(batch["codes"]))
    seen, seen_counts = usage.code_counts()
    counts = np.zeros(50, np.int64)
    counts[seen] = seen_counts
    np.savez(out, mean_pixel=parallel.host_array(mean_pixel), count=stats.count,
             feature_sum=stats.feature_sum, outer_sum=stats.outer_sum, counts=counts)
""")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
              TF_CPP_MIN_LOG_LEVEL="2",
              PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]))


def spawn(args: list[str], devices: int, log_path) -> subprocess.Popen:
  """A Python subprocess in the repository root; its stderr goes to `log_path`."""
  with open(log_path, "w") as log:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=environment(devices),
                            stdout=subprocess.DEVNULL, stderr=log)


def check_finished(processes: dict, what: str) -> None:
  """Waits for {log path: process}; one failing (or the timeout) stops all the others,
  which could otherwise wait for it in a collective forever."""
  deadline = time.monotonic() + TIMEOUT_S
  while any(p.poll() is None for p in processes.values()):
    if time.monotonic() > deadline or any(p.returncode for p in processes.values()):
      for p in processes.values():
        p.kill()
        p.wait()
      break
    time.sleep(0.2)
  for log_path, process in processes.items():
    with open(log_path) as f:
      assert process.returncode == 0, f"{what} ({log_path}):\n{f.read()[-4000:]}"


def run_two_processes(mode: str, config_path, workdir, *flags: str) -> None:
  """`python -m fsq_repro.main` as processes 0 and 1 of one job on 127.0.0.1."""
  address = f"127.0.0.1:{free_port()}"
  logs = [f"{workdir}-{mode}-{i}.log" for i in range(2)]
  check_finished({log: spawn(
      ["-m", "fsq_repro.main", f"--mode={mode}", f"--config={config_path}",
       f"--workdir={workdir}", f"--coordinator_address={address}", "--num_processes=2",
       f"--process_id={i}", *flags], 1, log) for i, log in enumerate(logs)},
      f"two-process {mode}")


def run_one_process(mode: str, config_path, workdir, *flags: str, devices: int = 2) -> None:
  """The same command line as one process with `devices` CPU devices."""
  log = f"{workdir}-{mode}-one.log"
  check_finished({log: spawn(
      ["-m", "fsq_repro.main", f"--mode={mode}", f"--config={config_path}",
       f"--workdir={workdir}", *flags], devices, log)}, f"one-process {mode}")


def read_metrics(workdir, stage: str) -> list[dict]:
  with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def process_tokens(directory, process: int) -> np.ndarray:
  names = sorted(n for n in os.listdir(directory)
                 if n.startswith(f"tokens-p{process:03d}-") and n.endswith(".npz"))
  return np.concatenate([np.load(os.path.join(directory, n))["tokens"] for n in names])


def load_config(path):
  return config_lib.load_config(str(path))


def final_state(workdir, stage):
  return checkpoints.restore_latest(workdir_lib.checkpoint_dir(str(workdir), stage))


def assert_trees_close(a, b, what: str) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6,
                               err_msg=what)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config path, config, two-process workdir, one-process reference workdir), trained."""
  root = tmp_path_factory.mktemp("multihost")
  config_path = root / "tiny_multihost.py"
  config_path.write_text(CONFIG)
  two, one = root / "two_processes", root / "one_process"
  for mode in ("stage1", "stage2"):
    run_two_processes(mode, config_path, two)
    run_one_process(mode, config_path, one)
  return config_path, load_config(config_path), two, one


@pytest.mark.slow
def test_two_processes_train_like_one(trained):
  """Stage I, token extraction and Stage II from the command line: losses at every logged
  step, tokens and final parameters agree."""
  _, _, two, one = trained
  for stage, keys in (("stage1", ("generator_loss", "discriminator_loss",
                                  "reconstruction_loss", "r1_penalty")),
                      ("stage2", ("loss", "masked_token_accuracy", "grad_norm"))):
    two_metrics, one_metrics = read_metrics(two, stage), read_metrics(one, stage)
    assert len(two_metrics) == len(one_metrics) == 3
    for a, b in zip(two_metrics, one_metrics):
      for key in keys:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"{stage} {key}")

  # Extraction: each process wrote its half of every global batch; loaded, they are one
  # process's extraction, row for row.
  halves = [process_tokens(two / "stage2" / "tokens", process) for process in range(2)]
  assert len(halves[0]) == len(halves[1]) > 0
  for a, b in zip(tokens_lib.load_all(two / "stage2" / "tokens"),
                  tokens_lib.load_all(one / "stage2" / "tokens")):
    np.testing.assert_array_equal(a, b)

  for stage in ("stage1", "stage2"):
    assert_trees_close(final_state(two, stage), final_state(one, stage), f"{stage} state")
    with open(two / stage / "timings.json") as f:  # written by process 0 of the job
      timings = json.load(f)
    assert list(timings["phases_s"]) == ["startup", *(["tokens"] if stage == "stage2" else []),
                                         "setup", "first_step", "steps", "final_checkpoint"]
    assert timings["counts"]["steps"] == 2  # the steps after the first (which compiles)


@pytest.mark.slow
def test_stage1_resumed_on_another_number_of_processes_continues_the_same_run(tmp_path):
  """10 steps on two processes, then 10 more on one, end where 20 steps on one process end;
  10 on one, then 10 on two, too; and 20 steps on one process with 8 devices. Logged losses
  agree at every step (relative 1e-4)."""
  config_path = tmp_path / "tiny_multihost.py"
  config_path.write_text(CONFIG)
  steps = ["--config.stage1.log_every_steps=1", "--config.stage1.checkpoint_every_steps=10"]
  first, second = "--config.stage1.num_train_steps=10", "--config.stage1.num_train_steps=20"
  straight, two_then_one, one_then_two = (tmp_path / n for n in ("straight", "two_one", "one_two"))
  run_one_process("stage1", config_path, straight, *steps, second, devices=1)
  run_two_processes("stage1", config_path, two_then_one, *steps, first)
  run_one_process("stage1", config_path, two_then_one, *steps, second, devices=1)
  run_one_process("stage1", config_path, one_then_two, *steps, first, devices=1)
  run_two_processes("stage1", config_path, one_then_two, *steps, second)
  eight_devices = tmp_path / "eight_devices"
  run_one_process("stage1", config_path, eight_devices, *steps, second, devices=8)
  expected = read_metrics(straight, "stage1")
  assert [m["step"] for m in expected] == list(range(1, 21))
  for resumed in (two_then_one, one_then_two, eight_devices):
    got = read_metrics(resumed, "stage1")
    assert [m["step"] for m in got] == list(range(1, 21)), resumed
    for a, b in zip(got, expected):
      for key in ("generator_loss", "reconstruction_loss"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, err_msg=f"{resumed} {key}")
    assert_trees_close(final_state(resumed, "stage1"), final_state(straight, "stage1"),
                       str(resumed))


@pytest.mark.slow
def test_two_processes_evaluate_like_one(trained, tmp_path):
  """`--mode=sample` and `--mode=eval` on two processes write what one process writes: the
  same samples.npz, the same results.json (counts exact, FIDs to round-off); and the eval
  split's reconstructions give equal usage counts and token maps, in split order, and FID
  statistics equal to 1e-6."""
  config_path, _, two, _ = trained
  runs = {name: tmp_path / name for name in ("two", "one")}
  for workdir in runs.values():
    shutil.copytree(two, workdir, ignore=shutil.ignore_patterns("eval", "samples", "*.log"))
  for mode in ("sample", "eval"):  # one process first: it trains the offline network once
    # On two devices: the per-device programs of the two processes, so the uint8 samples
    # match bit for bit (one device's larger batches round differently).
    run_one_process(mode, config_path, runs["one"])
    run_two_processes(mode, config_path, runs["two"])
  samples = [np.load(w / "samples" / "cfg_0.1" / "samples.npz") for w in runs.values()]
  assert samples[0]["arr_0"].shape == (24, 16, 16, 3)
  for key in ("arr_0", "arr_1"):
    np.testing.assert_array_equal(samples[0][key], samples[1][key])
  two_results, one_results = (json.load(open(w / "results.json")) for w in runs.values())
  assert set(two_results) == set(one_results)
  assert one_results["num_eval_images"] == 200 and one_results["fid_features"].startswith(
      "offline")
  for key, value in one_results.items():
    if key in ("eval_seconds",):
      continue
    if isinstance(value, float):
      np.testing.assert_allclose(two_results[key], value, rtol=1e-6, err_msg=key)
    elif isinstance(value, dict):
      np.testing.assert_allclose([two_results[key][a] for a in sorted(value)],
                                 [value[a] for a in sorted(value)], rtol=1e-6, err_msg=key)
    else:
      assert two_results[key] == value, key
  with open(runs["one"] / "eval" / "timings.json") as f:  # where the evaluation's time went
    phases = json.load(f)["phases_s"]
  assert list(phases) == ["startup", "feature_network", "reference", "setup", "reconstruction",
                          "sampling", "compression"]
  best = f"{one_results['best_cfg']:g}"
  a, b = (np.load(w / "eval" / f"samples_cfg{best}.npz") for w in runs.values())
  for key in ("arr_0", "arr_1"):
    np.testing.assert_array_equal(a[key], b[key])
  a, b = (np.load(w / "eval" / "reconstructions.npz") for w in runs.values())
  assert a["arr_0"].shape == b["arr_0"].shape == (200, 16, 16, 3)  # rows in gathered order

  address = f"127.0.0.1:{free_port()}"
  check_finished({tmp_path / f"{i}.log": spawn(
      ["-c", EVAL_RUN, str(config_path), str(two), str(tmp_path / f"{i}.npz"), address, "2",
       str(i)], 1, tmp_path / f"{i}.log") for i in range(2)}, "two-process evaluation")
  check_finished({tmp_path / "one.log": spawn(
      ["-c", EVAL_RUN, str(config_path), str(two), str(tmp_path / "one.npz"), "", "1", "0"],
      2, tmp_path / "one.log")}, "one-process evaluation")
  one = np.load(tmp_path / "one.npz")
  assert one["count"] == one["num_images"] == 200 and one["counts"].sum() == 200 * 64
  for i in range(2):
    two_run = np.load(tmp_path / f"{i}.npz")
    np.testing.assert_array_equal(two_run["counts"], one["counts"])
    assert two_run["count"] == one["count"]
    np.testing.assert_array_equal(two_run["tokens"], one["tokens"])  # split order on both
    np.testing.assert_array_equal(two_run["labels"], one["labels"])
    for key in ("psnr", "feature_sum", "outer_sum"):
      np.testing.assert_allclose(two_run[key], one[key], rtol=1e-6, err_msg=key)


def test_two_processes_gather_eval_statistics_like_one(tmp_path):
  """Global batches, jitted reductions, FID statistics and usage counts across processes."""
  address = f"127.0.0.1:{free_port()}"
  runs = {tmp_path / f"{i}.log": spawn(
      ["-c", EVAL_PIECES_RUN, address, "2", str(i), str(tmp_path / f"{i}.npz")], 1,
      tmp_path / f"{i}.log") for i in range(2)}
  runs[tmp_path / "one.log"] = spawn(
      ["-c", EVAL_PIECES_RUN, "", "1", "0", str(tmp_path / "one.npz")], 1, tmp_path / "one.log")
  check_finished(runs, "eval pieces")
  one = np.load(tmp_path / "one.npz")
  data = np.random.default_rng(0)
  images, codes = data.random((16, 4, 4, 3), np.float32), data.integers(0, 50, (16, 3))
  np.testing.assert_array_equal(one["counts"], np.bincount(codes.ravel(), minlength=50))
  np.testing.assert_allclose(one["mean_pixel"], images.mean(), rtol=1e-6)
  assert one["count"] == 16
  for i in range(2):
    two = np.load(tmp_path / f"{i}.npz")
    np.testing.assert_array_equal(two["counts"], one["counts"])
    assert two["count"] == one["count"]
    for key in ("mean_pixel", "feature_sum", "outer_sum"):
      np.testing.assert_allclose(two[key], one[key], rtol=1e-6, err_msg=key)


def test_prefetch_to_device_keeps_order_and_reads_only_size_ahead():
  mesh = parallel.make_mesh()
  read = []

  def local_batches():
    for i in range(5):
      read.append(i)
      yield {"x": np.full((2, 3), i, np.float32)}

  batches = parallel.prefetch_to_device(local_batches(), mesh, size=2)
  first = next(batches)
  assert read == [0, 1, 2]  # the batch in use and two more on their way
  assert isinstance(first["x"], jax.Array) and first["x"].sharding == \
      parallel.batch_sharding(mesh)
  rest = [int(b["x"][0, 0]) for b in batches]
  assert [int(first["x"][0, 0])] + rest == [0, 1, 2, 3, 4]
