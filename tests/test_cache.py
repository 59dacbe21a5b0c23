from pathlib import Path

from mm_classifier.cache import cache_root
from mm_classifier.sample import sample_folder


def test_cache_root_follows_the_environment_variable_at_every_call(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_CLASSIFIER_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("MM_CLASSIFIER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == Path(tmp_path / "home" / ".cache" / "mm_classifier")


def test_the_sample_is_generated_under_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_CLASSIFIER_CACHE", str(tmp_path))
    folder = sample_folder(seed=2, num_photos=3)
    assert folder.parent == tmp_path
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"scene_0000{i}.png" for i in range(3)]
    assert sample_folder(seed=2, num_photos=3) == folder  # cached: found again, not regenerated elsewhere
