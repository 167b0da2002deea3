"""Image generation and edits on openvino_genai's Text2ImagePipeline, Image2ImagePipeline and InpaintingPipeline.

As OVMS's ImageGenCalculator (src/image_gen/pipelines.cpp) the inpainting pipeline is loaded from the model
directory and the other two are built from it, so the three share one copy of the weights. A model without a VAE
encoder (text-to-image only exports) serves generations, and edits answer that the pipeline is not available.

The pipelines block and openvino_genai 2026.4's Python API has no ``clone()`` (OVMS clones the C++ pipeline per
request), so one call runs at a time per servable, in a worker thread; ``MAX_WAITING`` more wait their turn
and the next ones get 503 (SERVER_BUSY), as a text generation servable answers when its queue is full.
"""
from __future__ import annotations

import asyncio
import io
import logging
import threading

import numpy as np
import openvino as ov
import openvino_genai as ov_genai

from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.genai.types import ImageRequest, ImageResult
from ovms.graph import GenAINodeOptions, ImageGenLimits
from ovms.servable import ImageGenerationServable

log = logging.getLogger("ovms.images")

MAX_WAITING = 8  # requests queued behind the running one before 503


def png(image: np.ndarray) -> bytes:
    """One uint8 [H, W, 3] image as a PNG file (lossless: the client decodes the pipeline's exact pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _cancelled() -> ServingError:
    return ServingError(Kind.GENAI_INVALID_REQUEST, "the client closed the connection before the answer: request "
                                                    "cancelled")


def _invalid(message: str) -> ServingError:
    return ServingError(Kind.GENAI_INVALID_REQUEST, message)


def checked_options(requested: dict, limits: ImageGenLimits) -> dict:
    """A request's pipeline options against the graph's limits, with the graph's defaults added; OVMS's checks
    and messages (imagegenutils.cpp ensureAcceptableAndDefaultsSetRequestOptions).

    max_resolution: OVMS documents that larger requests are refused but its 2026.2 sources never check it; here a
    width or height above it is refused, in the same words as the other limits."""
    options = dict(requested)
    if limits.default_resolution is not None:
        options.setdefault("width", limits.default_resolution[0])
        options.setdefault("height", limits.default_resolution[1])
    n = options.get("num_images_per_prompt")
    if n is not None:
        if n > limits.max_num_images_per_prompt:
            raise _invalid(f"num_images_per_prompt/n is greater than maxNumImagesPerPrompt: "
                           f"{limits.max_num_images_per_prompt}")
        if n <= 0:
            raise _invalid("num_images_per_prompt/n must be higher than 0")
    steps = options.get("num_inference_steps")
    if steps is None:
        options["num_inference_steps"] = limits.default_num_inference_steps
    elif steps > limits.max_num_inference_steps:
        raise _invalid(f"num_inference_steps is greater than maxNumInferenceSteps: {limits.max_num_inference_steps}")
    elif steps <= 0:
        raise _invalid("num_inference_steps must be higher than 0")
    for name in ("width", "height"):
        if name in options and options[name] <= 0:
            raise _invalid(f"{name} must be higher than 0")
    width, height = options.get("width"), options.get("height")
    max_width, max_height = limits.max_resolution
    if (width or 0) > max_width or (height or 0) > max_height:
        shown = "x".join("(model default)" if v is None else str(v) for v in (width, height))
        raise _invalid(f"resolution {shown} is greater than maxResolution: {max_width}x{max_height}")
    strength = options.get("strength")
    if strength is not None:
        if strength > 1.0:
            raise _invalid("strength is greater than maxStrength: 1")
        if strength < 0.0:
            raise _invalid("strength is less than minStrength: 0")
    return options


class ImageGenServable(ImageGenerationServable):
    platform = "OpenVINO GenAI"

    def __init__(self, name: str, options: GenAINodeOptions) -> None:
        self.name, self.version, self.options = name, 1, options
        self.limits: ImageGenLimits = options.image or ImageGenLimits()
        path = options.models_path
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path}: model_index.json missing; models_path of an image generation graph must "
                                 "point at a diffusers pipeline exported with optimum-cli export openvino")
        device, properties = options.device, dict(options.plugin_config)
        self._adapters = {a.alias: ov_genai.Adapter(str(a.path)) for a in self.limits.lora_adapters}
        if self._adapters:  # the pipeline must know every adapter at compile time to switch them per request
            properties["adapters"] = ov_genai.AdapterConfig(list(self._adapters.values()))
        self._inpainting = self._image2image = None
        try:
            if (path / "vae_encoder" / "openvino_model.xml").is_file():
                self._inpainting = ov_genai.InpaintingPipeline(str(path), device, **properties)
                self._image2image = ov_genai.Image2ImagePipeline(self._inpainting)
                self._text2image = ov_genai.Text2ImagePipeline(self._image2image)
            else:
                self._text2image = ov_genai.Text2ImagePipeline(str(path), device, **properties)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: openvino_genai could not load the image generation pipeline: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
        self._lock = threading.Lock()
        self._waiting = 0  # requests in this servable, running or queued (touched on the event loop only)

    def aliases(self) -> list[str]:
        return [*self._adapters, *self.limits.composite_lora_adapters]

    # -- requests

    async def generate_images(self, request: ImageRequest, *, client_gone=None) -> ImageResult:
        return await self._run(self._text2image, request, "Text-to-image", client_gone)

    async def edit_images(self, request: ImageRequest, *, client_gone=None) -> ImageResult:
        if request.mask is not None:
            if self._inpainting is None:
                raise ServingError(Kind.MEDIAPIPE_PRECONDITION_FAILED,
                                   "Inpainting pipeline is not available for this model")
            return await self._run(self._inpainting, request, "Inpainting", client_gone)
        if self._image2image is None:
            raise ServingError(Kind.MEDIAPIPE_PRECONDITION_FAILED,
                               "Image-to-image pipeline is not available for this model")
        return await self._run(self._image2image, request, "Image-to-image", client_gone)

    async def _run(self, pipeline, request: ImageRequest, what: str, client_gone) -> ImageResult:
        if self._waiting > MAX_WAITING:
            raise ServingError(Kind.SERVER_BUSY, f"{self._waiting} image requests in flight on {self.name}: one "
                                                 f"runs at a time and {MAX_WAITING} may wait")
        options = self._pipeline_options(request)
        self._waiting += 1
        try:
            return await asyncio.to_thread(self._generate, pipeline, request, options, what, client_gone)
        finally:
            self._waiting -= 1

    def _pipeline_options(self, request: ImageRequest) -> dict:
        options = checked_options(request.options, self.limits)
        if request.lora_alphas and not self._adapters:
            raise ServingError(Kind.GENAI_INVALID_REQUEST, "lora_alphas is not supported when no dynamic LoRA "
                                                           "adapters are available")
        if self._adapters:
            options["adapters"] = self._adapter_config(request)
        return options

    def _adapter_config(self, request: ImageRequest):
        """OVMS's routing: the request's model names an adapter or a composite of them, else every adapter is off
        (http_image_gen_calculator.cc applyLoraAdapterIfNeeded). Alpha: the request's lora_alphas, then the
        composite's, then the adapter's."""
        configured = {a.alias: a.alpha for a in self.limits.lora_adapters}
        composite = self.limits.composite_lora_adapters.get(request.model)
        if composite is not None:
            active = [(alias, alpha if alpha is not None else configured[alias]) for alias, alpha in composite]
        elif request.model in self._adapters:
            active = [(request.model, configured[request.model])]
        else:
            active = []
        allowed = {alias for alias, _ in active} if active else set(self._adapters)
        for alias in request.lora_alphas:
            if alias not in allowed:
                raise ServingError(Kind.GENAI_INVALID_REQUEST, f"lora_alphas key '{alias}' not allowed when "
                                                               f"targeting '{request.model}'")
        config = ov_genai.AdapterConfig()
        if not active:
            for adapter in self._adapters.values():
                config.add(adapter, 0.0)
        for alias, alpha in active:
            config.add(self._adapters[alias], float(request.lora_alphas.get(alias, alpha)))
        return config

    def _generate(self, pipeline, request: ImageRequest, options: dict, what: str, client_gone) -> ImageResult:
        with self._lock:
            if client_gone is not None:
                if client_gone():  # queued behind other requests while its client left: not started
                    raise _cancelled()
                # asked between denoising steps: returning True stops the pipeline, which then returns no image
                options["callback"] = lambda step, num_steps, latent: client_gone()
            try:
                if request.image is None:
                    result = pipeline.generate(request.prompt, **options)
                elif request.mask is None:
                    result = pipeline.generate(request.prompt, ov.Tensor(request.image), **options)
                else:
                    result = pipeline.generate(request.prompt, ov.Tensor(request.image), ov.Tensor(request.mask),
                                               **options)
            except RuntimeError as exc:
                # openvino_genai checks the options (e.g. a size not divisible by the VAE scale) by throwing
                # its messages end with the reason, after a "Check ... failed at <source file>" line
                lines = [line for line in str(exc).splitlines() if line.strip()]
                message = lines[-1].strip() if lines else type(exc).__name__
                log.warning("%s generation on %s failed: %s", what, self.name, message)
                raise ServingError(Kind.GENAI_INVALID_REQUEST, f"{what} generation failed: {message}") from None
            if len(result.shape) != 4:  # the callback stopped it: an empty tensor (shape [])
                raise _cancelled()
            images = np.array(result.data, copy=True)  # the next generate() overwrites result.data
        return ImageResult([png(image) for image in images])
