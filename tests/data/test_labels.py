import numpy as np

from facediff.data.labels import (
    CELEBA_ATTRIBUTES,
    MAAD_ATTRIBUTES,
    MASK_CLASSES,
    flip_lut,
    select_attributes,
)


def test_official_orders():
    assert MASK_CLASSES[:3] == ("background", "skin", "nose")
    assert MASK_CLASSES[13] == "hair" and MASK_CLASSES[18] == "cloth"
    assert CELEBA_ATTRIBUTES[0] == "5_o_Clock_Shadow" and CELEBA_ATTRIBUTES[-1] == "Young"
    assert CELEBA_ATTRIBUTES[31] == "Smiling"
    assert MAAD_ATTRIBUTES[0] == "Male" and MAAD_ATTRIBUTES[-1] == "Attractive"
    assert len(set(MAAD_ATTRIBUTES)) == 47


def test_flip_lut_swaps_left_right_once():
    lut = flip_lut()
    assert lut[4] == 5 and lut[5] == 4 and lut[6] == 7 and lut[8] == 9
    assert (lut[lut] == np.arange(19)).all()
    assert (lut[[0, 1, 2, 3, 10, 13, 18]] == [0, 1, 2, 3, 10, 13, 18]).all()


def test_select_attributes_names_the_option():
    assert select_attributes(["a", "b", "c"], ["c", "a"], "x") == [2, 0]
    try:
        select_attributes(["a", "b"], ["z"], "data.attributes")
    except ValueError as e:
        assert "data.attributes" in str(e) and "'z'" in str(e)
    else:
        raise AssertionError("no error")
