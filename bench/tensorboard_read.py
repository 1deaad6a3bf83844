"""Reads a ferrovision run's TensorBoard event files with TensorBoard's own reader and prints
every scalar series and image tag, to check that the files are in the standard format.

    pip install tensorboard
    python3 bench/tensorboard_read.py runs/<id>/tensorboard
"""
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(path):
    accumulator = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    for tag in sorted(tags["scalars"]):
        events = accumulator.Scalars(tag)
        shown = ", ".join(f"{e.step}:{e.value:.4g}" for e in events[:6])
        more = f", ... ({len(events)} values)" if len(events) > 6 else ""
        print(f"scalar {tag}: {shown}{more}")
    for tag in sorted(tags["images"]):
        for image in accumulator.Images(tag):
            print(f"image {tag}: step {image.step}, {image.width}x{image.height}, {len(image.encoded_image_string)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
