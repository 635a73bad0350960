"""The terminal commands behind ``lmstation``, one module each."""
