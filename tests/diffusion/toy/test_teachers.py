"""The cached teachers (tests/data/diffusion_toy_teachers.pt, made by tools/diffusion/make_toy_teachers.py):
the classifier's test accuracy, the teachers' sample quality, the reward, and the loader."""
import pytest
import torch

from gradwise.diffusion.toy import (MIXTURE_TEACHER_WEIGHTS, TEACHER_FILE, DigitsClassifier, classifier_reward,
                                    digits_8x8, edm_sample, energy_distance, feature_frechet, load_teacher,
                                    mixture_2d, mixture_2d_centers, mode_recall, train_digits_classifier)

pytestmark = pytest.mark.skipif(not TEACHER_FILE.is_file(), reason="no cached teachers")


@pytest.fixture(scope="module")
def clf():
    return load_teacher("classifier")


def test_cache_is_small():
    assert TEACHER_FILE.stat().st_size < 1_000_000


def test_classifier_scores_at_least_97_percent_on_the_test_split(clf):
    x, y = digits_8x8("test")
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).double().mean().item()
    assert acc >= 0.97


def test_reward_is_log_softmax_and_differentiable(clf):
    x, y = digits_8x8("test")
    x = x[:16].clone().requires_grad_(True)
    r = classifier_reward(clf, x, y[:16])
    torch.testing.assert_close(r, torch.log_softmax(clf(x), 1)[torch.arange(16), y[:16]])
    assert r.shape == (16,) and (r <= 0).all()
    r.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="y"):
        classifier_reward(clf, x, y[:3])
    with pytest.raises(ValueError, match="y"):
        classifier_reward(clf, x, torch.full((16,), 10))


def test_mixture_teacher_samples_the_unequal_mixture(one_thread):
    teacher = load_teacher("mixture")
    g = torch.Generator().manual_seed(0)
    data, _ = mixture_2d(1000, weights=MIXTURE_TEACHER_WEIGHTS, generator=g)
    x = edm_sample(teacher, torch.randn(1000, 2, generator=g), steps=18)
    centers = mixture_2d_centers(8, 2.0)
    assert mode_recall(x, centers, MIXTURE_TEACHER_WEIGHTS, 0.25).item() == 1.0
    assert energy_distance(x, data).item() < 0.01  # 0.0038 made; data vs data of this size: ~0.001
    labels = torch.arange(400) % 8  # class-conditional: every sample lands on its mode
    xc = edm_sample(teacher, torch.randn(400, 2, generator=g), steps=18, class_labels=labels)
    assert (torch.cdist(xc, centers).argmin(1) == labels).double().mean() > 0.98


def test_digits_teacher_samples_recognisable_digits(clf, one_thread):
    teacher = load_teacher("digits")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    x = edm_sample(teacher, torch.randn(200, 1, 8, 8, generator=g), steps=18, class_labels=labels)
    with torch.no_grad():
        acc = (clf(x).argmax(1) == labels).double().mean().item()
    data, _ = digits_8x8("test")
    assert acc >= 0.8  # 0.855 made
    # 9.3 made; two halves of the test split: 7.8 (200 samples per side bias the distance up)
    assert feature_frechet(clf, x, data[:200]).item() < 1.5 * feature_frechet(clf, data[200:400], data[:200]).item()
    guided = edm_sample(teacher, torch.randn(100, 1, 8, 8, generator=g), steps=18, class_labels=labels[:100],
                        guidance_scale=2.0)
    with torch.no_grad():
        assert (clf(guided).argmax(1) == labels[:100]).double().mean().item() >= 0.95  # CFG sharpens


def test_loader_bad_name_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="name"):
        load_teacher("cifar")
    with pytest.raises(FileNotFoundError):
        load_teacher("mixture", tmp_path / "none.pt")


def test_loaded_teachers_are_frozen():
    teacher = load_teacher("digits")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_train_digits_classifier_runs_briefly():
    x, y = digits_8x8("train")
    model = train_digits_classifier(x[:64], y[:64], epochs=1, batch_size=32)
    assert isinstance(model, DigitsClassifier) and not model.training
    with pytest.raises(ValueError, match="y"):
        train_digits_classifier(x[:64], y[:10], epochs=1)


def test_without_the_repository_cache_the_teacher_is_trained_once_and_kept(tmp_path, monkeypatch):
    # an installed package has no tests/data: the loader trains (here: a stand-in) and keeps the weights
    from gradwise.diffusion.toy import teachers

    calls = []

    def fake_train(name, *, seed=0):
        calls.append((name, seed))
        torch.manual_seed(123)
        return teachers.build_teacher(name).eval()

    monkeypatch.setattr(teachers, "TEACHER_FILE", tmp_path / "absent.pt")
    monkeypatch.setattr(teachers, "train_teacher", fake_train)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = teachers.load_teacher("classifier")
    second = teachers.load_teacher("classifier")
    assert calls == [("classifier", 0)]
    assert teachers.user_cache_file("classifier").is_file()
    assert str(teachers.user_cache_file("classifier")).startswith(str(tmp_path / "cache"))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in second.parameters())
