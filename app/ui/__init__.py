"""The desktop app (PySide6 widgets). Imports no torch: the engine is reached through engine_bridge."""
