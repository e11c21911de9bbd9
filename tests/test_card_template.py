"""The card template is one file for every family (``model_cards/tokenprune.md``); its older name still loads."""

from pathlib import Path

import pytest

from hf_tokenprune.sharing.model_card import template_path


def test_the_template_is_family_neutral():
    path = template_path()
    assert path.name == "tokenprune.md" and path.parent.name == "model_cards"
    text = path.read_text(encoding="utf-8")
    assert "{{ family }}" in text and "{{ stock_class }}" in text
    assert "vit" not in text.lower()  # the family, its stock class and its Auto class come from the model


def test_a_folder_with_only_the_older_template_name_still_works(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "tokenprune_vit.md").write_text("old", encoding="utf-8")
    (new / "tokenprune.md").write_text("new", encoding="utf-8")
    assert template_path([old]) == old / "tokenprune_vit.md"
    assert template_path([old, new]) == new / "tokenprune.md"  # the current name wins wherever it is
    with pytest.raises(FileNotFoundError, match="card template tokenprune.md not found in"):
        template_path([Path(tmp_path / "empty")])
