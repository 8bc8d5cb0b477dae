"""Quantizers: FSQ and VQ behind one interface (see interface.py)."""

from fsq_repro.quantizers.fsq import FSQ, FiniteScalarQuantizer, LEVELS_FOR_CODEBOOK_SIZE, levels_for_codebook_size, round_ste
from fsq_repro.quantizers.interface import QuantizerOutput, batch_code_stats
from fsq_repro.quantizers.vq import EmaVectorQuantizer, VectorQuantizer, entropy_loss, split_rare_codes, split_unused_codes, squared_distances
