"""GRecorder (g_record.py): keeps what it was asked for, copies it, and finds a sample by all of its tensors."""
import pytest
import torch

from vlmq_gptqmodel.g_record import GRecorder


def _batch(ids, pixels):
    return {"input_ids": torch.tensor([ids]), "pixel_values": torch.full((4, 3), float(pixels)),
            "image_grid_thw": torch.tensor([[1, 2, 2]])}


def test_only_the_named_layers_and_projections_are_kept_as_copies():
    rec = GRecorder(layers=(2,), projections=("v_proj",))
    weights = {"q_proj": [torch.ones(1, 3)], "v_proj": [torch.tensor([[1.0, 2.0, 3.0]])]}
    rec.record_layer(1, weights)
    rec.record_layer(2, weights)
    assert list(rec.g) == [(2, "v_proj")]
    weights["v_proj"][0].zero_()  # the run reuses and drops its tensors; the record must not change with them
    assert rec.weights(2, "v_proj", 0).tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(LookupError, match="no G for layer 2 q_proj"):
        rec.weights(2, "q_proj", 0)


def test_a_sample_is_found_by_its_pixels_too_not_only_its_token_ids():
    rec = GRecorder(layers=(1,), projections=("q_proj",))
    batches = [_batch([5, 6, 6, 9], 0.0), _batch([5, 6, 6, 9], 1.0), _batch([5, 6, 6, 8], 1.0)]
    vision = [b["input_ids"] == 6 for b in batches]
    rec.record_batches(batches, vision)
    assert [rec.batch_of(b) for b in batches] == [0, 1, 2]
    assert rec.batches[1].image_grid_thw.tolist() == [[1, 2, 2]]
    assert rec.batches[2].vision.tolist() == [[False, True, True, False]]
    with pytest.raises(LookupError, match="not among"):
        rec.batch_of(_batch([5, 6, 6, 9], 2.0))
