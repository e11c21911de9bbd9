"""The family table (`hf_tokenprune.families`): its rows agree with the island's classes, every row is tested by the
family matrix or excluded with a reason, the tools find a checkpoint's row, and a missing capability is refused in
one line that gives the row's reason."""

import pytest
from family_matrix import EXCLUDED, FAMILIES

from hf_tokenprune.families import (
    CAPABILITIES,
    Family,
    build_config,
    family_for_checkpoint,
    register_family,
)
from hf_tokenprune.families import (
    FAMILIES as TABLE,
)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_each_row_agrees_with_its_classes(name):
    row = TABLE[name]
    config = row.config_class()
    assert config.model_type == row.model_type  # repeated in the row so tools match a config.json without torch
    assert row.model_class().config_class is config
    assert set(row.gaps) <= set(CAPABILITIES)
    assert row.auto_mapping()["AutoModel"].config_class is config
    stock_config, stock_model = row.stock_classes()
    assert stock_model.config_class is stock_config
    assert stock_config.model_type == getattr(config, "stock_model_type", "clip")  # the full CLIP model: "clip"


def test_every_row_is_a_case_of_the_family_matrix_or_excluded_with_a_reason():
    tested = {family.row.name for family in FAMILIES.values()}
    assert tested | set(EXCLUDED) == set(TABLE) and not tested & set(EXCLUDED)
    assert "vit" in tested and "vit_msn" in tested  # ViT is a row like any other; a family defined in the tests too


@pytest.mark.parametrize(
    "model_type, capability, row",
    [
        (None, None, "vit"),
        ("vit", None, "vit"),
        ("dinov2", None, "dinov2"),
        ("tokenprune_deit", None, "deit"),
        ("clip", "benchmark", "clip_vision"),  # a full CLIP checkpoint is benchmarked by its vision tower
        ("siglip", None, "siglip_vision"),
    ],
)
def test_a_checkpoint_finds_its_row(model_type, capability, row):
    assert family_for_checkpoint(model_type, capability).name == row


def test_a_missing_capability_is_refused_in_one_line_with_the_rows_reason():
    with pytest.raises(ValueError, match="SigLIP 2 vision tower models have no export .*NaFlex inputs") as error:
        family_for_checkpoint("siglip2_vision_model", "export")
    assert "\n" not in str(error.value) and "Families with it: " in str(error.value)
    with pytest.raises(ValueError, match="'bert' checkpoint; the families the tools run here are"):
        family_for_checkpoint("bert")
    with pytest.raises(ValueError, match="--arch 'vit-huge' is not built in; allowed: \\["):
        build_config(None, "vit-huge")


def test_built_in_architectures_build_their_familys_config():
    assert build_config(None, "dinov2-base-patch14-518").model_type == "tokenprune_dinov2"
    assert build_config(None, "vit-base-patch16-224", token_reduction={"method": "tome"}).num_hidden_layers == 12


def test_a_row_with_a_taken_name_or_model_type_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        register_family(Family(**{**TABLE["vit"].__dict__, "name": "another"}))
