"""PLM loading and students (``kgdistill.models.plm``): layer maps and layer choices, a student copying the mapped
layers, weights and tokenizer loaded without remote code or pickles, and the tiny fixture's tokenizer."""
import pytest
import torch

from conftest import make_tiny_plm, tiny_overrides
from kgdistill.cli import main
from kgdistill.errors import ConfigError
from kgdistill.models.plm import build_student_encoder, choose_layers, even_layer_map, load_encoder


def test_paper_layer_maps_and_even_spread():
    assert even_layer_map(12, 9) == [0, 2, 3, 5, 6, 7, 9, 10, 11]
    assert even_layer_map(12, 6) == [1, 3, 5, 7, 9, 11]
    assert even_layer_map(12, 3) == [2, 6, 10]
    assert even_layer_map(6, 3) == [1, 3, 5]
    assert even_layer_map(6, 2) == [1, 4]
    assert even_layer_map(6, 6) == list(range(6))
    with pytest.raises(ConfigError):
        even_layer_map(3, 6)


def test_layer_choices_top_bottom_and_ends():
    assert choose_layers(6, 2, "top") == [4, 5]
    assert choose_layers(6, 2, "bottom") == [0, 1]
    assert choose_layers(6, 2, "ends") == [0, 5]  # where the ladder 6 -> 5 -> 3 -> 2 of even choices arrives
    assert choose_layers(6, 3, "ends") == [0, 2, 5]
    assert choose_layers(12, 4, "ends") == [0, 4, 7, 11]
    assert choose_layers(6, 1, "ends") == [5]


def test_student_copies_the_mapped_layers(tiny_plm):
    source = load_encoder(tiny_plm)
    student = build_student_encoder(source, [1, 3])
    assert student.config.num_hidden_layers == 2
    src, dst = source.state_dict(), student.state_dict()
    for new, old in enumerate([1, 3]):
        for key in [k for k in src if k.startswith(f"encoder.layer.{old}.")]:
            assert torch.equal(dst[key.replace(f"layer.{old}.", f"layer.{new}.")], src[key])
    assert torch.equal(dst["embeddings.word_embeddings.weight"], src["embeddings.word_embeddings.weight"])
    with pytest.raises(ConfigError, match="do not exist"):
        build_student_encoder(source, [0, 9])


def test_tiny_tokenizer_knows_its_words(tiny_plm):
    """Guards the fixture itself: a tokenizer mapping every word to [UNK] would make many tests vacuous."""
    from kgdistill.models.plm import load_tokenizer

    assert load_tokenizer(tiny_plm).tokenize("dog cat e3") == ["dog", "cat", "e3"]


# ---------------------------------------------------------------------------------------------------- PLM loading
def test_a_plm_with_only_pickled_weights_is_a_one_line_error(tiny_kg, tmp_path, cache_dir, capsys):
    plm = make_tiny_plm(tmp_path / "plm")
    from safetensors.torch import load_file

    torch.save(load_file(str(plm / "model.safetensors")), plm / "pytorch_model.bin")
    (plm / "model.safetensors").unlink()
    capsys.readouterr()
    rc = main(["train", "--preset", "", "--dataset", str(tiny_kg), "--plm", str(plm), "--output-dir",
               str(tmp_path / "run"), *tiny_overrides()])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("kgdistill: error:") and len(lines) == 1, err
    assert "'model.plm'" in lines[-1] and "safetensors" in lines[-1] and "pytorch_model.bin" in lines[-1]


def test_plm_and_tokenizer_are_loaded_without_remote_code_or_pickles(tiny_plm, monkeypatch):
    import transformers

    from kgdistill.models.plm import load_encoder, load_tokenizer

    seen = {}
    for cls in (transformers.AutoModel, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            seen[_name] = kwargs
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_encoder(tiny_plm)
    load_tokenizer(tiny_plm)
    assert seen["AutoModel"]["trust_remote_code"] is False and seen["AutoModel"]["use_safetensors"] is True
    assert seen["AutoTokenizer"]["trust_remote_code"] is False
