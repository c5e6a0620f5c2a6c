"""Where pretrained weights come from, one rule for every registry (encoders and language models).

A model named ``name`` loads from the local path in ``LIMBER_WEIGHTS_<NAME>`` (the name upper-cased,
every other character than a letter or digit an underscore: ``gpt-j-6b`` -> ``LIMBER_WEIGHTS_GPT_J_6B``)
when it is set, else from its Hugging Face repo through the Hugging Face cache (``HF_HOME``). With
``HF_HUB_OFFLINE=1``, as on machines without a model hub, nothing is downloaded, and ``missing()``
tells before anything is built what to fetch and where to put it.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


@dataclass(frozen=True)
class Weights:
    name: str  # the registry name
    repo: str  # the Hugging Face repo the weights come from
    files: tuple[str, ...]  # any one of them in the cache means the weights are here
    what: str  # the weights, in words

    @property
    def env(self) -> str:
        return "LIMBER_WEIGHTS_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())

    def local(self) -> str | None:
        """The local path named by ``LIMBER_WEIGHTS_<NAME>``, if set."""
        return os.environ.get(self.env) or None

    def missing(self) -> str | None:
        """Why these weights cannot be loaded on this machine, or None when they can (or will be downloaded)."""
        local = self.local()
        if local:
            return None if Path(local).exists() else f"{self.env}={local} does not exist. {self.how_to_get()}"
        from huggingface_hub import try_to_load_from_cache

        if any(isinstance(try_to_load_from_cache(self.repo, f), str) for f in self.files) or not offline():
            return None
        return f"not in the Hugging Face cache. {self.how_to_get()}"

    def how_to_get(self) -> str:
        return (
            f"{self.name} needs {self.what} (Hugging Face repo {self.repo}): fetch them into the Hugging Face "
            f"cache on a machine with network (huggingface-cli download {self.repo}; HF_HOME says where the "
            f"cache is), or set {self.env} to a local copy."
        )

    def error(self, cause: Exception) -> FileNotFoundError:
        """The error to raise when loading failed."""
        return FileNotFoundError(f"{self.how_to_get()} ({type(cause).__name__}: {cause})")
