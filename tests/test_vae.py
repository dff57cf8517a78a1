"""Conv VAE network, VAEModule losses and generation API, spectral metrics, Griffin-Lim."""

from __future__ import annotations

import math

import pytest
import torch

from audiolab.audio.features import LogSpectrogram, db_to_amplitude, griffin_lim
from audiolab.metrics.spectral import LogSpectralDistance, log_spectral_distance
from audiolab.models.vae import VAEModule
from audiolab.nets.conv_vae import ConvVAE
from audiolab.nets.gmm import ClassGaussianMixture


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def test_baseline_architecture_is_the_classic_one():
    net = ConvVAE()  # defaults = the classic FSDD VAE
    convs = [m for m in net.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [512, 256, 128, 64, 32]
    assert [c.stride for c in convs] == [(2, 2)] * 4 + [(2, 1)]
    assert net.bottleneck_shape == (32, 8, 4) and net.latent_dim == 128
    # trainable parameters of the Keras original (its summary also lists the
    # non-trainable batch-norm statistics)
    assert sum(p.numel() for p in net.parameters()) == 2_368_833
    x = torch.rand(2, 1, 256, 64)
    recon, mu, logvar = net(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (2, 128)
    assert recon.min() >= 0 and recon.max() <= 1


def test_conditional_vae_needs_labels_and_checks_shapes():
    net = ConvVAE(filters=(8, 8, 8, 8, 8), n_classes=10, residual_blocks=1)
    x = torch.rand(3, 1, 256, 64)
    with pytest.raises(ValueError, match="conditional: pass the class labels"):
        net(x)
    assert net(x, torch.tensor([0, 5, 9]))[0].shape == x.shape
    with pytest.raises(ValueError, match=r"expected spectrograms of shape \(B, 1, 256, 64\)"):
        net(torch.rand(3, 1, 128, 64), torch.tensor([0, 1, 2]))


def small_module(**kwargs):
    net = ConvVAE(filters=(8, 8, 8, 8, 8), latent_dim=16, n_classes=kwargs.pop("n_classes", 0))
    return VAEModule(net, adam, **kwargs)


def batch(n=4):
    return {
        "spec": torch.rand(n, 1, 256, 64),
        "min": torch.full((n,), -80.0),
        "max": torch.zeros(n),
        "digit": torch.arange(n) % 10,
    }


def test_losses_kl_warmup_and_free_bits():
    module = small_module(recon_loss="sse", recon_weight=1.0, kl_weight=0.5, kl_warmup_steps=100, free_bits=0.5)
    out = module._losses(batch())
    assert out["beta"].item() == 0.0  # step 0 of the warm-up
    assert out["loss"].item() == pytest.approx(out["recon"].item(), rel=1e-6)
    assert out["recon"].item() > 100  # summed over 16,384 values per item
    no_warmup = small_module(kl_weight=0.5, free_bits=0.5)
    out = no_warmup._losses(batch())
    # free bits: the KL term is at least latent_dim x 0.5 nats even if the true KL is smaller
    floor = 16 * 0.5
    expected = 1e6 * out["recon"].item() + 0.5 * max(floor, out["kl"].item())
    assert out["loss"].item() >= expected * (1 - 1e-5)


def test_gaussian_recon_loss_is_the_nll_at_the_ml_variance():
    module = small_module(recon_loss="gaussian", recon_weight=1.0).eval()
    module.net.reparameterize = lambda mu, logvar: mu  # deterministic decoder input
    x = batch(3)["spec"]
    out = module._losses(batch(3) | {"spec": x})
    rec = module.net.decode(module.net.encode(x)[0])
    var = (rec - x).pow(2).mean()  # the maximum-likelihood shared variance
    # Gaussian NLL of each item at that variance, summed over its values, mean over items
    nll = ((rec - x).pow(2) / (2 * var) + 0.5 * torch.log(2 * math.pi * var)).flatten(1).sum(1).mean()
    assert out["recon"].item() == pytest.approx(nll.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown recon_loss 'l3'"):
        small_module(recon_loss="l3")


def test_generation_api():
    module = small_module(n_classes=10).eval()
    b = batch()
    with pytest.raises(ValueError, match="conditioned on 'digit'"):
        module.sample(2)
    samples = module.sample(5, torch.tensor([7] * 5), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 256, 64)
    path = module.interpolate(b["spec"][0], b["spec"][1], steps=6, labels=torch.tensor(3))
    assert path.shape == (6, 1, 256, 64)
    ends = module.reconstruct(b["spec"][:2], torch.tensor([3, 3]))
    assert torch.allclose(path[0], ends[0], atol=1e-5) and torch.allclose(path[-1], ends[1], atol=1e-5)


def test_class_prior_kl_and_sampling():
    net = ConvVAE(filters=(8, 8, 8, 8, 8), latent_dim=16, n_classes=10, prior="class", condition_encoder=False)
    module = VAEModule(net, adam, recon_loss="sse", recon_weight=1.0)
    b = batch()
    # at initialisation every class prior is N(0, I): the KL equals the standard one
    mu, logvar = net.encode(b["spec"])
    standard = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(0).sum()
    assert module._losses(b)["kl"].item() == pytest.approx(standard.item(), rel=1e-5)
    # move digit 3's prior: the KL is the closed form for N(mu, s^2) against N(m, e^2)
    with torch.no_grad():
        net.class_prior.weight[3, :16] = 2.0
        net.class_prior.weight[3, 16:] = math.log(4.0)
    x, y = b["spec"][3:4], torch.tensor([3])
    mu, logvar = net.encode(x)
    expected = 0.5 * (math.log(4.0) - logvar + (logvar.exp() + (mu - 2.0).pow(2)) / 4.0 - 1).sum()
    got = module._losses({**{k: v[3:4] for k, v in b.items()}, "digit": y})["kl"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # samples come from the class prior: temperature 0 decodes its mean exactly
    zero_t = net.sample(2, torch.tensor([3, 3]), temperature=0.0)
    assert torch.allclose(zero_t, net.decode(torch.full((2, 16), 2.0), torch.tensor([3, 3])))
    with pytest.raises(ValueError, match="class-conditional prior: pass the class labels"):
        net.sample(2)
    with pytest.raises(ValueError, match="needs a conditional VAE"):
        ConvVAE(filters=(8, 8, 8, 8, 8), prior="class")


def test_soft_labels_and_blended_interpolation():
    module = small_module(n_classes=10).eval()
    z = torch.randn(3, 16)
    hard = torch.tensor([1, 4, 9])
    soft = torch.nn.functional.one_hot(hard, 10).float()
    assert torch.allclose(module.net.decode(z, hard), module.net.decode(z, soft), atol=1e-6)
    b = batch()
    path = module.interpolate(b["spec"][0], b["spec"][1], steps=5, labels=torch.tensor([2, 7]))
    ends = module.reconstruct(b["spec"][:2], torch.tensor([2, 7]))
    assert torch.allclose(path[0], ends[0], atol=1e-5) and torch.allclose(path[-1], ends[1], atol=1e-5)
    # the middle point decodes the mean latent with the mean of the two label embeddings
    mu, _ = module.net.encode(b["spec"][:2], torch.tensor([2, 7]))
    half = torch.zeros(1, 10)
    half[0, 2] = half[0, 7] = 0.5
    assert torch.allclose(path[2], module.net.decode(mu.mean(0, keepdim=True), half)[0], atol=1e-5)
    with pytest.raises(ValueError, match="conditioned on 'digit'"):
        module.interpolate(b["spec"][0], b["spec"][1])


def test_log_spectral_distance():
    ref = torch.randn(3, 256, 64) * 10
    assert log_spectral_distance(ref + 4.0, ref) == pytest.approx(torch.full((3,), 4.0))
    metric = LogSpectralDistance()
    metric.update(ref + 2.0, ref)
    metric.update(ref[:1] + 5.0, ref[:1])
    assert metric.compute().item() == pytest.approx((2 + 2 + 2 + 5) / 4)


def test_griffin_lim_recovers_a_tone():
    sr, n_fft, hop = 22050, 512, 256
    t = torch.arange(16317) / sr
    audio = 0.5 * torch.sin(2 * math.pi * 440 * t)
    spec = LogSpectrogram(n_fft, hop)
    db = spec(audio[None])
    wave = griffin_lim(db_to_amplitude(db), n_fft, hop, n_iter=32, length=audio.numel())
    assert wave.shape == (1, audio.numel())
    # the magnitude spectrogram of the reconstruction matches (spectral convergence)
    target = spec.magnitude(audio[None])
    got = spec.magnitude(wave)
    convergence = (got - target).norm() / target.norm()
    assert convergence < 0.2, convergence  # 0.14 after 32 iterations, as Griffin-Lim goes
    peak_hz = torch.fft.rfft(wave[0]).abs().argmax().item() * sr / wave.shape[-1]
    assert abs(peak_hz - 440) < sr / n_fft / 2, peak_hz  # within half an STFT bin


def test_class_mixture_recovers_separated_modes_and_samples_them():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
    # class 0: two modes with unequal weights; class 1: one mode; class 2: no data
    x0 = torch.cat([centres[0] + 0.5 * torch.randn(300, 2, generator=g), centres[1] + torch.randn(100, 2, generator=g)])
    x1 = centres[2] + 2.0 * torch.randn(200, 2, generator=g)
    x = torch.cat([x0, x1])
    labels = torch.cat([torch.zeros(400, dtype=torch.long), torch.ones(200, dtype=torch.long)])
    gmm = ClassGaussianMixture(n_classes=3, n_components=2, dim=2)
    with pytest.raises(RuntimeError, match="not been fitted"):
        gmm.sample(torch.tensor([0]))
    gmm.fit(x, labels)
    order = gmm.means[0, :, 0].argsort()
    assert torch.allclose(gmm.means[0, order], centres[:2], atol=0.25)
    assert torch.allclose(gmm.weights[0, order], torch.tensor([0.75, 0.25]), atol=0.03)
    assert torch.allclose(gmm.variances[0, order[0]], torch.full((2,), 0.25), rtol=0.25)
    draws = gmm.sample(torch.zeros(4000, dtype=torch.long), generator=torch.Generator().manual_seed(1))
    assert (draws[:, 0] > 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    one = gmm.sample(torch.ones(2000, dtype=torch.long), generator=torch.Generator().manual_seed(2))
    # EM keeps the data's mean exactly: sum_k w_k mean_k = mean of the class's points
    mixture_mean = (gmm.weights[1, :, None] * gmm.means[1]).sum(0)
    assert torch.allclose(mixture_mean, x1.mean(0), atol=1e-4)
    assert torch.allclose(one.mean(0), x1.mean(0), atol=0.15) and one.std(0).mean().item() == pytest.approx(2.0, rel=0.1)
    # the class without data keeps the standard normal
    assert torch.equal(gmm.means[2], torch.zeros(2, 2)) and torch.equal(gmm.variances[2], torch.ones(2, 2))


def test_vae_module_samples_from_the_fitted_mixture():
    net = ConvVAE(filters=(8, 8, 8, 8, 8), latent_dim=4, n_classes=10)
    module = VAEModule(net, adam, latent_prior="gmm", prior_components=2).eval()
    b = batch(20)
    module.fit_latent_mixture([{k: b[k][i] for k in ("spec", "digit")} for i in range(20)])
    assert bool(module.latent_mixture.fitted)
    labels = torch.tensor([3, 3, 7])
    got = module.sample(3, labels, generator=torch.Generator().manual_seed(5), temperature=0.0)
    # temperature 0 decodes a component mean of the requested digit's mixture
    means = module.latent_mixture.means
    for i, d in enumerate(labels):
        decoded = module.net.decode(means[d], d.expand(2))
        assert any(torch.allclose(got[i], decoded[k], atol=1e-5) for k in range(2))
    with pytest.raises(ValueError, match="unknown latent_prior 'vamp'"):
        VAEModule(net, adam, latent_prior="vamp")


def test_sample_temperature_is_the_default_of_prior_samples():
    net = ConvVAE(filters=(8, 8, 8, 8, 8), latent_dim=4, n_classes=10)
    module = VAEModule(net, adam, latent_prior="gmm", prior_components=2, sample_temperature=0.5).eval()
    b = batch(20)
    module.fit_latent_mixture([{k: b[k][i] for k in ("spec", "digit")} for i in range(20)])
    labels = torch.tensor([1, 2, 3])

    def draw(**kwargs):
        return module.sample(3, labels, generator=torch.Generator().manual_seed(7), **kwargs)

    assert torch.equal(draw(), draw(temperature=0.5))
    assert not torch.equal(draw(), draw(temperature=1.0))
    with pytest.raises(ValueError, match="sample_temperature must be positive"):
        VAEModule(net, adam, sample_temperature=0.0)


def test_deprecated_classifier_argument_is_handed_to_the_generation_metrics_callback():
    """Configs and checkpoints of earlier versions name the classifier on the model: the
    module hands it to a GenerationMetricsCallback (configure_callbacks), unless the trainer
    has one with a classifier of its own."""
    import lightning as L

    from audiolab.callbacks.generation_metrics import GenerationMetricsCallback

    def trainer(*callbacks):
        return L.Trainer(
            callbacks=list(callbacks), logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )

    assert small_module().configure_callbacks() == []
    module = small_module(classifier_ckpt="clf.ckpt", samples_per_class=3)
    assert "classifier_ckpt" not in module.hparams and "samples_per_class" not in module.hparams
    module.trainer = trainer(GenerationMetricsCallback())  # callbacks=vae: listed, no classifier
    with pytest.warns(FutureWarning, match="deprecated"):
        (forwarded,) = module.configure_callbacks()
    assert isinstance(forwarded, GenerationMetricsCallback)
    assert (forwarded.classifier_ckpt, forwarded.samples_per_class) == ("clf.ckpt", 3)
    module.trainer = trainer(GenerationMetricsCallback(), forwarded)  # test after fit: the same one
    assert module.configure_callbacks() == [forwarded]
    # without samples_per_class: the callback's default
    module = small_module(classifier_ckpt="clf.ckpt")
    module.trainer = trainer()
    with pytest.warns(FutureWarning):
        assert module.configure_callbacks()[0].samples_per_class == 50
    # a classifier configured on the callback wins
    module = small_module(classifier_ckpt="old.ckpt", samples_per_class=50)
    module.trainer = trainer(GenerationMetricsCallback("new.ckpt"))
    with pytest.warns(UserWarning, match="model.classifier_ckpt=old.ckpt is ignored"):
        assert module.configure_callbacks() == []


def test_generation_metrics_callback_needs_a_vae():
    from audiolab.callbacks.generation_metrics import GenerationMetricsCallback
    from audiolab.models.classifier import ClassifierModule
    from audiolab.nets.spec_classifier import SpecClassifier
    from audiolab.utils.errors import AudiolabError

    classifier = ClassifierModule(SpecClassifier(channels=[4, 8]), adam)
    GenerationMetricsCallback().setup(None, classifier, "test")  # off: nothing to check
    with pytest.raises(AudiolabError, match="has no sample"):
        GenerationMetricsCallback("clf.ckpt").setup(None, classifier, "test")
    with pytest.raises(AudiolabError, match="samples_per_class must be >= 1"):
        GenerationMetricsCallback("clf.ckpt", samples_per_class=0)
