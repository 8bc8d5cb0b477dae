"""fsq_repro: Finite Scalar Quantization (Mentzer et al., 2024) in JAX/Flax."""

import os

# TensorFlow serves only the input pipeline here; its start-up chatter hides our logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
