"""Getting model weights from disk formats into the engine."""
