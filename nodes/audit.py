"""Audit nodes: an attribute classifier, and a fairness audit of an IMAGE batch (report, JSON, chart)."""
from __future__ import annotations

import json

from comfy_api.latest import io, ui

from ..fair_core import audit, evaluation
from . import _comfy

CATEGORY = "sampling/fairness/audit"
Classifier = io.Custom("FAIR_CLASSIFIER")


class AttributeClassifierLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FairAttributeClassifierLoader",
            display_name="Attribute Classifier Loader",
            category=CATEGORY,
            description="Loads a pack classifier checkpoint (the shipped eval_classifier: digit and colour heads) for audits.",
            inputs=[
                io.Combo.Input("classifier_name", options=_comfy.model_files(("classifier",)),
                               tooltip="A classifier .safetensors in the 'fair_sampling' model folders."),
                io.String.Input("path", default="", optional=True, tooltip="Absolute path; overrides classifier_name when not empty."),
            ],
            outputs=[Classifier.Output(tooltip="The classifier, for Fairness Audit.")],
        )

    @classmethod
    def execute(cls, classifier_name, path="") -> io.NodeOutput:
        return io.NodeOutput(_comfy.load_classifier(_comfy.resolve(classifier_name, path, "classifier_name")))


class FairnessAudit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FairnessAudit",
            display_name="Fairness Audit",
            category=CATEGORY,
            is_output_node=True,
            description="Attribute proportions of an image batch with 95% bootstrap intervals, FD and TV to a target, and quality.",
            inputs=[
                io.Image.Input("images", tooltip="The generated batch (e.g. from VAEDecode)."),
                Classifier.Input("classifier", tooltip="From Attribute Classifier Loader."),
                io.Combo.Input("attribute", options=list(evaluation.CLASS_NAMES), default="colour", tooltip="Which classifier head to audit."),
                io.String.Input("target", default="", tooltip="Target proportions, e.g. 0.5,0.5; empty = uniform."),
                io.Int.Input("n_boot", default=1000, min=1, max=100000, tooltip="Bootstrap resamples for the intervals."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The audit as readable text."),
                io.String.Output(display_name="json", tooltip="The audit as JSON."),
                io.Image.Output(display_name="chart", tooltip="Bar chart of the proportions with intervals against the target."),
            ],
        )

    @classmethod
    def execute(cls, images, classifier, attribute, target, n_boot) -> io.NodeOutput:
        x = images.movedim(-1, 1) * 2 - 1  # IMAGE (N, H, W, C) in [0, 1] -> (N, C, H, W) in [-1, 1]
        report = audit.audit(x, classifier, attribute, evaluation.parse_target(target or None, attribute), n_boot)
        text = audit.report_text(report)
        return io.NodeOutput(text, json.dumps(report), _comfy.png_to_image(audit.chart(report)), ui=ui.PreviewText(text))
