"""TAK's network and losses: the dynamic head against an explicit per-class loop, the contrastive loss
on a hand-built case, gradients to the controller and text projections, schedules and Table 6 params."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods import Batch, get_method
from methods.common.vnet import VNet, count_parameters
import tak.contrast
from tak.contrast import downsample_labels, sample_voxels, supervised_contrastive, supervised_contrastive_dense
from tak.model import TAKNetwork, dynamic_head, dynamic_head_param_count, dynamic_head_unfused

CLASSES = ["background", "spleen", "right_kidney", "left_kidney"]


@pytest.mark.parametrize("head", [dynamic_head, dynamic_head_unfused])
def test_dynamic_head_equals_explicit_per_class_convolutions(head) -> None:
    torch.manual_seed(0)
    h = torch.randn(2, 8, 3, 4, 5)
    params = torch.randn(2, 3, dynamic_head_param_count())
    out = head(h, params)
    for b in range(2):
        for c in range(3):
            p = params[b, c]
            w1, w2, w3 = p[:64].view(8, 8, 1, 1, 1), p[64:128].view(8, 8, 1, 1, 1), p[128:136].view(1, 8, 1, 1, 1)
            b1, b2, b3 = p[136:144], p[144:152], p[152:153]
            y = F.relu(F.conv3d(h[b:b + 1], w1, b1))
            y = F.relu(F.conv3d(y, w2, b2))
            y = F.conv3d(y, w3, b3)
            torch.testing.assert_close(out[b, c], y[0, 0], rtol=1e-5, atol=1e-5)
    assert dynamic_head_param_count() == 153


def _outputs_and_grads(head, h: torch.Tensor, params: torch.Tensor, upstream: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A head form's output and the gradients of ``h`` and ``params`` for the ``upstream`` gradient."""
    out = head(h, params)
    out.backward(upstream)
    result = out.detach(), h.grad.clone(), params.grad.clone()
    h.grad = params.grad = None
    return result


def test_chunked_dynamic_head_gradients() -> None:
    """The chunked CPU kernel's hand-written backward: gradcheck in double precision (several chunks; fast mode: random projections of the Jacobian),
    and equal to plain autograd in float32 at the cpu profile's size."""
    torch.manual_seed(0)
    h = torch.randn(2, 8, 5, 6, 50, dtype=torch.double, requires_grad=True)  # 1500 voxels: 12 chunks of 128
    params = (torch.randn(2, 3, 153, dtype=torch.double) * 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: dynamic_head(a, b), (h, params), fast_mode=True)
    h = torch.randn(4, 8, 32, 32, 32, requires_grad=True)
    params = (torch.randn(4, 16, 153) * 0.3).requires_grad_()
    upstream = torch.randn(4, 16, 32, 32, 32)
    grads = [_outputs_and_grads(head, h, params, upstream) for head in (dynamic_head, dynamic_head_unfused)]
    for fused, plain in zip(*grads):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())


def test_supervised_contrastive_by_hand() -> None:
    anchors = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    tau = 0.5
    a = F.normalize(anchors, dim=1)
    s = a @ a.T / tau
    s = s - s.max(1, keepdim=True).values
    expected = []
    for i in range(3):
        pos = [j for j in range(3) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(3) if labels[j] != labels[i]]
        terms = [float(s[i, j]) - math.log(math.exp(s[i, j]) + sum(math.exp(s[i, k]) for k in neg)) for j in pos]
        expected.append(-sum(terms) / (len(pos) + 1e-5) if pos else 0.0)
    assert supervised_contrastive(anchors, labels, tau).item() == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_chunked_contrastive_equals_the_dense_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsorted labels, a class of one anchor (no positive), classes spanning several row chunks:
    loss and gradient as the plain-autograd form; gradcheck of the hand-written backward in double."""
    monkeypatch.setattr(tak.contrast, "ROWS_PER_CHUNK", 7)
    torch.manual_seed(0)
    labels = torch.cat([torch.randint(0, 4, (60,)), torch.tensor([9])])[torch.randperm(61)]
    anchors = torch.randn(61, 16, requires_grad=True)
    upstream = 0.7
    results = []
    for loss_fn in (supervised_contrastive, supervised_contrastive_dense):
        loss = loss_fn(anchors, labels, 0.07)
        (loss * upstream).backward()
        results.append((loss.detach(), anchors.grad.clone()))
        anchors.grad = None
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6 * results[1][1].abs().max().item())
    small = torch.randn(20, 5, dtype=torch.double, requires_grad=True)
    small_labels = torch.tensor([2, 0, 1, 1, 0, 2, 2, 3, 0, 1] * 2)
    assert torch.autograd.gradcheck(lambda a: supervised_contrastive(a, small_labels, 0.5), (small,))


def test_contrastive_runs_in_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    anchors, labels = torch.randn(50, 8), torch.randint(0, 3, (50,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supervised_contrastive(anchors, labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(supervised_contrastive_dense(anchors, labels).item(), rel=1e-6)


def test_sampling_gathers_what_a_per_class_loop_reads() -> None:
    """Same voxels, same order, same random draws as reading ``embeddings[view][:, idx]`` class by class."""
    torch.manual_seed(0)
    emb = torch.randn(3, 4, 2, 3, 4, requires_grad=True)
    labels = torch.randint(-1, 3, (3, 2, 3, 4))
    torch.manual_seed(1)
    feats, classes = sample_voxels(emb, labels, per_class=3)
    torch.manual_seed(1)
    expected, expected_classes = [], []
    for view in range(3):
        lab = labels[view].flatten()
        for cls in lab[lab >= 0].unique():
            idx = (lab == cls).nonzero().squeeze(1)
            if idx.numel() > 3:
                idx = idx[torch.randperm(idx.numel())[:3]]
            expected.append(emb[view].flatten(1)[:, idx].T)
            expected_classes += [int(cls)] * idx.numel()
    assert torch.equal(feats, torch.cat(expected)) and classes.tolist() == expected_classes
    feats.sum().backward()
    assert emb.grad.sum().item() == pytest.approx(4 * len(expected_classes))


def test_sampling_respects_ignore_label_and_cap() -> None:
    torch.manual_seed(0)
    emb = torch.randn(2, 5, 2, 2, 2)
    labels = torch.tensor([[0] * 6 + [1, -1], [-1] * 8]).view(2, 2, 2, 2)
    feats, classes = sample_voxels(emb, labels, per_class=4)
    assert classes.tolist().count(0) == 4 and classes.tolist().count(1) == 1 and len(classes) == 5
    flat = emb[0].flatten(1).T
    assert all(any(torch.equal(f, row) for row in flat[:7]) for f in feats)  # never the ignored voxel
    assert downsample_labels(torch.arange(8).view(1, 2, 2, 2), (1, 1, 1)).item() == 0


def _tak(**overrides: object):
    cls = get_method("tak")
    torch.manual_seed(0)
    config = cls.Config(base_filters=4, cube_grid=(2, 1, 1), location_hidden=32, **overrides)
    return cls(config, 4, max_iterations=20, patch=(32, 32, 32), class_names=CLASSES)


def _batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(2, 1, 32, 32, 32, generator=g), torch.randint(0, 4, (2, 32, 32, 32), generator=g),
                 torch.rand(2, 1, 32, 32, 32, generator=g))


def test_gradients_reach_controller_and_text_projections_once_contrast_starts() -> None:
    method = _tak(contrast_start_epoch=0)
    assert method.contrast_active(5) and not _tak().contrast_active(2)
    captured = {}
    original_step = method.optimizers[0].step

    def capture() -> None:
        head = method.student.text_head
        captured["controller"] = head.controller.weight.grad.abs().sum().item()
        captured["text_x3"] = head.text_proj[0][0].weight.grad.abs().sum().item()  # only the contrast uses T64
        captured["projection"] = method.student.projections[0][0].weight.grad.abs().sum().item()
        original_step()

    method.optimizers[0].step = capture
    logs = method.train_step(_batch(), step=5)
    assert logs["loss_con"] > 0
    assert captured["controller"] > 0 and captured["text_x3"] > 0 and captured["projection"] > 0


def test_no_contrast_switches_the_term_off() -> None:
    for overrides in ({"contrast": False}, {"samples_per_class": 0}):
        method = _tak(contrast_start_epoch=0, **overrides)
        assert method.train_step(_batch(), step=5)["loss_con"] == 0.0


def test_text_is_a_fixed_buffer_of_both_prompt_rows() -> None:
    method = _tak(prompt_mode="position+shape")
    text = method.student.text
    assert text.shape[:2] == (2, 4) and not text.requires_grad
    assert "text" not in dict(method.student.named_parameters())
    assert not torch.allclose(text[0], text[1])  # positions and shapes differ
    same = _tak(prompt_mode="name").student.text
    torch.testing.assert_close(same[0], same[1])  # the name prompt fills both rows
    tags = method.run_tags()
    assert tags["prompt_mode"] == "position+shape" and tags["text_encoder"] == "minilm" and tags["knowledge"]


def test_schedules_follow_the_reference_epochs() -> None:
    method = _tak()  # 20 iterations stand for 161 epochs
    assert method.reference_epoch(20) == pytest.approx(161)
    assert not method.contrast_active(2) and method.contrast_active(3)  # epoch 16.1 vs 24.15 > 20
    assert method.entropy_threshold(0) == pytest.approx(math.log(2) * (0.75 + 0.25 * math.exp(-5)), rel=1e-6)
    assert method.entropy_threshold(20) == pytest.approx(math.log(2))
    assert method.consistency_weight(20) == pytest.approx(0.1)


def test_paper_profile_parameters_match_the_published_18_5_m() -> None:
    """Student with text head, projections and location head, nf 16, 96^3, 16 AMOS classes."""
    from benchmarks.data import load_dataset
    from benchmarks.data.sources import DATASETS_DIR
    info = load_dataset(DATASETS_DIR / "amos")
    cls = get_method("tak")
    method = cls(cls.Config(), info.num_classes, 1, device="meta", class_names=info.class_names)
    trained = sum(p.numel() for p in method.student.parameters() if p.requires_grad) / 1e6
    assert trained == pytest.approx(18.5, rel=0.02)
    assert count_parameters(method.student.location_head) / 1e6 == pytest.approx(8.51, abs=0.01)


def test_network_accepts_any_text_width() -> None:
    for width in (384, 512):
        net = TAKNetwork(VNet(1, 3, 4, "instance"), torch.randn(2, 3, width), torch.nn.Identity())
        assert net(torch.rand(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_block_diagonal_head_equals_the_per_class_products() -> None:
    """The accelerator form of the dynamic head (one block-diagonal product per sample and layer):
    values and gradients as the per-class batched products, in double precision."""
    from tak.model import dynamic_head_block_diagonal
    torch.manual_seed(0)
    h = torch.randn(3, 8, 4, 5, 6, dtype=torch.double, requires_grad=True)
    params = (torch.randn(3, 5, dynamic_head_param_count(), dtype=torch.double) * 0.3).requires_grad_()
    upstream = torch.randn(3, 5, 4, 5, 6, dtype=torch.double)
    results = [_outputs_and_grads(head, h, params, upstream)
               for head in (dynamic_head_block_diagonal, dynamic_head_unfused)]
    for block, plain in zip(*results):
        torch.testing.assert_close(block, plain, rtol=1e-12, atol=1e-12)


def test_accelerator_contrastive_is_the_dense_form() -> None:
    """On an accelerator the loss is the dense form; on the CPU the chunked one: same value and gradient."""
    torch.manual_seed(0)
    anchors, labels = torch.randn(300, 16, dtype=torch.double, requires_grad=True), torch.randint(0, 5, (300,))
    chunked = supervised_contrastive(anchors, labels, 0.07)
    (grad_chunked,) = torch.autograd.grad(chunked, anchors)
    dense = supervised_contrastive_dense(anchors, labels, 0.07)
    (grad_dense,) = torch.autograd.grad(dense, anchors)
    torch.testing.assert_close(chunked, dense, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_chunked, grad_dense, rtol=1e-9, atol=1e-12)


def test_sorted_sampler_draws_a_uniform_capped_sample_of_every_class_and_view() -> None:
    """The accelerator sampler: each (view, class) gives min(count, budget) distinct voxels of that
    class and view, never an ignored one, view by view and class by class; every voxel of an
    over-budget class is drawn about equally often; gradients reach exactly the drawn voxels."""
    from tak.contrast import sample_voxels_sorted
    torch.manual_seed(0)
    labels = torch.randint(-1, 4, (3, 4, 5, 6))
    emb = torch.arange(3 * 120, dtype=torch.float64).view(3, 1, 120).repeat(1, 2, 1).view(3, 2, 4, 5, 6)
    emb.requires_grad_()
    feats, classes = sample_voxels_sorted(emb, labels, per_class=7)
    flat = labels.flatten()
    picked = feats[:, 0].detach().long()  # the embedding is the voxel's flat index
    assert torch.equal(flat[picked], classes) and len(set(picked.tolist())) == len(picked)
    expected_groups = []
    for view in range(3):
        for cls in flat[view * 120:(view + 1) * 120].unique():
            if cls >= 0:
                count = int((flat[view * 120:(view + 1) * 120] == cls).sum())
                expected_groups.append((view, int(cls), min(count, 7)))
    groups = torch.stack([picked // 120, classes], 1).unique_consecutive(dim=0, return_counts=True)
    assert [(int(v), int(c), int(k)) for (v, c), k in zip(groups[0], groups[1])] == expected_groups
    feats.sum().backward()
    assert set(emb.grad[:, 0].flatten().nonzero().squeeze(1).tolist()) == set(picked.tolist())
    # uniformity: 10 voxels of class 0 in one view, budget 3, 3000 draws: each voxel about 900 times
    one_view = torch.tensor([0] * 10 + [1] * 2).view(1, 12, 1, 1)
    positions = torch.arange(12.0).view(1, 1, 12, 1, 1)
    hits = torch.zeros(12)
    for _ in range(3000):
        feats, classes = sample_voxels_sorted(positions, one_view, per_class=3)
        assert classes.tolist() == [0, 0, 0, 1, 1]
        hits.index_add_(0, feats[:, 0].long(), torch.ones(len(feats)))
    assert hits[10:].tolist() == [3000.0, 3000.0]
    assert ((hits[:10] - 900).abs() < 120).all(), hits  # binomial sd about 25
