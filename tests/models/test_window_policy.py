from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mixaq_mmdet.models.layers.window_policy import (WINDOW_ORDERS, WINDOW_SCORES, WindowOrders,
                                                     WindowPolicy, check_ratios, group_sizes,
                                                     normalize_ratios, order_windows, split_groups,
                                                     token_scores, window_scores)

WS = 7


def _image(hot_tokens, H=14, W=21, C=4, background=0.1, hot=5.0):
    """(H*W, C) stage input: a constant background and a few hot tokens."""
    x = torch.full((H, W, C), background)
    for r, c in hot_tokens:
        x[r, c] = hot
    return x.view(H * W, C)


def _reference_window_scores(score_map, ws, shift):
    """Window scores by explicit coordinates, independent of view/permute:
    window (i, j) of the padded, rolled map reads original token
    ((i * ws + u + shift) % Hp, (j * ws + v + shift) % Wp)."""
    B, H, W = score_map.shape
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    scores, has_tokens = [], []
    for i in range(Hp // ws):
        for j in range(Wp // ws):
            total, real = torch.zeros(B), False
            for u in range(ws):
                for v in range(ws):
                    r = (i * ws + u + shift) % Hp
                    c = (j * ws + v + shift) % Wp
                    if r < H and c < W:
                        total += score_map[:, r, c]**2
                        real = True
            scores.append(total.sqrt())
            has_tokens.append(real)
    return torch.stack(scores, 1), torch.tensor(has_tokens).expand(B, -1)


# Windows of a 14x21 map with ws=7 (mmdet row-major order):
#   0 1 2
#   3 4 5
# Image 0: 4 hot tokens in window 4, 2 hot tokens in window 2.
#   Rolled by -3: (8..9, 8..9) -> (5..6, 5..6), window 0;
#                 (1, 15..16) -> (12, 12..13), window 4.
# Image 1: 4 hot tokens in window 5, 2 hot tokens in window 1.
#   Rolled by -3: (10..11, 17..18) -> (7..8, 14..15), window 5;
#                 (0, 8..9) -> (11, 5..6), window 3.
HOT = [
    [(8, 8), (8, 9), (9, 8), (9, 9), (1, 15), (1, 16)],
    [(10, 17), (10, 18), (11, 17), (11, 18), (0, 8), (0, 9)],
]


@pytest.mark.parametrize('score', WINDOW_SCORES)
def test_hot_windows_are_high_in_regular_and_shifted_partitions(score):
    x = torch.stack([_image(h) for h in HOT])
    orders = WindowPolicy(WS, score=score).rank(x, (14, 21), shift_size=3)
    assert orders.num_windows == 6
    # nW=6: n_prune=1, n_low=3, n_high=2.
    high, low, pruned = split_groups(orders.select(False), 0.5, 1 / 6)
    assert high.tolist() == [[4, 2], [5, 1]]
    assert low.shape == (2, 3) and pruned.shape == (2, 1)
    high, _, _ = split_groups(orders.select(True), 0.5, 1 / 6)
    assert high.tolist() == [[0, 4], [5, 3]]


def test_no_shift_has_no_shifted_order():
    x = torch.stack([_image(HOT[0])])
    orders = WindowPolicy(WS).rank(x, (14, 21), shift_size=0)
    assert orders.shifted is None
    assert torch.equal(orders.select(False), orders.regular)
    with pytest.raises(ValueError, match='shift_size=0'):
        orders.select(True)


@pytest.mark.parametrize('shift', [0, 3])
def test_window_geometry_matches_coordinate_reference(shift):
    score_map = torch.rand(2, 10, 17, generator=torch.Generator().manual_seed(0))
    scores, has_tokens = window_scores(score_map, WS, shift)
    ref_scores, ref_has_tokens = _reference_window_scores(score_map, WS, shift)
    assert scores.shape == (2, 6)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(has_tokens, ref_has_tokens)


@pytest.mark.parametrize('shift', [0, 3])
def test_window_scores_match_mmdet_shift_window_msa(shift):
    swin = pytest.importorskip('mmdet.models.backbones.swin')
    H, W, C = 10, 17, 3
    x = torch.randn(2, H * W, C, generator=torch.Generator().manual_seed(0))
    # ShiftWindowMSA.forward: pad the features, roll, window_partition.
    feats = F.pad(x.view(2, H, W, C), (0, 0, 0, 21 - W, 0, 14 - H))
    feats = torch.roll(feats, shifts=(-shift, -shift), dims=(1, 2))
    windows = swin.ShiftWindowMSA.window_partition(SimpleNamespace(window_size=WS),
                                                   feats).view(2, 6, WS * WS, C)
    expected = windows.abs().mean(-1).norm(dim=-1)
    scores, _ = window_scores(token_scores(x, (H, W)), WS, shift)
    torch.testing.assert_close(scores, expected)


def test_partly_padded_windows_rank_last_on_non_multiple_map():
    # 10x17 pads to 14x21: windows 0, 1 are full; 2, 3, 4 hold 21 real tokens,
    # 5 only 9. Magnitudes grow with the column, so padded windows with larger
    # tokens (2, 4) still score below the full ones.
    H, W = 10, 17
    magnitude = 1 + 0.01 * torch.arange(W).float()
    x = magnitude.expand(H, W).reshape(1, H * W, 1).repeat(1, 1, 3)
    orders = WindowPolicy(WS).rank(x, (H, W), shift_size=3)
    assert orders.regular.tolist() == [[1, 0, 2, 4, 3, 5]]
    assert orders.shifted.shape == (1, 6)
    assert orders.shifted[0, -1].item() == 5


@pytest.mark.parametrize('order', WINDOW_ORDERS)
def test_padding_only_windows_come_last_in_every_order(order):
    scores = torch.tensor([[0.0, 5.0, 1.0, 0.0, 3.0], [2.0, 0.0, 4.0, 1.0, 0.0]])
    has_tokens = torch.tensor([[False, True, True, True, False], [True, False, True, True, True]])
    result = order_windows(scores, has_tokens, order, torch.Generator().manual_seed(0))
    assert sorted(result[0, -2:].tolist()) == [0, 4]
    assert result[1, -1].item() == 1
    if order == 'importance':
        assert result.tolist() == [[1, 2, 3, 4, 0], [2, 0, 3, 4, 1]]
    if order == 'reverse':
        assert result.tolist() == [[3, 2, 1, 0, 4], [4, 3, 0, 2, 1]]


def _random_input(batch=2, H=14, W=21, C=8, seed=0):
    return torch.randn(batch, H * W, C, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('score', WINDOW_SCORES)
def test_reverse_is_importance_reversed(score):
    x = _random_input()
    important = WindowPolicy(WS, score=score).rank(x, (14, 21), 3)
    reverse = WindowPolicy(WS, score=score, order='reverse').rank(x, (14, 21), 3)
    assert torch.equal(reverse.regular, important.regular.flip(1))
    assert torch.equal(reverse.shifted, important.shifted.flip(1))


def test_random_order_is_a_reproducible_permutation_per_image():
    # Four copies of one image: importance orders are equal across the batch.
    x = _random_input(batch=1).repeat(4, 1, 1)
    important = WindowPolicy(WS).rank(x, (14, 21), 3)
    assert (important.regular == important.regular[:1]).all()
    policy = WindowPolicy(WS, order='random', seed=0)
    first = policy.rank(x, (14, 21), 3)
    torch.rand(100)  # global RNG state must not matter
    WindowPolicy(WS, order='random', seed=7).rank(x, (14, 21), 3)
    again = policy.rank(x, (14, 21), 3)
    for perm in (first.regular, first.shifted):
        assert torch.equal(perm.sort(dim=1).values, torch.arange(6).expand(4, -1))
        assert not (perm == perm[:1]).all(), 'same order for every image'
        assert not torch.equal(perm, important.regular)
    assert not torch.equal(first.regular, first.shifted)
    assert torch.equal(first.regular, again.regular)
    assert torch.equal(first.shifted, again.shifted)
    other_seed = WindowPolicy(WS, order='random', seed=1).rank(x, (14, 21), 3)
    assert not torch.equal(first.regular, other_seed.regular)


def test_contrast_finds_a_dark_object_that_l2_ranks_last():
    # A LayerNorm-like stage input: constant non-zero background, and an
    # "object" of zero-magnitude tokens filling window 4 (rows 7-13, 7-13).
    x = torch.ones(14, 21, 4)
    x[7:14, 7:14] = 0
    x = x.view(1, 14 * 21, 4)
    l2 = WindowPolicy(WS, score='l2').rank(x, (14, 21))
    contrast = WindowPolicy(WS, score='contrast').rank(x, (14, 21))
    assert l2.regular[0, -1].item() == 4
    assert contrast.regular[0, 0].item() == 4


def test_token_scores_values():
    x = torch.tensor([[[3.0, -1.0], [1.0, 1.0], [-1.0, 3.0], [1.0, 1.0]]])
    l2 = token_scores(x, (2, 2), 'l2')
    torch.testing.assert_close(l2, torch.tensor([[[2.0, 1.0], [2.0, 1.0]]]))
    # Mean token (1, 1): distances (2, -2), (0, 0), (-2, 2), (0, 0).
    contrast = token_scores(x, (2, 2), 'contrast')
    d = 8**0.5
    torch.testing.assert_close(contrast, torch.tensor([[[d, 0.0], [d, 0.0]]]))


@pytest.mark.parametrize('num_windows, low, prune, sizes', [
    (10, 0.3, 0.2, (5, 3, 2)),
    (7, 0.5, 0.5, (1, 3, 3)),
    (6, 0.5, 0.5, (0, 3, 3)),
    (10, 0.25, 0.0, (8, 2, 0)),
    (100, 0.29, 0.0, (71, 29, 0)),
    (1, 0.5, 0.4, (1, 0, 0)),
    (1, 1.0, 0.0, (0, 1, 0)),
    (1, 0.0, 1.0, (0, 0, 1)),
    (4, 0.0, 0.0, (4, 0, 0)),
])
def test_group_sizes_floor_rule(num_windows, low, prune, sizes):
    assert group_sizes(num_windows, low, prune) == sizes


def test_split_groups_takes_consecutive_slices_of_the_order():
    order = torch.tensor([[3, 0, 6, 1, 5, 2, 4], [6, 5, 4, 3, 2, 1, 0]])
    high, low, pruned = split_groups(order, 0.3, 0.3)  # floor(2.1) = 2
    assert high.tolist() == [[3, 0, 6], [6, 5, 4]]
    assert low.tolist() == [[1, 5], [3, 2]]
    assert pruned.tolist() == [[2, 4], [1, 0]]
    high, low, pruned = split_groups(order[:, :1], 0.5, 0.0)
    assert high.tolist() == [[3], [6]]
    assert low.shape == (2, 0) and pruned.shape == (2, 0)


def test_normalize_ratios_accepts_float_or_one_value_per_pair():
    assert normalize_ratios(0.3, 6, 'low_bit_ratios') == [0.3] * 6
    assert normalize_ratios(1, 2, 'prune_ratios') == [1.0, 1.0]
    assert normalize_ratios((0, 0.5, 1), 3, 'low_bit_ratios') == [0, 0.5, 1]
    check_ratios([0.7, 0.5], [0.3, 0.0])


@pytest.mark.parametrize('value, exc, pattern', [
    ([0.1] * 5, ValueError, r'low_bit_ratios has 5 values .*a float or a list of 6 values '
     r'\(one per pair of consecutive blocks\)'),
    ([0.1, 0.2, 1.5, 0, 0, 0
      ], ValueError, r'low_bit_ratios\[2\] = 1.5 is outside \[0, 1\]; expected a float or a '
     r'list of 6 values'),
    (-0.1, ValueError, r'low_bit_ratios = -0.1 is outside \[0, 1\]'),
    (float('nan'), ValueError, r'low_bit_ratios = nan is outside \[0, 1\]'),
    ('0.3', TypeError, r"low_bit_ratios = '0.3' \(str\) is not valid; "
     r'expected a float or a list of 6 values'),
    (None, TypeError, r'low_bit_ratios = None'),
    (True, TypeError, r'low_bit_ratios = True \(bool\)'),
    ([0.1, 'a', 0, 0, 0, 0
      ], TypeError, r"low_bit_ratios\[1\] must be a number in \[0, 1\], got 'a'"),
])
def test_normalize_ratios_errors(value, exc, pattern):
    with pytest.raises(exc, match=pattern):
        normalize_ratios(value, 6, 'low_bit_ratios')


def test_check_ratios_errors():
    with pytest.raises(
            ValueError,
            match=r'low_bit_ratios\[1\] \+ '
            r'prune_ratios\[1\] = 0.8 \+ 0.3 = 1.1 > 1 for pair 1'):
        check_ratios([0.1, 0.8], [0.1, 0.3])
    with pytest.raises(
            ValueError, match='low_bit_ratios has 2 values but '
            'prune_ratios has 3'):
        check_ratios([0.1, 0.1], [0.1, 0.1, 0.1])


@pytest.mark.parametrize('low, prune, exc, pattern', [
    (0.7, 0.5, ValueError, r'low_ratio \+ prune_ratio = 0.7 \+ 0.5 = 1.2 > 1'),
    (1.2, 0.0, ValueError, r'low_ratio = 1.2 is outside \[0, 1\]'),
    (0.0, -0.5, ValueError, r'prune_ratio = -0.5 is outside \[0, 1\]'),
    ('x', 0.0, TypeError, r"low_ratio must be a number in \[0, 1\], got 'x'"),
])
def test_split_groups_errors(low, prune, exc, pattern):
    with pytest.raises(exc, match=pattern):
        split_groups(torch.arange(6).view(1, 6), low, prune)


def test_name_and_shape_errors():
    with pytest.raises(
            ValueError, match=r"unknown score 'l1'; expected one "
            r"of 'l2', 'contrast'"):
        WindowPolicy(WS, score='l1')
    with pytest.raises(
            ValueError,
            match=r"unknown order 'best'; expected one "
            r"of 'importance', 'random', 'reverse'"):
        WindowPolicy(WS, order='best')
    with pytest.raises(ValueError, match='window_size must be a positive int'):
        WindowPolicy(0)
    with pytest.raises(ValueError, match=r"unknown order 'sorted'"):
        order_windows(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), 'sorted')
    with pytest.raises(ValueError, match=r'shape \(B, H\*W, C\)'):
        token_scores(torch.zeros(1, 10, 2), (3, 4))
    with pytest.raises(
            ValueError, match=r'shift_size must be in \[0, '
            r'window_size=7\), got 7'):
        WindowPolicy(WS).rank(torch.zeros(1, 49, 2), (7, 7), shift_size=7)
    with pytest.raises(ValueError, match='got -3'):
        WindowPolicy(WS).rank(torch.zeros(1, 49, 2), (7, 7), shift_size=-3)


def test_tiny_input_single_window():
    x = torch.randn(2, 9, 4)  # 3x3 < ws: one padded window
    orders = WindowPolicy(WS).rank(x, (3, 3), shift_size=3)
    assert orders.regular.tolist() == [[0], [0]]
    assert orders.shifted.tolist() == [[0], [0]]
    assert isinstance(orders, WindowOrders)
    high, low, pruned = split_groups(orders.regular, 0.8, 0.1)
    assert high.shape == (2, 1) and low.shape == (2, 0)
    assert pruned.shape == (2, 0)
