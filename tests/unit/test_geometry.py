"""A product's declared invariance and its input geometry (issue 14): nothing assumed of a tablet."""

from __future__ import annotations

import pytest
import torch

from pipeline.model.augment import augment
from pipeline.model.geometry import INVARIANCES, choose_geometry, named_invariance
from pipeline.model.net import dihedral_views


def test_geometry_keeps_the_aspect_and_the_resolution_within_the_budget() -> None:
    vial = choose_geometry([(96, 192)] * 5)  # (width, height): an upright vial, side view
    assert vial.hw == (192, 96) and vial.scale == 1.0 and "full resolution" in vial.reason
    tablet = choose_geometry([(200, 200), (200, 200)])
    assert tablet.hw == (160, 160) and "budget" in tablet.reason  # 40,000 px over the 25,600 budget
    capsule = choose_geometry([(256, 128)])
    assert capsule.hw == (112, 224)  # aspect kept: 2:1
    assert choose_geometry([(150, 150)]).hw == (160, 160)  # full resolution: sides rounded up


def test_the_smallest_declared_defect_stays_visible() -> None:
    """A 1 px particle is never scaled away to meet the pixel budget; a 6 px one may be."""
    assert choose_geometry([(200, 200)], smallest_defect_px=1.0).hw == (208, 208)
    assert choose_geometry([(200, 200)], smallest_defect_px=6.0).hw == (160, 160)
    mid = choose_geometry([(400, 400)], smallest_defect_px=2.0)  # needs scale 0.75 > budget 0.4
    assert mid.hw == (304, 304) and "smallest declared defect" in mid.reason
    with pytest.raises(ValueError, match="> 0"):
        choose_geometry([(200, 200)], smallest_defect_px=0.0)


def test_frames_of_different_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        choose_geometry([(96, 192), (192, 96)])
    with pytest.raises(ValueError, match="no frames"):
        choose_geometry([])


def test_invariances_name_their_views_and_quarter_turns_need_a_square() -> None:
    assert {n: i.views for n, i in INVARIANCES.items()} == {"fixed": 1, "upright": 2, "lying": 4, "any-orientation": 8}
    with pytest.raises(ValueError, match="known: fixed, upright, lying, any-orientation"):
        named_invariance("sideways")
    with pytest.raises(ValueError, match="square"):
        choose_geometry([(96, 192)]).check(named_invariance("any-orientation"))
    choose_geometry([(96, 192)]).check(named_invariance("lying"))  # mirrors and half turns keep the shape


def _top_heavy(n: int, h: int = 32, w: int = 16) -> torch.Tensor:
    """Frames whose top half is bright and left half is marked: any flip or turn shows."""
    x = torch.full((n, 3, h, w), -1.0)
    x[:, :, : h // 2] = 1.0
    x[:, 0, :, : w // 2] += 0.5
    return x


@pytest.mark.parametrize("views", [1, 2, 4])
def test_augmentation_turns_units_only_as_the_invariance_allows(views: int) -> None:
    """An upright vial is never turned upside down in training (its fill level would read as a
    defect); a label is never mirrored. The only geometric change then left is the shift."""
    x = _top_heavy(64)
    out, _ = augment(x, torch.Generator().manual_seed(3), max_shift_px=0.0, blur_max=0.0, blur_chance=0.0, views=views)
    top_bright = out[:, 1, :16].mean(dim=(1, 2)) > out[:, 1, 16:].mean(dim=(1, 2))
    left_marked = out[:, 0, :, :8].mean(dim=(1, 2)) - out[:, 1, :, :8].mean(dim=(1, 2)) > \
        out[:, 0, :, 8:].mean(dim=(1, 2)) - out[:, 1, :, 8:].mean(dim=(1, 2))
    allowed = {tuple(v.shape[2:]) for v in dihedral_views(x[:1], views)}
    assert allowed == {(32, 16)}
    if views < 4:
        assert bool(top_bright.all()), "turned upside down"
    else:
        assert not bool(top_bright.all()) and bool(top_bright.any())
    if views == 1:
        assert bool(left_marked.all()), "mirrored"
    else:
        assert not bool(left_marked.all()) and bool(left_marked.any())


def test_quarter_turns_of_a_non_square_input_are_refused() -> None:
    with pytest.raises(ValueError, match="square"):
        augment(_top_heavy(2), torch.Generator().manual_seed(0), views=8)
