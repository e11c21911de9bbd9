"""A throwaway model family defined outside the package, to show that a family is one row of the family table plus a
config class and model classes that write only their difference: ``tests/conftest.py`` registers `ROW`
(`hf_tokenprune.families.register_family`) and the family matrix (``tests/models/test_families.py``) runs on it.

ViT-MSN's layers are ViT's, so the classes reuse the ViT layer of the island; what differs is the stock classes
(``ViTMSNModel`` has no pooler; its classifier reads CLS after the final LayerNorm) and the names. Outside the island
its files import ``hf_tokenprune``, so its checkpoints load only where the package is installed.
"""

import torch
from torch import nn
from transformers import ViTMSNConfig
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.vit_msn.modeling_vit_msn import (
    ViTMSNEmbeddings,
    ViTMSNForImageClassification,
    ViTMSNModel,
    ViTMSNPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from hf_tokenprune.families import Family
from hf_tokenprune.models.configuration_tokenprune_common import TokenPruneConfigMixin
from hf_tokenprune.models.modeling_tokenprune_common import (
    TokenPruneClassifierMixin,
    TokenPruneImageClassifierOutput,
    TokenPruneModelMixin,
    TokenPruneModelOutput,
    TokenPrunePreTrainedMixin,
    passed_through,
)
from hf_tokenprune.models.modeling_tokenprune_vit import TokenPruneViTAttention, TokenPruneViTLayer

register_checkpoint_conversion_mapping(
    "TokenPruneViTMSNModel", get_checkpoint_conversion_mapping("ViTMSNModel"), overwrite=True
)
register_checkpoint_conversion_mapping(
    "TokenPruneViTMSNForImageClassification",
    get_checkpoint_conversion_mapping("ViTMSNForImageClassification"),
    overwrite=True,
)


class TokenPruneViTMSNConfig(TokenPruneConfigMixin, ViTMSNConfig):
    """A `ViTMSNConfig` with the plan fields; one CLS token, like ViT."""

    model_type = "tokenprune_vit_msn"
    stock_model_type = "vit_msn"

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False


class TokenPruneViTMSNPreTrainedModel(TokenPrunePreTrainedMixin, ViTMSNPreTrainedModel):
    config_class = TokenPruneViTMSNConfig
    config: TokenPruneViTMSNConfig
    _no_split_modules = ["ViTMSNEmbeddings", "TokenPruneViTLayer"]
    _can_record_outputs = {"hidden_states": TokenPruneViTLayer, "attentions": TokenPruneViTAttention}
    stock_conversion = "ViTMSNModel"
    auto_classes = {
        "AutoModel": "TokenPruneViTMSNModel",
        "AutoModelForImageClassification": "TokenPruneViTMSNForImageClassification",
    }


class TokenPruneViTMSNModel(TokenPruneModelMixin, TokenPruneViTMSNPreTrainedModel, ViTMSNModel):
    """`ViTMSNModel` whose (ViT) layers follow a plan."""

    def __init__(self, config: TokenPruneViTMSNConfig, use_mask_token: bool = False):
        ViTMSNPreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = ViTMSNEmbeddings(config, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([TokenPruneViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.remember_built_plans()
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneModelOutput:
        grid, plan, reuse, pixel_values = self.start_plans(
            pixel_values, interpolate_pos_encoding, attention_mask, keep_rate, disable_plans
        )
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states, state, traces, states = self.run_layers(
            self.layers, hidden_states, grid, plan, reuse, attention_mask, **kwargs
        )
        sequence_output = self.layernorm(hidden_states)
        return TokenPruneModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            **self.bookkeeping(traces, state, grid, states),
        )


class TokenPruneViTMSNForImageClassification(
    TokenPruneClassifierMixin, TokenPruneViTMSNPreTrainedModel, ViTMSNForImageClassification
):
    """`ViTMSNForImageClassification` on a `TokenPruneViTMSNModel`."""

    def __init__(self, config: TokenPruneViTMSNConfig):
        ViTMSNPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.vit = TokenPruneViTMSNModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self, pixel_values=None, labels=None, keep_rate=None, disable_plans=False, **kwargs: Unpack[TransformersKwargs]
    ):
        outputs = self.vit(pixel_values, keep_rate=keep_rate, disable_plans=disable_plans, **kwargs)
        logits = self.classifier(outputs.last_hidden_state[:, 0])
        loss = aux_loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
            aux_loss = self.auxiliary_loss(outputs, labels, **kwargs)
            loss = loss if aux_loss is None else loss + aux_loss
        return TokenPruneImageClassifierOutput(
            loss=loss, aux_loss=aux_loss, logits=logits, **passed_through(outputs, TokenPruneImageClassifierOutput)
        )


TokenPruneViTMSNConfig.register_for_auto_class()
TokenPruneViTMSNModel.register_for_auto_class("AutoModel")
TokenPruneViTMSNForImageClassification.register_for_auto_class("AutoModelForImageClassification")

ROW = Family(
    name="vit_msn",
    title="ViT-MSN (a throwaway family of the tests)",
    hub_tag="vit-msn",
    model_type="tokenprune_vit_msn",
    config="TokenPruneViTMSNConfig",
    config_module="vit_msn_family",
    modules=("vit_msn_family",),
    package="extensions",
    stock_config="ViTMSNConfig",
    stock="ViTMSNForImageClassification",
    model="TokenPruneViTMSNForImageClassification",
    gaps={
        "tune": "the tuner runs ViT classifiers only for now",
        "visualize": "visualize runs ViT classifiers only for now",
        "dense": "no backbone class",
    },
)

__all__ = [
    "TokenPruneViTMSNConfig",
    "TokenPruneViTMSNForImageClassification",
    "TokenPruneViTMSNModel",
    "TokenPruneViTMSNPreTrainedModel",
]
