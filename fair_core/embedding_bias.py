"""Embedding bias of prompts (arXiv 2409.09569, Sec. 5): how much a text encoder's prompt embeddings lean towards
one attribute word over another, for any encoder given as a callable ``encode(texts) -> (N, D) tensor``.

For prompt p and attribute word lists A, B (e.g. ["male"], ["female"]):

    a = mean_{w in A} e(w) / ||e(w)||,  b = mean_{w in B} e(w) / ||e(w)||,
    ratio(p) = cos(e(p), a) / cos(e(p), b)          (``metrics.embedding_bias_ratio``; 1 = no preference)

With one word per list this is the paper's cosine-similarity bias ratio; a list averages synonyms ("man, male,
he") so that no single token's quirks decide. The paper measured it on CLIP text embeddings of occupations.
"""
from __future__ import annotations

import numpy as np
import torch

from . import metrics
from .errors import FairSamplingError


def parse_lines(text: str, name: str = "prompts") -> list[str]:
    """Non-empty, stripped lines of ``text``; at least one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise FairSamplingError(f"{name} must hold at least one non-empty line, got {text!r}")
    return lines


def parse_words(text: str, name: str) -> list[str]:
    """Comma-separated words or phrases such as ``"male, man, he"``; at least one."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise FairSamplingError(f"{name} must be one or more comma-separated words like 'male' or 'man, male, he', got {text!r}")
    return words


def encode_checked(encode, texts: list[str]) -> np.ndarray:
    """``encode(texts)`` as float64 (N, D), checked: one finite row per text."""
    e = encode(texts)
    e = e.detach().float().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] != len(texts) or not np.isfinite(e).all():
        raise FairSamplingError(f"encode(texts) must return one finite embedding row per text, (N={len(texts)}, D); "
                                f"got shape {e.shape}" + ("" if np.isfinite(e).all() else " with non-finite values"))
    return e.astype(np.float64)


def attribute_direction(embeddings: np.ndarray) -> np.ndarray:
    """a = mean_w e(w) / ||e(w)|| over the rows (words) of ``embeddings`` (W, D)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if (norms == 0).any():
        raise FairSamplingError("attribute word embeddings must be non-zero")
    return (embeddings / norms).mean(0)


def prompt_embedding_bias(encode, prompts: list[str], words_a: list[str], words_b: list[str]) -> dict:
    """Per prompt: cos(e(p), a), cos(e(p), b) and ratio = cos_a / cos_b (see the module docstring), in one ``encode`` call.

    Returns ``{"prompts", "words_a", "words_b", "cos_a", "cos_b", "ratio", "leans"}``; ``leans`` is ``"a"`` for
    ratio > 1, ``"b"`` for ratio < 1, ``"-"`` for exactly 1.
    """
    if not prompts or not words_a or not words_b:
        raise FairSamplingError(f"prompts, words_a and words_b must each be non-empty lists of texts, got "
                                f"{len(prompts)}, {len(words_a)}, {len(words_b)} entries")
    e = encode_checked(encode, [*prompts, *words_a, *words_b])
    p, ea, eb = np.split(e, [len(prompts), len(prompts) + len(words_a)])
    a, b = attribute_direction(ea), attribute_direction(eb)
    unit = p / np.linalg.norm(p, axis=1, keepdims=True)
    ratio = metrics.embedding_bias_ratio(p, a, b)
    return {"prompts": list(prompts), "words_a": list(words_a), "words_b": list(words_b),
            "cos_a": (unit @ (a / np.linalg.norm(a))).tolist(), "cos_b": (unit @ (b / np.linalg.norm(b))).tolist(),
            "ratio": ratio.tolist(), "leans": ["a" if r > 1 else "b" if r < 1 else "-" for r in ratio]}


def table(result: dict) -> str:
    """The result as a plain-text table, one prompt per row."""
    a, b = ", ".join(result["words_a"]), ", ".join(result["words_b"])
    width = max(len(p) for p in result["prompts"])
    rows = [f"{'prompt':<{width}}  cos(a)  cos(b)  ratio  leans    (a = {a}; b = {b}; ratio = cos(a) / cos(b))"]
    for prompt, ca, cb, r, lean in zip(result["prompts"], result["cos_a"], result["cos_b"], result["ratio"], result["leans"]):
        rows.append(f"{prompt:<{width}}  {ca:6.3f}  {cb:6.3f}  {r:5.3f}  {a if lean == 'a' else b if lean == 'b' else '-'}")
    return "\n".join(rows)
