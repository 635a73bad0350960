"""The app's settings, kept with QSettings in an INI file in the user-data directory.

Typed accessors, so no page reads raw strings; ``engine_options`` turns them into the
EngineConfig fields a model load uses.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from app import paths

THEMES = ("system", "light", "dark")
SPLITS = (2, 4, 8)  # how many GPUs a model can be split over (tensor parallelism)


class AppSettings:
    def __init__(self, file: Path | None = None):
        self.file = file or paths.data_dir() / "settings.ini"
        self._q = QSettings(str(self.file), QSettings.Format.IniFormat)

    def _get(self, key: str, default, kind):
        value = self._q.value(key, default)
        try:
            return kind(value)
        except (TypeError, ValueError):
            return default

    def _set(self, key: str, value) -> None:
        self._q.setValue(key, value)
        self._q.sync()

    @property
    def models_dir(self) -> str:  # "" means the default folder
        return self._get("models_dir", "", str)

    @models_dir.setter
    def models_dir(self, value: str) -> None:
        self._set("models_dir", value)

    @property
    def device(self) -> str:  # "auto" | "cpu" | "cuda:N"
        return self._get("device", "auto", str)

    @device.setter
    def device(self, value: str) -> None:
        self._set("device", value)

    @property
    def gpus(self) -> list[int]:  # GPUs picked to split models over; fewer than 2: no split
        text = self._get("gpus", "", str)
        try:
            return sorted({int(part) for part in text.split(",") if part.strip()})
        except ValueError:
            return []

    @gpus.setter
    def gpus(self, value: list[int]) -> None:
        self._set("gpus", ",".join(str(i) for i in sorted(set(value))))

    @property
    def split(self) -> int:
        """GPUs a model loads split over: the picked ones when they are 2, 4 or 8, else 1."""
        return len(self.gpus) if len(self.gpus) in SPLITS else 1

    @property
    def cache_percent(self) -> int:  # share of free memory for the KV cache; 0: the engine's default
        return self._get("cache_percent", 0, int)

    @cache_percent.setter
    def cache_percent(self, value: int) -> None:
        self._set("cache_percent", int(value))

    @property
    def kv_cache_dtype(self) -> str:  # EngineConfig.kv_cache_dtype: auto, int8, int4, ...
        return self._get("kv_cache_dtype", "auto", str)

    @kv_cache_dtype.setter
    def kv_cache_dtype(self, value: str) -> None:
        self._set("kv_cache_dtype", value)

    @property
    def max_context(self) -> int:  # tokens; 0: the model's own context length
        return self._get("max_context", 0, int)

    @max_context.setter
    def max_context(self, value: int) -> None:
        self._set("max_context", int(value))

    @property
    def theme(self) -> str:
        theme = self._get("theme", "system", str)
        return theme if theme in THEMES else "system"

    @theme.setter
    def theme(self, value: str) -> None:
        self._set("theme", value)

    def endpoint(self, source: str) -> str | None:
        """The hub mirror set for "hf" or "modelscope"; None: the hub itself (or the client's env setting)."""
        return self._get(f"{source}_endpoint", "", str) or None

    def set_endpoint(self, source: str, url: str) -> None:
        self._set(f"{source}_endpoint", url.strip().rstrip("/"))

    def engine_options(self) -> dict:
        options: dict = {"device": self.device}
        if self.split > 1:  # the picked GPUs, rank 0 on the first
            options.update(device=f"cuda:{self.gpus[0]}", tensor_parallel=self.split, gpus=tuple(self.gpus))
        if self.cache_percent:
            options["cache_memory_fraction"] = self.cache_percent / 100
        if self.max_context:
            options["max_model_len"] = self.max_context
        if self.kv_cache_dtype != "auto":
            options["kv_cache_dtype"] = self.kv_cache_dtype
        return options

    def apply_paths(self) -> None:
        paths.use_models_dir(Path(self.models_dir) if self.models_dir else None)
