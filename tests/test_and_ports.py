"""Hand-computed tests of A&D (aggregation, difficulty weights, DDIM) and of the DeSCO and Co-BioNet
ports (cross-view certain voxels, critic masking, the reference-defect flags, the critics' rate)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.data import Case
from benchmarks.training import TwoStreamSampler, train
from methods import Batch, get_method
from methods.common.class_weights import DifficultyWeighting
from methods.common.diff_vnet import DiffVNet
from methods.common.diffusion import LinearSchedule, ddim_sample
from methods.a_and_d import gumbel_softmax
from methods.desco import other_view

NUM_CLASSES, PATCH = 3, (16, 16, 16)


def build(name: str, **overrides: object):
    torch.manual_seed(0)
    cls = get_method(name)
    method = cls(cls.Config(base_filters=4, dropout=False, **overrides), NUM_CLASSES, max_iterations=10, patch=PATCH)
    method.observe_data([np.random.default_rng(0).integers(0, NUM_CLASSES, (20, 20, 20))], iterations_per_epoch=5)
    return method


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(2, 1, *PATCH, generator=g), torch.randint(0, NUM_CLASSES, (2, *PATCH), generator=g),
                 torch.rand(2, 1, *PATCH, generator=g))


# -- A&D ------------------------------------------------------------------------------------------

def test_gumbel_noise_is_minus_log_minus_log_of_torch_rand() -> None:
    """The noise comes from the seeded torch.rand stream (the same on every CPU kind), as -log(-log(1 - U))."""
    logits = torch.randn(2, 4, 3, 3, 3, dtype=torch.float64)
    torch.manual_seed(5)
    uniform = torch.rand_like(logits)
    expected = (logits - torch.log(-torch.log1p(-uniform))).softmax(1)
    torch.manual_seed(5)
    assert torch.allclose(gumbel_softmax(logits, dim=1), expected, rtol=0, atol=1e-12)


def test_gumbel_noise_has_the_gumbel_distribution() -> None:
    """The difference of two classes' noise, read off a two-class softmax of equal logits, is logistic
    (the difference of two standard Gumbels): mean 0, variance pi^2 / 3."""
    torch.manual_seed(0)
    probs = gumbel_softmax(torch.zeros(200_000, 2, dtype=torch.float64), dim=1)
    difference = torch.log(probs[:, 0] / probs[:, 1])  # g_0 - g_1: logistic, mean 0, variance pi^2 / 3
    assert abs(float(difference.mean())) < 0.02
    assert float(difference.var()) == pytest.approx(math.pi ** 2 / 3, rel=0.02)


def test_gumbel_softmax_stays_finite_when_the_uniform_draw_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """U = 0 would give -log(0) = inf noise and a NaN softmax; the draw is kept finite."""
    monkeypatch.setattr(torch, "rand_like", lambda x: torch.zeros_like(x))
    probs = gumbel_softmax(torch.zeros(1, 3, 2, dtype=torch.float32), dim=1)
    assert bool(torch.isfinite(probs).all()) and torch.allclose(probs.sum(1), torch.ones(1, 2))

def test_aggregation_pulls_theta_to_the_mean_of_xi_and_psi() -> None:
    net = DiffVNet(1, NUM_CLASSES, base_filters=2, norm="batch", dropout=False)
    with torch.no_grad():
        for decoder, value in ((net.decoder_xi, 1.0), (net.decoder_psi, 3.0), (net.decoder_theta, 0.5)):
            for p in decoder.parameters():
                p.fill_(value)
        net.decoder_theta.stages[0][0].norm.running_mean.fill_(7.0)
    net.aggregate(momentum=0.9)
    for p in net.decoder_theta.parameters():  # 0.9 * 0.5 + 0.1 * (1 + 3) / 2
        torch.testing.assert_close(p, torch.full_like(p, 0.65))
    assert all(torch.equal(p, torch.ones_like(p)) for p in net.decoder_xi.parameters())  # xi's time fusions too
    running_mean = net.decoder_theta.stages[0][0].norm.running_mean
    assert torch.equal(running_mean, torch.full_like(running_mean, 7.0))  # buffers untouched


def test_difficulty_weights_without_max_normalisation_by_hand() -> None:
    # 2 classes; labels [0, 0, 1, 1], prediction [0, 1, 1, 1]: hard Dice 2/3 (class 0) and 4/5 (class 1).
    labels = torch.tensor([0, 0, 1, 1]).reshape(1, 1, 1, 4)
    logits = F.one_hot(torch.tensor([0, 1, 1, 1]), 2).float().T.reshape(1, 2, 1, 1, 4)
    dice = torch.tensor([2 / 3, 4 / 5], dtype=torch.float64)
    learned = (dice - 1e-8) * torch.log(dice / 1e-8) / 50  # first update: (1 - beta) * learn, beta = 49/50
    difficulty = (1e-8 / (learned + 1e-8)) ** 0.2
    deficit = 49 / 50 + (1 - dice) / 50
    expected = 2 * difficulty * deficit
    raw = DifficultyWeighting(2, 50, normalise_max=False).update(logits, labels)
    torch.testing.assert_close(raw.double(), expected, rtol=1e-5, atol=0)
    normalised = DifficultyWeighting(2, 50).update(logits, labels)
    torch.testing.assert_close(normalised.double(), 2 * expected / expected.max(), rtol=1e-5, atol=0)
    assert raw.max() < 0.5 < normalised.max()  # without normalisation the weights are small early on


def test_ddim_two_steps_by_hand() -> None:
    schedule = LinearSchedule(1000)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    noise = torch.tensor([0.3, -2.0]).reshape(1, 2, 1, 1, 1).double()
    seen: list[int] = []

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(int(t[0]))
        return 0.5 * x

    out = ddim_sample(predict, (1, 2, 1, 1, 1), schedule, sample_steps=2, noise=noise)
    assert seen == [999, 0]
    x = noise.flatten().numpy()
    x0 = np.clip(0.5 * x, -1, 1)  # t = 999
    eps = (x / math.sqrt(abar[999]) - x0) / math.sqrt(1 / abar[999] - 1)
    x = math.sqrt(abar[0]) * x0 + math.sqrt(1 - abar[0]) * eps
    np.testing.assert_allclose(out.flatten().numpy(), np.clip(0.5 * x, -1, 1), rtol=1e-12)


def test_q_sample_by_hand() -> None:
    schedule = LinearSchedule(1000)
    x0, noise = torch.ones(2, 1, 1, 1, 1).double(), torch.full((2, 1, 1, 1, 1), 2.0).double()
    out = schedule.q_sample(x0, torch.tensor([0, 500]), noise).flatten()
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[[0, 500]]
    np.testing.assert_allclose(out.numpy(), np.sqrt(abar) + 2 * np.sqrt(1 - abar), rtol=1e-12)


# -- DeSCO (port) ---------------------------------------------------------------------------------
def test_desco_network_b_sees_the_other_view() -> None:
    method = build("desco")
    x = torch.rand(1, 1, *PATCH)
    assert torch.equal(other_view(other_view(x)), x)
    method.net_b.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.view_b(x), method.net_b(x.transpose(2, 3)).transpose(2, 3))


@pytest.mark.parametrize("certain", ["all", "none", "half"])
def test_desco_each_view_learns_from_the_others_certain_voxels(certain: str, monkeypatch) -> None:
    method, b = build("desco"), batch(1)
    x = torch.cat([b.image_l, b.image_u])
    with torch.no_grad():  # train mode and no dropout: the same logits the step computes
        method.net_a.train(), method.net_b.train()
        z_a, z_b = method.net_a(x)[2:], method.view_b(x)[2:]
    entropy = {"all": torch.zeros(2, *PATCH), "none": torch.full((2, *PATCH), 9.0),
               "half": torch.cat([torch.zeros(2, 8, 16, 16), torch.full((2, 8, 16, 16), 9.0)], dim=1)}[certain]
    monkeypatch.setattr(method, "uncertainties", lambda image_u: (entropy, entropy))
    logs = method.train_step(b, step=10)
    mask = (entropy < math.log(2)).float()
    expected = ((F.cross_entropy(z_a, z_b.argmax(1), reduction="none") * mask).mean()
                + (F.cross_entropy(z_b, z_a.argmax(1), reduction="none") * mask).mean())
    assert logs["loss_cross"] == pytest.approx(float(expected), rel=1e-4, abs=1e-7)
    assert logs["certain_fraction"] == pytest.approx(float(mask.mean()))


# -- Co-BioNet (port) -----------------------------------------------------------------------------
def test_cobionet_masked_cross_loss_by_hand() -> None:
    method = build("cobionet")
    g = torch.Generator().manual_seed(2)
    logits, other = torch.randn(4, NUM_CLASSES, *PATCH, generator=g), torch.randn(4, NUM_CLASSES, *PATCH, generator=g)
    label_l = torch.randint(0, NUM_CLASSES, (2, *PATCH), generator=g)
    critic_logits = torch.where(torch.arange(16).reshape(1, 1, 16, 1, 1) < 4, 5.0, -5.0).expand(2, 1, *PATCH)
    loss, parts = method.network_loss(logits, other, method.critic_a, lambda probs: critic_logits, label_l, 1.0)
    q = other[2:].softmax(1)
    cross = -(q * logits[2:].log_softmax(1)).sum(1)
    assert parts["mask_fraction"] == pytest.approx(0.25)  # sigmoid(5) > 0.2 > sigmoid(-5) on a quarter
    assert parts["mask"] == pytest.approx(float(cross[:, :4].sum() / cross.numel()), rel=1e-5)
    assert parts["dis"] == pytest.approx(float(cross.mean()), rel=1e-5)


@pytest.mark.parametrize("flag", [True, False])
def test_cobionet_discrepancy_gradient_flag(flag: bool) -> None:
    method = build("cobionet", discrepancy_gradient=flag, adversarial_weight=0.0, mask_threshold=2.0)
    logits = torch.randn(4, NUM_CLASSES, *PATCH, requires_grad=True)
    other, label_l = torch.randn(4, NUM_CLASSES, *PATCH), torch.randint(0, NUM_CLASSES, (2, *PATCH))
    loss, _ = method.network_loss(logits, other, method.critic_a, method.critic_b, label_l, 1.0)
    loss.backward()  # threshold 2: no voxel masked in; adversarial weight 0: only sup (+ discrepancy) remain
    assert bool(logits.grad[2:].abs().sum() > 0) is flag  # the unlabeled half only gets the discrepancy's gradient


@pytest.mark.parametrize(("updates", "moves"), [("trained", True), ("frozen", False)])
def test_cobionet_critics_learn_unless_frozen_as_the_reference(updates: str, moves: bool) -> None:
    method = build("cobionet", critic_updates=updates)
    before = [p.detach().clone() for p in method.critic_a.parameters()]
    net_before = [p.detach().clone() for p in method.net_a.parameters()]
    method.train_step(batch(3), step=5)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.critic_a.parameters())) is moves
    assert any(not torch.equal(a, b) for a, b in zip(net_before, method.net_a.parameters()))


def test_cobionet_critics_follow_the_schedule_at_their_own_rate() -> None:
    method = build("cobionet", critic_lr=1e-4, lr=0.01)
    rng = np.random.default_rng(0)
    cases = [Case(f"c{i}", rng.random((20, 20, 20), dtype=np.float32),
                  rng.integers(0, NUM_CLASSES, (20, 20, 20)).astype(np.uint8), (1.0, 1.0, 1.0)) for i in range(3)]
    sampler = TwoStreamSampler(cases[:1], cases[1:], 2, 2, PATCH, seed=0)
    train(method, sampler, iterations=4, start_step=2, progress=False)  # last step 3: poly factor (1 - 3/4)^0.9
    factor = (1 - 3 / 4) ** 0.9
    assert method.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * factor)
    assert method.optimizers[2].param_groups[0]["lr"] == pytest.approx(1e-4 * factor)


def test_cobionet_critic_equals_its_convolutional_form() -> None:
    """The critic's Linear + BatchNorm1d over voxel rows is the reference's 1x1x1 Conv3d + BatchNorm3d."""
    from methods.cobionet import Critic
    torch.manual_seed(0)
    critic = Critic(NUM_CLASSES)
    convs: list[torch.nn.Module] = []
    for layer in critic.layers:
        if isinstance(layer, torch.nn.Linear):
            conv = torch.nn.Conv3d(layer.in_features, layer.out_features, 1, bias=False)
            conv.weight.data = layer.weight.data.reshape(*layer.weight.shape, 1, 1, 1).clone()
            convs.append(conv)
        elif isinstance(layer, torch.nn.BatchNorm1d):
            convs.append(torch.nn.BatchNorm3d(layer.num_features))
        else:
            convs.append(torch.nn.LeakyReLU(0.2))
    probs = torch.rand(2, NUM_CLASSES, 4, 5, 6).softmax(1)
    torch.testing.assert_close(critic(probs), torch.nn.Sequential(*convs)(probs), rtol=1e-4, atol=1e-5)
