"""Reference outputs of torchvision's functional ops on PIL images, for the tests of
src/augment/functional.rs and src/augment/policies.rs.

Run from the repository root (needs numpy, Pillow and torchvision; made with Pillow 13.0 and
torchvision 0.29):

    python3 src/augment/testdata/pillow/make_fixtures.py

It rewrites every file in this folder except itself: two source images drawn from a fixed seed
(a.png 32x32, b.png 40 wide and 28 high), the reference outputs of each stacked top to bottom in
one PNG (a_expected.png, b_expected.png), and manifest.json, which lists each case (op, arguments,
input, expected file and tile index) and dumps torchvision's AutoAugment sub-policy tables and
magnitude bins.

Every float argument goes through float32 first, the precision of the Rust API, so both sides
see the same numbers. The outputs come from the very calls torchvision makes: F.affine /
F.rotate / F.adjust_* on PIL images (which call Pillow), and `_apply_op` for the policy ops.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import (
    AutoAugment,
    AutoAugmentPolicy,
    RandAugment,
    TrivialAugmentWide,
    _apply_op,
)

OUT = Path(__file__).resolve().parent
# Ops (functional names and policy op names) whose result depends on the image's shape: the only
# ones repeated on the non-square image, which keeps the fixtures small.
SHAPE_DEPENDENT = {
    *("affine", "rotate", "adjust_sharpness", "gaussian_blur", "erase"),
    *("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Sharpness"),
}
INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def f32(x):
    return float(np.float32(x))


def source_image(height, width, seed):
    """Gradients and a wave, a saturated disc, a grey block (hue-less pixels) and noise, kept
    inside 12..243 so that autocontrast has work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack(
        [40 + 170 * x / (width - 1), 30 + 180 * y / (height - 1), 128 + 90 * np.sin((x + 2 * y) / 5)],
        axis=-1,
    )
    disc = (x - 0.3 * width) ** 2 + (y - 0.35 * height) ** 2 < (0.2 * min(height, width)) ** 2
    img[disc] = [230, 40, 20]
    img += rng.normal(0, 3, img.shape)
    img[int(0.6 * height) : int(0.85 * height), int(0.55 * width) : int(0.9 * width)] = 90
    return Image.fromarray(np.clip(np.rint(img), 12, 243).astype(np.uint8), "RGB")


def functional_cases(img):
    """(op, args, output image) for each torchvision.transforms.functional op."""
    fill = [10, 200, 30]
    affines = [
        dict(angle=23.5, translate=[2.5, -1.25], scale=1.125, shear=[8.0, -5.0], center=None),
        dict(angle=-40.0, translate=[0.0, 0.0], scale=0.75, shear=[0.0, 0.0], center=[5.0, 7.0]),
        dict(angle=0.0, translate=[5.0, -3.0], scale=1.0, shear=[0.0, 0.0], center=None),
        dict(angle=0.0, translate=[0.0, 0.0], scale=f32(1.3), shear=[0.0, 0.0], center=None),
    ]
    for name, mode in INTERPOLATIONS.items():
        for p in affines:
            out = F.affine(img, interpolation=mode, fill=fill, **p)
            yield "affine", dict(p, interpolation=name, fill=fill), out
        for angle in [30.0, -75.5, 90.0]:
            out = F.rotate(img, angle, interpolation=mode, fill=fill)
            yield "rotate", dict(angle=angle, interpolation=name, fill=fill), out
    enhancers = {
        "adjust_brightness": F.adjust_brightness,
        "adjust_contrast": F.adjust_contrast,
        "adjust_saturation": F.adjust_saturation,
        "adjust_sharpness": F.adjust_sharpness,
    }
    for op, fn in enhancers.items():
        for factor in [f32(0.35), f32(1.7)]:
            yield op, dict(factor=factor), fn(img, factor)
    for hue in [f32(-0.3), f32(0.17)]:
        yield "adjust_hue", dict(hue_factor=hue), F.adjust_hue(img, hue)
    yield "to_grayscale", {}, F.rgb_to_grayscale(img, num_output_channels=3)
    for bits in [2, 5]:
        yield "posterize", dict(bits=bits), F.posterize(img, bits)
    for threshold in [100, 200]:
        yield "solarize", dict(threshold=threshold), F.solarize(img, threshold)
    yield "equalize", {}, F.equalize(img)
    yield "autocontrast", {}, F.autocontrast(img)
    yield "invert", {}, F.invert(img)
    for kernel_size, sigma in [([3, 5], [f32(0.75), f32(1.5)]), ([7, 7], [2.0, 2.0]), ([5, 3], [f32(1.1), f32(0.6)])]:
        out = F.gaussian_blur(img, kernel_size, sigma)
        yield "gaussian_blur", dict(kernel_size=kernel_size, sigma=sigma), out
    for top, left, height, width, value in [(3, 4, 10, 7, [255, 0, 128]), (20, 30, 20, 20, [0, 0, 0])]:
        t = F.erase(F.pil_to_tensor(img), top, left, height, width, torch.tensor(value, dtype=torch.uint8)[:, None, None])
        yield "erase", dict(top=top, left=left, height=height, width=width, value=value), F.to_pil_image(t)


def spaces(height, width):
    """torchvision's magnitude bins: AutoAugment (10 bins), RandAugment and TrivialAugmentWide (31)."""
    out = {
        "auto_augment": AutoAugment()._augmentation_space(10, (height, width)),
        "rand_augment": RandAugment()._augmentation_space(31, (height, width)),
        "trivial_augment_wide": TrivialAugmentWide()._augmentation_space(31),
    }
    return {
        transform: {op: dict(magnitudes=m.reshape(-1).tolist(), signed=signed) for op, (m, signed) in space.items()}
        for transform, space in out.items()
    }


def policy_op_cases(img):
    """`_apply_op` for every op at two magnitudes taken from the bins (the second one negated for
    signed ops), geometric ops with nearest and bilinear sampling."""
    space = spaces(img.height, img.width)
    standard, wide = space["auto_augment"], space["trivial_augment_wide"]
    fill = [128, 64, 255]
    for op, meta in wide.items():
        if len(meta["magnitudes"]) == 1:
            magnitudes = [0.0]
        else:
            # The top standard bin (bin 3 for Solarize, whose top bin is a threshold of 0), and wide
            # bin 20 (30 for Posterize, whose bin 20 keeps the same 4 bits).
            sign = -1.0 if meta["signed"] else 1.0
            standard_bin, wide_bin = {"Solarize": (3, 20), "Posterize": (9, 30)}.get(op, (9, 20))
            magnitudes = [standard[op]["magnitudes"][standard_bin], sign * meta["magnitudes"][wide_bin]]
        geometric = op.startswith(("Shear", "Translate")) or op == "Rotate"
        for magnitude in magnitudes:
            for name in ["nearest", "bilinear"] if geometric else ["nearest"]:
                out = _apply_op(img, op, magnitude, interpolation=INTERPOLATIONS[name], fill=fill)
                yield "policy_op", dict(name=op, magnitude=magnitude, interpolation=name, fill=fill), out
    yield "policy_op", dict(name="Invert", magnitude=0.0, interpolation="nearest", fill=fill), _apply_op(
        img, "Invert", 0.0, interpolation=InterpolationMode.NEAREST, fill=fill
    )


def main():
    for old in OUT.glob("*.png"):
        old.unlink()
    cases = []
    for name, (height, width, seed, full) in {"a": (32, 32, 1, True), "b": (28, 40, 2, False)}.items():
        img = source_image(height, width, seed)
        img.save(OUT / f"{name}.png", optimize=True)
        tiles = []
        for op, args, out in [*functional_cases(img), *policy_op_cases(img)]:
            if not full and op not in SHAPE_DEPENDENT and args.get("name") not in SHAPE_DEPENDENT:
                continue
            assert out.mode == "RGB" and out.size == img.size, (op, args)
            cases.append(dict(op=op, args=args, input=f"{name}.png", expected=f"{name}_expected.png", tile=len(tiles)))
            tiles.append(np.asarray(out))
        Image.fromarray(np.concatenate(tiles, axis=0)).save(OUT / f"{name}_expected.png", optimize=True)
    policies = {
        policy.value: [[list(step) for step in sub] for sub in AutoAugment(policy).policies] for policy in AutoAugmentPolicy
    }
    manifest = dict(policies=policies, spaces={"32x32": spaces(32, 32), "28x40": spaces(28, 40)})
    # One case per line keeps the file small and its diffs readable.
    lines = ",\n".join(json.dumps(case) for case in cases)
    text = json.dumps(manifest)[:-1] + ', "cases": [\n' + lines + "\n]}\n"
    (OUT / "manifest.json").write_text(text)
    size = sum(p.stat().st_size for p in OUT.iterdir() if p.name != Path(__file__).name)
    print(f"{len(cases)} cases, {size / 1024:.0f} KiB of fixtures in {OUT}")


if __name__ == "__main__":
    main()
