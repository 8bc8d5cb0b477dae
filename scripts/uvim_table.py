"""Table 2 and Figure 6 of UViM sweeps: per task one row per (quantizer, splitting,
context), mean +- std over its Stage II seeds, beside the FSQ paper's numbers.

  python scripts/uvim_table.py --sweep=demo_out/uvim --out=demo_out/uvim
  python scripts/uvim_table.py --sweep /data/runs/uvim_depth /data/runs/uvim_pan \
      /data/runs/uvim_color --out=figures/table2      # the whole of Table 2

Reads <sweep>/*/results.json (written by `--mode=eval` of configs/uvim_*.py) in sweep.json
order, for every sweep given. Writes table2.md (also printed), a section per task: per row
the runs' task metrics (depth: RMSE, abs-rel, delta1; panoptic: PQ, things, stuff;
colorization: PSNR and FID, with the FID's feature network and protocol), codebook usage and
codes used, the Stage I oracle and the task's model-free baseline (gray input); the paper's
Table 2 number for that row where it has one. A paper number counts as comparable only for a
run on the paper's dataset, its whole evaluation split at 512 px (and for FID, ColTran's
protocol on Inception features); otherwise the cell says "not comparable" and why.
Writes figure6.png (with several tasks figure6_<task>.png) from the runs' eval/figure.npz:
per validation image, the input, the ground truth and each row's first run's prediction.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.plot_figures import load_results  # pylint: disable=g-import-not-at-top

# The FSQ paper's Table 2: (task, quantizer kind, splitting, context) -> (metric, mean, std,
# usage). Colorization's is FID-5k (ColTran protocol, Inception) on imagenet2012.
PAPER = {  # numbers as the paper prints them
    ("colorization", "uvim_vq", True, True): ("FID-5k", "16.90", "0.056", 1.00),
    ("colorization", "fsq", None, True): ("FID-5k", "17.55", "0.057", 1.00),
    ("depth", "uvim_vq", True, True): ("RMSE", "0.468", "0.012", 0.99),
    ("depth", "fsq", None, True): ("RMSE", "0.473", "0.012", 0.99),
    ("depth", "uvim_vq", False, True): ("RMSE", "0.490", "0.0037", 0.0078),
    ("panoptic", "uvim_vq", True, True): ("PQ", "43.4", None, 1.00),
    ("panoptic", "fsq", None, True): ("PQ", "43.2", None, 1.00),
    ("panoptic", "uvim_vq", True, False): ("PQ", "39.0", None, 0.99),
    ("panoptic", "fsq", None, False): ("PQ", "40.2", None, 0.99),
}
# Where the paper's numbers come from: (dataset, evaluated images) at 512 px.
PAPER_EVAL = {"colorization": ("imagenet2012", 5000), "depth": ("nyu_depth_v2", 654),
              "panoptic": ("coco/2017_panoptic", 5000)}
PAPER_SIZE = 512
# Each task's metric columns: (results.json key, header, factor the table prints it times).
TASK_COLUMNS = {"colorization": (("psnr", "PSNR (dB)", 1), ("fid", "FID", 1)),
                "depth": (("rmse", "RMSE (m)", 1), ("abs_rel", "abs rel", 1),
                          ("delta1", "delta1", 1)),
                "panoptic": (("pq", "PQ", 100), ("pq_things", "PQ things", 100),
                             ("pq_stuff", "PQ stuff", 100))}


def row_key(result: dict) -> tuple:
  return (result["task"], result["quantizer"], result.get("splitting"), result["context"])


def row_label(key: tuple) -> str:
  _, kind, splitting, context = key
  label = "VQ" if kind == "uvim_vq" else "FSQ"
  if kind == "uvim_vq" and not splitting:
    label += " without splitting"
  return label + ("" if context else " without context")


def mean_std(values: list[float], factor: float = 1) -> str:
  values = [v * factor for v in values if v is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.4g}"
  std = 0.0 if np.allclose(values, values[0], rtol=1e-12, atol=0) else np.std(values, ddof=1)
  return f"{np.mean(values):.4g} +- {std:.2g}"


def rows(results: list[dict]) -> dict:
  grouped = {}
  for result in results:
    grouped.setdefault(row_key(result), []).append(result)
  return grouped


def not_comparable(result: dict) -> str | None:
  """Why the paper's numbers do not apply to `result`, or None when they do."""
  dataset, images = PAPER_EVAL[result["task"]]
  if (result["dataset"], result["num_eval_images"], result["image_size"]) != (
      dataset, images, PAPER_SIZE):
    return (f"the paper: {dataset}, {images} images at {PAPER_SIZE} px; this: "
            f"{result['dataset']}, {result['num_eval_images']} at {result['image_size']} px")
  if result["task"] == "colorization" and not (
      result.get("fid_protocol") == "coltran" and "inception" in result.get("fid_features", "")):
    return "the paper: ColTran's FID-5k on Inception features"
  return None


def paper_cell(key: tuple, result: dict) -> str:
  if key not in PAPER:
    return "-"
  metric, mean, std, usage = PAPER[key]
  number = mean if std is None else f"{mean} +- {std}"
  cell = f"{metric} {number}, usage {usage:.2%}" if usage < 0.01 else \
      f"{metric} {number}, usage {usage:.0%}"
  why = not_comparable(result)
  return cell if why is None else cell + f" (not comparable: {why})"


def markdown(results: list[dict]) -> str:
  grouped = rows(results)
  first = results[0]
  columns = TASK_COLUMNS[first["task"]]
  fid = (f"; FID features: {first['fid_features']} ({first['fid_protocol']} protocol: "
         f"{first['fid_reference']})" if "fid_features" in first else "")
  header = ["row", "seeds", *(h for _, h, _ in columns), "usage", "codes used",
            *(f"oracle {h}" for _, h, _ in columns), "paper (Table 2)"]
  lines = [f"UViM {first['task']} on {first['dataset']} ({first['eval_split']}, "
           f"{first['num_eval_images']} images, {first['image_size']} px), sampled at "
           f"temperature {first['temperature']:g}{fid}. Mean +- std over Stage II seeds.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for key, runs in grouped.items():
    get = lambda name, factor=1: mean_std([r.get(name) for r in runs], factor)
    cells = [row_label(key), str(len(runs)), *(get(k, f) for k, _, f in columns),
             get("usage"), get("codes_used"), *(get(f"oracle_{k}", f) for k, _, f in columns),
             paper_cell(key, runs[0])]
    lines.append("| " + " | ".join(cells) + " |")
  if first.get("baseline"):
    cells = [f"baseline: {first['baseline']}", "-",
             *(mean_std([first.get(f"baseline_{k}")], f) for k, _, f in columns), "-", "-",
             *("-" for _ in columns), "-"]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Runs: " + ", ".join(
      f"{r['name']} ({r['stage1_steps']} Stage I / {r['stage2_steps']} Stage II steps, "
      f"{r['codes_used']} of {r['codebook_size']} codes)" for r in results)]
  return "\n".join(lines) + "\n"


def draw_figure6(results: list[dict], path: str) -> bool:
  """Input, ground truth and each row's first run's predictions, one column per image."""
  firsts = [runs[0] for runs in rows(results).values()]
  figures = {}
  for result in firsts:
    npz = os.path.join(result["sweep"], result["name"], "eval", "figure.npz")
    if os.path.exists(npz):
      with np.load(npz) as data:
        figures[result["name"]] = dict(data)
  if not figures:
    return False
  any_run = next(iter(figures.values()))
  lines = [("input", any_run["input"]), ("ground truth", any_run["truth"])]
  lines += [(row_label(row_key(r)), figures[r["name"]]["model"]) for r in firsts
            if r["name"] in figures]
  count = min(len(images) for _, images in lines)
  fig, axes = plt.subplots(len(lines), count, figsize=(1.2 * count, 1.3 * len(lines)),
                           squeeze=False)
  for i, (label, images) in enumerate(lines):
    for j in range(count):
      axes[i, j].imshow(np.clip(images[j], 0, 1))
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
  fig.suptitle(f"UViM {results[0]['task']} of the first validation images (Figure 6's layout)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", required=True, nargs="+",
                      help="sweep roots (their run directories), e.g. one per task")
  parser.add_argument("--out", required=True, help="where table2.md and figure6.png go")
  args = parser.parse_args(argv)
  by_task, missing = {}, []
  for sweep in args.sweep:
    results, not_yet = load_results(sweep)
    missing += [os.path.join(sweep, name) for name in not_yet]
    for result in results:
      if result.get("family") == "uvim":
        by_task.setdefault(result["task"], []).append({**result, "sweep": sweep})
  if not by_task:
    print(f"error: no UViM results.json under {' '.join(args.sweep)}; run the sweeps' eval "
          "stages first", file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  table = "\n".join(markdown(results) for results in by_task.values())
  if missing:
    table += f"\nNo results yet: {', '.join(missing)}\n"
  with open(os.path.join(args.out, "table2.md"), "w") as f:
    f.write(table)
  print(table)
  drawn = []
  for task, results in by_task.items():
    name = "figure6.png" if len(by_task) == 1 else f"figure6_{task}.png"
    if draw_figure6(results, os.path.join(args.out, name)):
      drawn.append(name)
  print(f"wrote {os.path.join(args.out, 'table2.md')}" + "".join(f" and {n}" for n in drawn))
  return 0


if __name__ == "__main__":
  sys.exit(main())
