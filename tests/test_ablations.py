"""Ablation arms (models/ablations.py) and REPA (harness/train/repa.py): each arm is what its
definition says (checked against Efficient-LVSM / LVSM with tied weights or a reference computed
here), counts its FLOPs, trains, and checkpoints; REPA's loss reaches the model and the projector,
and a missing teacher is one line."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import random_views
from harness.errors import CheckpointError, ConfigError, MissingResource
from harness.train import OptimSpec, TrainData, TrainSpec, read_log, train_model
from harness.train.config import RepaSpec
from harness.train.repa import RepaTerm, default_layer, repa_tap
from harness.schema import ModelRef
from models import build_model, list_models, model_card, model_class, presets
from models.tokens import input_view_features, target_view_features

ARMS = ["efficient_lvsm_shared_weights", "efficient_lvsm_global_input", "mmdit_joint", "lvsm_masked"]
P = 16  # tokens per view at the tiny preset (32 px, patch 8)


def strong(model: nn.Module) -> nn.Module:
    """Weights 10x their initial scale, so attention mixes tokens visibly (at init it barely does)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(10)
    return model


def render(model, views):
    with torch.no_grad():
        return model.eval()(*views)


def tied(target: nn.Module, source: nn.Module) -> nn.Module:
    """`target` with every weight of `source` it has a name for (same-named tensors copied)."""
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected, unexpected
    return target


# ------------------------------------------------------------------------- every ablation arm


def test_each_ablation_names_its_reference_and_is_listed_after_it():
    """Tables and plots list variants in the registry's order: an ablation's row after its reference's."""
    names = list_models()
    assert set(ARMS) <= set(names)
    assert {name: model_card(name).ablation_of for name in ARMS} == {
        "efficient_lvsm_shared_weights": "efficient_lvsm", "efficient_lvsm_global_input": "efficient_lvsm",
        "mmdit_joint": "efficient_lvsm", "lvsm_masked": "lvsm_decoder_only"}
    ablations = [name for name in names if model_card(name).ablation_of]
    for name in ablations:
        reference = model_card(name).ablation_of
        assert model_card(reference).official_params, (name, reference)  # a released variant
        assert names.index(reference) < names.index(name), (name, reference)


@pytest.mark.parametrize("name", ARMS)
def test_forward_backward_reaches_every_parameter_and_checkpointing_keeps_the_gradients(name):
    views = random_views(1, 2, 2)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = build_model(name, "tiny").train()
        model.gradient_checkpointing = checkpointing
        out = model(*views)
        assert out.shape == (1, 2, 3, 32, 32) and torch.isfinite(out).all()
        out.square().mean().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    plain, ckpt = grads
    unused = [k for k, g in plain.items() if g is None or not g.abs().sum() > 0]
    assert unused == [], unused
    for key, grad in plain.items():
        assert torch.allclose(grad, ckpt[key], atol=1e-6, rtol=1e-5), key


# ------------------------------------------------------------------------------ lvsm_masked


def test_lvsm_masked_input_views_only_see_themselves():
    """Every block's states of input view i equal those of view i run alone through the same model."""
    model = strong(build_model("lvsm_masked", "tiny")).eval()
    images, ic, ik, tc, tk = random_views(1, 2, 1)
    states: list[torch.Tensor] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _a, out: states.append(out))
    render(model, (images, ic, ik, tc, tk))
    together = states[:]
    for view in range(2):
        states.clear()
        render(model, (images[:, view:view + 1], ic[:, view:view + 1], ik[:, view:view + 1], tc, tk))
        for joint, alone in zip(together, states):
            assert torch.allclose(joint[:, view * P:(view + 1) * P], alone[:, :P], atol=1e-4)
    # The same weights without the mask (LVSM decoder-only) mix the views: the mask is what isolates them.
    plain = tied(build_model("lvsm_decoder_only", "tiny"), model)
    assert not torch.allclose(render(plain, (images, ic, ik, tc, tk)), render(model, (images, ic, ik, tc, tk)), atol=1e-4)


def test_lvsm_masked_targets_see_all_input_views():
    model = strong(build_model("lvsm_masked", "tiny"))
    images, ic, ik, tc, tk = random_views(1, 2, 1)
    changed = images.clone()
    changed[:, 1] = 1 - changed[:, 1]
    assert not torch.allclose(render(model, (images, ic, ik, tc, tk)), render(model, (changed, ic, ik, tc, tk)), atol=1e-4)


def test_lvsm_masked_has_decoder_only_weights_and_initialisation():
    """Same parameter names, same initial weights from the same seed, same RNG state afterwards."""
    built = []
    for name in ("lvsm_masked", "lvsm_decoder_only"):
        torch.manual_seed(3)
        built.append((build_model(name, "tiny").state_dict(), torch.rand(1)))
    (masked, after_masked), (plain, after_plain) = built
    assert masked.keys() == plain.keys() and all(torch.equal(masked[k], plain[k]) for k in plain)
    assert torch.equal(after_masked, after_plain)


# ---------------------------------------------------------------- Efficient-LVSM, shared weights


def test_shared_weights_is_efficient_lvsm_with_both_streams_holding_the_same_weights():
    shared = build_model("efficient_lvsm_shared_weights", "tiny")
    reference = tied(build_model("efficient_lvsm", "tiny"), shared)
    for input_block, target_block in zip(reference.input_blocks, shared.target_blocks):
        input_block.attn.load_state_dict(target_block.self_attn.state_dict())
        input_block.mlp.load_state_dict(target_block.mlp.state_dict())
    views = random_views(2, 3, 2)
    assert (render(shared, views) - render(reference, views)).abs().max().item() <= 1e-6
    # One set of block weights: the input blocks' parameters are gone.
    input_params = sum(p.numel() for p in reference.input_blocks.parameters())
    assert shared.num_parameters() == reference.num_parameters() - input_params
    # Intra-view inputs: the KV cache stays exact.
    images, ic, ik, tc, tk = views
    session = shared.incremental(tc, tk, 32, 32)
    with torch.no_grad():
        for i in range(3):
            session.add_views(images[:, i:i + 1], ic[:, i:i + 1], ik[:, i:i + 1])
    assert (session.render() - render(shared, views)).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- Efficient-LVSM, final context


def test_final_context_equals_co_refinement_at_depth_one_only_and_its_kv_cache_renders_the_same():
    """With one layer the final input states are the layer-0 states: the two designs coincide."""
    images, ic, ik, tc, tk = views = random_views(1, 2, 2)
    for depth, same in ((1, True), (3, False)):
        final = build_model("efficient_lvsm_final_context", "tiny", stream_depth=depth)
        reference = tied(build_model("efficient_lvsm", "tiny", stream_depth=depth), final)
        out = render(final, views)
        assert torch.allclose(out, render(reference, views), atol=1e-6) == same, depth
        session = final.incremental(tc, tk, 32, 32)
        with torch.no_grad():
            for i in range(2):
                session.add_views(images[:, i:i + 1], ic[:, i:i + 1], ik[:, i:i + 1])
        assert (session.render() - out).abs().max().item() <= 1e-5, depth


# ---------------------------------------------------------------- Efficient-LVSM, global input


def test_global_input_equals_efficient_lvsm_with_one_view_only():
    model = build_model("efficient_lvsm_global_input", "tiny")
    reference = tied(build_model("efficient_lvsm", "tiny"), model)
    one, two = random_views(1, 1, 2), random_views(1, 2, 2)
    assert (render(model, one) - render(reference, one)).abs().max().item() <= 1e-6
    assert not torch.allclose(render(model, two), render(reference, two), atol=1e-4)


def test_global_input_offers_no_kv_cache():
    assert not model_class("efficient_lvsm_global_input").offers("incremental_views")
    assert model_class("efficient_lvsm_shared_weights").offers("incremental_views")
    model = build_model("efficient_lvsm_global_input", "tiny")
    _, _, _, tc, tk = random_views(1, 1, 1)
    refusal = r"efficient_lvsm_global_input: an exact cache .*\(`incremental`\) is not offered: input views attend"
    with pytest.raises(TypeError, match=refusal):
        model.incremental(tc, tk, 32, 32)


# ------------------------------------------------------------------------------ mmdit_joint


def _tokens(model, views):
    images, ic, ik, tc, tk = views
    b, m, d = images.shape[0], tc.shape[1], model.config.dim
    inputs = model.input_tokenizer(input_view_features(images, ic, ik)).reshape(b, -1, d)
    targets = model.target_tokenizer(target_view_features(tc, tk, 32, 32)).reshape(b, m, -1, d)
    return inputs, targets


def _per_target(model, views, run_blocks):
    """Decoder-only-style rendering: one sequence [inputs ; target j] per target, `run_blocks` on it."""
    inputs, targets = _tokens(model, views)
    renders = []
    with torch.no_grad():
        for j in range(targets.shape[1]):
            seq = run_blocks(torch.cat([inputs, targets[:, j]], dim=1), inputs.shape[1])
            renders.append(model.head(seq[:, -targets.shape[2]:], 32, 32))
    return torch.stack(renders, dim=1)


def _explicit_joint_block(block, x, split):
    """MM-DiT block in plain tensor algebra: per-stream norms, qkv, QK-RMSNorm, projections and MLPs;
    one softmax over all tokens. (The last block's input stream has keys and values only: it is given
    here as a qkv weight with zero query rows, and its outputs, which nothing reads, are dropped.)"""
    def heads(t, hd):
        return t.view(t.shape[0], t.shape[1], -1, hd).transpose(1, 2)  # [B, H, S, hd]

    def rms(t, weight):
        return t * torch.rsqrt(t.square().mean(-1, keepdim=True) + 1e-5) * weight

    parts = (x[:, :split], x[:, split:])
    if block.last:
        kv = block.input_stream.kv.weight
        inputs = (torch.cat([torch.zeros_like(kv[:kv.shape[1]]), kv]), torch.ones_like(block.input_stream.k_norm.weight),
                  block.input_stream.k_norm.weight)
    else:
        inputs = (block.input_stream.attn.qkv.weight, block.input_stream.attn.q_norm.weight, block.input_stream.attn.k_norm.weight)
    t = block.target_stream.attn
    qs, ks, vs = [], [], []
    for (qkv, q_norm, k_norm), part in zip((inputs, (t.qkv.weight, t.q_norm.weight, t.k_norm.weight)), parts):
        q, k, v = (nn.functional.layer_norm(part, part.shape[-1:]) @ qkv.T).chunk(3, dim=-1)
        qs.append(rms(heads(q, t.head_dim), q_norm))
        ks.append(rms(heads(k, t.head_dim), k_norm))
        vs.append(heads(v, t.head_dim))
    q, k, v = (torch.cat(t, dim=2) for t in (qs, ks, vs))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    mixed = (weights @ v).transpose(1, 2).flatten(2)
    out = []
    streams = ((None if block.last else block.input_stream), block.target_stream)
    for s, part, attended in zip(streams, parts, (mixed[:, :split], mixed[:, split:])):
        if s is None:
            out.append(part)
            continue
        part = part + attended @ s.attn.proj.weight.T
        hidden = nn.functional.gelu(nn.functional.layer_norm(part, part.shape[-1:]) @ s.mlp.fc_in.weight.T)
        out.append(part + hidden @ s.mlp.fc_out.weight.T)
    return torch.cat(out, dim=1)


def test_mmdit_joint_with_identical_stream_weights_is_one_self_attention_stack():
    """Both streams tied (the last block's input keys/values tied to the target stream's): the target
    tokens come out as from one stack of plain self-attention blocks over [inputs ; target]."""
    model = build_model("mmdit_joint", "tiny", stream_depth=3).eval()
    dim = model.config.dim
    for block in model.blocks:
        if block.last:
            block.input_stream.kv.weight.data.copy_(block.target_stream.attn.qkv.weight[dim:])
            block.input_stream.k_norm.load_state_dict(block.target_stream.attn.k_norm.state_dict())
        else:
            block.input_stream.load_state_dict(block.target_stream.state_dict())
    views = random_views(1, 2, 2)

    def plain_stack(seq, _split):
        for block in model.blocks:
            seq = block.target_stream(seq)
        return seq
    assert (render(model, views) - _per_target(model, views, plain_stack)).abs().max().item() <= 1e-5


def test_mmdit_joint_uses_each_streams_weights_and_one_joint_attention():
    model = build_model("mmdit_joint", "tiny", stream_depth=3).eval()
    assert [block.last for block in model.blocks] == [False, False, True]
    for parameter in model.parameters():  # QK-norm weights off 1, so swapped norms would show
        if parameter.dim() == 1:
            parameter.data.uniform_(0.5, 1.5)
    views = random_views(1, 2, 2)

    def explicit(seq, split):
        for block in model.blocks:
            seq = _explicit_joint_block(block, seq, split)
        return seq

    def target_weights_only(seq, _split):
        for block in model.blocks:
            seq = block.target_stream(seq)
        return seq
    ours = render(model, views)
    assert (ours - _per_target(model, views, explicit)).abs().max().item() <= 1e-5
    assert not torch.allclose(ours, _per_target(model, views, target_weights_only), atol=1e-4)


# ------------------------------------------------------------------------------------ REPA

TEACHER = '''
from torch import nn


class PatchTeacher(nn.Module):
    """A stand-in for a ViT: 16-pixel patches to 12 channels, [B, T, C] (a coarser grid than the model's)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 12, kernel_size=16, stride=16)

    def forward(self, images):
        return self.embed(images).flatten(2).transpose(1, 2)
'''


@pytest.fixture
def teacher(tmp_path):
    plugin = tmp_path / "teacher_plugin.py"
    plugin.write_text(TEACHER)
    weights = tmp_path / "teacher.pt"
    torch.manual_seed(5)
    embed = nn.Conv2d(3, 12, kernel_size=16, stride=16).state_dict()
    torch.save({"model": {f"module.embed.{key}": value for key, value in embed.items()}}, weights)  # a DDP-wrapped file
    return RepaSpec(teacher=f"{plugin}:PatchTeacher", weights=str(weights), projector_hidden=32)


def _repa_step(name: str, spec: RepaSpec, checkpointing: bool = False, **overrides):
    torch.manual_seed(2)
    model = build_model(name, "tiny", **overrides).train()
    model.gradient_checkpointing = checkpointing
    term = RepaTerm(spec, model, 32, torch.device("cpu"))
    images, ic, ik, tc, tk = random_views(2, 2, 3)
    with term.collect():
        model(images, ic, ik, tc, tk)
    loss = term.loss(torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(9)))
    loss.backward()
    return model, term, loss


def test_repa_loss_is_finite_and_reaches_the_model_and_the_projector(teacher):
    model, term, loss = _repa_step("efficient_lvsm", teacher)
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert term.layers == [default_layer(2)] == [0] and term.teacher_dim == 12
    tapped = model.target_blocks[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tapped.self_attn.parameters())
    assert model.target_tokenizer.proj.weight.grad.abs().sum() > 0
    assert model.input_tokenizer.proj.weight.grad.abs().sum() > 0  # through the cross-attention
    assert model.head.proj.weight.grad is None  # the head comes after the aligned block
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.projector.parameters())
    assert all(p.grad is None and not p.requires_grad for p in term.teacher.parameters())
    term.close()


def test_repa_with_checkpointing_keeps_loss_and_gradients(teacher):
    (plain, _, loss), (ckpt, _, loss_ckpt) = (_repa_step("efficient_lvsm", teacher, c, stream_depth=3) for c in (False, True))
    assert loss.item() == pytest.approx(loss_ckpt.item(), rel=1e-6)
    for (key, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert (a.grad is None) == (b.grad is None), key
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), key


@pytest.mark.parametrize("name", ["lvsm_decoder_only", "lvsm_masked", "mmdit_joint", "lvsm_encoder_decoder",
                                  "efficient_lvsm_shared_weights", "efficient_lvsm_global_input"])
def test_repa_reads_the_target_tokens_of_every_family(teacher, name):
    model, term, loss = _repa_step(name, teacher)
    blocks, _ = repa_tap(model)
    assert math.isfinite(loss.item())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks[0].parameters())


def test_repa_target_chunks_are_put_back_in_view_order(teacher):
    model = build_model("lvsm_decoder_only", "tiny").eval()
    term = RepaTerm(teacher, model, 32, torch.device("cpu"))
    views = random_views(2, 2, 3)
    states = []
    for chunk in (None, 2):
        with torch.no_grad(), term.collect():
            model(*views, target_chunk=chunk)
        states.append(term.hidden_states(0, 2, 3, P))
    assert torch.allclose(states[0], states[1], atol=1e-6)


def test_repa_refuses_a_missing_teacher_in_one_line(teacher, tmp_path):
    model = build_model("efficient_lvsm", "tiny")
    missing = tmp_path / "dino_vitbase16_pretrain.pth"
    with pytest.raises(MissingResource) as error:
        RepaTerm(teacher.model_copy(update={"weights": str(missing)}), model, 32, torch.device("cpu"))
    assert str(missing) in str(error.value) and "\n" not in str(error.value)
    no_file = tmp_path / "nowhere.py"
    with pytest.raises(MissingResource, match=f"{no_file}: REPA teacher file not found"):
        RepaTerm(teacher.model_copy(update={"teacher": f"{no_file}:PatchTeacher"}), model, 32, torch.device("cpu"))
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        RepaTerm(teacher.model_copy(update={"teacher": teacher.teacher.replace("PatchTeacher", "Nope")}), model, 32,
                 torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.repa.teacher_dim: 768, but teacher .* returns 12 channels"):
        RepaTerm(teacher.model_copy(update={"teacher_dim": 768}), model, 32, torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.repa.layers: 2 is not a block of this model"):
        RepaTerm(teacher.model_copy(update={"layers": [2]}), model, 32, torch.device("cpu"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"other.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ConfigError, match="the weights do not fit teacher"):
        RepaTerm(teacher.model_copy(update={"weights": str(wrong)}), model, 32, torch.device("cpu"))
    with pytest.raises(ConfigError, match="declares no target-token hidden states"):
        repa_tap(nn.Linear(2, 2))


def test_repa_reads_the_hidden_states_a_variant_declares():
    """A plugin variant says where its target tokens are; REPA knows no concrete class."""
    from models import LVSMDecoderOnly

    class Plugin(LVSMDecoderOnly):
        target_states = ("blocks", "first")

    model = Plugin(presets("lvsm_decoder_only")["tiny"])
    blocks, position = repa_tap(model)
    assert blocks is model.blocks and position == "first"


def test_repa_in_the_training_loop_logs_its_term_and_resumes_exactly(teacher, tmp_path):
    model = ModelRef(name="efficient_lvsm", preset="tiny", overrides={"image_size": 32})
    data = TrainData(source="synthetic_object", image_size=32, options={"count": 4, "seed": 0, "views": 8, "supersample": 1},
                     eval_options={"seed": 1, "count": 2}, n_input=2, n_target=2, eval_n_target=2, eval_scenes=2)
    optim = OptimSpec(lr=3e-3, warmup_steps=1)
    train = TrainSpec.model_validate({"steps": 4, "batch_size": 2, "val_every": 4, "checkpoint_every": 2, "log_every": 1,
                                      "device": "cpu", "threads": 1, "repa": teacher.model_dump()})
    straight = train_model(model, data, optim, train, tmp_path / "straight", progress=False)
    assert straight.loss == f"mse + 0.5*repa({teacher.teacher})"
    rows = read_log(tmp_path / "straight")
    assert next(r for r in rows if r["kind"] == "start")["loss_name"] == straight.loss
    trained = [r for r in rows if r["kind"] == "train"]
    assert len(trained) == 4 and all(math.isfinite(r["repa_loss"]) and r["repa_loss"] > 0 for r in trained)
    assert not straight.model.target_blocks[0]._forward_hooks  # the hooks are gone with the run
    train_model(model, data, optim, train, tmp_path / "resumed", stop_after=2, progress=False)
    resumed = train_model(model, data, optim, train, tmp_path / "resumed", progress=False)
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key
    # The projector's state travels in the checkpoint; a checkpoint without it is refused.
    path = tmp_path / "resumed" / "checkpoint.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["extra"]["modules"] = {}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="checkpoint.pt: holds no REPA projector state"):
        train_model(model, data, optim, train, tmp_path / "resumed", progress=False)
