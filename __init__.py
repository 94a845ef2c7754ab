"""ComfyUI entry point only: registers the pack's nodes through the V3 API (``comfy_entrypoint``).

Outside ComfyUI (pytest, ``python -m training``) nothing here runs: ComfyUI modules are imported inside the
entry point.
"""


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes import _comfy
    from .nodes.audit import AttributeClassifierLoader, FairnessAudit, PromptEmbeddingBias
    from .nodes.conditioning import FairClassLabel
    from .nodes.guidance import ADPLoader, ADPTrainer, DistributionGuidance
    from .nodes.latent import FairEmptyLatent
    from .nodes.loaders import ConstrainedCheckpoint, FairCheckpointLoader, TIWScoreLoader
    from .nodes.switching import AttributeSwitchGuider, AttributeSwitchSampler, TransitionPointSearch

    class FairSamplingExtension(ComfyExtension):
        async def get_node_list(self):
            _comfy.register_model_folder()  # here, not at import; ComfyUI 0.3.64 does not call on_load
            return [FairCheckpointLoader, FairClassLabel, FairEmptyLatent, AttributeClassifierLoader, FairnessAudit,
                    PromptEmbeddingBias, ADPLoader, DistributionGuidance, ADPTrainer, AttributeSwitchSampler, AttributeSwitchGuider,
                    TransitionPointSearch, TIWScoreLoader, ConstrainedCheckpoint]

    return FairSamplingExtension()
