"""Distribution guidance nodes ("Balancing Act", arXiv 2402.18206): load an ADP, patch a MODEL to guide its h-space."""
from __future__ import annotations

from comfy_api.latest import io

from ..fair_core import adp as adp_lib
from ..fair_core import guidance
from . import _comfy

CATEGORY = "sampling/fairness/guidance"
ADP = io.Custom("FAIR_ADP")


class ADPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FairADPLoader",
            display_name="ADP Loader",
            category=CATEGORY,
            description="Loads an attribute distribution predictor (per-timestep h-space heads, made by `python -m training adp`).",
            inputs=[
                io.Combo.Input("adp_name", options=_comfy.model_files(("adp",)),
                               tooltip="An adp .safetensors in the 'fair_sampling' model folders (the pack ships colored_mnist_adp)."),
                io.String.Input("path", default="", optional=True, tooltip="Absolute path; overrides adp_name when not empty."),
            ],
            outputs=[ADP.Output(tooltip="The ADP, for Distribution Guidance. Its metadata names the model it was trained on.")],
        )

    @classmethod
    def execute(cls, adp_name, path="") -> io.NodeOutput:
        return io.NodeOutput(_comfy.load_adp(_comfy.resolve(adp_name, path, "adp_name")))


class DistributionGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FairDistributionGuidance",
            display_name="Distribution Guidance",
            category=CATEGORY,
            description="Steers a whole batch towards a reference attribute distribution by gradient steps on the UNet's "
                        "h-space (middle block). Use the patched MODEL in KSampler or SamplerCustomAdvanced; chain two nodes "
                        "to guide two attributes.",
            inputs=[
                io.Model.Input("model", tooltip="The model the ADP was trained on (checked against the ADP's metadata)."),
                ADP.Input("adp", tooltip="From ADP Loader."),
                io.String.Input("reference", default="0.5,0.5",
                                tooltip="Target proportions: '0.5,0.5', 'red=0.3,green=0.7' or 'uniform'; one entry per ADP class."),
                io.String.Input("attribute", default="",
                                tooltip="Which ADP attribute to guide (e.g. colour); empty = the ADP's first attribute."),
                io.Float.Input("scale", default=300.0, min=0.0, max=100000.0, step=10.0,
                               tooltip="Guidance strength: per-sample step on h (batch-size independent); 300 suits the shipped model."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Start guiding at this fraction of the timestep range (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Stop guiding after this fraction of the timestep range (1 = guide to the end)."),
                io.Float.Input("temperature", default=1.0, min=0.01, max=100.0, step=0.05,
                               tooltip="Softmax temperature of the ADP logits in the batch's predicted distribution."),
                io.Combo.Input("loss", options=list(guidance.LOSSES), default="chi2",
                               tooltip="chi2: sum (p_hat - p)^2 / p (paper, pixel models); kl: KL(p_hat || p) (paper, SD)."),
                io.Combo.Input("normalize", options=list(guidance.NORMALIZE), default="error",
                               tooltip="A reference that does not sum to 1: error, or normalize (divide by its sum)."),
                io.Combo.Input("head_selection", options=["nearest", "linear"], default="nearest",
                               tooltip="ADP head for a timestep between its trained buckets: nearest, or linear interpolation."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model with the h-space guidance patch (the input is unchanged).")],
        )

    @classmethod
    def execute(cls, model, adp, reference, attribute, scale, start_percent, end_percent, temperature, loss, normalize,
                head_selection) -> io.NodeOutput:
        name = attribute.strip() or next(iter(adp.cfg.attributes))
        targets = guidance.targets_from(adp, {name: (reference, scale)}, normalize)
        cfg = guidance.GuidanceConfig(targets, loss=loss, temperature=temperature, start_percent=start_percent,
                                      end_percent=end_percent, head_selection=head_selection)
        return io.NodeOutput(_comfy.distribution_guidance_patch(model, adp, cfg))


class ADPTrainer(io.ComfyNode):
    """Builds an ADP in the graph: sample a batch recording h, label it with an audit classifier, fit the heads."""

    @classmethod
    def define_schema(cls):
        from .audit import Classifier

        return io.Schema(
            node_id="FairADPTrainer",
            display_name="ADP Trainer",
            category=CATEGORY,
            description="Trains an attribute distribution predictor for THIS model inside ComfyUI: samples a batch (cfg 1) "
                        "recording h-space at every step, labels the images with an attribute classifier, fits one linear head "
                        "per step and reports held-out accuracy per step.",
            inputs=[
                io.Model.Input("model", tooltip="The model to build the ADP for (the one Distribution Guidance will patch)."),
                io.Conditioning.Input("positive", tooltip="Conditioning of the batch (e.g. Fair Class Label with all digits)."),
                io.Conditioning.Input("negative", tooltip="Unused at cfg 1 but required by the sampler; e.g. Fair Class Label -1."),
                io.Latent.Input("latent_image", tooltip="Empty latent of the batch size to generate (more images: better ADP)."),
                io.Vae.Input("vae", tooltip="Decodes the samples for the classifier."),
                Classifier.Input("classifier", tooltip="From Attribute Classifier Loader: labels the generated images."),
                io.Combo.Input("attribute", options=["colour", "digit"], default="colour", tooltip="Classifier head used as the ADP attribute."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, tooltip="Noise seed of the batch."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps = ADP step buckets; guide with a similar schedule."),
                io.Combo.Input("sampler_name", options=["dpmpp_2m", "euler", "euler_ancestral", "ddim"], default="dpmpp_2m",
                               tooltip="A sampler with one model call per step."),
                io.Combo.Input("scheduler", options=["karras", "normal", "simple", "exponential"], default="karras", tooltip="Noise schedule."),
                io.Int.Input("train_steps", default=300, min=1, max=100000, tooltip="AdamW steps fitting the heads."),
                io.Float.Input("holdout", default=0.2, min=0.05, max=0.5, step=0.05, tooltip="Fraction of the batch held out for the accuracy report."),
                io.String.Input("save_as", default="", tooltip="If set, also save the ADP as ComfyUI/models/fair_sampling/NAME.safetensors."),
            ],
            outputs=[
                ADP.Output(tooltip="The trained ADP, for Distribution Guidance."),
                io.String.Output(display_name="report", tooltip="Label counts and held-out accuracy per step."),
                io.Image.Output(display_name="images", tooltip="The generated batch the ADP was trained on."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, classifier, attribute, seed, steps, sampler_name, scheduler,
                train_steps, holdout, save_as) -> io.NodeOutput:
        samples, h, t = _comfy.sample_recording_h(model, positive, negative, latent_image["samples"], seed, steps, sampler_name, scheduler)
        images = vae.decode(samples)
        adp, record = adp_lib.from_batch(h, t, images.movedim(-1, 1) * 2 - 1, classifier, attribute, _comfy.fingerprint_of(model),
                                           train_steps=train_steps, holdout=holdout, seed=seed)
        if save_as.strip():
            record["saved"] = _comfy.save_adp(adp, save_as, record)
        return io.NodeOutput(adp, adp_lib.report_text(record), images)
