"""Attribute Distribution Predictor (ADP, "Balancing Act", arXiv 2402.18206): per-timestep linear heads on h-space.

For each attribute ``a`` and each step bucket ``k`` a head ``nn.Linear(C*H*W, n_a)`` reads the flattened
middle-block output ``h`` (see :mod:`fair_core.hspace`) at timestep ``t_k`` and predicts the attribute of the
*final* image. Buckets are keyed by the continuous diffusion timestep ``t_k`` (0..T-1), not by the step index, so a
predictor trained along a 20-step trajectory serves any step count: ``head_selection="nearest"`` uses the head of
the closest ``t_k``, ``"linear"`` interpolates the logits of the two neighbouring heads linearly in ``t``.

The config records the base model (its name, a hash of its config and of its float32 weights) and its h shape, so
an ADP applied to another model is refused (:func:`check_compatible`) instead of silently steering garbage.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import FairSamplingError, check_choice

HEAD_SELECTION = ("nearest", "linear")


@dataclass(frozen=True)
class ADPConfig:
    """Shape, step buckets, attributes and base model of an ADP (saved with its weights)."""

    h_shape: tuple[int, ...] = (64, 7, 7)  # (C, H, W) of the base model's middle-block output
    timesteps: tuple[float, ...] = (999.0,)  # continuous timestep t_k of each head, in sampling order (descending)
    attributes: dict = field(default_factory=lambda: {"colour": ["red", "green"]})  # name -> class names
    base_model: dict = field(default_factory=dict)  # {"name", "config_sha256", "weights_sha256"} of the base model

    def __post_init__(self):
        if len(self.h_shape) != 3 or min(self.h_shape) < 1:
            raise FairSamplingError(f"h_shape must be (C, H, W) with positive entries, got {self.h_shape}")
        if not self.timesteps:
            raise FairSamplingError("timesteps must list at least one step bucket, got ()")
        if not self.attributes or any(len(c) < 2 for c in self.attributes.values()):
            raise FairSamplingError(f"attributes must map each name to >= 2 class names, got {self.attributes}")

    @property
    def features(self) -> int:
        c, h, w = self.h_shape
        return c * h * w


def sha256_json(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def weights_sha256(module: nn.Module) -> str:
    """Hash of the float32 weights (names and values, sorted by name): identical for the same model in any dtype cast back."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def base_fingerprint(denoiser, name: str = "") -> dict:
    """What an ADP records about the model it was trained on (a :class:`~fair_core.denoiser.DiscreteVPDenoiser`)."""
    from .models import config_to_dict

    dtype = str(next(denoiser.parameters()).dtype).replace("torch.", "")
    return {"name": name, "config_sha256": sha256_json(config_to_dict(denoiser.cfg)), "weights_sha256": weights_sha256(denoiser),
            "weights_dtype": dtype}


def check_compatible(cfg: ADPConfig, h_shape=None, fingerprint: dict | None = None) -> None:
    """Refuse an ADP trained on another model: h shape, or base config / weights hash, differ from the recorded ones.

    Weights hashes are compared only between models held in the same dtype (a float16 copy of the base model has
    other bytes); the config hash and the h shape always are.
    """
    if h_shape is not None and tuple(h_shape) != tuple(cfg.h_shape):
        raise FairSamplingError(f"the ADP was trained on h of shape {tuple(cfg.h_shape)} (C, H, W) but this model's middle block "
                                f"gives {tuple(h_shape)}: the ADP belongs to another model or resolution")
    if fingerprint is None or not cfg.base_model:
        return
    same_dtype = cfg.base_model.get("weights_dtype") == fingerprint.get("weights_dtype")
    for key in ("config_sha256", "weights_sha256") if same_dtype else ("config_sha256",):
        want, got = cfg.base_model.get(key), fingerprint.get(key)
        if want and got and want != got:
            raise FairSamplingError(f"the ADP was trained on base model {cfg.base_model.get('name') or '?'!r} ({key} {want[:12]}...) "
                                    f"but this model has {key} {got[:12]}...: train an ADP for this model (python -m training adp)")


class ADP(nn.Module):
    """``forward(h, t) -> {attribute: logits (N, n_classes)}``; one ``nn.Linear(C*H*W, n)`` per attribute and bucket."""

    def __init__(self, cfg: ADPConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleDict({a: nn.ModuleList(nn.Linear(cfg.features, len(classes)) for _ in cfg.timesteps)
                                    for a, classes in cfg.attributes.items()})
        order = sorted(range(len(cfg.timesteps)), key=lambda k: cfg.timesteps[k])
        self.register_buffer("t_sorted", torch.tensor([float(cfg.timesteps[k]) for k in order]), persistent=False)
        self.register_buffer("k_sorted", torch.tensor(order, dtype=torch.long), persistent=False)

    def bucket_weights(self, t: torch.Tensor, head_selection: str = "nearest") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample, heads ``lo``, ``hi`` (indices into ``cfg.timesteps``) and weight ``w`` of ``hi`` for timesteps ``t`` (N,).

        ``nearest``: the closest ``t_k`` (``w`` 0 or 1, ties to the lower ``t_k``); ``linear``: the two neighbours,
        linearly in ``t``; beyond the first or last ``t_k`` that head alone. Computed on ``t``'s device with no host
        read, so a guided step never waits for the GPU.
        """
        check_choice("head_selection", head_selection, HEAD_SELECTION)
        ts, t = self.t_sorted, t.to(self.t_sorted.device, torch.float32)
        if len(ts) == 1:
            zero = torch.zeros_like(t, dtype=torch.long)
            return self.k_sorted[zero], self.k_sorted[zero], torch.zeros_like(t)
        hi = torch.searchsorted(ts, t).clamp(1, len(ts) - 1)
        w = ((t - ts[hi - 1]) / (ts[hi] - ts[hi - 1])).clamp(0.0, 1.0)
        if head_selection == "nearest":
            w = (w > 0.5).to(w.dtype)
        return self.k_sorted[hi - 1], self.k_sorted[hi], w

    def head_logits(self, h: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """Logits of bucket ``k``'s heads for h (N, C, H, W)."""
        flat = h.flatten(1)
        return {a: heads[k](flat.to(heads[k].weight.dtype)) for a, heads in self.heads.items()}

    def forward(self, h: torch.Tensor, t: torch.Tensor, head_selection: str = "nearest",
                attributes=None) -> dict[str, torch.Tensor]:
        """Logits of each attribute (or of those named in ``attributes``) for h (N, C, H, W) at timesteps ``t`` (N,)
        or one scalar; each sample uses its own bucket(s). All heads of an attribute run as one matmul and each
        sample picks its columns: no per-bucket loop and no host-device synchronisation."""
        if tuple(h.shape[1:]) != tuple(self.cfg.h_shape):
            check_compatible(self.cfg, h_shape=h.shape[1:])
        t = torch.as_tensor(t, dtype=torch.float32, device=self.t_sorted.device).reshape(-1).expand(h.shape[0])
        lo, hi, w = self.bucket_weights(t, head_selection)
        rows = torch.arange(h.shape[0], device=lo.device)
        out = {}
        for a in self.heads if attributes is None else attributes:
            heads = self.heads[a]
            weight = torch.cat([head.weight for head in heads])  # (K * n, F)
            bias = torch.cat([head.bias for head in heads])
            every = torch.nn.functional.linear(h.flatten(1).to(weight.dtype), weight, bias).view(h.shape[0], len(heads), -1)
            wk = w.to(every.dtype)[:, None]
            out[a] = (1 - wk) * every[rows, lo] + wk * every[rows, hi]
        return out


# ----- training data: h along sampling trajectories -----------------------------------------------------------------
@torch.no_grad()
def record_trajectories(model, n: int, steps: int, sampler: str = "dpmpp_2m", schedule: str = "karras", class_labels=None,
                        seed: int = 0, batch_size: int = 64, disable=None) -> dict[str, torch.Tensor]:
    """Sample ``n`` images and keep h at every step: ``{"h": (steps, n, C, H, W) float16, "t": (steps,), "images"}``.

    One model call per step is required (``euler``, ``ddim``, ``dpmpp_2m``; not ``heun``) and no CFG, so that the
    i-th captured h belongs to step i. ``t`` holds the continuous timestep of each step: the ADP's buckets.
    """
    from . import hspace
    from .sampling import generate, get_sigmas

    check_choice("sampler", sampler, ("euler", "ddim", "dpmpp_2m"))
    hs, images = [], []
    labels = None if class_labels is None else torch.as_tensor(class_labels, dtype=torch.long)
    for b, start in enumerate(range(0, n, batch_size)):
        nb = min(batch_size, n - start)
        with hspace.captured(model.unet) as seen:
            images.append(generate(model, nb, steps, sampler, schedule, None if labels is None else labels[start:start + nb],
                                   seed=seed + 7919 * b, batch_size=nb, disable=disable))
        if len(seen) != steps:
            raise FairSamplingError(f"expected one h per step ({steps}), captured {len(seen)}")
        hs.append(torch.stack([h.to("cpu", torch.float16) for h in seen]))
    sigmas = get_sigmas(model, steps, schedule)[:-1]
    t = model.sigma_to_t(sigmas.to(model.sigmas.device)).cpu()
    return {"h": torch.cat(hs, 1), "t": t, "images": torch.cat(images)}


def head_loss(adp: ADP, h: torch.Tensor, labels: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Mean over steps k of sum_a cross-entropy(head_{a,k}(h[k, idx]), labels[a][idx]); h: (steps, N, C, H, W)."""
    import torch.nn.functional as F

    p = next(adp.parameters())
    loss = p.new_zeros(())
    for k in range(h.shape[0]):
        logits = adp.head_logits(h[k, idx].to(p.device, torch.float32), k)
        loss = loss + sum(F.cross_entropy(logits[a], y[idx].to(p.device)) for a, y in labels.items())
    return loss / h.shape[0]


def fit(adp: ADP, h: torch.Tensor, labels: dict[str, torch.Tensor], steps: int = 300, batch: int = 256, lr: float = 1e-3,
        weight_decay: float = 1e-4, seed: int = 0) -> list[float]:
    """Train the heads with AdamW on random minibatches (the in-graph path; ``python -m training adp`` adds runs and EMA)."""
    opt = torch.optim.AdamW(adp.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    losses = []
    adp.train()
    for _ in range(steps):
        loss = head_loss(adp, h, labels, torch.randint(h.shape[1], (min(batch, h.shape[1]),), generator=g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    adp.eval()
    return losses


@torch.no_grad()
def per_step_accuracy(adp: ADP, h: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Accuracy of each attribute's head at each step on (h: (steps, N, C, H, W), labels)."""
    p = next(adp.parameters())
    out = {a: [] for a in labels}
    for k in range(h.shape[0]):
        logits = adp.head_logits(h[k].to(p.device, torch.float32), k)
        for a, y in labels.items():
            out[a].append(round(float((logits[a].argmax(1).cpu() == y.cpu()).float().mean()), 4))
    return out


def from_batch(h: torch.Tensor, t: torch.Tensor, images: torch.Tensor, classifier, attribute: str, base_model: dict,
               train_steps: int = 300, holdout: float = 0.2, seed: int = 0) -> tuple[ADP, dict]:
    """An ADP fitted on one recorded batch (h: (steps, N, C, H, W), t: (steps,)) labelled by ``classifier``'s head.

    The last ``holdout`` fraction of the batch is held out; returns the ADP and a record with label counts and
    per-step held-out accuracy. Runs outside inference mode (ComfyUI executes prompts inside it).
    """
    from . import features
    from .evaluation import CLASS_NAMES

    check_choice("attribute", attribute, list(classifier.cfg.heads))
    n = h.shape[1]
    n_hold = int(round(holdout * n))
    if n_hold < 1 or n - n_hold < 2:
        raise FairSamplingError(f"the batch must give >= 2 training and >= 1 held-out images at holdout={holdout}; got a batch of {n}")
    with torch.inference_mode(False):
        h = h.detach().to("cpu", torch.float16).clone()
        y = torch.from_numpy(features.classify(classifier, images)[attribute].argmax(1)).long()
        names = CLASS_NAMES.get(attribute, [str(i) for i in range(classifier.cfg.heads[attribute])])
        cfg = ADPConfig(h_shape=tuple(h.shape[2:]), timesteps=tuple(round(float(v), 4) for v in t), attributes={attribute: names},
                        base_model=base_model)
        torch.manual_seed(seed)
        adp = ADP(cfg)
        fit(adp, h[:, : n - n_hold], {attribute: y[: n - n_hold]}, steps=train_steps, seed=seed)
        acc = per_step_accuracy(adp, h[:, n - n_hold:], {attribute: y[n - n_hold:]})
    record = {"source": "in-graph batch", "n_samples": n, "holdout": n_hold, "timesteps": [round(float(v)) for v in t],
              "label_counts": {attribute: torch.bincount(y, minlength=len(names)).tolist()}, "heldout_accuracy": acc}
    return adp.requires_grad_(False), record


def report_text(record: dict) -> str:
    """Readable summary of an ADP training record: label counts and held-out accuracy per step."""
    lines = [f"ADP from {record['n_samples']} images ({record['holdout']} held out); label counts {record['label_counts']}"]
    for a, acc in record["heldout_accuracy"].items():
        lines.append(f"{a} held-out accuracy per step (t): " + ", ".join(f"{t}: {v:.2f}" for t, v in zip(record["timesteps"], acc)))
    if "saved" in record:
        lines.append(f"saved to {record['saved']}")
    return "\n".join(lines)
