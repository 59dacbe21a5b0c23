import hashlib

import numpy as np
from PIL import Image

from mm_classifier.sample import REGIONS_FILE, generate_sample, read_regions, sample_folder

# sha256 over captions.txt and images/*.png (name, then bytes) of generate_sample(seed=3, num_photos=60), computed
# with the generator before it wrote regions.json: recording the regions must not change a pixel or a caption.
SAMPLE_DIGEST_SEED3_N60 = "69279ca74d3e0ac6dccb98eede841f4d864eef31e432db89160dd2ee67fbfe5a"


def digest(folder):
    sha = hashlib.sha256()
    for path in [folder / "captions.txt", *sorted((folder / "images").iterdir())]:
        sha.update(path.name.encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def test_recording_the_regions_leaves_every_photo_and_caption_as_before(tmp_path):
    generate_sample(tmp_path, seed=3, num_photos=60)
    assert digest(tmp_path) == SAMPLE_DIGEST_SEED3_N60


def test_regions_box_everything_drawn_and_only_that(tmp_path):
    generate_sample(tmp_path, seed=4, num_photos=40)
    regions = read_regions(tmp_path)
    assert sorted(regions) == sorted(p.name for p in (tmp_path / "images").iterdir())
    for name, things in regions.items():
        pixels = np.asarray(Image.open(tmp_path / "images" / name).convert("RGB"))
        assert 2 <= len(things) <= 4  # one or two objects, one or two people
        drawn = np.zeros(pixels.shape[:2], dtype=bool)
        for thing in things:
            x0, y0, x1, y1 = thing["box"]
            assert 0 <= x0 < x1 <= pixels.shape[1] and 0 <= y0 < y1 <= pixels.shape[0]
            drawn[y0:y1, x0:x1] = True
        # Outside the boxes only the background is left: the sky above the horizon, the ground below.
        assert len(np.unique(pixels[~drawn], axis=0)) <= 2, name
        sky, ground = pixels[0, 0], pixels[-1, -1]
        for thing in things:  # and each box holds something that is neither
            x0, y0, x1, y1 = thing["box"]
            inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
            assert ((inside != sky).any(1) & (inside != ground).any(1)).any(), (name, thing)


def test_regions_name_the_concepts_the_captions_name(tmp_path):
    generate_sample(tmp_path, seed=5, num_photos=30)
    regions = read_regions(tmp_path)
    captions = (tmp_path / "captions.txt").read_text().lower()
    people = {"man": ("man", "guy", "gentleman"), "woman": ("woman", "lady"), "boy": ("boy",), "girl": ("girl",)}
    for name, things in regions.items():
        lines = [line for line in captions.splitlines() if line.startswith(name)]
        for thing in things:
            if thing["concept"] in people:  # people are named in every caption
                assert all(any(w in line.split() for w in people[thing["concept"]]) for line in lines), (name, thing)


def test_a_sample_folder_from_before_the_regions_gets_them(tmp_path):
    folder = sample_folder(seed=2, num_photos=5, root=tmp_path)
    expected = read_regions(folder)
    (folder / REGIONS_FILE).unlink()
    images = digest(folder)
    assert sample_folder(seed=2, num_photos=5, root=tmp_path) == folder
    assert read_regions(folder) == expected
    assert digest(folder) == images
