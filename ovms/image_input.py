"""Binary image input as OVMS has it: JPEG/PNG sent as BYTES to a 4-D input, decoded into the input's tensor.

OVMS (docs/binary_input_layout_and_shape.md, src/tensor_conversion*.cpp) decodes with OpenCV
(``cv::imdecode(..., IMREAD_UNCHANGED)``: BGR channel order, grayscale stays one channel, PNG alpha stays), resizes
with ``cv::resize`` (bilinear) to the input's height and width when they are fixed or ranges, converts to the input's
precision (``convertTo``, no scaling: pixels stay 0-255) and stacks the images along the batch dimension. We use
the same library for the same pixels. The request's shape is ``[N]``: only the number of images.

Layouts: an input served as NHWC (the default for a 4-D input, and what ``--layout NHWC:NCHW`` gives) takes the
images as they are; an input served as NCHW gets them transposed (OVMS refuses those with UNSUPPORTED_LAYOUT;
taking them is a convenience); any other layout is refused with OVMS's message.

Checking happens on the event loop (cheap: counts and shapes); decoding happens in ``ImageBatch.decode``, which
the backend calls in its worker thread (OpenCV releases the GIL while decoding and resizing).
"""
from __future__ import annotations

import asyncio
import os
from typing import Sequence

import numpy as np

from ovms._native.codec_errors import CodecError
from ovms.errors import Kind, ServingError
from ovms.types import NUMPY_DTYPE, Tensor, TensorSpec

# A 94 KB PNG can claim 81 megapixels; OpenCV's own limit (2^30 pixels, 3 GB of BGR) lets one request take the
# memory of a small machine. OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, so it is set when this module is
# imported (with the serving stack, before any graph node could import cv2): 2^26 pixels, an 8192x8192 image,
# 200 MB. An operator may set it higher.
MAX_IMAGE_PIXELS = 1 << 26
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
# Precisions OVMS converts decoded images to (tensor_conversion_common.cpp getMatTypeFromTensorPrecision).
IMAGE_DATATYPES = {"FP32", "FP64", "FP16", "INT16", "UINT8", "INT8", "UINT16", "INT32"}


def is_image_input(tensor: Tensor, spec: TensorSpec) -> bool:
    """BYTES sent to a 4-D numeric input: OVMS reads it as encoded images."""
    return tensor.datatype == "BYTES" and spec.datatype != "BYTES" and len(spec.shape) == 4


def _layout_axes(spec: TensorSpec) -> str:
    """'NHWC' or 'NCHW': how the input wants the images; refuses other layouts as OVMS does."""
    layout = (spec.layout or "").upper().replace("[", "").replace("]", "").replace(",", "")
    if layout in ("", "...", "N...", "NHWC", "N...HWC"):
        return "NHWC"
    if layout == "NCHW":
        return "NCHW"
    raise ServingError(Kind.UNSUPPORTED_LAYOUT,
                       f"input {spec.name} has layout {spec.layout}; serve it as NHWC (e.g. --layout NHWC:NCHW for "
                       "a model that takes NCHW) to send JPEG/PNG images to it")


class ImageBatch:
    """The encoded images of one request input, checked against the input; ``decode`` makes the tensor."""

    __slots__ = ("spec", "images", "axes")

    def __init__(self, spec: TensorSpec, images: Sequence[bytes], axes: str) -> None:
        self.spec = spec
        self.images = images
        self.axes = axes

    @classmethod
    def from_tensor(cls, tensor: Tensor, spec: TensorSpec) -> "ImageBatch":
        """Check the request side (shape [N], batch size, layout, precision) without decoding anything."""
        name = spec.name
        if len(tensor.shape) != 1:
            raise ServingError(Kind.INVALID_NO_OF_SHAPE_DIMENSIONS,
                               f"Expected number of input shape dimensions: 1; Actual: {len(tensor.shape)}; input "
                               f"name: {name} (binary image input: shape [N] for N encoded images)")
        axes = _layout_axes(spec)
        if spec.datatype not in IMAGE_DATATYPES:
            raise ServingError(Kind.INVALID_PRECISION, f"input {name} is {spec.datatype}; binary images convert "
                                                       f"to {', '.join(sorted(IMAGE_DATATYPES))} only")
        try:
            images = tensor.as_array().reshape(-1).tolist()
        except CodecError as exc:
            raise ServingError(Kind.IMAGE_PARSING_FAILED, f"{exc}; input name: {name} (each image must be "
                                                          "preceded by its length as 4 bytes, little endian)") from None
        if not images:
            raise ServingError(Kind.BYTES_CONTENTS_EMPTY, f"input name: {name}")
        if tensor.shape[0] != len(images):
            raise ServingError(Kind.INVALID_BATCH_SIZE, f"Expected: {tensor.shape[0]}; Actual: {len(images)} "
                                                        f"images; input name: {name}")
        batch = spec.shape[0]
        if batch != -1 and batch != len(images):
            raise ServingError(Kind.INVALID_BATCH_SIZE, f"Expected: {batch}; Actual: {len(images)}; input name: "
                                                        f"{name}")
        return cls(spec, images, axes)

    def decode(self, dim_bounds: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """The images as one array of the input's shape and precision (blocking; call off the event loop).

        ``dim_bounds``: (min, max) of each input dimension where the backend knows them (max -1: unbounded). A
        height or width with a range takes the first image's size brought into the range (OVMS: "adjusted to the
        nearer border"), and every image is resized to it; an unbounded one takes the first image's size, and the
        others must have it.
        """
        import cv2

        spec, name = self.spec, self.spec.name
        h_axis, w_axis, c_axis = (1, 2, 3) if self.axes == "NHWC" else (2, 3, 1)
        height, width, channels = spec.shape[h_axis], spec.shape[w_axis], spec.shape[c_axis]
        h_range = _range(dim_bounds, h_axis) if height == -1 else None
        w_range = _range(dim_bounds, w_axis) if width == -1 else None
        pixels = []
        for index, encoded in enumerate(self.images):
            try:
                image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED) if encoded else None
            except cv2.error:  # the size check (OPENCV_IO_MAX_IMAGE_PIXELS), before any pixel is decoded
                raise ServingError(Kind.IMAGE_PARSING_FAILED,
                                   f"input name: {name}; image {index} is larger than "
                                   f"{os.environ['OPENCV_IO_MAX_IMAGE_PIXELS']} pixels "
                                   "(OPENCV_IO_MAX_IMAGE_PIXELS)") from None
            if image is None:
                raise ServingError(Kind.IMAGE_PARSING_FAILED,
                                   f"input name: {name}; image {index} ({len(encoded)} bytes) is not a JPEG or PNG "
                                   "image that OpenCV can decode")
            if image.ndim == 2:
                image = image[:, :, np.newaxis]
            if channels != -1 and image.shape[2] != channels:
                raise ServingError(Kind.INVALID_NO_OF_CHANNELS, f"Expected: {channels}; Actual: {image.shape[2]}; "
                                                                f"input name: {name}")
            if pixels:
                first = pixels[0]
                if image.shape[2] != first.shape[2]:
                    raise ServingError(Kind.INVALID_NO_OF_CHANNELS,
                                       f"image {index} has {image.shape[2]} channels, image 0 has {first.shape[2]}; "
                                       f"input name: {name}")
            if not pixels:
                target_h = height if height != -1 else _clamp(image.shape[0], h_range)
                target_w = width if width != -1 else _clamp(image.shape[1], w_range)
            elif ((height == -1 and h_range is None and image.shape[0] != target_h)
                  or (width == -1 and w_range is None and image.shape[1] != target_w)):
                raise ServingError(Kind.BINARY_IMAGES_RESOLUTION_MISMATCH,
                                   f"image {index} is {image.shape[1]}x{image.shape[0]}, image 0 is "
                                   f"{pixels[0].shape[1]}x{pixels[0].shape[0]}; input name: {name}")
            if image.shape[:2] != (target_h, target_w):
                image = cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_LINEAR)
                if image.ndim == 2:
                    image = image[:, :, np.newaxis]
            pixels.append(image)
        batch = np.stack(pixels)
        if batch.dtype != np.uint8 or spec.datatype != "UINT8":
            batch = _convert(batch, NUMPY_DTYPE[spec.datatype])
        if self.axes == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch)


def _range(dim_bounds, axis: int) -> tuple[int, int] | None:
    """A dimension's (min, max) when it is a range, None when it takes any size."""
    if dim_bounds is None:
        return None
    low, high = dim_bounds[axis]
    return None if high == -1 and low <= 1 else (low, high)


def _clamp(size: int, bounds: tuple[int, int] | None) -> int:
    if bounds is None:
        return size
    low, high = bounds
    return max(low, size if high == -1 else min(size, high))


def _convert(batch: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """cv::Mat::convertTo without scaling: round and saturate into integer types."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(batch), info.min, info.max).astype(dtype)
    return batch.astype(dtype)


async def decode_off_loop(arrays: dict) -> dict:
    """``arrays`` with every ImageBatch decoded in a thread: for servables without worker threads of their own
    (pipelines); the OpenVINO backend decodes in its infer request's thread instead."""
    batches = {name: value for name, value in arrays.items() if isinstance(value, ImageBatch)}
    if not batches:
        return arrays
    decoded = await asyncio.to_thread(lambda: {name: batch.decode() for name, batch in batches.items()})
    return {**arrays, **decoded}
