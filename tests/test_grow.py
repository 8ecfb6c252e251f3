"""Growing a trained network into a larger profile (training/grow.py) keeps what it computes."""
import pytest
import torch

from inference.network import PROFILES, Profile, _stage_arch, load_model, new_model
from training.grow import grow, main

# tiny is [4, 8, 8]: stage 2 keeps stage 1's width, so its skip path has no projection; the grown profiles keep
# that (a projection the model lacks cannot be grown)
WIDER = Profile("tiny-wider", _stage_arch([6, 12, 12], [1, 1, 1]), (16, 16, 16))
DEEPER = Profile("tiny-deeper", _stage_arch([6, 12, 12], [1, 2, 3]), (16, 16, 16))


def _trained_tiny() -> torch.nn.Module:
    """A tiny model whose norms are not at their initial values (as after training)."""
    m = new_model("tiny", seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return m


def _logits(model, seed=1):
    x = torch.randn(2, 8, 16, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.net.eval()(x)


def test_wider_stages_compute_the_same_function():
    m = _trained_tiny()
    g = grow(m, WIDER, noise=0.0)
    assert [c.out_channels for c in (g.net.encoder.stem.convs[0].conv,)] == [6]
    assert sum(p.numel() for p in g.net.parameters()) > sum(p.numel() for p in m.net.parameters())
    torch.testing.assert_close(_logits(g), _logits(m), atol=1e-4, rtol=1e-4)


def test_added_blocks_start_silent_and_noise_stays_small():
    m = _trained_tiny()
    a = _logits(m)
    b = _logits(grow(m, DEEPER, noise=0.0))
    c = _logits(grow(m, DEEPER, noise=0.01))
    # an added block passes its input through one more LeakyReLU: the logits move by a few per cent at most
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())
    assert float((a - c).abs().max()) < 0.1 * float(a.abs().max())
    assert ((a[:, 1] > a[:, 0]) == (b[:, 1] > b[:, 0])).float().mean() > 0.99


def test_grown_copies_get_different_weights_with_noise():
    g = grow(_trained_tiny(), WIDER, noise=0.01, seed=0)
    w = g.net.encoder.stages[2].blocks[0].conv2.conv.weight  # 12 x 12: 8 old channels, 4 copies
    assert not any(torch.equal(w[i], w[j]) for i in range(12) for j in range(i + 1, 12))


def test_cannot_shrink_or_change_depth():
    m = _trained_tiny()
    with pytest.raises(ValueError, match="shrink"):
        grow(m, Profile("smaller", _stage_arch([2, 8, 8], [1, 1, 1]), (16, 16, 16)))
    with pytest.raises(ValueError, match="stages"):
        grow(m, Profile("four", _stage_arch([4, 8, 8, 8], [1, 1, 1, 1]), (16, 16, 16)))
    with pytest.raises(ValueError, match="no counterpart"):
        grow(m, Profile("projection", _stage_arch([4, 8, 16], [1, 1, 1]), (16, 16, 16)))


def test_command_line_writes_a_loadable_checkpoint(tmp_path, monkeypatch):
    from inference.network import save_checkpoint

    monkeypatch.setitem(PROFILES, DEEPER.name, DEEPER)
    save_checkpoint(_trained_tiny(), tmp_path / "small.pt", {"step": 7})
    assert main(["--from", str(tmp_path / "small.pt"), "--profile", DEEPER.name, "--out", str(tmp_path / "big.pt")]) == 0
    big = load_model(tmp_path / "big.pt")
    assert big.meta["profile"] == DEEPER.name and big.meta["grown_from"]["step"] == 7
    assert big.arch["n_blocks_per_stage"] == [1, 2, 3] and big.patch_size == (16, 16, 16)
