"""Fast dropout: the same Bernoulli mask statistics as torch's, the same encoder outputs without dropout, the
same attention as SDPA, the replaced modules' train/eval mode kept, and the trainer switching CPU encoders to it
(train.fast_dropout)."""
import torch

from kgdistill.models.fast_dropout import ATTENTION, FastDropout, fast_dropout, keep_mask, use_fast_dropout
from kgdistill.models.plm import load_encoder


def test_keep_mask_rate_and_scaling_match_dropout():
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        mask = keep_mask(torch.Size([1000, 1000]), p, torch.device("cpu"))
        assert abs((~mask).float().mean().item() - p) < 3e-3
    x = torch.ones(500, 400)
    y = fast_dropout(x, 0.1)
    assert abs(y.mean().item() - 1.0) < 5e-3  # the kept elements are scaled up by 1 / (1 - p)
    values = torch.unique(y).tolist()
    assert values[0] == 0.0 and len(values) == 2 and abs(values[1] - 1.0 / (1.0 - 6554 / 65536)) < 1e-6
    # every 16-bit lane is used: the masks of neighbouring elements are independent (no stuck lane)
    lanes = (~keep_mask(torch.Size([400_000, 4]), 0.5, torch.device("cpu"))).float().mean(0)
    assert torch.all((lanes - 0.5).abs() < 5e-3)


def test_fast_dropout_backward_and_eval_identity():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    layer = FastDropout(0.3)
    y = layer(x)
    y.sum().backward()
    kept = y != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7), atol=1e-4)
    assert torch.all(x.grad[~kept] == 0)
    layer.eval()
    assert layer(x) is x


def test_encoder_switched_to_fast_dropout_equals_sdpa_without_dropout(tiny_plm):
    torch.manual_seed(0)
    reference = load_encoder(tiny_plm).eval()
    switched = load_encoder(tiny_plm)
    assert use_fast_dropout(switched)
    assert switched.config._attn_implementation == ATTENTION
    assert not any(type(m) is torch.nn.Dropout for m in switched.modules())
    ids = torch.randint(5, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    switched.eval()
    with torch.no_grad():
        a = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        b = switched(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(a, b, atol=1e-6)
    # training mode with the drop rates set to 0 takes the fused path too; with dropout on, the attention
    # computed by hand equals SDPA's up to the dropout draw: zero rates give the same outputs
    switched.train()
    for module in switched.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        c = switched(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(a, c, atol=1e-6)


def test_manual_attention_equals_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from kgdistill.models.fast_dropout import attention_forward

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    allowed = torch.rand(2, 1, 7, 7) > 0.3
    allowed |= torch.eye(7, dtype=torch.bool)
    module = torch.nn.Module()
    module.is_causal = False
    expected, _ = sdpa_attention_forward(module, q, k, v, allowed, dropout=0.0)
    torch.manual_seed(3)
    # a drop rate of 1e-9 rounds to 0 in 16 bits: the hand-written path keeps every probability
    got, _ = attention_forward(module, q, k, v, allowed, dropout=1e-9)
    assert torch.allclose(expected, got, atol=1e-5)


def test_trainer_switches_cpu_encoders(tiny_config, tmp_path):
    from kgdistill.api import train
    from kgdistill.store.saved import load_model

    outcome = train(tiny_config(train__max_steps=2), tmp_path / "fast", progress=False)
    assert outcome.train.steps == 2 and outcome.evaluation is not None
    saved = [f for f in (tmp_path / "fast").rglob("*.json")]
    assert saved and not any(ATTENTION in f.read_text(encoding="utf-8") for f in saved)  # a training detail only
    reloaded, _, _ = load_model(tmp_path / "fast")
    assert reloaded.hr_encoder.config._attn_implementation == "sdpa"
    off = tiny_config(train__max_steps=1, train__fast_dropout=False)
    from kgdistill.store.context import DataContext
    from kgdistill.losses.contrastive import InfoNCELoss
    from kgdistill.models.builder import build_model
    from kgdistill.training.objectives import ContrastiveObjective
    from kgdistill.training.trainer import Trainer

    for config, expected in ((tiny_config(train__max_steps=1), ATTENTION), (off, "sdpa")):
        model, tokenizer = build_model(config)
        data = DataContext(config, tokenizer)
        objective = ContrastiveObjective(model, InfoNCELoss(model, config.loss, data.known_train, 8))
        Trainer(tmp_path / expected, config, objective, data.train_set(), None, tokenizer, progress=False)
        assert model.hr_encoder.config._attn_implementation == expected


def test_fast_dropout_keeps_the_replaced_modules_mode_and_drops_all_at_p_one():
    from kgdistill.models.fast_dropout import FastDropout, fast_dropout, use_fast_dropout
    from transformers import BertConfig, BertModel

    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, attn_implementation="sdpa")).eval()
    assert use_fast_dropout(encoder)
    swapped = [m for m in encoder.modules() if isinstance(m, FastDropout)]
    assert swapped and not any(m.training for m in swapped)
    x = torch.ones(1000)
    out = fast_dropout(x, 1.0 - 2.0 ** -18)
    assert torch.isfinite(out).all() and not out.any()
