"""The SynthFaces renderer: one procedural face from its own generator.

A face is a set of analytic part shapes in a face frame (position, scale, in-plane rotation and a
yaw that shifts the features and foreshortens one ear), painted into a label map in depth order,
then shaded: a lit ellipsoid for the skin, hair strands, irises, lens frames, fabric folds,
texture noise and a soft blur. `render_face(rng, size)` returns the image, the label map, the
part masks and the attributes it was drawn with (`facediff.data.synthfaces` writes them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from facediff.data.labels import MASK_CLASSES

# The attributes that change the image or the mask; the others are drawn from their priors only.
RENDERED_ATTRIBUTES: tuple[str, ...] = (
    "Male", "Smiling", "Mouth_Slightly_Open", "Eyeglasses", "Wearing_Hat", "Bald", "Bangs",
    "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Pale_Skin", "Wearing_Lipstick",
    "Wearing_Earrings", "Wearing_Necklace", "Narrow_Eyes", "Big_Nose", "Bushy_Eyebrows",
    "Mustache", "Goatee", "Rosy_Cheeks",
)  # fmt: skip

# approximate CelebA marginals for the attributes that are not rendered
_UNRENDERED_PRIOR = {
    "5_o_Clock_Shadow": 0.11, "Arched_Eyebrows": 0.27, "Attractive": 0.51,
    "Bags_Under_Eyes": 0.2, "Big_Lips": 0.24, "Blurry": 0.05, "Chubby": 0.06,
    "Double_Chin": 0.05, "High_Cheekbones": 0.45, "Oval_Face": 0.28, "Pointy_Nose": 0.28,
    "Receding_Hairline": 0.08, "Sideburns": 0.06, "Straight_Hair": 0.21, "Wavy_Hair": 0.32,
    "Wearing_Necktie": 0.07, "Young": 0.77,
}  # fmt: skip
_HAIR_COLOURS = {  # RGB of each hair colour attribute; None = none of the four (auburn)
    "Black_Hair": (28, 22, 20), "Blond_Hair": (222, 190, 118), "Brown_Hair": (112, 70, 40),
    "Gray_Hair": (172, 170, 168), None: (150, 62, 32),
}  # fmt: skip
_LABEL = {name: i for i, name in enumerate(MASK_CLASSES)}


def sample_attributes(rng: np.random.Generator) -> dict[str, bool]:
    """Draw the 40 attributes with CelebA-like priors and the correlations that matter here:
    one hair colour at most, Bald excludes Bangs and hair colour, lipstick and earrings mostly
    female, beards only male, Mouth_Slightly_Open more likely when Smiling."""
    a = {name: bool(rng.random() < p) for name, p in _UNRENDERED_PRIOR.items()}
    male = rng.random() < 0.42
    a["Male"] = male
    a["Bald"] = male and rng.random() < (0.12 if not a["Young"] else 0.03)
    colours = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"]
    for c in colours:
        a[c] = False
    if not a["Bald"]:
        p = np.array([0.27, 0.06 if male else 0.22, 0.22, 0.03 if a["Young"] else 0.3, 0.2])
        pick = rng.choice(5, p=p / p.sum())
        if pick < 4:
            a[colours[pick]] = True
    a["Bangs"] = (not a["Bald"]) and rng.random() < 0.18
    a["Wearing_Hat"] = rng.random() < 0.06
    a["Eyeglasses"] = rng.random() < (0.1 if male else 0.05)
    a["Smiling"] = rng.random() < 0.48
    a["Mouth_Slightly_Open"] = rng.random() < (0.65 if a["Smiling"] else 0.3)
    a["Wearing_Lipstick"] = (not male) and rng.random() < 0.8
    a["Heavy_Makeup"] = a["Wearing_Lipstick"] and rng.random() < 0.6
    a["Wearing_Earrings"] = rng.random() < (0.02 if male else 0.35)
    a["Wearing_Necklace"] = rng.random() < (0.01 if male else 0.22)
    a["Narrow_Eyes"] = rng.random() < 0.12
    a["Big_Nose"] = rng.random() < (0.4 if male else 0.1)
    a["Bushy_Eyebrows"] = rng.random() < (0.3 if male else 0.07)
    a["Pale_Skin"] = rng.random() < 0.06
    a["Mustache"] = male and rng.random() < 0.12
    a["Goatee"] = male and rng.random() < 0.14
    a["No_Beard"] = not (a["Mustache"] or a["Goatee"] or a["5_o_Clock_Shadow"] and male)
    a["5_o_Clock_Shadow"] = a["5_o_Clock_Shadow"] and male
    a["Rosy_Cheeks"] = (not male) and rng.random() < 0.12
    return a


@dataclass
class _Frame:
    """Face-frame coordinates of every pixel (X right, Y down; the face is about 1 wide)."""

    X: np.ndarray
    Y: np.ndarray
    Xf: np.ndarray  # X of the facial features, shifted by the yaw

    def ellipse(self, cx, cy, rx, ry, features=True, power=2.0):
        X = self.Xf if features else self.X
        return (np.abs((X - cx) / rx) ** power + np.abs((self.Y - cy) / ry) ** power) <= 1.0


# Pose ranges (uniform) of the default data set: left-right symmetric, so a mirrored face is
# as likely as the face itself. A one-sided range gives a data set with a handedness (faces
# off-centre and turned to one side), where a horizontal flip is visible: what the control
# metadata's flip flag can then decide (arXiv 2411.03177; conf/data/synthfaces_chiral.yaml).
POSE = {"center_x": (-0.08, 0.08), "yaw": (-0.3, 0.3)}
POSE_LIMITS = {"center_x": 0.3, "yaw": 0.5}


def check_pose(name: str, value) -> tuple[float, float]:
    """A pose range [lo, hi] for `data.source.<name>`, within its limit, or an error naming it."""
    limit = POSE_LIMITS[name]
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"data.source.{name}={value!r}: expected [lo, hi]") from None
    if not (np.isfinite([lo, hi]).all() and -limit <= lo <= hi <= limit):
        raise ValueError(f"data.source.{name}={value!r}: expected -{limit} <= lo <= hi <= {limit}")
    return lo, hi


def render_face(
    rng: np.random.Generator,
    size: int,
    attrs: dict[str, bool] | None = None,
    center_x: tuple[float, float] = POSE["center_x"],
    yaw: tuple[float, float] = POSE["yaw"],
):
    """Render one face at `size` x `size`; `center_x` and `yaw` are the ranges its horizontal
    position (face-frame units, the image is 2 wide) and yaw are drawn from.

    Returns (image uint8 (H, W, 3), label map uint8 (H, W), part shapes {part: bool (H, W)},
    attributes {name: bool}). The part shapes overlap; painting them in the official
    CelebAMask-HQ order gives the label map exactly.
    """
    a = sample_attributes(rng) if attrs is None else attrs
    f32 = np.float32
    # 1. pose: position, scale, in-plane rotation, yaw
    cx, cy = rng.uniform(*center_x), rng.uniform(-0.04, 0.1)
    scale = rng.uniform(0.78, 0.95)
    theta = rng.uniform(-0.2, 0.2)
    yaw = rng.uniform(*yaw)
    v, u = np.mgrid[0:size, 0:size].astype(f32)
    u, v = (u + 0.5) / size * 2 - 1 - cx, (v + 0.5) / size * 2 - 1 - cy
    c, s = np.cos(theta), np.sin(theta)
    X, Y = (c * u + s * v) / scale, (-s * u + c * v) / scale
    fr = _Frame(X, Y, X + yaw * 0.12 * np.clip(1 - Y * Y, 0, 1))

    male = a["Male"]
    # 2. part shapes in the face frame
    face_rx = 0.56 if male else 0.5
    skin = fr.ellipse(0, 0.04, face_rx, 0.68, features=False, power=2.6 if male else 2.0)
    eye_ry = 0.022 if a["Narrow_Eyes"] else 0.045
    eyes = {k: fr.ellipse(sx * 0.2, -0.05, 0.1, eye_ry) for k, sx in (("l_eye", -1), ("r_eye", 1))}
    brow_t = 0.032 if a["Bushy_Eyebrows"] else 0.017
    brows = {}
    for k, sx in (("l_brow", -1), ("r_brow", 1)):
        dx = (fr.Xf - sx * 0.2) / 0.13
        brows[k] = (np.abs(dx) < 1) & (np.abs(Y - (-0.17 + 0.035 * dx * dx)) < brow_t)
    nose_r = (0.09, 0.16) if a["Big_Nose"] else (0.06, 0.13)
    nose = fr.ellipse(0, 0.15, *nose_r, power=1.6)
    ears = {
        k: fr.ellipse(sx * (face_rx + 0.02), 0.02, 0.075 * (1 + sx * yaw * 1.8), 0.13, False)
        for k, sx in (("l_ear", -1), ("r_ear", 1))
    }
    # mouth: a mouth line that curves up at the corners when smiling, opened when asked
    mw = 0.2 if a["Smiling"] else 0.16
    dx = fr.Xf / mw
    inside = np.abs(dx) < 1
    ym = 0.38 - (0.07 if a["Smiling"] else 0.0) * dx * dx
    half_open = (0.035 if a["Mouth_Slightly_Open"] else 0.0) * np.sqrt(np.clip(1 - dx * dx, 0, 1))
    lip_u = 0.035 * np.sqrt(np.clip(1 - dx * dx, 0, 1)) + 0.004
    lip_l = 0.05 * np.sqrt(np.clip(1 - dx * dx, 0, 1)) + 0.004
    mouth = inside & (Y > ym - half_open) & (Y < ym + half_open)
    u_lip = inside & (Y <= ym - half_open) & (Y > ym - half_open - lip_u)
    l_lip = inside & (Y >= ym + half_open) & (Y < ym + half_open + lip_l)
    neck = (np.abs(X) < 0.23) & (Y > 0.3)
    neckline = 0.95 + 0.22 * np.clip(1 - (X / 0.32) ** 2, 0, 1)
    cloth = (Y > neckline - 0.1 * np.abs(X)) & (np.abs(X) < 1.2 + (Y - 0.9))
    parts: dict[str, np.ndarray] = {}
    hair_back = np.zeros_like(skin)
    hair_front = np.zeros_like(skin)
    if not a["Bald"]:
        long_hair = not male
        hair_back = fr.ellipse(0, -0.08, face_rx + 0.12, 0.84, False) & (
            Y < (0.95 if long_hair else 0.15)
        )
        if long_hair:
            hair_back |= (np.abs(X) < face_rx + 0.14) & (Y > 0) & (Y < 0.95) & (np.abs(X) > 0.3)
        fringe = -0.2 if a["Bangs"] else -0.45 + 0.03 * np.cos(X * 9)
        hair_front = skin & (Y < fringe)
    if a["Eyeglasses"]:
        lenses = fr.ellipse(-0.2, -0.05, 0.14, 0.11) | fr.ellipse(0.2, -0.05, 0.14, 0.11)
        parts["eye_g"] = lenses | ((np.abs(fr.Xf) < 0.08) & (np.abs(Y + 0.07) < 0.014))
    if a["Wearing_Hat"]:
        crown = fr.ellipse(0, -0.58, face_rx + 0.1, 0.36, False)
        brim = (np.abs(X) < face_rx + 0.24) & (Y > -0.48) & (Y < -0.4)
        parts["hat"] = crown | brim
    if a["Wearing_Earrings"]:
        parts["ear_r"] = fr.ellipse(-(face_rx + 0.03), 0.2, 0.035, 0.045, False) | fr.ellipse(
            face_rx + 0.03, 0.2, 0.035, 0.045, False
        )
    if a["Wearing_Necklace"]:
        parts["neck_l"] = (np.abs(X) < 0.3) & (np.abs(Y - (0.74 + 0.9 * X * X)) < 0.022)

    # 3. paint in depth order (later over earlier) into the label map
    depth = [
        ("hair", hair_back), ("neck", neck), ("cloth", cloth), ("neck_l", parts.get("neck_l")),
        ("l_ear", ears["l_ear"]), ("r_ear", ears["r_ear"]), ("skin", skin), ("nose", nose),
        ("eye_g", parts.get("eye_g")), ("l_eye", eyes["l_eye"]), ("r_eye", eyes["r_eye"]),
        ("l_brow", brows["l_brow"]), ("r_brow", brows["r_brow"]), ("mouth", mouth),
        ("u_lip", u_lip), ("l_lip", l_lip), ("hair", hair_front), ("hat", parts.get("hat")),
        ("ear_r", parts.get("ear_r")),
    ]  # fmt: skip
    label = np.zeros((size, size), np.uint8)
    shapes: dict[str, np.ndarray] = {}
    for name, shape in depth:
        if shape is None:
            continue
        label[shape] = _LABEL[name]
        shapes[name] = shapes[name] | shape if name in shapes else shape
    # Part files as the archive has them: where the part is seen, plus where it lies under a part
    # that comes later in the official merge order (so painting in that order gives `label`).
    part_masks = {}
    for name, shape in shapes.items():
        m = (label == _LABEL[name]) | (shape & (label > _LABEL[name]))
        if m.any():
            part_masks[name] = m

    image = _shade(rng, a, label, fr, face_rx, ym, yaw)
    return image, label, part_masks, a


def _noise(rng, size, cells):
    """Smooth value noise in [-1, 1] at `cells` x `cells` resolution, upsampled bilinearly."""
    small = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def _shade(rng, a, label, fr, face_rx, ym, yaw):
    size = label.shape[0]
    X, Y, Xf = fr.X, fr.Y, fr.Xf
    L = _LABEL
    img = np.zeros((size, size, 3), np.float32)
    lf = _noise(rng, size, 6)  # low-frequency texture
    # background: a colour, a gradient and blotches
    bg = rng.uniform(40, 220, 3)
    grad = (fr.X * rng.uniform(-1, 1) + fr.Y * rng.uniform(-1, 1))[..., None]
    img[:] = bg * (1 + 0.15 * grad) + 18 * lf[..., None]
    # skin: a tone, lit as an ellipsoid from a random direction
    tone = rng.uniform(0.35, 1.0)
    if a["Pale_Skin"]:
        tone = 1.25
    skin_rgb = np.array([224, 172, 140]) * tone + np.array([15, 10, 5])
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.1), 1.0])
    light /= np.linalg.norm(light)
    nx, ny = (X + yaw * 0.3) / (face_rx + 0.05), (Y - 0.04) / 0.75
    nz = np.sqrt(np.clip(1 - nx * nx - ny * ny, 0.02, 1))
    lambert = np.clip((nx * light[0] + ny * light[1] + nz * light[2]) / 1.0, 0, 1)
    shade = (0.5 + 0.55 * lambert)[..., None]
    skinlike = np.isin(label, [L["skin"], L["nose"], L["l_ear"], L["r_ear"], L["eye_g"]])
    img[skinlike] = (skin_rgb * shade + 6 * lf[..., None])[skinlike]
    if a["Rosy_Cheeks"]:
        blush = np.exp(-(((np.abs(Xf) - 0.3) / 0.09) ** 2 + ((Y - 0.2) / 0.08) ** 2))
        img += (blush * (label == L["skin"]))[..., None] * np.array([40, -25, -15])
    nose_m = label == L["nose"]
    img[nose_m] *= (0.88 + 0.2 * np.clip(-Xf * np.sign(light[0] + 1e-3) * 5, -0.5, 0.5))[
        nose_m, None
    ]
    neck_m = label == L["neck"]
    img[neck_m] = (skin_rgb * 0.72 * shade)[neck_m]
    # beard and moustache darken the skin
    hair_rgb = np.array(next(v for k, v in _HAIR_COLOURS.items() if k is None or a.get(k)))
    beard = np.zeros_like(nose_m)
    if a["Mustache"]:
        beard |= (np.abs(Xf) < 0.17) & (Y > ym - 0.1) & (Y < ym - 0.035)
    if a["Goatee"]:
        beard |= (np.abs(Xf) < 0.12) & (Y > ym + 0.07) & (Y < 0.68)
    beard &= label == L["skin"]
    img[beard] = img[beard] * 0.35 + hair_rgb * 0.5
    # hair with strands
    strands = 0.78 + 0.22 * np.sin(X * 55 + 4 * np.sin(Y * 7) + rng.uniform(0, 6))
    hair_m = label == L["hair"]
    img[hair_m] = (hair_rgb * strands[..., None] * (0.8 + 0.3 * shade))[hair_m]
    brow_m = np.isin(label, [L["l_brow"], L["r_brow"]])
    img[brow_m] = hair_rgb * 0.55 + 10
    # eyes: sclera, iris and pupil
    iris_rgb = np.array([[70, 45, 25], [60, 100, 150], [70, 110, 60]][rng.integers(3)])
    eye_m = np.isin(label, [L["l_eye"], L["r_eye"]])
    img[eye_m] = [232, 230, 225]
    dxe = np.abs(Xf) - 0.2 - yaw * 0.05
    iris = eye_m & (dxe**2 + (Y + 0.05) ** 2 < 0.04**2)
    img[iris] = iris_rgb
    img[eye_m & (dxe**2 + (Y + 0.05) ** 2 < 0.017**2)] = 15
    # mouth, teeth, lips
    mouth_m = label == L["mouth"]
    img[mouth_m] = [70, 15, 20]
    if a["Smiling"]:
        img[mouth_m & (Y < ym)] = [236, 230, 215]
    lip_rgb = np.array([200, 30, 60]) if a["Wearing_Lipstick"] else skin_rgb * [0.85, 0.6, 0.6]
    lip_m = np.isin(label, [L["u_lip"], L["l_lip"]])
    img[lip_m] = (lip_rgb * shade)[lip_m]
    # accessories
    if a["Eyeglasses"]:
        g = label == L["eye_g"]
        frame = np.zeros_like(g)
        for sx in (-1, 1):
            r = np.sqrt(((Xf - sx * 0.2) / 0.14) ** 2 + ((Y + 0.05) / 0.11) ** 2)
            frame |= np.abs(r - 0.93) < 0.09
        frame = g & (frame | (np.abs(Xf) < 0.08))
        img[g] = img[g] * 0.85 + np.array([10, 18, 30])
        img[frame] = [30, 28, 26]
    if a["Wearing_Hat"]:
        hat_m = label == L["hat"]
        hat_rgb = rng.uniform(20, 230, 3)
        band = (Y > -0.52) & (Y < -0.46)
        img[hat_m] = (hat_rgb * (0.75 + 0.35 * shade) * (1 - 0.4 * band[..., None]))[hat_m]
    cloth_m = label == L["cloth"]
    cloth_rgb = rng.uniform(20, 235, 3)
    folds = 0.85 + 0.15 * np.sin(X * rng.uniform(8, 20) + Y * 3)
    img[cloth_m] = (cloth_rgb * folds[..., None] + 10 * lf[..., None])[cloth_m]
    metal = np.array([232, 192, 70]) if rng.random() < 0.6 else np.array([200, 200, 210])
    for cls, freq in (("ear_r", 0.0), ("neck_l", 120.0)):
        m = label == L[cls]
        beads = 0.75 + 0.25 * np.cos(X * freq) if freq else 1.0 - 0.3 * (Y % 0.05 > 0.03)
        img[m] = (metal * np.broadcast_to(beads, X.shape)[..., None])[m]
    # 4. texture noise and a soft blur (3x3 box), then 8 bits
    img += rng.normal(0, 4, img.shape)
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    img = sum(pad[i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9.0
    return np.clip(img, 0, 255).astype(np.uint8)


__all__ = ["POSE", "RENDERED_ATTRIBUTES", "check_pose", "render_face", "sample_attributes"]
