"""Named predictor settings: refinement, click update and intensity step, as the container's options and the evaluation's rows.

A setting is `coarse` or `refine`, then optionally `+full`, `+local` or `+both` (the click update, default
`full`), then optionally `+nozclip` (keep predictions outside the challenge box's slice range; default
`+zclip` drops them), `+noanchor` (place a challenge class's window on all its prompts and its whole previous
mask; default `+anchor`: on the positive prompts and the previous components they touch), `+nopin` (leave a
challenge class's clicked voxels to the network; default `+pin`: foreground clicks 1, background clicks 0), `+tta=N` (N mirrored copies averaged per network run), `+nointensity` (the network's probabilities as they are;
default `+intensity`: moved by the object's intensity histogram, inference/intensity.py), `+cut` (the mask
snapped to the image's edges by a graph cut, inference/graphcut.py; default `+nocut`), `+adapt` (at click steps a
copy of the network fine-tuned on the object's clicks, inference/adapt.py; default `+noadapt`) and `+field=value` items
that override fields of `RefineConfig` (refinement), `LocalConfig` (prefixed `local.`), `IntensityConfig`
(prefixed `intensity.`), `GraphCutConfig` (prefixed `cut.`) or `AdaptConfig` (prefixed `adapt.`), or set `volume_weight=w` (the fusion's
overlap rule, inference/fusion.py) or `click_zoom=z` (the first window of an object prompted by clicks alone is
z times the zoom rule's; default 1, measured in the model card's "One click on a large structure") or
`min_zoom=m` (m < 1: the coarse window of a small object is magnified, down to zoom m; default 1) or `aniso=A`
(the coarse window's axes zoom differently up to the ratio A, `Window.around(anisotropy=...)`; default: the
value the checkpoint was trained with, `--window-anisotropy`, 1 for the shipped model), e.g.
`refine+both+max_tiles=4+soft_prev=0`. The container reads `SEGFM_REFINE` (on/off), `SEGFM_CLICK_UPDATE`
(full/local/both), `SEGFM_INTENSITY` (on/off), `SEGFM_GRAPHCUT` (on/off), `SEGFM_ADAPT` (on/off) and
`SEGFM_VOLUME_WEIGHT` (a number >= 0).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from .local_update import LocalConfig
from .predictor import (ADAPT_BY_DEFAULT, DEFAULT_ADAPT, CLICK_UPDATES, DEFAULT_CLICK_UPDATE, DEFAULT_GRAPHCUT, DEFAULT_INTENSITY, DEFAULT_REFINE,
                        DEFAULT_VOLUME_WEIGHT, GRAPHCUT_BY_DEFAULT, INTENSITY_BY_DEFAULT, REFINE_BY_DEFAULT)


def _value(text: str, current: Any) -> Any:
    """`text` parsed as the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "on", "yes"):
            return True
        if text.lower() in ("0", "false", "off", "no"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    return type(current)(text)


def _override(config, key: str, text: str):
    names = {f.name for f in dataclasses.fields(config)}
    if key not in names:
        raise ValueError(f"unknown option {key!r} (one of {', '.join(sorted(names))})")
    return dataclasses.replace(config, **{key: _value(text, getattr(config, key))})


def predictor_options(name: str) -> dict[str, Any]:
    """Predictor keyword arguments (refine, click_update, local) of a setting name (see the module docstring)."""
    parts = [p.strip() for p in name.split("+") if p.strip()]
    if not parts or parts[0] not in ("coarse", "refine"):
        raise ValueError(f"setting {name!r} must start with 'coarse' or 'refine'")
    refine = DEFAULT_REFINE if parts[0] == "refine" else None
    local = LocalConfig()
    click_update = DEFAULT_CLICK_UPDATE
    box_z_clip = True
    anchored_extent = True
    pin = True
    intensity = DEFAULT_INTENSITY if INTENSITY_BY_DEFAULT else None
    graphcut = DEFAULT_GRAPHCUT if GRAPHCUT_BY_DEFAULT else None
    adapt = DEFAULT_ADAPT if ADAPT_BY_DEFAULT else None
    options: dict[str, Any] = {}
    for part in parts[1:]:
        if part in CLICK_UPDATES:
            click_update = part
        elif part in ("zclip", "nozclip"):
            box_z_clip = part == "zclip"
        elif part in ("anchor", "noanchor"):
            anchored_extent = part == "anchor"
        elif part in ("pin", "nopin"):
            pin = part == "pin"
        elif part in ("intensity", "nointensity"):
            intensity = (intensity or DEFAULT_INTENSITY) if part == "intensity" else None
        elif part in ("adapt", "noadapt"):
            adapt = (adapt or DEFAULT_ADAPT) if part == "adapt" else None
        elif part in ("cut", "nocut"):
            graphcut = (graphcut or DEFAULT_GRAPHCUT) if part == "cut" else None
        elif "=" in part:
            key, text = part.split("=", 1)
            if key == "tta":
                options["tta"] = int(text)
            elif key in ("click_zoom", "min_zoom"):
                options[key] = float(text)
            elif key == "aniso":
                options["window_anisotropy"] = float(text)
            elif key == "volume_weight":
                options["volume_weight"] = parse_volume_weight(text, f"setting {name!r}: volume_weight")
            elif key.startswith("intensity."):
                intensity = _override(intensity or DEFAULT_INTENSITY, key[len("intensity."):], text)
            elif key.startswith("adapt."):
                adapt = _override(adapt or DEFAULT_ADAPT, key[len("adapt."):], text)
            elif key.startswith("cut."):
                graphcut = _override(graphcut or DEFAULT_GRAPHCUT, key[len("cut."):], text)
            elif key.startswith("local."):
                local = _override(local, key[len("local."):], text)
            elif refine is None:
                raise ValueError(f"setting {name!r}: {key!r} needs 'refine'")
            else:
                refine = _override(refine, key, text)
        else:
            raise ValueError(f"setting {name!r}: unknown part {part!r}")
    return {"refine": refine, "click_update": click_update, "local": local, "box_z_clip": box_z_clip,
            "anchored_extent": anchored_extent, "pin_clicks": pin, "intensity": intensity, "graphcut": graphcut,
            "adapt": adapt, **options}


def _switch(env: dict[str, str], name: str, default: bool) -> bool:
    """An on/off environment variable (on, off, 1, 0, true, false; empty = the default)."""
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text not in ("on", "off", "1", "0", "true", "false"):
        raise ValueError(f"{name} must be on or off, not {text!r}")
    return text in ("on", "1", "true")


def parse_volume_weight(text: str, what: str = "SEGFM_VOLUME_WEIGHT") -> float:
    """The fusion's volume weight from text (a number >= 0; empty = the default); errors name `what`."""
    text = text.strip()
    if not text:
        return DEFAULT_VOLUME_WEIGHT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also refuses nan
        raise ValueError(f"{what} must be a number >= 0, not {text!r}")
    return value


def env_options(environ: dict[str, str] | None = None, adapt_by_default: bool = ADAPT_BY_DEFAULT) -> dict[str, Any]:
    """Predictor keyword arguments from $SEGFM_REFINE (on/off, default off), $SEGFM_CLICK_UPDATE,
    $SEGFM_INTENSITY (on/off, default on), $SEGFM_GRAPHCUT (on/off, default off), $SEGFM_ADAPT (on/off, default
    `adapt_by_default`: the container's default, off for the interactive server) and $SEGFM_VOLUME_WEIGHT."""
    env = os.environ if environ is None else environ
    adapt = _switch(env, "SEGFM_ADAPT", adapt_by_default)
    refine = _switch(env, "SEGFM_REFINE", REFINE_BY_DEFAULT)
    intensity = _switch(env, "SEGFM_INTENSITY", INTENSITY_BY_DEFAULT)
    graphcut = _switch(env, "SEGFM_GRAPHCUT", GRAPHCUT_BY_DEFAULT)
    click = env.get("SEGFM_CLICK_UPDATE", DEFAULT_CLICK_UPDATE).strip().lower() or DEFAULT_CLICK_UPDATE
    if click not in CLICK_UPDATES:
        raise ValueError(f"SEGFM_CLICK_UPDATE must be one of {', '.join(CLICK_UPDATES)}, not {click!r}")
    return {"refine": DEFAULT_REFINE if refine else None, "click_update": click,
            "intensity": DEFAULT_INTENSITY if intensity else None, "graphcut": DEFAULT_GRAPHCUT if graphcut else None,
            "adapt": DEFAULT_ADAPT if adapt else None,
            "volume_weight": parse_volume_weight(env.get("SEGFM_VOLUME_WEIGHT", ""))}
