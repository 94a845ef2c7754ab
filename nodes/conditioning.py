"""Class / attribute labels as CONDITIONING for the pack's class-conditional models."""
from __future__ import annotations

from comfy_api.latest import io

from ..fair_core.errors import FairSamplingError
from . import _comfy

CATEGORY = "sampling/fairness/conditioning"


def parse_labels(text: str) -> list[int]:
    """``"7"`` -> [7]; ``"0,1,2"`` -> one label per image, cycled over the batch; ``-1`` is unconditional."""
    try:
        labels = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError as e:
        raise FairSamplingError(f"labels must be comma-separated integers >= -1 like '7' or '0,1,2' (-1: unconditional), got {text!r}") from e
    if min(labels) < -1:
        raise FairSamplingError(f"labels must be integers >= -1 (-1: unconditional), got {text!r}")
    return labels


class FairClassLabel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FairClassLabel",
            display_name="Fair Class Label",
            category=CATEGORY,
            description="Conditioning for a class-conditional pack model. Use -1 as the negative for classifier-free guidance.",
            inputs=[
                io.String.Input("labels", default="0,1,2,3,4,5,6,7,8,9",
                                tooltip="Comma-separated class labels, one per image and repeated over the batch; "
                                        "a single label applies to every image; -1 is the unconditional (null) label."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning for KSampler's positive (or, with -1, negative) input.")],
        )

    @classmethod
    def execute(cls, labels) -> io.NodeOutput:
        return io.NodeOutput(_comfy.label_conditioning(parse_labels(labels)))
