"""Calibration files on disk, as users hand them to `vlmq quantize --calib`."""
from pathlib import Path

import pytest

from vlmq_gptqmodel.synth.world import make_samples


def write_calibration_images(root: Path, n: int, sharegpt: bool = False) -> list:
    """Save n synthetic images under root; return their records, COCO-caption style or ShareGPT4V style."""
    records = []
    for i, sample in enumerate(make_samples("calib", n, seed=0)):
        sample.image.save(root / f"{i}.png")
        if sharegpt:
            records.append({"image": f"{i}.png", "conversations": [
                {"from": "human", "value": "<image>\ndescribe the image ."}, {"from": "gpt", "value": sample.caption}]})
        else:
            records.append({"image": f"{i}.png", "caption": sample.caption})
    return records


@pytest.fixture(scope="session")
def calibration_images():
    return write_calibration_images
