import numpy as np
import torch

from facediff.data.celebamask import merge_part_masks, read_attributes
from facediff.data.face_renderer import RENDERED_ATTRIBUTES, render_face, sample_attributes
from facediff.data.labels import CELEBA_ATTRIBUTES, MASK_CLASSES
from facediff.data.synthfaces import write_synthfaces

L = {n: i for i, n in enumerate(MASK_CLASSES)}


def render(attrs_update, seed=3, size=64):
    base = sample_attributes(np.random.default_rng(seed))
    base.update(attrs_update)
    return render_face(np.random.default_rng(seed), size, base)


def test_deterministic_and_not_flat():
    a = render_face(np.random.default_rng([0, 5]), 64)
    b = render_face(np.random.default_rng([0, 5]), 64)
    np.testing.assert_array_equal(a[0], b[0])
    image, label = a[0], a[1]
    skin = image[label == L["skin"]].astype(float)
    assert skin.std(0).mean() > 3  # shading and texture, not a flat colour map


def test_part_files_merge_back_to_the_label_map(tmp_path):
    write_synthfaces(tmp_path / "raw", num_faces=6, image_size=32, mask_size=32, num_workers=1)
    names, values = read_attributes(tmp_path / "raw")
    assert names == list(CELEBA_ATTRIBUTES) and values.shape == (6, 40)
    for i in range(6):
        rng = np.random.default_rng([0, i])
        _, label, _, attrs = render_face(rng, 32)
        np.testing.assert_array_equal(merge_part_masks(tmp_path / "raw", i), label)
        assert [attrs[n] for n in CELEBA_ATTRIBUTES] == values[i].astype(bool).tolist()


def test_rendered_attributes_change_mask_or_image():
    on_off = {
        "Eyeglasses": lambda lab, img: (lab == L["eye_g"]).sum(),
        "Wearing_Hat": lambda lab, img: (lab == L["hat"]).sum(),
        "Wearing_Earrings": lambda lab, img: (lab == L["ear_r"]).sum(),
        "Wearing_Necklace": lambda lab, img: (lab == L["neck_l"]).sum(),
        "Mouth_Slightly_Open": lambda lab, img: (lab == L["mouth"]).sum(),
        "Big_Nose": lambda lab, img: (lab == L["nose"]).sum(),
        "Bushy_Eyebrows": lambda lab, img: np.isin(lab, [L["l_brow"], L["r_brow"]]).sum(),
        "Bangs": lambda lab, img: (lab == L["hair"]).sum(),
        "Wearing_Lipstick": lambda lab, img: (
            img[np.isin(lab, [11, 12])][:, 0].mean() - img[np.isin(lab, [11, 12])][:, 1].mean()
        ),
        "Pale_Skin": lambda lab, img: img[lab == L["skin"]].mean(),
    }
    for name, measure in on_off.items():
        extra = {"Bald": False} if name == "Bangs" else {}
        off = render({name: False, **extra})
        on = render({name: True, **extra})
        assert measure(on[1], on[0]) > measure(off[1], off[0]), name
    assert not (render({"Bald": True, "Bangs": False})[1] == L["hair"]).any()
    narrow = render({"Narrow_Eyes": True})[1]
    wide = render({"Narrow_Eyes": False})[1]
    assert (narrow == L["l_eye"]).sum() < (wide == L["l_eye"]).sum()
    assert len(RENDERED_ATTRIBUTES) >= 12


def test_attribute_priors_are_consistent():
    colours = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"]
    draws = [sample_attributes(np.random.default_rng(i)) for i in range(600)]
    assert all(sum(d[c] for c in colours) <= 1 for d in draws)
    assert all(not (d["Bald"] and (d["Bangs"] or any(d[c] for c in colours))) for d in draws)
    assert all(not (d["Mustache"] and not d["Male"]) for d in draws)
    smiling = np.mean([d["Smiling"] for d in draws])
    assert 0.35 < smiling < 0.6


def test_a_one_sided_pose_gives_faces_a_handedness_and_the_default_is_unchanged():
    """center_x / yaw ranges: the default ranges give the very same faces as before the options
    existed (the draws are the same numbers), a one-sided range puts every face on one side."""
    from facediff.data.face_renderer import POSE
    from facediff.evaluation.flip import face_center_x, mirror

    rng = np.random.default_rng([0, 7])
    a = render_face(rng, 32)
    b = render_face(np.random.default_rng([0, 7]), 32, **POSE)
    np.testing.assert_array_equal(a[0], b[0])
    centres = []
    for i in range(12):
        _, label, _, _ = render_face(np.random.default_rng([0, i]), 32, center_x=(0.1, 0.2))
        label = torch.from_numpy(label.astype(np.int64))[None]
        centres.append((face_center_x(label).item(), face_center_x(mirror(label)).item()))
    assert all(c > 0.52 and m < 0.48 for c, m in centres)  # right of centre; mirrored: left


def test_a_raw_folder_refuses_other_generation_options(tmp_path):
    """The raw folder records its options (synthfaces.json); reusing it with another pose or
    seed is an error naming the option, the folder and both values."""
    import json

    import pytest

    from facediff.data.prepared import BadInputError
    from facediff.data.synthfaces import SynthFaces

    raw = tmp_path / "raw"
    kw = dict(num_faces=4, image_size=32, mask_size=32, num_workers=1)
    SynthFaces(str(raw), center_x=[0.1, 0.2], **kw)
    record = json.loads((raw / "synthfaces.json").read_text())
    assert record["center_x"] == [0.1, 0.2] and record["yaw"] == [-0.3, 0.3]
    SynthFaces(str(raw), center_x=[0.1, 0.2], **kw)  # the same options: reused
    with pytest.raises(BadInputError, match=r"center_x=\[0.1, 0.2\], but data.source.center_x"):
        SynthFaces(str(raw), **kw)
    with pytest.raises(BadInputError, match="data.source.generator_seed=1"):
        SynthFaces(str(raw), center_x=[0.1, 0.2], generator_seed=1, **kw)
    with pytest.raises(ValueError, match=r"data.source.yaw=\[0.4, 0.1\]: expected -0.5 <= lo"):
        SynthFaces(str(raw), yaw=[0.4, 0.1], **kw)
