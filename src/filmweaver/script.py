"""Story scripts: the ST-Bench format, loaded unchanged, plus optional filmweaver extensions.

An ST-Bench script is ``{story_name, story_overview, scenes: [{scene_num, video_prompts[],
first_frame_prompt[], cut[]}]}``. Everything filmweaver adds is optional:

* story level: ``seed``, ``negative_prompt``, ``characters`` (a character sheet: name, description,
  reference images), ``locations`` (name, description, reference images);
* shot level, as ``scenes[i].shots[j]`` (parallel to ``video_prompts``): ``duration_s`` or
  ``num_frames``, ``seed``, ``negative_prompt``, ``characters`` (names from the sheet), ``location``,
  ``objects``.

**Entities.** Characters, locations and objects make one entity sheet (:meth:`StoryScript.entities`):
our ``characters`` / ``locations`` / ``objects`` lists and EntityBench's ``entity_descriptions``
(``"Character 1" -> {name, label, description}``, with ``_name_map``), which load unchanged. Which
entities each shot shows (:attr:`Shot.entities`) comes from EntityBench's per-shot
``entity_schedule`` (``"scene_num:shot" -> {characters, places, objects}``, shots counted from 1 in
their scene), else from the shot's options and the sheet characters its prompt names. EntityBench
prefixes a prompt with ``Name: description`` lines where an entity first appears; they stay in the
prompt (:attr:`Shot.action` is the prompt without them) and describe entities the sheet leaves
undescribed. A schedule key naming no shot, or an unknown character, is an error; a scheduled place
or object the sheet does not describe (EntityBench has some) joins the sheet undescribed, with a
warning (:func:`entity_warnings`).

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

import dataclasses
import json
import math
import re
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


class ObjectSpec(ReferenceSpec):
    """A prop that recurs (optional reference images, like a character's)."""


class EntityDescription(_Strict):
    """One value of EntityBench's ``entity_descriptions`` (keyed by its label, "Character 1")."""

    name: str
    label: str = ""
    description: str = ""


class ScheduleEntry(_Strict):
    """Which entities one shot shows (EntityBench's ``entity_schedule`` values)."""

    characters: list[str] = Field(default_factory=list)
    places: list[str] = Field(default_factory=list)
    objects: list[str] = Field(default_factory=list)


ENTITY_KINDS = ("character", "location", "object")
_SCHEDULE_KINDS = {"characters": "character", "places": "location", "objects": "object"}
_LABEL_KINDS = {"Character": "character", "Location": "location", "Place": "location", "Object": "object"}


@dataclass(frozen=True)
class Entity:
    """One entry of the story's entity sheet."""

    name: str
    kind: str  # character | location | object
    description: str = ""
    reference_images: tuple[str, ...] = ()
    label: str | None = None  # EntityBench's label ("Character 1")
    json_path: str = ""  # where the script defines it (for undescribed ones: where the schedule names it)


@dataclass
class ShotEntities:
    """The entities one shot shows, by kind, in the order the script names them."""

    characters: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    scheduled: bool = False  # from an entity schedule (else from the shot's options and prompt)

    def names(self) -> list[str]:
        return [*self.characters, *self.locations, *self.objects]

    def __bool__(self) -> bool:
        return bool(self.names())


def schedule_key(scene_num: int, index_in_scene: int) -> str:
    """EntityBench's key of a shot: ``"scene_num:shot"``, the shot counted from 1 in its scene."""
    return f"{scene_num}:{index_in_scene + 1}"


def description_prefix(prompt: str) -> tuple[dict[str, str], str]:
    """EntityBench's ``Name: description`` lines before the action (a blank line between):
    ``({name: description}, action)``; a prompt without them is all action."""
    head, sep, action = prompt.partition("\n\n")
    if not sep:
        return {}, prompt
    described = {}
    for line in head.splitlines():
        name, colon, text = line.partition(":")
        if not colon or not name.strip() or len(name) > 80:
            return {}, prompt
        described[name.strip()] = text.strip()
    return described, action.strip()


def names_in(text: str, names) -> list[str]:
    """The names that occur in ``text`` as whole words, in the order given."""
    return [n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text)]


class ShotOptions(_Strict):
    duration_s: float | None = None
    num_frames: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    characters: list[str] = Field(default_factory=list)
    location: str | None = None
    objects: list[str] = Field(default_factory=list)
    # where characters are drawn: name -> [x0, y0, x1, y1], fractions of the frame (regional prompts;
    # a character without a box gets its strip of the frame by the order the shot names it)
    layout: dict[str, list[float]] = Field(default_factory=dict)


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
    objects: list[ObjectSpec] = Field(default_factory=list)
    # EntityBench
    entity_schedule: dict[str, ScheduleEntry] = Field(default_factory=dict)
    entity_descriptions: dict[str, EntityDescription] = Field(default_factory=dict)

    # Set by load_story; relative reference-image paths resolve against it.
    base_dir: str | None = Field(default=None, exclude=True)

    def shots(self) -> list[Shot]:
        """The story flattened to shots in film order (0-based ``index``, 1-based ``number``)."""
        out: list[Shot] = []
        characters = [e.name for e in self.entities() if e.kind == "character"]
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
                        entities=self._shot_entities(schedule_key(scene.scene_num, k), opts, prompt, characters),
                    )
                )
        return out

    def _shot_entities(self, key: str, opts: ShotOptions, prompt: str, characters: list[str]) -> ShotEntities:
        entry = self.entity_schedule.get(key)
        if entry is not None:
            return ShotEntities(list(entry.characters), list(entry.places), list(entry.objects), scheduled=True)
        named = [c for c in names_in(prompt, characters) if c not in opts.characters]
        return ShotEntities([*opts.characters, *named], [opts.location] if opts.location else [], list(opts.objects))

    def entities(self) -> list[Entity]:
        """The entity sheet: characters, locations and objects of our lists and of EntityBench's
        descriptions, then scheduled places and objects nobody describes; descriptions missing from
        the sheet are taken from the prompts' ``Name: description`` lines."""
        found: dict[str, Entity] = {}
        for kind, key, specs in (("character", "characters", self.characters), ("location", "locations", self.locations),
                                 ("object", "objects", self.objects)):
            for i, spec in enumerate(specs):
                found.setdefault(spec.name, Entity(spec.name, kind, spec.description, tuple(spec.reference_images),
                                                   json_path=f"{key}[{i}]"))
        scheduled_kind = {}
        for entry in self.entity_schedule.values():
            for key, kind in _SCHEDULE_KINDS.items():
                for name in getattr(entry, key):
                    scheduled_kind.setdefault(name, kind)
        for label, d in self.entity_descriptions.items():
            kind = _LABEL_KINDS.get((d.label or label).split(" ")[0]) or scheduled_kind.get(d.name, "character")
            found.setdefault(d.name, Entity(d.name, kind, d.description, label=d.label or label,
                                            json_path=f"entity_descriptions[{json.dumps(label)}]"))
        for key, entry in self.entity_schedule.items():
            for field_name, kind in _SCHEDULE_KINDS.items():
                for j, name in enumerate(getattr(entry, field_name)):
                    found.setdefault(name, Entity(name, kind, json_path=f"entity_schedule[{json.dumps(key)}].{field_name}[{j}]"))
        undescribed = {n for n, e in found.items() if not e.description}
        if undescribed:
            for scene in self.scenes:
                for prompt in scene.video_prompts:
                    for name, text in description_prefix(prompt)[0].items():
                        if name in undescribed and text:
                            found[name] = dataclasses.replace(found[name], description=text)
                            undescribed.discard(name)
        return list(found.values())

    def resolve(self, ref: str) -> Path:
        p = Path(ref)
        if not p.is_absolute() and self.base_dir:
            p = Path(self.base_dir) / p
        return p

    def references(self) -> list[tuple[str, str, Path]]:
        """Every reference image as (kind, name, path): characters first, then locations, then objects."""
        refs = []
        for kind, specs in (("character", self.characters), ("location", self.locations), ("object", self.objects)):
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
        entities = self.entities()
        for kind, title in (("character", "characters"), ("location", "locations"), ("object", "objects")):
            names = [e.name for e in entities if e.kind == kind]
            if names:
                lines.append(f"{title}: " + ", ".join(names))
        for s in shots:
            tag = "CUT " if s.cut else "cont"
            lines.append(f"  shot {s.number:>2} [scene {s.scene_num}] {tag} {s.action[:90]}")
            if s.entities:
                e = s.entities
                where = f" @ {', '.join(e.locations)}" if e.locations else ""
                props = f" + {', '.join(e.objects)}" if e.objects else ""
                lines.append(f"           {', '.join(e.characters) or '(no character)'}{where}{props}")
        return "\n".join(lines)

    def describe(self) -> dict:
        """The parsed script for tools (``validate --json``): the script as given, its entity sheet, and
        every shot with its entity lists."""
        return {
            **self.model_dump(mode="json", exclude={"base_dir"}),
            "entities": [dataclasses.asdict(e) for e in self.entities()],
            "shot_list": [{"index": s.index, "number": s.number, "scene_num": s.scene_num, "json_path": s.json_path,
                           "schedule_key": schedule_key(s.scene_num, s.index_in_scene), "cut": s.cut,
                           "prompt": s.prompt, "action": s.action, "characters": s.entities.characters,
                           "locations": s.entities.locations, "objects": s.entities.objects,
                           "scheduled": s.entities.scheduled} for s in self.shots()],
            "warnings": [str(w) for w in entity_warnings(self)],
        }


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
    entities: ShotEntities = field(default_factory=ShotEntities)

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def action(self) -> str:
        """The prompt without EntityBench's ``Name: description`` lines."""
        return description_prefix(self.prompt)[1]

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
    entities = story.entities()
    names = {e.name for e in entities if e.kind == "character" and not e.json_path.startswith("entity_schedule")}
    locs = {e.name for e in entities if e.kind == "location"}
    objects = {e.name for e in entities if e.kind == "object"}
    for kind, specs in (("characters", story.characters), ("locations", story.locations), ("objects", story.objects)):
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
            for name, box in opts.layout.items():
                if name not in (opts.characters or names):
                    known = ", ".join(opts.characters or sorted(names)) or "none"
                    add(f"{sp}.layout.{name}", f"{name!r} is not one of the shot's characters ({known})")
                x0, y0, x1, y1 = (list(box) + [math.nan] * 4)[:4]
                if len(box) != 4 or not (all(math.isfinite(v) for v in box) and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                    add(f"{sp}.layout.{name}", f"expected [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                        f"(fractions of the frame), got {list(box)}")
            if opts.location is not None and opts.location not in locs:
                known = ", ".join(sorted(locs)) or "none: the story has no locations"
                add(f"{sp}.location", f"unknown location {opts.location!r} (known: {known})")
            for c, name in enumerate(opts.objects):
                if name not in objects:
                    known = ", ".join(sorted(objects)) or "none: the story has no objects"
                    add(f"{sp}.objects[{c}]", f"unknown object {name!r} (known: {known})")
    _check_schedule(story, add, names)
    return issues


def _check_schedule(story: StoryScript, add, characters: set[str]) -> None:
    """Every schedule key names a shot; every scheduled character is on the sheet (when there is one)."""
    for label, d in story.entity_descriptions.items():
        if not d.name.strip():
            add(f"entity_descriptions[{json.dumps(label)}].name", "expected a non-empty name")
    if not story.entity_schedule:
        return
    shots_in_scene: dict[int, int] = {}
    for scene in story.scenes:
        shots_in_scene[scene.scene_num] = shots_in_scene.get(scene.scene_num, 0) + len(scene.video_prompts)
    duplicated = len(shots_in_scene) != len(story.scenes)
    if duplicated:
        add("entity_schedule", "the schedule keys shots by scene_num, and two scenes share a scene_num")
    for key, entry in story.entity_schedule.items():
        path = f"entity_schedule[{json.dumps(key)}]"
        m = re.fullmatch(r"(\d+):(\d+)", key)
        if m is None:
            add(path, "expected a key \"scene_num:shot\" (e.g. \"2:1\", the shot counted from 1 in its scene)")
            continue
        scene_num, shot = int(m.group(1)), int(m.group(2))
        if scene_num not in shots_in_scene:
            add(path, f"no scene has scene_num {scene_num} (scenes: {', '.join(map(str, shots_in_scene))})")
        elif not 1 <= shot <= shots_in_scene[scene_num]:
            add(path, f"scene {scene_num} has {shots_in_scene[scene_num]} shot(s), not a shot {shot}")
        if characters:
            for j, name in enumerate(entry.characters):
                if name not in characters:
                    add(f"{path}.characters[{j}]", f"unknown character {name!r} (known: {', '.join(sorted(characters))})")


def entity_warnings(story: StoryScript) -> list[ScriptIssue]:
    """What a usable script leaves open: scheduled entities that no sheet entry describes (each at the
    first place the schedule names it)."""
    return [ScriptIssue(path=e.json_path, message=f"{e.kind} {e.name!r} is scheduled but never described")
            for e in story.entities() if e.json_path.startswith("entity_schedule") and not e.description]


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
