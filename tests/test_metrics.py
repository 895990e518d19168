"""Metrics checked against numbers computed by hand."""

import json
import math

import pytest
import torch

from fewseg.metrics import BinaryStats, IoUAccumulator, binary_stats


def masks(*rows):
    """[N,1,1,W] float tensor from rows of 0/1 (one row per image)."""
    return torch.tensor(rows, dtype=torch.float32)[:, None, None, :]


def stats(pred_rows, target_rows, ignore_rows=None):
    ignore = masks(*ignore_rows).bool() if ignore_rows is not None else None
    return binary_stats(masks(*pred_rows).bool(), masks(*target_rows), ignore)


def test_binary_stats_single_image():
    s = stats([[1, 1, 0, 0]], [[1, 0, 1, 0]])
    assert isinstance(s, BinaryStats)
    assert [(x.dtype, tuple(x.shape)) for x in s] == [(torch.int64, (1,))] * 4
    # fg: inter {0}, union {0,1,2}; bg: inter {3}, union {1,2,3}
    assert [x.item() for x in s] == [1, 3, 1, 3]


def test_binary_stats_per_image_and_ignore():
    s = stats([[1, 1, 0, 0], [1, 1, 1, 0]], [[1, 0, 1, 0], [1, 1, 1, 1]],
              ignore_rows=[[0, 1, 0, 0], [0, 0, 0, 1]])
    # image 0 without pixel 1: fg inter {0}, union {0,2}; bg inter {3}, union {2,3}
    # image 1 without pixel 3: fg inter {0,1,2} = union; bg nothing left
    assert s.fg_inter.tolist() == [1, 3]
    assert s.fg_union.tolist() == [2, 3]
    assert s.bg_inter.tolist() == [1, 0]
    assert s.bg_union.tolist() == [2, 0]


def test_binary_stats_accepts_01_numbers_and_2d_images():
    pred = torch.tensor([[[[1, 0], [1, 1]]]])            # int 0/1, [1,1,2,2]
    target = torch.tensor([[[[1., 1.], [0., 1.]]]])
    s = binary_stats(pred, target)
    assert [x.item() for x in s] == [2, 4, 0, 2]
    assert [x.tolist() for x in binary_stats(pred.float(), target)] == [x.tolist() for x in s]
    assert [x.tolist() for x in binary_stats(pred.bool(), target.bool())] == [x.tolist() for x in s]


def test_binary_stats_all_ignored_counts_nothing():
    s = stats([[1, 0]], [[1, 1]], ignore_rows=[[1, 1]])
    assert [x.item() for x in s] == [0, 0, 0, 0]


def test_binary_stats_shape_mismatch():
    with pytest.raises(ValueError):
        binary_stats(torch.zeros(1, 1, 2, 2, dtype=torch.bool), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError):
        binary_stats(torch.zeros(1, 1, 2, 2, dtype=torch.bool), torch.zeros(1, 1, 2, 2),
                     torch.zeros(1, 1, 2, 1, dtype=torch.bool))


# Three episodes, two classes, all numbers worked out by hand:
#   E1 class 1: pred 1100 / target 1010           fg 1/3, bg 1/3, dice 2*1/(1+3) = 1/2
#   E2 class 1: pred 1000 / target 1000           fg 1/1, bg 3/3, dice 1
#   E3 class 2: images (1110 | 1111), (1000 | 1000)
#               fg (3+1)/(4+1) = 4/5, bg (0+3)/(1+3) = 3/4, dice 2*4/(4+5) = 8/9
EPISODES = [
    (1, ([[1, 1, 0, 0]], [[1, 0, 1, 0]])),
    (1, ([[1, 0, 0, 0]], [[1, 0, 0, 0]])),
    (2, ([[1, 1, 1, 0], [1, 0, 0, 0]], [[1, 1, 1, 1], [1, 0, 0, 0]])),
]


def filled(episodes=EPISODES):
    acc = IoUAccumulator()
    for class_id, (p, t) in episodes:
        acc.update(class_id, stats(p, t))
    return acc


def test_summary_hand_computed():
    s = filled().summary()
    # class 1: (1+1)/(3+1) = 1/2; class 2: 4/5
    assert s["per_class"] == pytest.approx({1: 0.5, 2: 0.8})
    assert s["miou"] == pytest.approx((0.5 + 0.8) / 2)  # 0.65
    # FB-IoU (HSNet) over all episodes: fg (1+1+4)/(3+1+5) = 6/9, bg (1+3+3)/(3+3+4) = 7/10
    assert s["fb_iou"] == pytest.approx((6 / 9 + 7 / 10) / 2)
    # per-class FB-IoU: class 1 fg 2/4, bg (1+3)/(3+3); class 2 fg 4/5, bg 3/4
    assert s["fb_iou_class_mean"] == pytest.approx(((0.5 + 4 / 6) / 2 + (0.8 + 0.75) / 2) / 2)
    # episodes: 1/3, 1, 4/5
    mean = (1 / 3 + 1.0 + 0.8) / 3
    assert s["episode_iou_mean"] == pytest.approx(mean)
    sd = math.sqrt(((1 / 3 - mean) ** 2 + (1.0 - mean) ** 2 + (0.8 - mean) ** 2) / 2)
    assert s["episode_iou_ci95"] == pytest.approx(1.96 * sd / math.sqrt(3))
    assert s["episode_iou_ci95"] == pytest.approx(0.38713, abs=1e-4)  # the same, as a number
    assert s["miou_ci95"] == s["episode_iou_ci95"]
    # class CI: IoUs 0.5 and 0.8, mean 0.65, sd = sqrt(2 * 0.15^2 / 1)
    assert s["class_iou_ci95"] == pytest.approx(1.96 * math.sqrt(2 * 0.15 ** 2) / math.sqrt(2))
    assert s["dice"] == pytest.approx((0.5 + 1.0 + 8 / 9) / 3)
    assert s["n_episodes"] == 3 and s["n_classes"] == 2
    json.dumps(s)  # plain Python


def test_mean_over_classes_differs_from_mean_over_episodes():
    s = filled().summary()
    assert s["miou"] == pytest.approx(0.65)
    assert s["episode_iou_mean"] == pytest.approx((1 / 3 + 1 + 0.8) / 3)  # 0.7111
    assert abs(s["miou"] - s["episode_iou_mean"]) > 0.05
    assert all(isinstance(k, int) for k in s["per_class"])


def test_ignored_pixels_change_the_result():
    # E1 again with pixel 1 (a false positive) ignored: fg 1/2 instead of 1/3
    acc = IoUAccumulator()
    acc.update(1, stats([[1, 1, 0, 0]], [[1, 0, 1, 0]], ignore_rows=[[0, 1, 0, 0]]))
    s = acc.summary()
    assert s["miou"] == pytest.approx(0.5)
    assert s["fb_iou"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # bg inter {3}, union {2,3}


def test_update_accepts_a_dict_of_stats():
    a, b = IoUAccumulator(), IoUAccumulator()
    s = stats(*EPISODES[2][1])
    a.update(2, s)
    b.update(2, s._asdict())
    assert a.sums == b.sums and a.summary() == b.summary()


def test_single_episode_has_zero_ci():
    s = filled(EPISODES[:1]).summary()
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["episode_iou_ci95"] == 0.0 and s["class_iou_ci95"] == 0.0


def test_class_with_zero_union_left_out_of_miou():
    acc = filled()
    acc.update(7, stats([[0, 0, 0, 0]], [[0, 0, 0, 0]]))  # empty target, empty prediction
    s = acc.summary()
    assert 7 not in s["per_class"]
    assert s["miou"] == pytest.approx(0.65) and s["n_classes"] == 2
    assert s["n_episodes"] == 4
    assert s["episode_iou_mean"] == pytest.approx((1 / 3 + 1 + 0.8) / 3)  # no IoU for that episode
    # its background pixels still count in FB-IoU: bg (7+4)/(10+4)
    assert s["fb_iou"] == pytest.approx((6 / 9 + 11 / 14) / 2)
    assert not any(math.isnan(v) for v in s.values() if isinstance(v, float))


def test_empty_accumulator_is_nan_not_error():
    s = IoUAccumulator().summary()
    assert math.isnan(s["miou"]) and math.isnan(s["fb_iou"]) and math.isnan(s["dice"])
    assert s["n_episodes"] == 0 and s["per_class"] == {} and s["episode_iou_ci95"] == 0.0
