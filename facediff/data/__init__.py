"""Data: raw sources, the prepared format and the LightningDataModule.

The batch, one dict (every model and metric in facediff reads these keys):

| key           | type                              | meaning                                        |
|---------------|-----------------------------------|------------------------------------------------|
| `image`       | float32 (B, 3, H, W) in [-1, 1]   | the face                                       |
| `mask`        | int64 (B, H, W), 0..18            | CelebAMask-HQ labels (`labels.MASK_CLASSES`)   |
| `attrs`       | float32 (B, A) in {0, 1}          | attributes, names in `datamodule.attr_names`   |
| `attrs_known` | bool (B, A)                       | False where the source says "unknown"          |
| `control`     | float32 (B, 7)                    | flip flag, crop box (x0, y0, x1, y1), source   |
|               |                                   | height and width / 1024 (`CONTROL_NAMES`)      |
| `index`       | int64 (B,)                        | row in the prepared arrays                     |
| `latent`      | float (B, C, h, w), optional      | cached first-stage latent, already scaled      |

`mask` is absent for data sets without masks (MAAD-Face).
"""

from facediff.data.datamodule import FaceDataModule
from facediff.data.labels import CONTROL_NAMES
from facediff.data.prepared import BadInputError, PreparedDataset, prepare
from facediff.data.transforms import hflip

__all__ = [
    "CONTROL_NAMES",
    "BadInputError",
    "FaceDataModule",
    "PreparedDataset",
    "hflip",
    "prepare",
]
