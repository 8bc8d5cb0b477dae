"""`make study`: codebook usage, PSNR and reconstruction FID against Stage I steps, FSQ vs VQ.

  python scripts/study.py --sweep=demo_out --out=demo_out/study [--steps=4000 --every=200]

The demo's headline question is a training-length one: FSQ's codebook usage is still rising
when the demo's Stage I stops, VQ's is flat. For each
of the sweep's runs at --bits (default 2^10 and 2^12, both quantizers) this continues the
Stage I that `make demo` trained, with the demo's recipe unchanged (the same for FSQ and VQ)
and a checkpoint every --every steps, to --steps; then it evaluates every checkpoint on the
first `eval.num_images` of the eval split (the demo: the whole validation split) as
`--mode=eval` does: exact codebook usage, PSNR, and reconstruction FID with the eval's feature
network against its training-split reference. Writes <out>/study.json (after each checkpoint,
so a rerun continues) and <out>/usage_vs_steps.png. Training runs --jobs side by side.
"""

import argparse
import json
import os
import shutil
import sys

import matplotlib

# Run as `python scripts/study.py`: the repository root holds the `scripts` package it uses.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from fsq_repro import api, checkpoints, files, parallel  # pylint: disable=g-import-not-at-top
from fsq_repro import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
from fsq_repro.eval import evaluate, features  # pylint: disable=g-import-not-at-top
from fsq_repro.models import factory  # pylint: disable=g-import-not-at-top
from scripts import sweep  # pylint: disable=g-import-not-at-top

PANELS = (("usage", "codebook usage (fraction of |C|, eval split)"),
          ("psnr", "PSNR (dB)"), ("recon_fid", "reconstruction FID"))


def study_runs(sweep_root: str, bits: list[int]) -> list[dict]:
  """The sweep's runs whose codebook has about 2^b codes for b in `bits` (sweep.json order)."""
  path = os.path.join(sweep_root, "sweep.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run `make demo` (or the sweep) first")
  with open(path) as f:
    runs = json.load(f)["runs"]
  chosen = [r for r in runs if any(r["name"].endswith(f"_2p{b}") for b in bits)]
  if not chosen:
    raise ValueError(f"no run of {path} ends in _2p<b> for b in {bits}")
  for run in chosen:
    if not checkpoints.finished_steps(os.path.join(sweep_root, run["name"], "stage1",
                                                   "checkpoints")):
      raise FileNotFoundError(f"{sweep_root}/{run['name']}/stage1 has no checkpoint: run "
                              "`make demo` first")
  return chosen


def training_steps(runs, sweep_root: str, out: str, *, steps: int, every: int) -> list:
  """Copies each run's Stage I into <out>/<name> (once) and returns the sweep Steps that
  train it on to `steps`, checkpointing every `every` steps and keeping them all."""
  plan = []
  for run in runs:
    workdir = os.path.join(out, run["name"])
    if not os.path.exists(os.path.join(workdir, "stage1")):
      shutil.copytree(os.path.join(sweep_root, run["name"], "stage1"),
                      os.path.join(workdir, "stage1"))
    argv = [sys.executable, "-m", "fsq_repro.main", "--mode=stage1",
            f"--config={run['config']}:{run['arg']}", f"--workdir={workdir}",
            *run.get("overrides", []), f"--config.stage1.num_train_steps={steps}",
            f"--config.stage1.checkpoint_every_steps={every}",
            "--config.stage1.keep_checkpoints=1000", "--allow_config_change"]
    plan.append(sweep.Step(run["name"], "stage1", argv))
  return plan


def evaluate_checkpoints(workdir: str, done: dict, save) -> str:
  """Usage, PSNR and reconstruction FID of every Stage I checkpoint of `workdir` not in
  `done` ({step: row}); `save()` after each. Returns the feature network's name."""
  config = workdir_lib.saved_config(workdir_lib.stage_dir(workdir, "stage1"))
  mesh = parallel.make_mesh()
  e = config.eval
  network = features.get_feature_network(
      e.feature_network, inception_weights=e.inception_weights,
      dataset_name=config.dataset.name, image_size=config.dataset.image_size,
      data_dir=config.dataset.data_dir)
  reference = evaluate.load_reference(evaluate.own_reference(config, network, mesh), network,
                                      mesh, e.batch_size, with_pool=False)
  tokenizer = None
  for step in checkpoints.finished_steps(workdir_lib.checkpoint_dir(workdir, "stage1")):
    if str(step) in done:
      continue
    restored = api.Tokenizer.from_workdir(workdir, config, mesh, step=step)
    if tokenizer is None:
      tokenizer = restored
    tokenizer.variables = restored.variables  # the same jitted functions: no recompilation
    recon = evaluate.reconstruct_split(config, tokenizer, network, mesh)
    usage = recon["usage"]
    done[str(step)] = {
        "step": step, "codes_used": usage.codes_used, "usage": usage.usage,
        "psnr": recon["psnr"], "recon_fid": evaluate.fid_to_reference(recon["pool_stats"],
                                                                      reference),
        "num_eval_images": recon["num_images"]}
    print(f"study: {os.path.basename(workdir)} step {step}: {usage.codes_used} codes "
          f"({usage.usage:.3f}), PSNR {recon['psnr']:.2f} dB, recon FID "
          f"{done[str(step)]['recon_fid']:.2f}", flush=True)
    save()
  return network.name


def draw(study: dict):
  fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
  for name, run in study["runs"].items():
    rows = sorted(run["steps"].values(), key=lambda r: r["step"])
    style = {"color": "tab:orange" if run["quantizer"] == "fsq" else "tab:blue",
             "linestyle": "-" if run["codebook_size"] > 2048 else "--", "marker": "o",
             "markersize": 3}
    label = f"{run['quantizer'].upper()} |C|={run['codebook_size']} ({name})"
    for ax, (key, title) in zip(axes, PANELS):
      ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=label, **style)
  for ax, (key, title) in zip(axes, PANELS):
    ax.set_title(title)
    ax.set_xlabel("Stage I step")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"Stage I training length, {study['dataset']} at {study['image_size']} px "
               f"(FID features: {study['fid_features']})", fontsize=10)
  fig.tight_layout()
  return fig


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", default="demo_out", help="the sweep root `make demo` wrote")
  parser.add_argument("--out", default="demo_out/study")
  parser.add_argument("--bits", default="10,12", help="codebook sizes 2^b to study")
  parser.add_argument("--steps", type=int, default=4000, help="train Stage I on to this step")
  parser.add_argument("--every", type=int, default=200, help="steps between checkpoints")
  parser.add_argument("--jobs", type=int, default=2, help="trainings side by side (cores)")
  args = parser.parse_args(argv)
  try:
    runs = study_runs(args.sweep, [int(b) for b in args.bits.split(",")])
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = os.path.abspath(args.out)
  plan = training_steps(sweep.longest_first(runs, None) if args.jobs > 1 else runs,
                        args.sweep, out, steps=args.steps, every=args.every)
  try:
    if args.jobs > 1:
      runners = [sweep.pinned_runner(core, os.path.join(out, "logs")) for core in
                 (sorted(os.sched_getaffinity(0)) * args.jobs)[:args.jobs]]
      sweep.run_side_by_side(plan, runners)
    else:
      sweep.run_steps(plan)
  except sweep.SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1

  path = os.path.join(out, "study.json")
  study = {"runs": {}}
  if os.path.exists(path):
    with open(path) as f:
      study = json.load(f)

  def save():
    with files.atomic_write(path) as f:
      json.dump(study, f, indent=1)

  for run in runs:
    workdir = os.path.join(out, run["name"])
    config = workdir_lib.saved_config(workdir_lib.stage_dir(workdir, "stage1"))
    entry = study["runs"].setdefault(run["name"], {
        "quantizer": config.quantizer.kind, "codebook_size": factory.codebook_size(
            config.quantizer), "steps": {}})
    study.update(dataset=config.dataset.name, image_size=config.dataset.image_size,
                 fid_features=evaluate_checkpoints(workdir, entry["steps"], save))
  save()
  figure = os.path.join(out, "usage_vs_steps.png")
  draw(study).savefig(figure, dpi=120)
  print(f"study: wrote {path} and {figure}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
