# All set-up happens here: `make demo` and `make test` install into .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# cpu (the default), cuda12 (NVIDIA GPUs) or tpu: `make install ACCEL=tpu` adds the pinned jax's
# accelerator plugin, jax[cuda12] or jax[tpu] at the version of requirements.txt.
ACCEL ?= cpu
ifeq ($(filter $(ACCEL),cpu cuda12 tpu),)
$(error ACCEL=$(ACCEL) is unknown; use ACCEL=cpu, ACCEL=cuda12 or ACCEL=tpu)
endif
JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.txt)
export TF_CPP_MIN_LOG_LEVEL := 2
# glibc's malloc with transparent huge pages for XLA's CPU temporaries (fsq_repro/hugepages.py):
# steps up to 1.8x faster on CPU. main.py and bench.py set it themselves; this covers pytest.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: install test test-slow demo demo-uvim smoke-uvim study bench clean-venv

install: $(STAMP) $(VENV)/.installed-$(ACCEL)

# Reinstalls only when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(VENV)/.installed-cpu: $(STAMP)
	touch $@

$(VENV)/.installed-cuda12 $(VENV)/.installed-tpu: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check "jax[$(ACCEL)]==$(JAX_VERSION)"
	touch $@

# Unit-level tests on two workers (compilation is single-threaded); an idle worker takes
# tests queued for the other.
test: install
	$(PY) -m pytest -q -m "not slow" -n 2 --dist worksteal --durations=10

# End-to-end, multi-process and kill -9 tests, also on two workers; a test file stays in one
# worker, so module fixtures (a trained two-process run) are built once.
test-slow: install
	$(PY) -m pytest -q -m slow -n 2 --dist loadfile --durations=10

# The whole pipeline on the embedded dataset: FSQ and VQ at 2^6..2^12, Stage I, Stage II,
# evaluation, then the table and figures in demo_out/. Two runs side by side, one core each
# (their logs in demo_out/logs/). Rerunning reuses finished runs.
demo: install
	$(PY) scripts/sweep.py --config=configs/demo.py --root=demo_out --run --jobs=2
	$(PY) scripts/plot_figures.py --sweep=demo_out --out=demo_out

# UViM colorization of the embedded crops: FSQ, VQ, VQ without splitting, FSQ without context,
# each Stage I, Stage II and evaluation, two side by side; demo_out/uvim/{table2.md,figure6.png}.
demo-uvim: install
	$(PY) scripts/sweep.py --config=configs/uvim_demo.py --root=demo_out/uvim --run --jobs=2
	$(PY) scripts/uvim_table.py --sweep=demo_out/uvim --out=demo_out/uvim

# UViM depth and panoptic without their datasets: both stages, the metric and Table 2's writer on
# synthetic labels (nyu_depth_v2 and coco/2017_panoptic mocked by tfds.testing.mock_data, tiny
# models, 16 px); their table rows say they are not comparable with the paper's. About a minute.
smoke-uvim: install
	$(PY) -m pytest -q -m slow tests/test_uvim_train.py -k "mock_nyu or mock_coco"

# Codebook usage, PSNR and reconstruction FID against Stage I steps (to 4000), FSQ against VQ
# at 2^10 and 2^12, training on what `make demo` trained: demo_out/study/.
study: install
	$(PY) scripts/study.py --sweep=demo_out --out=demo_out/study

# Quantizer throughput, then training/sampling/eval speed and MFU of the demo config.
# The paper's configs too: `.venv/bin/python scripts/bench.py` (about 20 minutes on 2 cores).
bench: install
	$(PY) scripts/bench_quantizers.py
	$(PY) scripts/bench.py --configs=demo,uvim_demo

clean-venv:
	rm -rf $(VENV)
