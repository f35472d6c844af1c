"""Images and audio: reading them from any dataset's layout, and making the built-in samples.

Hub datasets hand over decoded images (PIL) and audio (arrays or decoders); local files and the
built-in samples hold paths to PNG and WAV files beside the data file. Everything becomes an RGB
PIL image or a mono float32 array at the model's sampling rate.
"""

from __future__ import annotations

import io
import random
import wave
from pathlib import Path
from typing import Any

SAMPLING_RATE = 16_000  # what speech models (wav2vec2, Whisper) take
SHAPES = ("circle", "square", "triangle", "cross", "ring")
_COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 30), (150, 60, 190), (30, 170, 170)]


def load_image(value: Any, base: Path | None):
    """An RGB PIL image from a PIL image, a path (relative to ``base``) or a {bytes, path} dict."""
    from PIL import Image

    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if isinstance(value, str):
        path = Path(value)
        value = path if path.is_absolute() or base is None else base / path
    image = value if isinstance(value, Image.Image) else Image.open(value)
    return image.convert("RGB")


def load_audio(value: Any, base: Path | None, rate: int = SAMPLING_RATE):
    """A mono float32 array at ``rate`` Hz from an {array, sampling_rate} dict, an audio decoder
    (datasets 4+), or a path to a 16-bit PCM WAV file (relative to ``base``)."""
    import numpy as np

    if isinstance(value, dict) and "array" in value:
        samples, source_rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    elif hasattr(value, "get_all_samples"):
        decoded = value.get_all_samples()
        samples, source_rate = decoded.data.numpy().astype(np.float32), int(decoded.sample_rate)
    else:
        path = Path(value["path"] if isinstance(value, dict) else value)
        samples, source_rate = _read_wav(path if path.is_absolute() or base is None else base / path)
    if samples.ndim > 1:  # channels first (decoders) or last (arrays): average them
        samples = samples.mean(axis=0 if samples.shape[0] < samples.shape[-1] else -1)
    if source_rate != rate:
        positions = np.arange(0, len(samples), source_rate / rate)
        samples = np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)
    return samples


def _read_wav(path: Path):
    import numpy as np

    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are read")
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768
        channels = wav.getnchannels()
        return frames.reshape(-1, channels).mean(axis=1), wav.getframerate()


def write_wav(path: Path, samples: Any, rate: int = SAMPLING_RATE) -> None:
    import numpy as np

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())


def draw_scene(rng: random.Random, size: int = 64, count: int | None = None):
    """An image with 1 to 3 coloured shapes; returns it with [(shape, [x0, y0, x1, y1])]."""
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(count or rng.randint(1, 3)):
        shape, colour = rng.choice(SHAPES), rng.choice(_COLOURS)
        side = rng.randint(size // 5, size // 2)
        x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
        box = [x0, y0, x0 + side, y0 + side]
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape == "ring":
            draw.ellipse(box, outline=colour, width=max(2, side // 6))
        elif shape == "square":
            draw.rectangle(box, fill=colour)
        elif shape == "triangle":
            draw.polygon([(x0, y0 + side), (x0 + side // 2, y0), (x0 + side, y0 + side)], fill=colour)
        else:
            bar = max(2, side // 4)
            draw.rectangle([x0 + (side - bar) // 2, y0, x0 + (side + bar) // 2, y0 + side], fill=colour)
            draw.rectangle([x0, y0 + (side - bar) // 2, x0 + side, y0 + (side + bar) // 2], fill=colour)
        objects.append((shape, box))
    return image, objects


def write_scenes(folder: Path, count: int, rng: random.Random, size: int,
                 objects: int | None = None) -> list[tuple[str, list[tuple[str, list[int]]]]]:
    """``count`` drawn images saved as PNG under ``folder/images``: (relative path, objects) each."""
    (folder / "images").mkdir()
    scenes = []
    for i in range(count):
        image, drawn = draw_scene(rng, size=size, count=objects)
        image.save(folder / "images" / f"{i:05d}.png")
        scenes.append((f"images/{i:05d}.png", drawn))
    return scenes


def speak(text: str, rng: random.Random, rate: int = SAMPLING_RATE):
    """A stand-in for speech: one short harmonic tone per word (pitch from the word), with pauses
    and a little noise. Not intelligible; it gives a speech model real audio of a realistic length."""
    import numpy as np

    pieces = []
    for word in text.split():
        duration = 0.08 + 0.035 * len(word)
        t = np.arange(int(duration * rate)) / rate
        pitch = 110 + (sum(map(ord, word)) % 24) * 12
        tone = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in (1, 2, 3)) * np.hanning(len(t)) * 0.3
        pieces += [tone, np.zeros(int(rng.uniform(0.04, 0.12) * rate))]
    audio = np.concatenate(pieces) if pieces else np.zeros(rate // 10)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 0.005, len(audio))
    return (audio + noise).astype(np.float32)
