"""The headroom check's math on matrices with known answers, and its tool on a tiny random model."""
import pytest
import torch

import headroom_probe  # tools/ is on pytest's pythonpath (pyproject.toml)
from vlmq_gptqmodel.rtn import group_grid, on_grid, rtn_quantize_weight
from vlmq_gptqmodel.synth.headroom import (
    gptq_reference, input_moments, layer_error, participation_ratio, top_direction_share,
)
from vlmq_gptqmodel.synth.rtn_baseline import decoder_linears


def test_participation_ratio_counts_the_directions_the_inputs_span():
    assert participation_ratio(torch.eye(16)) == pytest.approx(16)
    v = torch.randn(16, 1)
    assert participation_ratio(v @ v.T) == pytest.approx(1)
    assert participation_ratio(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))) == pytest.approx(2)


def test_top_direction_share_is_the_strongest_eigenvalues_part_of_the_trace():
    assert top_direction_share(torch.eye(16)) == pytest.approx(1 / 16)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))  # a rotated, not axis-aligned, spectrum
    h = q @ torch.diag(torch.tensor([6.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)) @ q.T
    assert top_direction_share(h) == pytest.approx(0.6)


def test_without_correlated_inputs_gptq_has_nothing_to_move_and_is_rtn():
    w = torch.randn(8, 64, dtype=torch.float64)
    # (RTN rounds in float32, the reference in float64)
    assert torch.allclose(gptq_reference(w, 3.0 * torch.eye(64, dtype=torch.float64), 2, 32),
                          rtn_quantize_weight(w, 2, 32), atol=1e-6)


def test_the_second_column_absorbs_the_first_columns_error_as_least_squares_says():
    # H = [[a, b], [b, c]], a > c so column 0 goes first; its error e0 moves to column 1 as e0 * b / c
    a, b, c = 2.0, 1.2, 1.0
    h = torch.tensor([[a, b], [b, c]], dtype=torch.float64)
    w = torch.tensor([[0.43, -0.48]], dtype=torch.float64)  # the shift crosses a rounding boundary
    q = gptq_reference(w, h, 2, 2, damp=0.0)
    grid = rtn_quantize_weight(w, 2, 2)
    assert q[0, 0] == pytest.approx(float(grid[0, 0]), abs=1e-6)
    e0 = w[0, 0] - q[0, 0]
    # same grid (set from the whole group when its first column came up), shifted second weight
    shifted = torch.tensor([[w[0, 0], w[0, 1] + e0 * b / c]], dtype=torch.float64)
    scale, zero = group_grid(w, 2)
    assert q[0, 1] == pytest.approx(float(on_grid(shifted[:, 1:], scale, zero, 2)[0, 0]), abs=1e-12)
    assert q[0, 1] != pytest.approx(float(grid[0, 1]), abs=1e-3)  # RTN (no feedback) rounds it elsewhere


def test_on_low_rank_inputs_gptq_removes_most_of_rtns_error_and_act_order_follows_the_diagonal():
    torch.manual_seed(0)
    basis = torch.randn(64, 4, dtype=torch.float64)
    x = torch.randn(4000, 4, dtype=torch.float64) @ basis.T + 0.01 * torch.randn(4000, 64, dtype=torch.float64)
    h = x.T @ x / len(x)
    w = torch.randn(16, 64, dtype=torch.float64)
    rtn, gptq = layer_error(w, rtn_quantize_weight(w, 2, 32), h), layer_error(w, gptq_reference(w, h, 2, 32), h)
    assert gptq < 0.1 * rtn
    assert layer_error(w, w, h) == 0


def test_input_moments_of_kept_tokens_are_the_second_moment_of_those_tokens_alone(tiny_vlm):
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm()).eval()
    ids = torch.tensor([[5, 7, 9, 7, 11, 7]])
    seen = []
    name, linear = next(iter(decoder_linears(model).items()))
    handle = linear.register_forward_hook(lambda m, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        everything = input_moments(model, [{"input_ids": ids}])
        sevens = input_moments(model, [{"input_ids": ids}], keep_token=lambda row: row == 7)
    handle.remove()
    x = seen[0].double()
    assert torch.allclose(everything[name], x.T @ x / 6)
    assert torch.allclose(sevens[name], x[[1, 3, 5]].T @ x[[1, 3, 5]] / 3)
    with pytest.raises(ValueError, match="no token"):
        input_moments(model, [{"input_ids": ids}], keep_token=lambda row: row == 1000)


def test_the_tool_writes_one_row_per_decoder_linear(tiny_vlm, tmp_path):
    from transformers import AutoModelForImageTextToText
    model_dir = tiny_vlm()
    out = tmp_path / "headroom.md"
    assert headroom_probe.main(["--model", str(model_dir), "--samples", "2", "--group-size", "32",
                                "--out", str(out)]) == 0
    text = out.read_text()
    names = decoder_linears(AutoModelForImageTextToText.from_pretrained(model_dir))
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| linear")]
    assert len(rows) == len(names)
    shares = [float(row.split("|")[4]) for row in rows]  # the top-direction column
    assert all(0 < share <= 1 for share in shares)
    text_ratios = [float(row.split("|")[11]) for row in rows]  # GPTQ W2 / RTN W4 on the text tokens
    assert all(ratio > 0 for ratio in text_ratios)
    assert "on the text tokens alone" in text
    assert "Medians over" in text and "--samples 2" in text


def test_the_tool_refuses_a_group_size_that_does_not_divide_the_layers(tiny_vlm):
    with pytest.raises(SystemExit, match="--group-size 48 does not divide"):
        headroom_probe.main(["--model", str(tiny_vlm()), "--samples", "1", "--group-size", "48"])


def test_the_tool_refuses_an_empty_calibration_set():
    with pytest.raises(SystemExit):
        headroom_probe.parse_args(["--samples", "0"])
