"""The shipped photos the parity check and photo inputs draw from."""

from __future__ import annotations

import hashlib

from harness.data.photos import photo_loaders, sample_photos


def test_eight_passes_over_the_photos_give_no_two_images_alike() -> None:
    count = 8 * len(photo_loaders())  # eight passes over every photo
    photos = sample_photos(count)
    digests = {hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest() for _, image in photos}
    assert len(photos) == count and len(digests) == count
    assert len({name for name, _ in photos}) == count
