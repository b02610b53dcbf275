"""The evaluators start from random weights or from a local transformers folder, never the hub."""

import pytest
import torch
from transformers import (
    ResNetConfig,
    ResNetModel,
    SegformerConfig,
    SegformerForSemanticSegmentation,
)

from facediff.lit.evaluators import AttributeClassifier, FaceParser


def test_attribute_classifier_fine_tunes_a_local_resnet(tmp_path):
    torch.manual_seed(0)
    resnet = ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    )
    resnet.save_pretrained(tmp_path / "resnet")
    clf = AttributeClassifier(5, pretrained=str(tmp_path / "resnet")).eval()
    assert clf.num_features == 16 and clf.head.in_features == 16
    for (name, a), b in zip(resnet.state_dict().items(), clf.backbone.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert clf(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(FileNotFoundError, match="model.pretrained=.*nothing.*config.json"):
        AttributeClassifier(5, pretrained=str(tmp_path / "nothing"))


def test_face_parser_starts_from_a_local_segformer_with_a_new_19_class_head(tmp_path):
    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=2, num_encoder_blocks=2, hidden_sizes=[8, 16], depths=[1, 1], sr_ratios=[1, 1],
        strides=[2, 2], patch_sizes=[3, 3], num_attention_heads=[1, 1], decoder_hidden_size=16,
    )  # fmt: skip
    seg = SegformerForSemanticSegmentation(config)
    seg.save_pretrained(tmp_path / "seg")
    parser = FaceParser(pretrained=str(tmp_path / "seg")).eval()
    enc = parser.segformer.segformer.state_dict()
    for name, a in seg.segformer.state_dict().items():
        torch.testing.assert_close(a, enc[name], msg=name)
    assert parser.segformer.decode_head.classifier.out_channels == 19
    assert parser.parse(torch.rand(2, 3, 16, 16)).shape == (2, 16, 16)
