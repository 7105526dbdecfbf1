import pytest
import torch

from world_model.lam.quantize import FSQ, NSVQ, VectorQuantizer


@pytest.mark.parametrize(
    "make", [lambda: VectorQuantizer(8, 4), lambda: NSVQ(8, 4), lambda: FSQ((2, 2, 2, 2))]
)
def test_shapes_and_gradients_reach_the_input(make):
    torch.manual_seed(0)
    quantizer = make().train()
    z = torch.randn(3, 16, 4, requires_grad=True)  # (B, tokens, D)
    out = quantizer(z)
    assert out.z_q.shape == z.shape and out.codes.shape == (3, 16) and out.codes.dtype == torch.int64
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < quantizer.num_codes
    (out.z_q.square().sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_vq_forward_is_the_nearest_code_and_trains_the_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4)
    z = torch.randn(64, 4)
    out = vq(z)
    distances = torch.cdist(z, vq.codebook)
    torch.testing.assert_close(out.codes, distances.argmin(1))
    torch.testing.assert_close(out.z_q, vq.codebook[out.codes].detach())
    out.loss.backward()
    assert vq.codebook.grad.abs().sum() > 0


def test_nsvq_substitutes_noise_of_the_error_norm_in_training_only():
    torch.manual_seed(0)
    nsvq = NSVQ(8, 4)
    z = torch.randn(64, 4, requires_grad=True)
    out = nsvq(z)
    q = nsvq.codebook[out.codes]
    torch.testing.assert_close((out.z_q - z).norm(dim=1), (z - q).norm(dim=1))
    out.z_q.sum().backward()
    assert nsvq.codebook.grad.abs().sum() > 0, "NSVQ passes gradients to the codebook through the noise norm"
    nsvq.eval()
    torch.testing.assert_close(nsvq(z).z_q, nsvq.codebook[nsvq(z).codes])


@pytest.mark.parametrize("cls", [VectorQuantizer, NSVQ])
def test_dead_code_replacement_revives_unused_codes(cls):
    torch.manual_seed(0)
    quantizer = cls(8, 2, usage_decay=0.5).train()
    with torch.no_grad():
        quantizer.codebook[4:] = 100.0  # far from every latent: never chosen
    z = torch.randn(512, 2)
    for _ in range(6):
        used_before = quantizer(z).codes.unique()
    assert set(used_before.tolist()) <= {0, 1, 2, 3}
    assert quantizer.perplexity() < 4.5
    assert quantizer.replace_dead_codes() == 4
    used_after = quantizer(z).codes.unique()
    assert len(used_after) > len(used_before), "re-seeded codes should be picked again"


@pytest.mark.parametrize("levels", [(2, 2, 2), (3, 5), (4, 3, 2)])
def test_fsq_codes_round_trip(levels):
    fsq = FSQ(levels)
    z = 3 * torch.randn(4096, len(levels))
    out = fsq(z)
    assert fsq.num_codes == torch.tensor(levels).prod()
    assert len(out.codes.unique()) == fsq.num_codes  # wide inputs reach every code
    torch.testing.assert_close(fsq.codes_to_latents(out.codes), out.z_q)
    assert out.z_q.abs().max() <= 1.0


def test_bad_quantizer_arguments():
    with pytest.raises(ValueError, match="levels must all be >= 2"):
        FSQ((1, 4))
    with pytest.raises(ValueError, match="needs latents of size 2"):
        FSQ((2, 2))(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="num_codes >= 2"):
        VectorQuantizer(1, 4)


@pytest.mark.parametrize("cls", [VectorQuantizer, NSVQ])
def test_data_init_puts_every_code_on_a_latent_of_the_first_batch(cls):
    torch.manual_seed(0)
    quantizer = cls(8, 4, data_init=True)
    z = 50 + torch.randn(256, 4)  # far from the random initial codebook
    quantizer.eval()
    assert len(quantizer(z).codes.unique()) == 1, "in eval the codebook is left alone"
    quantizer.train()
    quantizer(z)
    assert bool(quantizer.initialized)
    assert torch.cdist(quantizer.codebook.detach(), z).min(dim=1).values.max() < 1.0
    assert len(quantizer(z).codes.unique()) == 8
    before = quantizer.codebook.detach().clone()
    quantizer(z + 5)
    assert torch.equal(before, quantizer.codebook.detach()), "initialised once only"
