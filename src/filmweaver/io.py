"""Video and image I/O: atomic writes, H.264 mp4 through PyAV, contact sheets.

Frames are float tensors ``[T, 3, H, W]`` in ``[0, 1]`` unless a function says otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename.

    A crash mid-write leaves the old file (or none), never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".part", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600 files; give the result the mode a plain open() would (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's contents, hashed once per version of it (path, size, mtime) in a process:
    a project's files are checked on every resume, a LoRA file on every follow-up command."""
    st = os.stat(path)
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def json_text(data) -> str:
    """JSON a person can read that is written at the C encoder's speed (``indent`` falls back to the
    pure-Python one, 4x slower on a long manifest): one top-level key per line, and a list of objects
    (a manifest's shots) one object per line."""
    enc = functools.partial(json.dumps, ensure_ascii=False, separators=(", ", ": "))
    if not isinstance(data, dict) or not data:
        return enc(data) + "\n"
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            lines.append(f"{enc(key)}: [\n" + ",\n".join("  " + enc(x) for x in value) + "\n ]")
        else:
            lines.append(f"{enc(key)}: {enc(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path: str | Path, data) -> None:
    write_text(path, json_text(data))


def load_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a weights file a user gives: safetensors, or a torch file read with
    ``weights_only=True`` (a pickle of anything but tensors is refused, never executed). A checkpoint
    that nests its tensors under ``state_dict`` / ``module`` / ``model`` is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "module", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors")
    return state


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` in [0, 1] -> uint8 ``[..., H, W, 3]``."""
    arr = (frames.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.movedim(-3, -1).cpu().numpy()


def as_8bit(frames: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` in [0, 1] rounded to 8-bit values (what a PNG or a lossless read-back holds),
    still float in [0, 1]."""
    return torch.from_numpy(to_uint8(frames)).movedim(-1, -3).float() / 255.0


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(image))


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read an image as ``[3, H, W]`` in [0, 1]; ``size=(H, W)`` resizes (shortest side) and centre-crops."""
    img = Image.open(path).convert("RGB")
    if size is not None:
        h, w = size
        scale = max(h / img.height, w / img.width)
        img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class VideoWriter:
    """An H.264 (yuv420p) mp4 written frame by frame (``[H, W, 3]`` uint8), atomically: the file
    appears complete on ``close()``, or not at all if the writer is dropped by an error."""

    def __init__(self, path: str | Path, fps: float, crf: int = 18):
        self.path, self.fps, self.crf = path, fps, crf
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._container = None
        self.frames = 0

    def _open(self, h: int, w: int) -> None:
        import av

        self._container = av.open(self._tmp, mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=round(self.fps))
        # yuv420p needs even sides: odd frames are padded by edge replication rather than resampled
        self._pad = (h % 2, w % 2)
        self._stream.width, self._stream.height = w + self._pad[1], h + self._pad[0]
        self._stream.pix_fmt = "yuv420p"
        # x264's macroblock-tree rate control made encodes of identical frames differ from run to run
        # (up to 24/255 per pixel after decoding; 7 of 12 encodes of one rendered shot): a
        # regenerated shot must give the same file, so it is off (a small loss in compression)
        self._stream.options = {"crf": str(self.crf), "x264-params": "mbtree=0"}

    def write(self, frame: np.ndarray) -> None:
        import av

        if self._container is None:
            self._open(*frame.shape[:2])
        ph, pw = self._pad
        if ph or pw:
            frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
        self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        self.frames += 1

    def close(self) -> None:
        if self._container is not None:
            self._container.mux(self._stream.encode())
            self._container.close()
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the partial file."""
        if self._container is not None:
            self._container.close()
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | Path, frames: torch.Tensor | Sequence[torch.Tensor], fps: float, crf: int = 18) -> None:
    """Write ``[T, 3, H, W]`` frames in [0, 1] as H.264 (yuv420p) mp4, atomically."""
    if isinstance(frames, torch.Tensor):
        frames = [frames]
    with VideoWriter(path, fps, crf) as writer:
        for arr in (to_uint8(f) for f in frames):
            for frame in arr:
                writer.write(frame)


STORYBOARD_THUMB_WIDTH = 320  # twice the storyboard's thumbnails: sharp after its resize


def storyboard_thumbnails(frames: torch.Tensor, width: int = STORYBOARD_THUMB_WIDTH) -> torch.Tensor:
    """``[N, 3, H, W]`` frames in [0, 1] -> ``[N, 3, h, width]`` uint8 (aspect kept; never enlarged)."""
    _, _, h, w = frames.shape
    if w > width:
        size = (max(1, round(h * width / w)), width)
        frames = torch.nn.functional.interpolate(frames.float(), size=size, mode="bilinear", antialias=True,
                                                 align_corners=False)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def concat_videos(paths: Sequence[str | Path], path: str | Path) -> None:
    """Join mp4s made by :func:`write_video` with one encoding (size, rate, parameter sets) into one
    file, atomically, by copying their H.264 packets: lossless, and no decoding or encoding, so a
    film of many shots is assembled in a fraction of a shot's time. Raises ``ValueError`` when the
    inputs' encodings differ (then decode and :func:`write_video` them instead)."""
    import av

    with atomic_path(path) as tmp, av.open(tmp, mode="w", format="mp4") as out:
        ostream, first, offset = None, None, 0
        for src_path in paths:
            with av.open(str(src_path)) as src:
                stream = src.streams.video[0]
                key = (stream.codec_context.name, stream.codec_context.extradata, stream.width, stream.height,
                       stream.time_base, stream.average_rate)
                if ostream is None:
                    ostream, first = out.add_stream_from_template(stream), key
                elif key != first:
                    raise ValueError(f"{src_path}: encoded unlike {paths[0]} ({key[2]}x{key[3]} vs {first[2]}x{first[3]})")
                end = offset
                for packet in src.demux(stream):
                    if packet.dts is None:  # the demuxer's empty end-of-stream packet
                        continue
                    # each shot's timestamps start where the previous shot's frames ended
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    end = max(end, packet.pts + (packet.duration or 0))
                    packet.stream = ostream
                    out.mux(packet)
                offset = end


def read_video(path: str | Path) -> tuple[torch.Tensor, float]:
    """Read an mp4 as ``([T, 3, H, W] in [0, 1], fps)``."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    arr = torch.from_numpy(np.stack(frames)).float() / 255.0
    return arr.permute(0, 3, 1, 2).contiguous(), fps


# Captions hold whatever a story's prompts hold (dashes, accents, CJK): Pillow's default bitmap font
# draws boxes for most of it. DejaVu Sans ships with matplotlib (a dependency) and covers Latin, Greek
# and Cyrillic; for other scripts the first installed font that covers a line is used (a CJK font where
# the system has one; fontconfig's usual families).
_FALLBACK_FONTS = ("NotoSansCJK", "NotoSerifCJK", "SourceHanSans", "wqy", "WenQuanYi", "DroidSansFallback",
                   "unifont", "ArialUnicode", "NotoSans-")


@functools.cache
def _font_files() -> tuple[str, ...]:
    import matplotlib
    from matplotlib import font_manager

    files = [str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")]
    system = font_manager.findSystemFonts()
    for key in _FALLBACK_FONTS:
        files += sorted(f for f in system if key.lower() in Path(f).name.lower() and f not in files)
    return tuple(f for f in files if Path(f).is_file())


@functools.cache
def _covered(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or {})
    except Exception:  # an unreadable font file: covers nothing
        return frozenset()


@functools.cache
def _font_file_for(chars: frozenset[int]) -> str | None:
    files = _font_files()
    if not files:
        return None
    return max(files, key=lambda f: (len(chars & _covered(f)), f == files[0]))


def _font(size: int, text: str = ""):
    """A TrueType font of ``size`` px that covers ``text`` best (DejaVu Sans first)."""
    path = _font_file_for(frozenset(ord(c) for c in text if not c.isspace()))
    return ImageFont.load_default(size=size) if path is None else _truetype(path, size)


@functools.cache
def _truetype(path: str, size: int):
    return ImageFont.truetype(path, size)


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters, broken at spaces (and inside words longer than a line,
    as unspaced scripts such as Chinese need)."""
    words, lines, line = [], [], ""
    for word in text.split():
        words += [word[i:i + width] for i in range(0, len(word), width)]
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return lines


# For a report page a browser test opens: when the page has loaded, <body data-images-ok> holds the count
# of its images (or "FAILED" and those that did not load), and data-js-error any script error
PAGE_CHECK_SCRIPT = (
    "<script>window.addEventListener('load',()=>{const bad=[...document.images].filter(i=>!i.complete||i.naturalWidth===0)"
    ".map(i=>i.getAttribute('src'));document.body.dataset.imagesOk=bad.length?'FAILED '+bad.join(' '):String(document.images.length);"
    "});window.addEventListener('error',e=>{document.body.dataset.jsError=String(e.message)});</script>")


def contact_sheet(rows: list[tuple[str, list[tuple[torch.Tensor, str]]]], title: str = "", thumb: int = 160,
                  banner: str | None = None) -> Image.Image:
    """A grid: one row per item, a caption column, then labelled thumbnails.

    ``rows``: ``[(row caption, [(image [3, H, W], label), ...]), ...]``.
    """
    pad, cap_w = 8, 260
    ncols = max((len(images) for _, images in rows), default=1) or 1
    first = next((img for _, images in rows for img, _ in images), None)
    aspect = (first.shape[1] / first.shape[2]) if first is not None else 1.0
    th, tw = max(16, round(thumb * aspect)), thumb
    row_h = th + 18 + pad
    head = 30 + (22 if banner else 0)
    W = cap_w + ncols * (tw + pad) + pad
    H = head + len(rows) * row_h + pad
    sheet = Image.new("RGB", (W, H), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 8), title, fill=(20, 20, 20), font=_font(16, title))
    if banner:
        draw.rectangle([0, 30, W, 50], fill=(190, 30, 30))
        draw.text((pad, 33), banner, fill=(255, 255, 255), font=_font(13, banner))
    for r, (caption, images) in enumerate(rows):
        y = head + r * row_h
        for k, line in enumerate(_wrap(caption, 40)[: max(1, (th + 16) // 13)]):
            draw.text((pad, y + k * 13), line, fill=(30, 30, 30), font=_font(11, line))
        for c, (img, label) in enumerate(images):
            x = cap_w + c * (tw + pad)
            pil = to_pil(img).resize((tw, th), Image.BICUBIC)
            sheet.paste(pil, (x, y))
            draw.text((x, y + th + 2), label[:28], fill=(60, 60, 60), font=_font(10, label[:28]))
    return sheet


def save_png(image: Image.Image, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
