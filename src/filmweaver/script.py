"""Story scripts: the ST-Bench format, loaded unchanged, plus optional filmweaver extensions.

An ST-Bench script is ``{story_name, story_overview, scenes: [{scene_num, video_prompts[],
first_frame_prompt[], cut[]}]}``. Everything filmweaver adds is optional:

* story level: ``seed``, ``negative_prompt``, ``characters`` (a character sheet: name, description,
  reference images), ``locations`` (name, description, reference images);
* shot level, as ``scenes[i].shots[j]`` (parallel to ``video_prompts``): ``duration_s`` or
  ``num_frames``, ``seed``, ``negative_prompt``, ``characters`` (names from the sheet), ``location``.

Loading goes in three passes. The decoded JSON is checked for what no story contains (nesting deeper
than :data:`MAX_NESTING`, unpaired surrogates); pydantic checks types; :func:`check_story` then checks
what types cannot (list lengths, the first cut, empty prompts, unknown names, bounds on seeds and
durations, reference images that are not images or lie outside the story's folder). Every problem is
reported with its JSON path (``scenes[2].cut[1]``), the file, and what was expected, all at once.

A shot without ``duration_s`` or ``num_frames`` lasts the engine's ``shot_chunks`` chunks (one chunk
by default: 81 frames, about 5 s, with Wan). A duration becomes ``round(duration_s * fps)`` frames and
is rounded up to whole chunks (a chunk is the unit the model generates); the manifest records each
shot's real frame count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Bounds on what a script may ask for: a seed feeds torch.Generator.manual_seed (64 bits, and the
# engine adds shot offsets); a shot is at most ten minutes, the longest anything in the field makes.
MAX_SEED = 2**63 - 1
MAX_SHOT_FRAMES = 10_000
MAX_SHOT_SECONDS = 600.0
MAX_NESTING = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ScriptIssue(BaseModel):
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ScriptError(ValueError):
    """A story script that cannot be used. ``issues`` lists every problem with its JSON path."""

    def __init__(self, file: str | Path | None, issues: list[ScriptIssue]):
        self.file = str(file) if file is not None else "<story>"
        self.issues = issues
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"{self.file}: {len(issues)} problem(s) in the story script:\n{lines}")


class _Strict(BaseModel):
    # Unknown keys are kept (ST-Bench variants carry extra fields) but our own keys are typed strictly:
    # "cut": "yes" must be an error, not a truthy string.
    model_config = ConfigDict(extra="allow", strict=True)


class ReferenceSpec(_Strict):
    name: str
    description: str = ""
    reference_images: list[str] = Field(default_factory=list)


class CharacterSpec(ReferenceSpec):
    """One entry of the character sheet."""


class LocationSpec(ReferenceSpec):
    """A place with optional reference images (MR2V: seeds the memory before the first shot)."""


class ShotOptions(_Strict):
    duration_s: float | None = None
    num_frames: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    characters: list[str] = Field(default_factory=list)
    location: str | None = None


class SceneSpec(_Strict):
    scene_num: int
    video_prompts: list[str]
    first_frame_prompt: list[str] | None = None
    cut: list[bool] | None = None
    shots: list[ShotOptions] | None = None


class StoryScript(_Strict):
    story_name: str = ""
    story_overview: str = ""
    scenes: list[SceneSpec]
    seed: int | None = None
    negative_prompt: str | None = None
    characters: list[CharacterSpec] = Field(default_factory=list)
    locations: list[LocationSpec] = Field(default_factory=list)

    # Set by load_story; relative reference-image paths resolve against it.
    base_dir: str | None = Field(default=None, exclude=True)

    def shots(self) -> list[Shot]:
        """The story flattened to shots in film order (0-based ``index``, 1-based ``number``)."""
        out: list[Shot] = []
        for si, scene in enumerate(self.scenes):
            for k, prompt in enumerate(scene.video_prompts):
                opts = scene.shots[k] if scene.shots else ShotOptions()
                out.append(
                    Shot(
                        index=len(out),
                        scene_index=si,
                        scene_num=scene.scene_num,
                        index_in_scene=k,
                        prompt=prompt,
                        first_frame_prompt=scene.first_frame_prompt[k] if scene.first_frame_prompt else None,
                        cut=scene.cut[k] if scene.cut else (k == 0),
                        options=opts,
                        negative_prompt=opts.negative_prompt or self.negative_prompt,
                    )
                )
        return out

    def resolve(self, ref: str) -> Path:
        p = Path(ref)
        if not p.is_absolute() and self.base_dir:
            p = Path(self.base_dir) / p
        return p

    def references(self) -> list[tuple[str, str, Path]]:
        """Every reference image as (kind, name, path): characters first, then locations."""
        refs = []
        for kind, specs in (("character", self.characters), ("location", self.locations)):
            for spec in specs:
                refs.extend((kind, spec.name, self.resolve(img)) for img in spec.reference_images)
        return refs

    def summary(self) -> str:
        shots = self.shots()
        cuts = sum(s.cut for s in shots)
        lines = [
            f"{self.story_name or '(untitled)'}: {len(self.scenes)} scene(s), {len(shots)} shot(s), "
            f"{cuts} cut(s), {len(shots) - cuts} continuation(s)",
        ]
        if self.characters:
            lines.append("characters: " + ", ".join(c.name for c in self.characters))
        if self.locations:
            lines.append("locations: " + ", ".join(loc.name for loc in self.locations))
        for s in shots:
            tag = "CUT " if s.cut else "cont"
            lines.append(f"  shot {s.number:>2} [scene {s.scene_num}] {tag} {s.prompt[:90]}")
        return "\n".join(lines)


@dataclass
class Shot:
    index: int
    scene_index: int
    scene_num: int
    index_in_scene: int
    prompt: str
    first_frame_prompt: str | None
    cut: bool
    options: ShotOptions = field(default_factory=ShotOptions)
    negative_prompt: str | None = None

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def json_path(self) -> str:
        return f"scenes[{self.scene_index}].video_prompts[{self.index_in_scene}]"


def _loc_to_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_TYPE_WORDS = {
    "bool_type": "expected bool (true or false)",
    "int_type": "expected integer",
    "float_type": "expected number",
    "string_type": "expected string",
    "list_type": "expected a list",
    "missing": "required field is missing",
    "model_type": "expected an object",
    "dict_type": "expected an object",
}


def reference_problem(story: StoryScript, ref: str, allow_external: bool = False) -> str | None:
    """Why reference image ``ref`` can't be used, or None. It must be a non-empty image file that,
    symbolic links followed, lies inside the story's folder (a script must not read arbitrary files of
    the machine it runs on) unless ``allow_external``."""
    p = story.resolve(ref)
    if not p.is_file():
        return f"reference image not found: {p}"
    if not allow_external and story.base_dir is not None:
        base = Path(story.base_dir).resolve()
        if not p.resolve().is_relative_to(base):
            return (f"{ref} lies outside the story's folder {base} (pass --allow-external-references "
                    "to use it anyway)")
    if p.stat().st_size == 0:
        return f"{p} is empty (0 bytes), not an image"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"{p} is not a readable image ({type(e).__name__}: {str(e)[:60]})"
    return None


def _bounded_seed(add, path: str, seed: int | None) -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        add(path, f"expected a seed from 0 to 2**63-1, got {str(seed)[:30]}")


def check_story(story: StoryScript, allow_external_references: bool = False) -> list[ScriptIssue]:
    """Semantic checks beyond types. Returns every problem found (empty list: the story is usable)."""
    issues: list[ScriptIssue] = []
    add = lambda path, msg: issues.append(ScriptIssue(path=path, message=msg))  # noqa: E731
    _bounded_seed(add, "seed", story.seed)
    if not story.scenes:
        add("scenes", "expected at least one scene")
    names = {c.name for c in story.characters}
    locs = {loc.name for loc in story.locations}
    for kind, specs in (("characters", story.characters), ("locations", story.locations)):
        seen = set()
        for i, spec in enumerate(specs):
            if not spec.name.strip():
                add(f"{kind}[{i}].name", "expected a non-empty name")
            if spec.name in seen:
                add(f"{kind}[{i}].name", f"duplicate name {spec.name!r}")
            seen.add(spec.name)
            for j, img in enumerate(spec.reference_images):
                problem = reference_problem(story, img, allow_external_references)
                if problem:
                    add(f"{kind}[{i}].reference_images[{j}]", problem)
    for si, scene in enumerate(story.scenes):
        base = f"scenes[{si}]"
        n = len(scene.video_prompts)
        if n == 0:
            add(f"{base}.video_prompts", "expected at least one prompt")
        for k, prompt in enumerate(scene.video_prompts):
            if not prompt.strip():
                add(f"{base}.video_prompts[{k}]", "empty prompt")
        for key in ("first_frame_prompt", "cut", "shots"):
            value = getattr(scene, key)
            if value is not None and len(value) != n:
                add(f"{base}.{key}", f"expected {n} entries (one per video_prompts entry), got {len(value)}")
        if scene.first_frame_prompt:
            for k, prompt in enumerate(scene.first_frame_prompt):
                if not prompt.strip():
                    add(f"{base}.first_frame_prompt[{k}]", "empty prompt")
        if si == 0 and scene.cut and scene.cut[0] is not True:
            add(f"{base}.cut[0]", "the first shot of the story must be a cut (true): there is nothing to continue")
        for k, opts in enumerate(scene.shots or []):
            sp = f"{base}.shots[{k}]"
            if opts.duration_s is not None and opts.num_frames is not None:
                add(sp, "give duration_s or num_frames, not both")
            d = opts.duration_s
            if d is not None and not (math.isfinite(d) and 0 < d <= MAX_SHOT_SECONDS):
                add(f"{sp}.duration_s", f"expected a positive duration of at most {MAX_SHOT_SECONDS:g} s, got {d}")
            if opts.num_frames is not None and not 1 <= opts.num_frames <= MAX_SHOT_FRAMES:
                add(f"{sp}.num_frames", f"expected 1 to {MAX_SHOT_FRAMES} frames, got {str(opts.num_frames)[:30]}")
            _bounded_seed(add, f"{sp}.seed", opts.seed)
            for c, name in enumerate(opts.characters):
                if name not in names:
                    known = ", ".join(sorted(names)) or "none: the story has no character sheet"
                    add(f"{sp}.characters[{c}]", f"unknown character {name!r} (known: {known})")
            if opts.location is not None and opts.location not in locs:
                known = ", ".join(sorted(locs)) or "none: the story has no locations"
                add(f"{sp}.location", f"unknown location {opts.location!r} (known: {known})")
    return issues


def _json_problems(data: object) -> list[ScriptIssue]:
    """What no story contains, found before pydantic sees it (iteratively: no recursion limit): nesting
    deeper than :data:`MAX_NESTING`, strings with unpaired surrogates (which can't be written back)."""
    issues: list[ScriptIssue] = []
    todo = [((), data)]
    while todo and len(issues) < 10:
        loc, value = todo.pop()
        if len(loc) > MAX_NESTING:
            issues.append(ScriptIssue(path=_loc_to_path(loc), message=f"nested more than {MAX_NESTING} levels deep"))
            continue
        if isinstance(value, dict):
            todo.extend(((*loc, str(k)), v) for k, v in value.items())
            keys = [k for k in value if isinstance(k, str)]
            todo.extend(((*loc, "<key>"), k) for k in keys)
        elif isinstance(value, list):
            todo.extend(((*loc, i), v) for i, v in enumerate(value))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                issues.append(ScriptIssue(path=_loc_to_path(loc), message=f"unpaired surrogate "
                                          f"{value[e.start]!r} at character {e.start} (not valid Unicode text)"))
    return issues


def parse_story(data: object, file: str | Path | None = None, base_dir: str | Path | None = None,
                allow_external_references: bool = False) -> StoryScript:
    """Validate an already-decoded JSON object. Raises :class:`ScriptError` naming every problem.
    Relative reference images resolve against ``base_dir``; they must lie inside it unless
    ``allow_external_references``."""
    issues = _json_problems(data)
    if issues:
        raise ScriptError(file, issues)
    try:
        story = StoryScript.model_validate(data)
    except ValidationError as e:
        issues = []
        for err in e.errors():
            msg = _TYPE_WORDS.get(err["type"], err["msg"])
            if "input" in err and err["type"] != "missing":
                msg += f", got {json.dumps(err['input'])[:60]}"
            issues.append(ScriptIssue(path=_loc_to_path(err["loc"]), message=msg))
        raise ScriptError(file, issues) from None
    story.base_dir = str(base_dir) if base_dir is not None else None
    issues = check_story(story, allow_external_references)
    if issues:
        raise ScriptError(file, issues)
    return story


def load_story(path: str | Path, allow_external_references: bool = False) -> StoryScript:
    """Read and check a story script (UTF-8 JSON, a byte-order mark allowed). Every way a file can be
    unusable is a :class:`ScriptError` naming it, never another exception."""
    path = Path(path)

    def fail(message: str):
        raise ScriptError(path, [ScriptIssue(path="", message=message)]) from None

    if not path.is_file():
        fail("file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        fail(f"cannot read it: {e.strerror or e}")
    except UnicodeDecodeError as e:
        fail(f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): save the script as UTF-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")
    except RecursionError:
        fail(f"invalid story: nested more than {MAX_NESTING} levels deep")
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        fail(f"invalid JSON: {e}")
    return parse_story(data, file=path, base_dir=path.parent, allow_external_references=allow_external_references)
