"""What the Studio form offers: prompt templates, frame sizes and clip durations.

Templates follow Ovi's prompt conventions (ovi.pipeline.prompts): spoken words inside `<S>..<E>`,
one audio caption `<AUDCAP>..<ENDAUDCAP>` at the end (the engine rewrites it to `Audio: ..` for the
960x960 models). The "tiny" templates use only the trained tiny model's vocabulary (DESIGN.md §5), so
they make clips that mean something on a CPU. The seed fork's front end offered the same categories,
sizes (720x720, 960x960, 9:16, 16:9) and durations (5 s, 10 s): here the Window list picks the checkpoint
(`durations`) and the Duration list 1, 2, 3, ... continuation windows of its clip (`long_durations`, a
request's `duration`; ovi.pipeline.windows).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovi.pipeline.prompts import AUDCAP_RE, SPEECH_RE
from ovi.pipeline.windows import frames_added_per_window, spec_layout
from ovi.request import MAX_DURATION_SECONDS
from ovi.specs import MODEL_SPECS


@dataclass(frozen=True)
class Template:
    category: str
    title: str
    prompt: str
    tiny_vocabulary: bool = False  # uses only words the trained tiny model knows

    @property
    def label(self) -> str:
        return f"{self.title} (tiny model)" if self.tiny_vocabulary else self.title


TEMPLATES: tuple[Template, ...] = (
    # nature
    Template("nature", "Waves at dusk", "Waves roll onto a rocky shore at dusk, spray catching the last light. "
             "<AUDCAP>crashing waves, distant gulls, steady wind<ENDAUDCAP>"),
    Template("nature", "Forest rain", "Rain falls through a dense green forest, drops sliding off broad leaves. "
             "<AUDCAP>soft rain on leaves, a far thunder roll<ENDAUDCAP>"),
    Template("nature", "Mountain guide", "A mountain guide stands on a windy ridge and points at the valley and says "
             "<S>The storm will pass before noon.<E> <AUDCAP>strong wind, a calm male voice<ENDAUDCAP>"),
    Template("nature", "Campfire night", "Sparks rise from a campfire under a starry sky beside a quiet lake. "
             "<AUDCAP>crackling fire, crickets, gentle water<ENDAUDCAP>"),
    # urban
    Template("urban", "Night market", "A crowded night market glows with lanterns as vendors call out to passers-by. "
             "<AUDCAP>busy chatter, sizzling food, footsteps<ENDAUDCAP>"),
    Template("urban", "Subway arrival", "A subway train pulls into a tiled station and the doors slide open. "
             "<AUDCAP>screeching brakes, a door chime, echoing announcements<ENDAUDCAP>"),
    Template("urban", "Street musician", "A street musician plays saxophone on a rainy corner, then smiles and says "
             "<S>This one is for the late shift.<E> <AUDCAP>smooth saxophone, rain, passing cars<ENDAUDCAP>"),
    Template("urban", "Rooftop traffic", "Time-lapse of city traffic seen from a rooftop, headlights streaking below. "
             "<AUDCAP>low city hum, distant horns<ENDAUDCAP>"),
    # abstract
    Template("abstract", "Ink in water", "Swirls of blue and gold ink bloom and fold into each other in clear water. "
             "<AUDCAP>deep ambient drone, slow shimmering chimes<ENDAUDCAP>"),
    Template("abstract", "Geometric pulse", "Neon triangles pulse and rotate in time over a black grid. "
             "<AUDCAP>punchy electronic beat, synth arpeggio<ENDAUDCAP>"),
    Template("abstract", "Liquid metal", "A sphere of liquid metal ripples and splits into droplets that merge again. "
             "<AUDCAP>glassy resonant tones, soft whooshes<ENDAUDCAP>"),
    # character
    Template("character", "Chef's tip", "A cheerful chef in a busy kitchen looks at the camera and says "
             "<S>Always salt the pasta water.<E> <AUDCAP>kitchen clatter, a warm female voice<ENDAUDCAP>"),
    Template("character", "Robot greeting", "A small round robot rolls up to the camera, blinks its eyes and says "
             "<S>Hello, I am ready to help.<E> <AUDCAP>servo whirs, a bright synthetic voice<ENDAUDCAP>"),
    Template("character", "Old storyteller", "An old storyteller by a fireplace leans forward and whispers "
             "<S>And then the lights went out.<E> <AUDCAP>crackling fireplace, a hushed raspy voice<ENDAUDCAP>"),
    Template("character", "Dancer", "A dancer spins across an empty studio, her skirt flaring with each turn. "
             "<AUDCAP>upbeat piano, rhythmic footsteps on wood<ENDAUDCAP>"),
    # abstract, in the trained tiny model's own vocabulary (colours, shapes, motions, tones)
    Template("abstract", "Blue square, low tone", "A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>", True),
    Template("abstract", "Red circle, high tone", "A red circle moves up. <AUDCAP>a high tone<ENDAUDCAP>", True),
    Template("abstract", "Green triangle, middle tone",
             "A green triangle moves right. <AUDCAP>a middle tone<ENDAUDCAP>", True),
    Template("abstract", "Yellow circle bouncing", "A yellow circle is bouncing. <AUDCAP>a low tone<ENDAUDCAP>", True),
)

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(t.category for t in TEMPLATES))


def templates(category: str | None = None) -> list[Template]:
    return [t for t in TEMPLATES if category in (None, t.category)]


def insert_template(current: str, template: Template, replaceable: tuple[str, ...] = ()) -> str:
    """The form's prompt after choosing `template`: the template replaces an empty prompt, one that
    is itself a template, or one of `replaceable` (the config's default prompt); otherwise the user's scene text stays and the template's audio caption (and
    speech) replace the prompt's own, so the result still holds exactly one `<AUDCAP>..<ENDAUDCAP>`."""
    text = current.strip()
    if not text or text in {t.prompt for t in TEMPLATES} | {r.strip() for r in replaceable}:
        return template.prompt
    scene = SPEECH_RE.sub(" ", AUDCAP_RE.sub(" ", text))
    tags = " ".join(m.group(0) for m in SPEECH_RE.finditer(template.prompt))
    caption = AUDCAP_RE.search(template.prompt).group(0)
    return " ".join(part for part in (" ".join(scene.split()), tags, caption) if part)


# Frame sizes as [height, width] (the engine keeps the model's pixel area and the aspect ratio).
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "720x720": (720, 720),
    "960x960": (960, 960),
    "9:16 (704x1280 portrait)": (1280, 704),
    "16:9 (1280x704 landscape)": (704, 1280),
}


def resolutions(default_height_width) -> dict[str, tuple[int, int]]:
    """The pinned sizes plus the config's own (the tiny model's 128x128), which comes first."""
    h, w = (int(v) for v in default_height_width)
    own = {f"{h}x{w} (this model)": (h, w)}
    return {**own, **{label: hw for label, hw in RESOLUTIONS.items() if hw != (h, w)}}


def durations(model_name: str) -> dict[str, str]:
    """Clip lengths this model family has -> the model_name that makes them: the checkpoints of one
    architecture and pixel area (960x960: 5 s and 10 s; 720x720: 5 s; tiny: 0.7 s)."""
    spec = MODEL_SPECS[model_name]
    family = [s for s in MODEL_SPECS.values() if (s.architecture, s.area) == (spec.architecture, spec.area)]
    out = {}
    for s in sorted(family, key=lambda s: s.num_frames):
        seconds = s.num_frames / s.fps
        out[f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"] = s.name
    return out


def seconds_text(seconds: float) -> str:
    return f"{seconds:.{1 if seconds >= 10 else 2}f}".rstrip("0").rstrip(".") + " s"


def long_durations(model_name: str, max_seconds: float = MAX_DURATION_SECONDS) -> list[tuple[str, float | None]]:
    """The Duration list: (label, `duration` seconds) for 1x, 2x, 3x, ... the model's own clip, up to
    `max_seconds`. 1x is None (the model's own length, one window). n x is the length n continuation
    windows make exactly: a window carries `DEFAULT_OVERLAP` latent frame(s) of the one before, so an exact
    multiple of the clip would need one more window and come out longer than asked."""
    spec = MODEL_SPECS[model_name]
    new_frames_per_window = frames_added_per_window(spec.video_latent_frames)
    out = [(f"{seconds_text(spec.num_frames / spec.fps)} (the model's clip)", None)]
    n = 2
    while (frames := spec.num_frames + (n - 1) * new_frames_per_window) / spec.fps <= max_seconds:
        seconds = round(frames / spec.fps, 4)  # 4 decimals: seconds x fps still rounds to `frames`
        windows = spec_layout(spec, seconds).windows
        out.append((f"{seconds_text(seconds)} ({windows} windows)", seconds))
        n += 1
    return out


def extension_duration(model_name: str, windows: int) -> float | None:
    """The `duration` that extends a clip by exactly `windows` continuation windows (None: one, the
    default): each adds the window's frames less the carried overlap, so "2x" on a card's Extend adds two
    windows, as it makes a new clip of two."""
    if windows <= 1:
        return None
    spec = MODEL_SPECS[model_name]
    return round(windows * frames_added_per_window(spec.video_latent_frames) / spec.fps, 4)
