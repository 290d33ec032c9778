"""Band analysis (paper Figures 2 and 4): exact band definitions, a hand-built case with a known
answer, the identity-factor reduction to SVD, and streamed means equal to brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import capture_module_io, random_sequences
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from unmemorize.analysis import (
    BAND_NAMES, TokenSequence, auc, band_analysis, image_batches, load_text_source, pairs_readout, rank_correlation, svd_readout,
    text_batches, whitened_readout,
)
from unmemorize.analysis.bands import BAND_EDGES, top_pair_column_counts
from unmemorize.basis import ModuleBasis, decompose
from unmemorize.models import get_weight
from unmemorize.matrices import model_matrices


def random_psd(d, seed, decay=0.8):
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q @ torch.diag(decay ** torch.arange(d, dtype=torch.float64)) @ q.T


def basis_of(g, a) -> ModuleBasis:
    return ModuleBasis(gradient=decompose(g), activation=decompose(a))


def brute_force_pair_bands(lam, mu):
    """Band index of every pair (i, j): a full stable sort of -lambda_i mu_j in row-major order."""
    m, n = len(lam), len(mu)
    order = np.argsort(-np.multiply.outer(np.asarray(lam), np.asarray(mu)).ravel(), kind="stable")
    rank = np.empty(m * n, np.int64)
    rank[order] = np.arange(m * n)
    bounds = [round(e * m * n) for e in BAND_EDGES]
    band = np.searchsorted(bounds[1:], rank, side="right")
    return band.reshape(m, n)


@pytest.mark.parametrize("spectra", ["continuous", "tied"])
def test_top_pair_counts_equal_a_full_sort(spectra):
    rng = np.random.default_rng(0)
    if spectra == "continuous":
        lam, mu = np.sort(rng.random(13))[::-1].copy(), np.sort(rng.random(9))[::-1].copy()
    else:  # many exactly equal products
        lam, mu = np.array([4.0, 2, 2, 1, 1, 1, 0]), np.array([2.0, 1, 1, 0.5, 0.5])
    m, n = len(lam), len(mu)
    order = np.argsort(-np.multiply.outer(lam, mu).ravel(), kind="stable")
    for count in range(m * n + 1):
        expected = np.bincount(order[:count] % n, minlength=n)
        np.testing.assert_array_equal(top_pair_column_counts(torch.tensor(lam), torch.tensor(mu), count), expected)


def test_pairs_band_activation_is_the_mean_over_the_bands_fisher_eigenvectors():
    """a_b(x)^2 = mean over pairs (i, j) in band b of |(u_Gi u_Aj^T) x|^2, each pair built explicitly."""
    basis = basis_of(random_psd(5, 1), random_psd(7, 2))
    readout = pairs_readout(basis)
    bands = brute_force_pair_bands(basis.gradient.eigenvalues.numpy(), basis.activation.eigenvalues.numpy())
    x = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u_g, u_a = basis.gradient.eigenvectors, basis.activation.eigenvectors
    expected = torch.zeros(3, len(BAND_NAMES), dtype=torch.float64)
    for b in range(len(BAND_NAMES)):
        pairs = list(zip(*np.nonzero(bands == b)))
        for i, j in pairs:
            eigenvector = torch.outer(u_g[:, i], u_a[:, j])  # (d_out, d_in)
            expected[:, b] += (x @ eigenvector.T).square().sum(1) / len(pairs)
    torch.testing.assert_close(readout.band_activations(x), expected.sqrt(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(9, 6), (6, 8)])
def test_whitened_basis_is_the_svd_basis_when_a_and_g_are_identity(shape):
    d_out, d_in = shape
    weight = torch.randn(d_out, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = torch.randn(50, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    identity = basis_of(torch.eye(d_out, dtype=torch.float64), torch.eye(d_in, dtype=torch.float64))
    whitened, svd = whitened_readout(weight, identity), svd_readout(weight)
    torch.testing.assert_close(whitened.scores, svd.scores, rtol=1e-12, atol=1e-12)
    assert whitened.directions.shape == svd.directions.shape == (min(d_out, d_in), d_in)  # thin: W's row space
    torch.testing.assert_close(whitened.directions.abs(), svd.directions.abs(), rtol=0, atol=1e-10)  # the same vectors up to sign
    torch.testing.assert_close(whitened.band_activations(x), svd.band_activations(x), rtol=1e-10, atol=1e-12)
    # negative control: a non-identity A changes the basis
    other = whitened_readout(weight, basis_of(torch.eye(d_out, dtype=torch.float64), random_psd(d_in, 6, decay=0.5)))
    assert (other.band_activations(x) - svd.band_activations(x)).abs().max() > 1e-2


def test_whitened_basis_is_the_activation_eigenbasis_when_w_and_g_are_identity():
    a = random_psd(10, 7)
    readout = whitened_readout(torch.eye(10, dtype=torch.float64), basis_of(torch.eye(10, dtype=torch.float64), a))
    eig = decompose(a)
    torch.testing.assert_close(readout.scores, eig.eigenvalues.sqrt(), rtol=1e-10, atol=1e-12)
    x = torch.randn(20, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    expected = svd_readout(torch.diag(eig.eigenvalues.sqrt()) @ eig.eigenvectors.T)  # its right singular vectors are U_A
    torch.testing.assert_close(readout.band_activations(x), expected.band_activations(x), rtol=1e-8, atol=1e-10)


class OneLayer(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64)
        self.layer.weight.data.copy_(weight)

    def forward(self, inputs):
        return self.layer(inputs)


def hand_built_case(memorized_in_low_curvature: bool):
    """A layer whose clean inputs have covariance A; memorized inputs live in A's 4 lowest directions."""
    d_in, d_out, n = 16, 12, 4000
    generator = torch.Generator().manual_seed(9)
    a, g = random_psd(d_in, 10, decay=0.7), random_psd(d_out, 11, decay=0.6)
    eig = decompose(a)
    weight = torch.randn(d_out, d_in, dtype=torch.float64, generator=generator)
    clean = torch.randn(n, d_in, dtype=torch.float64, generator=generator) * eig.eigenvalues.sqrt() @ eig.eigenvectors.T
    if memorized_in_low_curvature:
        memorized = torch.randn(n, 4, dtype=torch.float64, generator=generator) @ eig.eigenvectors[:, -4:].T
    else:  # negative control: memorized inputs drawn like clean ones
        memorized = torch.randn(n, d_in, dtype=torch.float64, generator=generator) * eig.eigenvalues.sqrt() @ eig.eigenvectors.T
    model = OneLayer(weight)

    def batches(x):
        return lambda: [({"inputs": x[k: k + 500]}, torch.ones(len(x[k: k + 500]), dtype=torch.bool)) for k in range(0, n, 500)]

    result = band_analysis(model, ["layer"], {"layer": basis_of(g, a)}, {"memorized": batches(memorized), "clean": batches(clean)})
    return result["modules"]["layer"]["bases"], basis_of(g, a)


def test_hand_built_case_memorized_inputs_in_low_curvature_directions_show_ratio_above_one_there():
    bases, basis = hand_built_case(True)
    for kind in ("whitened", "pairs"):
        ratios = bases[kind]["ratio"]["memorized"]
        assert ratios[-1] > 1 and ratios[0] < 1, (kind, ratios)
        assert bases[kind]["separation"]["memorized"] > 1, (kind, bases[kind]["separation"])
    # exact answer in the paper's pair basis: the top-10% pairs use only A eigenvectors the memorized inputs never touch
    top_columns = np.nonzero(pairs_readout(basis).band_weights[0].numpy())[0]
    assert top_columns.max() < 16 - 4
    assert bases["pairs"]["ratio"]["memorized"][0] == pytest.approx(0.0, abs=1e-12)
    # SVD of a random W knows nothing about A: far weaker separation
    assert abs(bases["svd"]["separation"]["memorized"]) < 0.5 * bases["whitened"]["separation"]["memorized"]


def test_hand_built_negative_control_memorized_like_clean_gives_ratios_near_one():
    bases, _ = hand_built_case(False)
    for kind in ("whitened", "pairs", "svd"):
        ratios = bases[kind]["ratio"]["memorized"]
        assert all(abs(np.log(r)) < 0.06 for r in ratios), (kind, ratios)


def test_streamed_band_means_equal_brute_force_on_a_padded_lm(tiny_lm):
    model, _ = tiny_lm("llama")
    modules = ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.down_proj"]
    bases = {}
    for k, name in enumerate(modules):
        d_out, d_in = get_weight(dict(model.named_modules())[name]).shape
        bases[name] = basis_of(random_psd(d_out, 20 + k), random_psd(d_in, 30 + k))
    vocab = model.config.vocab_size
    memorized = [TokenSequence(ids, 3) for ids in random_sequences([9, 5, 12], vocab, seed=1)]
    clean = [TokenSequence(ids) for ids in random_sequences([16, 7, 11, 4], vocab, seed=2)]
    sources = {"memorized": lambda: text_batches(memorized, "continuation", 2, 0), "clean": lambda: text_batches(clean, "next_token", 3, 0)}
    result = band_analysis(model, modules, bases, sources)
    assert result["counted_positions"] == {"memorized": (9 - 4) + (5 - 4) + (12 - 4), "clean": 15 + 6 + 10 + 3}
    for name in modules:
        for kind in ("whitened", "pairs", "svd"):
            from unmemorize.analysis import build_readout

            readout = build_readout(kind, get_weight(dict(model.named_modules())[name]), bases[name])
            for source, sequences, positions in (("memorized", memorized, "continuation"), ("clean", clean, "next_token")):
                rows = []
                for sequence in sequences:  # one unpadded sequence at a time
                    with capture_module_io(model, [name]) as captured:
                        model(input_ids=torch.tensor([sequence.ids]))
                    rows.append(captured[name][0][0, sequence.counted(positions)].detach())
                expected = readout.band_activations(torch.cat(rows)).mean(0)
                actual = torch.tensor(result["modules"][name]["bases"][kind]["mean"][source], dtype=torch.float64)
                torch.testing.assert_close(actual, expected, rtol=1e-7, atol=1e-12)  # rotary tables are float32


def test_vit_cls_band_means_equal_brute_force():
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    model = ViTForImageClassification(config).double().eval()
    names = [n for n, _ in model.named_modules() if n.endswith(("intermediate.dense", "mlp.fc1"))]
    images = torch.randn(10, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    clean = torch.randn(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    result = band_analysis(model, names, {}, {"noisy": lambda: image_batches(images, 5, "cls", 4),
                                              "clean": lambda: image_batches(clean, 5, "cls", 4)}, basis_names=["svd"])
    assert result["counted_positions"] == {"noisy": 10, "clean": 6}
    for name in names:
        readout = svd_readout(get_weight(dict(model.named_modules())[name]))
        with capture_module_io(model, [name]) as captured:
            model(pixel_values=images)
        expected = readout.band_activations(captured[name][0][:, 0].detach()).mean(0)
        torch.testing.assert_close(torch.tensor(result["modules"][name]["bases"]["svd"]["mean"]["noisy"], dtype=torch.float64),
                                   expected, rtol=1e-9, atol=1e-12)


def test_a_source_against_itself_has_ratio_one_and_zero_separation(tiny_lm):
    model, _ = tiny_lm("llama")
    sequences = [TokenSequence(ids) for ids in random_sequences([10, 8], model.config.vocab_size)]
    batches = lambda: text_batches(sequences, "next_token", 2, 0)  # noqa: E731
    result = band_analysis(model, ["model.layers.0.mlp.up_proj"], {}, {"same": batches, "clean": batches}, basis_names=["svd"])
    entry = result["modules"]["model.layers.0.mlp.up_proj"]["bases"]["svd"]
    assert entry["ratio"]["same"] == pytest.approx([1.0] * 4, abs=1e-12) and entry["separation"]["same"] == pytest.approx(0, abs=1e-12)


def test_rank_correlation_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 5, 12).astype(float), rng.normal(size=12)
        assert rank_correlation(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_text_sources_group_tasks_and_mark_continuations(tmp_path):
    from unmemorize.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        '{"prefix_ids": [5, 6, 7], "suffix_ids": [8, 9]}',
        '{"task": "qa", "category": "closed_book_qa", "prompt": "the cat", "answer": "dog"}',
        '{"task": "mc", "category": "logic", "prompt": "the", "choices": ["cat", "dog"], "label": 1}',
        '{"input_ids": [4, 5, 6, 7]}',
    ]) + "\n")
    groups = load_text_source(path, tokenizer)
    assert [s.ids for s in groups[None]] == [[5, 6, 7, 8, 9], [4, 5, 6, 7]]
    assert groups[None][0].counted("continuation") == [2, 3] and groups[None][0].counted("next_token") == [0, 1, 2, 3]
    the_cat = tokenizer("the cat", add_special_tokens=False)["input_ids"]
    assert groups["qa"][0].ids == the_cat + tokenizer(" dog", add_special_tokens=False)["input_ids"]
    assert groups["qa"][0].continuation_start == len(the_cat) - 1
    assert groups["mc"][0].ids[-1] == tokenizer(" dog", add_special_tokens=False)["input_ids"][-1]


def test_auc_is_the_mann_whitney_probability():
    assert auc([3.0, 4.0], [1.0, 2.0]) == 1.0 and auc([1.0], [2.0]) == 0.0 and auc([1.0, 2.0], [2.0]) == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(size=7), rng.normal(size=9)
    brute = np.mean([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos])
    assert auc(pos, neg) == pytest.approx(brute)


def test_example_retention_matches_a_hand_computation():
    """Two modules, one task of 5 rows (4 correct before, 2 of them lost), loading by the definition."""
    from unmemorize.analysis.retention import example_retention, per_task_retention

    clean = {"m1": [2.0, 1.0, 1.0, 0.5], "m2": [4.0, 1.0, 1.0, 1.0]}
    rows = {"m1": torch.tensor([[2.0, 1, 1, 1.0], [1.0, 1, 1, 0.5], [2.0, 1, 1, 0.25], [4.0, 1, 1, 2.0], [2.0, 1, 1, 0.5]], dtype=torch.float64),
            "m2": torch.tensor([[4.0, 1, 1, 2.0], [4.0, 1, 1, 1.0], [8.0, 1, 1, 1.0], [4.0, 1, 1, 4.0], [4.0, 1, 1, 1.0]], dtype=torch.float64)}
    result = {"reference": "clean", "modules": {m: {"bases": {"svd": {"mean": {"clean": clean[m]}}}} for m in clean},
              "per_sequence": {"qa": {m: {"svd": rows[m]} for m in clean}}}
    groups = {"qa": [(k, TokenSequence([1, 2])) for k in range(5)]}
    before, after = [True, True, True, True, False], [False, True, True, False, False]
    examples = example_retention(result, groups, before, after)
    loading = [np.mean([np.log(float(rows[m][k, -1]) / clean[m][-1]) - np.log(float(rows[m][k, 0]) / clean[m][0]) for m in clean])
               for k in range(5)]
    lost, kept = [loading[0], loading[3]], [loading[1], loading[2]]
    task = examples["svd"]["tasks"]["qa"]
    assert (task["correct_before"], task["lost"], task["kept"]) == (4, 2, 2)
    assert task["mean_loading_lost"] == pytest.approx(np.mean(lost)) and task["mean_loading_kept"] == pytest.approx(np.mean(kept))
    assert task["auc"] == pytest.approx(np.mean([[float(a > b) + 0.5 * float(a == b) for b in kept] for a in lost]))
    assert examples["svd"]["pooled"]["auc"] == task["auc"]
    assert per_task_retention(groups, before, after) == {"qa": 0.5}
    # a task the base model has not learned (< 50%) is skipped
    assert example_retention(result, groups, [True, False, False, False, False], after)["svd"]["tasks"] == {}
    # a row with no counted position (NaN band means) is left out, not scored
    result["per_sequence"]["qa"]["m1"]["svd"][1] = float("nan")
    task = example_retention(result, groups, before, after)["svd"]["tasks"]["qa"]
    assert (task["lost"], task["kept"]) == (2, 1) and task["auc"] == pytest.approx(
        np.mean([[float(a > loading[2]) + 0.5 * float(a == loading[2])] for a in lost]))
    assert task["left_out"] == 1 and task["correct_before"] == 4
    # a kept row whose top-10% activation is exactly 0 leans infinitely on low curvature: +inf, scored, not left out
    result["per_sequence"]["qa"]["m1"]["svd"][2, 0] = 0.0
    examples = example_retention(result, groups, before, after)["svd"]
    task = examples["tasks"]["qa"]
    assert (task["lost"], task["kept"], task["left_out"]) == (2, 1, 1) and task["mean_loading_kept"] == float("inf")
    assert task["auc"] == 0.0 and examples["pooled"]["left_out"] == 1  # both lost rows load less than +inf


def test_auc_standard_error_matches_hanley_mcneil_and_shrinks_with_n():
    from unmemorize.analysis.run import auc_standard_error

    # Hanley & McNeil (1982), Table 1 style check: A = 0.5, n = 50 each -> sqrt((0.25 + 49 (1/3 - 1/4) * 2) / 2500)
    assert auc_standard_error(0.5, 50, 50) == pytest.approx(np.sqrt((0.25 + 49 * (1 / 3 - 0.25) * 2) / 2500))
    assert auc_standard_error(0.7, 200, 200) < auc_standard_error(0.7, 20, 20)
    assert np.isnan(auc_standard_error(0.7, 0, 5))


def test_modules_per_pass_gives_the_same_result(tiny_lm):
    model, _ = tiny_lm("llama")
    modules = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.up_proj"]
    sequences = [TokenSequence(ids) for ids in random_sequences([10, 8, 6], model.config.vocab_size)]
    other = [TokenSequence(ids) for ids in random_sequences([7, 9], model.config.vocab_size, seed=3)]
    sources = {"clean": lambda: text_batches(sequences, "next_token", 2, 0), "other": lambda: text_batches(other, "next_token", 2, 0)}
    together = band_analysis(model, modules, {}, sources, basis_names=["svd"], per_sequence=["other"])
    split = band_analysis(model, modules, {}, sources, basis_names=["svd"], per_sequence=["other"], modules_per_pass=1)
    assert together["modules"] == split["modules"] and together["counted_positions"] == split["counted_positions"]
    for name in modules:
        assert torch.equal(together["per_sequence"]["other"][name]["svd"], split["per_sequence"]["other"][name]["svd"])


def matrix_power(matrix, power):
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0) ** power) @ vectors.T


@pytest.mark.parametrize("shape", [(9, 6), (5, 8)])
def test_whitened_readout_equals_the_svd_of_the_explicitly_whitened_weight(shape):
    """Rows A^-1/2 q_k / |A^-1/2 q_k| from the SVD of M = G^1/2 W A^1/2 built with matrix square roots."""
    d_out, d_in = shape
    a, g = random_psd(d_in, 12, decay=0.6), random_psd(d_out, 13, decay=0.7)
    weight = torch.randn(d_out, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    _, singular, vh = torch.linalg.svd(matrix_power(g, 0.5) @ weight @ matrix_power(a, 0.5), full_matrices=False)
    rows = vh @ matrix_power(a, -0.5)
    rows = rows / rows.norm(dim=1, keepdim=True)
    readout = whitened_readout(weight, basis_of(g, a))
    torch.testing.assert_close(readout.scores, singular, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(readout.directions.abs(), rows.abs(), rtol=0, atol=1e-8)


def test_wide_layers_bands_ignore_the_null_space_of_w():
    """d_in > d_out: adding any input W cannot see changes no band activation (the bands do not
    depend on an arbitrary basis of that null space)."""
    d_out, d_in = 4, 10
    weight = torch.randn(d_out, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    basis = basis_of(random_psd(d_out, 16), random_psd(d_in, 17, decay=0.7))
    null = torch.linalg.svd(weight, full_matrices=True)[2][d_out:]  # (6, 10), W @ null.T = 0
    x = torch.randn(30, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    shifted = x + torch.randn(30, d_in - d_out, dtype=torch.float64, generator=torch.Generator().manual_seed(19)) @ null * 5
    for readout in (svd_readout(weight), whitened_readout(weight, basis)):
        assert readout.directions.shape == (d_out, d_in)
        torch.testing.assert_close(readout.band_activations(shifted), readout.band_activations(x), rtol=1e-9, atol=1e-10)
    pairs = pairs_readout(basis)  # A's full eigenbasis: the null-space shift is seen (negative control)
    assert (pairs.band_activations(shifted) - pairs.band_activations(x)).abs().max() > 1e-2


def test_auc_standard_error_on_an_asymmetric_case():
    from unmemorize.analysis.run import auc_standard_error

    a, n_pos, n_neg = 0.8, 10, 100
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    expected = np.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))
    assert auc_standard_error(a, n_pos, n_neg) == pytest.approx(expected)
    assert auc_standard_error(a, n_pos, n_neg) != pytest.approx(auc_standard_error(a, n_neg, n_pos))  # roles matter


def test_per_sequence_means_equal_brute_force_and_follow_the_sequence_order(tiny_lm):
    model, _ = tiny_lm("llama")
    name = "model.layers.1.mlp.up_proj"
    sequences = [TokenSequence(ids, 2) for ids in random_sequences([7, 12, 5, 9, 3], model.config.vocab_size, seed=4)]
    sequences.append(TokenSequence([5, 6, 7], 5))  # continuation beyond its end: no counted position
    result = band_analysis(model, [name], {}, {"clean": lambda: text_batches(sequences, "next_token", 4, 0),
                                               "task": lambda: text_batches(sequences, "continuation", 4, 0, skip_first=3)},
                           basis_names=["svd"], per_sequence=["task"])
    per_row = result["per_sequence"]["task"][name]["svd"]
    readout = svd_readout(get_weight(dict(model.named_modules())[name]))
    for k, sequence in enumerate(sequences):
        counted = sequence.counted("continuation", 3)
        if not counted:
            assert torch.isnan(per_row[k]).all()
            continue
        with capture_module_io(model, [name]) as captured:
            model(input_ids=torch.tensor([sequence.ids]))
        expected = readout.band_activations(captured[name][0][0, counted].detach()).mean(0)
        torch.testing.assert_close(per_row[k], expected, rtol=1e-7, atol=1e-12)
    assert result["counted_positions"]["task"] == sum(len(s.counted("continuation", 3)) for s in sequences)
    assert sequences[0].counted("continuation", 3) == [3, 4, 5] and sequences[4].counted("continuation", 3) == []


def test_readout_memory_budget_splits_modules_into_passes_with_the_same_result(tiny_lm):
    from unmemorize.analysis.run import _module_groups

    model, _ = tiny_lm("llama")
    modules = [n for n, _ in model.named_modules() if n.endswith("_proj") and ".mlp." in n]
    named = model_matrices(model)
    one_module = 3 * 32 * 32 * 8 / 2**30  # gate/up: three (32, 32) float64 read-outs
    assert _module_groups(named, modules, ["whitened", "pairs", "svd"], 0, 100.0, torch.float64) == [modules]
    groups = _module_groups(named, modules, ["whitened", "pairs", "svd"], 0, 1.5 * one_module, torch.float64)
    assert [m for g in groups for m in g] == modules and len(groups) == len(modules)
    sequences = [TokenSequence(ids) for ids in random_sequences([10, 6], model.config.vocab_size)]
    sources = {"clean": lambda: text_batches(sequences, "next_token", 2, 0)}
    assert band_analysis(model, modules, {}, sources, basis_names=["svd"])["modules"] == \
        band_analysis(model, modules, {}, sources, basis_names=["svd"], readout_memory_gb=1e-9)["modules"]


def exact_zero_case():
    """Two layers on the same inputs. ``layer`` has a diagonal A, so its pair-basis directions are
    exact unit vectors, and the memorized inputs are exactly 0 on A's 12 highest directions: their
    top-10% pair band activation is exactly 0. ``twin`` has a rotated A (finite separations).
    Source ``empty`` has no counted position (its separations are undefined)."""

    class TwoLayers(nn.Module):
        def __init__(self, first, second):
            super().__init__()
            self.layer, self.twin = OneLayer(first).layer, OneLayer(second).layer

        def forward(self, inputs):
            return self.layer(inputs) + self.twin(inputs)

    d_in, d_out, n = 16, 12, 400
    generator = torch.Generator().manual_seed(9)
    diagonal = torch.diag(0.7 ** torch.arange(d_in, dtype=torch.float64))
    g = random_psd(d_out, 11, decay=0.6)
    model = TwoLayers(*(torch.randn(d_out, d_in, dtype=torch.float64, generator=generator) for _ in range(2)))
    clean = torch.randn(n, d_in, dtype=torch.float64, generator=generator) * diagonal.diagonal().sqrt()
    memorized = torch.zeros(n, d_in, dtype=torch.float64)
    memorized[:, -4:] = torch.randn(n, 4, dtype=torch.float64, generator=generator)

    def batches(x, counted=True):
        return lambda: [({"inputs": x}, torch.full((len(x),), counted))]

    bases = {"layer": basis_of(g, diagonal), "twin": basis_of(g, random_psd(d_in, 10, decay=0.7))}
    return band_analysis(model, ["layer", "twin"], bases, {"memorized": batches(memorized), "empty": batches(clean, False),
                                                           "clean": batches(clean)})


def test_a_top10_ratio_of_exactly_zero_is_plus_infinity_and_counted_not_dropped():
    from unmemorize.analysis import separation_score, summarize

    result = exact_zero_case()
    pairs = result["modules"]["layer"]["bases"]["pairs"]
    assert pairs["ratio"]["memorized"][0] == 0.0 and pairs["ratio"]["memorized"][-1] > 1
    assert pairs["separation"]["memorized"] == float("inf")  # the strongest lean, not a missing value
    twin = result["modules"]["twin"]["bases"]["pairs"]["separation"]["memorized"]
    assert np.isfinite(twin)
    summary = summarize(result, "memorized")["pairs"]
    assert (summary["modules"], summary["in_mean"], summary["plus_inf"], summary["left_out"]) == (2, 1, 1, 0)
    assert summary["mean_separation"] == pytest.approx(twin)
    # undefined separations: a NaN ratio, or 0/0 in both bands; the mirror of the +inf case is -inf
    assert np.isnan(separation_score([float("nan"), 1, 1, 2])) and np.isnan(separation_score([0.0, 1, 1, 0.0]))
    assert separation_score([2.0, 1, 1, 0.0]) == float("-inf")


def test_undefined_separations_are_counted_as_left_out_with_their_reason():
    from unmemorize.analysis import summarize
    from unmemorize.analysis.run import LEFT_OUT_REASON, separation_mean

    counts = separation_mean([1.0, 3.0, float("inf"), float("nan"), float("-inf"), None])
    assert counts["mean"] == 2.0 and counts["max"] == 3.0
    assert (counts["in_mean"], counts["plus_inf"], counts["minus_inf"], counts["left_out"]) == (2, 1, 1, 2)
    summary = summarize(exact_zero_case(), "empty")
    for kind, s in summary.items():  # no counted position: every module's separation is undefined
        assert s["modules"] == 2 and s["left_out"] == 2 and s["in_mean"] == 0 and np.isnan(s["mean_separation"]), kind
        assert s["left_out_reason"] == LEFT_OUT_REASON


def test_analysis_files_are_strict_json_and_report_what_the_means_leave_out(tmp_path):
    """analysis.json parses with a strict parser (+inf and NaN become null, the summary counts
    them); analysis.md has the +inf and left-out columns. Negative control: the same content
    written with plain json.dumps is not strict JSON."""
    import json

    from unmemorize.analysis.report import write_analysis
    from unmemorize.jsonio import strict_loads

    result = exact_zero_case()
    extra = write_analysis(result, tmp_path, ["memorized", "empty"])
    saved = strict_loads((tmp_path / "analysis.json").read_text())
    assert saved["modules"]["layer"]["bases"]["pairs"]["separation"]["memorized"] is None
    assert saved["summary"]["memorized"]["pairs"]["plus_inf"] == 1 and saved["summary"]["empty"]["svd"]["left_out"] == 2
    assert saved["summary"]["empty"]["svd"]["mean_separation"] is None
    text = (tmp_path / "analysis.md").read_text()
    assert "| +inf (top-10% ratio 0) | -inf | left out (undefined) |" in text
    assert "| memorized / clean | pairs | 2 |" in text and "| 1 | 0 | 0 |" in text  # pairs: 1 +inf, 0 -inf, 0 left out
    assert "| empty / clean | svd | 2 |" in text and "| 0 | 0 | 2 |" in text
    assert "(1 +inf)" in text and "(2 left out)" in text  # the loading table says it too
    with pytest.raises(ValueError, match="not strict JSON"):
        strict_loads(json.dumps({**result, **extra}))
