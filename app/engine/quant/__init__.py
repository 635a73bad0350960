"""4-bit weight quantization (AWQ, and round-to-nearest as its baseline) into the Hugging Face AWQ
checkpoint format, and perplexity for before/after reports. No Qt; safe on a worker thread."""

from app.engine.quant.config import QuantizeCancelled, QuantizeConfig, QuantizeError, QuantProgress
from app.engine.quant.perplexity import PerplexityResult, evaluate_perplexity
from app.engine.quant.quantizer import quantize

__all__ = ["QuantizeConfig", "QuantProgress", "QuantizeError", "QuantizeCancelled", "quantize",
           "PerplexityResult", "evaluate_perplexity"]
