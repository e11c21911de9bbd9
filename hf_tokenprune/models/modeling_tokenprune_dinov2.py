# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneDinov2: HF DINOv2 (and DINOv2 with registers) whose layers follow a token-reduction plan.

Only the difference from ``transformers.models.dinov2`` and ``dinov2_with_registers`` is written here: the layout
of a DINOv2 layer (``norm1``, attention, ``layer_scale1``, drop path; ``norm2``, MLP or SwiGLU, ``layer_scale2``),
the prefix (CLS, then the registers), and the classifier's patch mean, which reads the tokens left after the
prefix. The layers are the same in both families, so the model with registers uses them too. Position embeddings
are always interpolated, as in the stock models: a plan runs at any input size.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.dinov2.modeling_dinov2 import (
    Dinov2Attention,
    Dinov2DropPath,
    Dinov2Embeddings,
    Dinov2ForImageClassification,
    Dinov2Layer,
    Dinov2LayerScale,
    Dinov2MLP,
    Dinov2Model,
    Dinov2PreTrainedModel,
    Dinov2SwiGLUFFN,
)
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersEmbeddings,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
    Dinov2WithRegistersPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_tokenprune_dinov2 import TokenPruneDinov2Config, TokenPruneDinov2WithRegistersConfig
from .modeling_tokenprune_common import (
    LayerScaleLayerMixin,
    ProbedAttentionMixin,
    TokenPruneClassifierMixin,
    TokenPruneImageClassifierOutput,
    TokenPruneLayerMixin,
    TokenPruneModelMixin,
    TokenPruneModelOutput,
    TokenPrunePreTrainedMixin,
    mean_of_tokens,
    passed_through,
)

# transformers renames stock DINOv2 weights (4.x names, SwiGLU's fused input) only for its own classes.
for _ours, _stock in (
    ("TokenPruneDinov2Model", "Dinov2Model"),
    ("TokenPruneDinov2WithRegistersModel", "Dinov2WithRegistersModel"),
):
    register_checkpoint_conversion_mapping(_ours, get_checkpoint_conversion_mapping(_stock), overwrite=True)


class TokenPruneDinov2Attention(ProbedAttentionMixin, Dinov2Attention):
    """`Dinov2Attention` that can also report its CLS attention row and its head-averaged keys."""


class TokenPruneDinov2Layer(LayerScaleLayerMixin, TokenPruneLayerMixin, Dinov2Layer):
    """`Dinov2Layer` that runs its plan's hooks and can reuse attention (`TokenPruneLayerMixin`); the reused
    branch is the attention's output after layer scale."""

    def __init__(self, config, layer_idx: int):
        super(Dinov2Layer, self).__init__()
        if self.build_attention_reuse(config, layer_idx):
            self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.attention = TokenPruneDinov2Attention(config)
            self.layer_scale1 = Dinov2LayerScale(config)
        self.drop_path = Dinov2DropPath(config.drop_path_rate) if config.drop_path_rate > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Dinov2SwiGLUFFN(config) if config.use_swiglu_ffn else Dinov2MLP(config)
        self.layer_scale2 = Dinov2LayerScale(config)
        self.build_token_reduction(config, layer_idx)


class TokenPruneDinov2Encoder(nn.Module):
    """Holds the layers under the stock name (``encoder.layer``); the model runs them."""

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([TokenPruneDinov2Layer(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False


class TokenPruneDinov2PreTrainedModel(TokenPrunePreTrainedMixin, Dinov2PreTrainedModel):
    """`Dinov2PreTrainedModel` with our config class and layers."""

    config_class = TokenPruneDinov2Config
    config: TokenPruneDinov2Config
    _no_split_modules = ["Dinov2Embeddings", "TokenPruneDinov2Layer"]
    _can_record_outputs = {"hidden_states": TokenPruneDinov2Layer, "attentions": TokenPruneDinov2Attention}
    stock_conversion = "Dinov2Model"
    legacy_layout_marker = "attention.attention.query"
    auto_classes = {
        "AutoModel": "TokenPruneDinov2Model",
        "AutoModelForImageClassification": "TokenPruneDinov2ForImageClassification",
    }


class TokenPruneDinov2Model(TokenPruneModelMixin, TokenPruneDinov2PreTrainedModel, Dinov2Model):
    """`Dinov2Model` whose layers follow a token-reduction plan; returns `TokenPruneModelOutput` (the stock outputs,
    ``pooler_output`` the CLS token, plus per-layer token bookkeeping)."""

    embeddings_class = Dinov2Embeddings

    def __init__(self, config):
        Dinov2PreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = self.embeddings_class(config)
        self.encoder = TokenPruneDinov2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.remember_built_plans()
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneModelOutput:
        r"""
        keep_rate (`float`, *optional*):
            Overrides the plan's keep rate for this call (methods with a keep rate); the config is unchanged.
        disable_plans (`bool`, *optional*, defaults to `False`):
            Runs every layer in full, as the stock model with the same weights.
        """
        grid, plan, reuse, pixel_values = self.start_plans(
            pixel_values, True, attention_mask, keep_rate, disable_plans
        )
        hidden_states = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
        hidden_states, state, traces, states = self.run_layers(
            self.encoder.layer, hidden_states, grid, plan, reuse, attention_mask, **kwargs
        )
        sequence_output = self.layernorm(hidden_states)
        return TokenPruneModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            **self.bookkeeping(traces, state, grid, states),
        )


class TokenPruneDinov2ClassifierMixin(TokenPruneClassifierMixin):
    """The stock head on CLS next to the mean of the tokens after the prefix (the patches left by the plan, and
    a method's made-up tokens such as EViT's fused one; a token ToMe merged counts for every patch it holds); the
    output carries the token bookkeeping."""

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ):
        outputs = getattr(self, self.base_model_prefix)(
            pixel_values, attention_mask=attention_mask, keep_rate=keep_rate, disable_plans=disable_plans, **kwargs
        )
        tokens = outputs.last_hidden_state
        patch_mean = mean_of_tokens(tokens, outputs.layer_states[-1], start=self.config.num_prefix_tokens)
        logits = self.classifier(torch.cat([tokens[:, 0], patch_mean], dim=1))  # (B, labels)
        loss = aux_loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
            aux_loss = self.auxiliary_loss(outputs, labels, **kwargs)
            loss = loss if aux_loss is None else loss + aux_loss
        return TokenPruneImageClassifierOutput(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            **passed_through(outputs, TokenPruneImageClassifierOutput),
        )


class TokenPruneDinov2ForImageClassification(
    TokenPruneDinov2ClassifierMixin, TokenPruneDinov2PreTrainedModel, Dinov2ForImageClassification
):
    """`Dinov2ForImageClassification` on a `TokenPruneDinov2Model`."""

    def __init__(self, config):
        Dinov2PreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.dinov2 = TokenPruneDinov2Model(config)
        self.classifier = (
            nn.Linear(config.hidden_size * 2, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    forward = can_return_tuple(TokenPruneDinov2ClassifierMixin.forward)


class TokenPruneDinov2WithRegistersPreTrainedModel(TokenPrunePreTrainedMixin, Dinov2WithRegistersPreTrainedModel):
    """`Dinov2WithRegistersPreTrainedModel` with our config class and the DINOv2 layers."""

    config_class = TokenPruneDinov2WithRegistersConfig
    config: TokenPruneDinov2WithRegistersConfig
    _no_split_modules = ["Dinov2WithRegistersEmbeddings", "TokenPruneDinov2Layer"]
    _can_record_outputs = {"hidden_states": TokenPruneDinov2Layer, "attentions": TokenPruneDinov2Attention}
    stock_conversion = "Dinov2WithRegistersModel"
    legacy_layout_marker = "attention.attention.query"
    auto_classes = {
        "AutoModel": "TokenPruneDinov2WithRegistersModel",
        "AutoModelForImageClassification": "TokenPruneDinov2WithRegistersForImageClassification",
    }

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        """The stock initialisation, plus the layer scale of our layer (DINOv2's class, which the stock one of
        DINOv2 with registers does not recognise)."""
        super()._init_weights(module)
        if isinstance(module, Dinov2LayerScale):
            init.constant_(module.lambda1, self.config.layerscale_value)


class TokenPruneDinov2WithRegistersModel(
    TokenPruneModelMixin, TokenPruneDinov2WithRegistersPreTrainedModel, Dinov2WithRegistersModel
):
    """`Dinov2WithRegistersModel` whose layers follow a plan: `TokenPruneDinov2Model` with the registers'
    embeddings (CLS, registers, patches)."""

    embeddings_class = Dinov2WithRegistersEmbeddings
    __init__ = TokenPruneDinov2Model.__init__
    forward = TokenPruneDinov2Model.forward


class TokenPruneDinov2WithRegistersForImageClassification(
    TokenPruneDinov2ClassifierMixin,
    TokenPruneDinov2WithRegistersPreTrainedModel,
    Dinov2WithRegistersForImageClassification,
):
    """`Dinov2WithRegistersForImageClassification` on a `TokenPruneDinov2WithRegistersModel`."""

    def __init__(self, config):
        Dinov2WithRegistersPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.dinov2_with_registers = TokenPruneDinov2WithRegistersModel(config)
        self.classifier = (
            nn.Linear(config.hidden_size * 2, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    forward = can_return_tuple(TokenPruneDinov2ClassifierMixin.forward)


TokenPruneDinov2Model.register_for_auto_class("AutoModel")
TokenPruneDinov2ForImageClassification.register_for_auto_class("AutoModelForImageClassification")
TokenPruneDinov2WithRegistersModel.register_for_auto_class("AutoModel")
TokenPruneDinov2WithRegistersForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "TokenPruneDinov2ForImageClassification",
    "TokenPruneDinov2Model",
    "TokenPruneDinov2PreTrainedModel",
    "TokenPruneDinov2WithRegistersForImageClassification",
    "TokenPruneDinov2WithRegistersModel",
    "TokenPruneDinov2WithRegistersPreTrainedModel",
]
