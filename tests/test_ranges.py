"""Option ranges have one home (talkcli.ranges): the CLI declares them, the library configs check
them, and the two agree. Choices are enums that match the library's own lists."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import typer

from talkcli import cli, ranges
from talkcli.errors import UserError


def _numeric_options() -> list[tuple[str, str, type, object, object]]:
    """(command path without 'talkcli ', parameter name, int|float, min, max) for every
    numeric option of the command tree."""
    command = typer.main.get_command(cli.app)
    found = []
    for path, param in cli.walk_params(command):
        kind = cli.numeric_kind(param)
        if kind is not None:
            found.append((path.removeprefix("talkcli").strip(), param.name, *kind))
    return found


def test_every_numeric_option_takes_its_bounds_from_talkcli_ranges():
    options = _numeric_options()
    assert len(options) > 50
    for path, name, kind, lo, hi in options:
        table = ranges.COMMANDS.get(path)
        assert table is not None and name in table, f"{path} {name}: not in talkcli.ranges"
        want = table[name]
        assert (lo, hi) == tuple(want), (path, name, (lo, hi), want)
        # same literal type: an int option has int bounds, a float option float bounds
        assert all(isinstance(v, kind) for v in want), (path, name, kind, want)


def test_every_range_entry_belongs_to_an_option():
    used = {(path, name) for path, name, *_ in _numeric_options()}
    declared = {(path, name) for path, table in ranges.COMMANDS.items() for name in table}
    assert declared == used, declared ^ used


def _library_configs():
    """command path -> (config class, how to run its checks)."""
    from talkcli.animate.options import AnimateOptions
    from talkcli.directions.find import FindConfig
    from talkcli.face.align import AlignConfig
    from talkcli.inversion.project import ProjectionConfig
    from talkcli.inversion.pti import PTIConfig
    from talkcli.metrics.evaluate import EvalConfig
    from talkcli.train.fit import FitConfig
    from talkcli.train.prepare import PrepareConfig

    def via_check(cls):
        return lambda **kw: cls(**kw).check()

    def on_init(cls):
        return lambda **kw: cls(**kw)  # __post_init__ checks

    return {
        "align": (AlignConfig, via_check(AlignConfig)),
        "animate": (AnimateOptions, via_check(AnimateOptions)),
        "evaluate run": (EvalConfig, via_check(EvalConfig)),
        "train fit": (FitConfig, via_check(FitConfig)),
        "train prepare": (PrepareConfig, via_check(PrepareConfig)),
        "invert": (ProjectionConfig, on_init(ProjectionConfig)),
        "tune-pti": (PTIConfig, on_init(PTIConfig)),
        "directions find": (FindConfig, via_check(FindConfig)),
    }


def _outside(value, kind, direction: float):
    """The nearest value beyond a bound: the next int, or the next representable float."""
    if kind is int:
        return value + int(direction)
    return math.nextafter(float(value), direction * math.inf)


def test_the_library_configs_enforce_the_cli_bounds():
    """Walk the CLI tree; for each numeric option whose command has a library config with a
    field of the same name, the config accepts both CLI bounds and refuses the values just
    outside them (a one-line UserError naming the option)."""
    configs = _library_configs()
    proved = set()
    for path, name, kind, lo, hi in _numeric_options():
        if path not in configs:
            continue
        cls, run = configs[path]
        if name not in {f.name for f in fields(cls)}:
            continue
        run(**{name: lo})
        run(**{name: hi})
        option = ranges.option_name(name)
        for bad in (_outside(lo, kind, -1), _outside(hi, kind, +1)):
            with pytest.raises(UserError, match=f"^{option} "):
                run(**{name: bad})
        proved.add((path, name))
    # every library config is covered, with every numeric field it shares with its command
    assert {p for p, _ in proved} == set(configs)
    assert len(proved) >= 40, sorted(proved)
    assert ("train fit", "lr") in proved and ("tune-pti", "stop_lpips") in proved


def test_option_enums_match_the_library_choices():
    from talkcli.animate import options as animate_options
    from talkcli.commands import options as o
    from talkcli.face.landmarks import DETECTORS
    from talkcli.inversion.invert import METHODS
    from talkcli.metrics.evaluate import CROPS, FACE_CROPS, LPIPS_NETS
    from talkcli.models.audio2latent import ARCH_PRESETS
    from talkcli.models.perceptual import NETS

    def values(enum_cls):
        return [m.value for m in enum_cls]

    assert set(values(o.Detector)) == set(DETECTORS) == set(animate_options.DETECTORS)
    assert values(o.Method) == list(METHODS)
    assert set(values(o.LpipsNet)) == set(NETS) == set(LPIPS_NETS)
    assert values(o.Dtype) == list(animate_options.DTYPES)
    from talkcli.directions.fit import FIT_METHODS

    assert values(o.FitMethod) == list(FIT_METHODS)
    assert set(values(o.Arch)) == set(ARCH_PRESETS)
    assert values(o.Crop) == list(CROPS)
    assert values(o.FaceCrop) == list(FACE_CROPS)
    assert values(o.Space) == ["w", "wplus"]


def test_choice_options_hand_the_command_a_plain_string():
    from talkcli.commands.options import Detector, plain_choice

    value = plain_choice(Detector.fan)
    assert value == "fan" and type(value) is str
    assert plain_choice(None) is None
    assert plain_choice([Detector.auto]) == ["auto"]


def test_evaluate_help_states_evalconfig_defaults():
    """`evaluate run` leaves its options unset (a suite may set them); each help text names the
    default EvalConfig applies then."""
    from talkcli.metrics.evaluate import DEFAULT_THREADS, EvalConfig

    command = typer.main.get_command(cli.app).commands["evaluate"].commands["run"]
    helps = {p.name: p.help or "" for p in command.params}
    defaults = {f.name: f.default for f in fields(EvalConfig)}
    stated = {
        "fps": f"{defaults['fps']:g}",
        "crop": defaults["crop"],
        "face_crop": defaults["face_crop"],
        "lpips_net": defaults["lpips_net"],
        "batch": str(defaults["batch"]),
        "seed": str(defaults["seed"]),
        "threads": f"min({DEFAULT_THREADS}, cores)",
    }
    for name, text in stated.items():
        assert f"\\[{text}]" in helps[name], (name, helps[name])
        assert command.params[[p.name for p in command.params].index(name)].default is None


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["invert", "face.png", "--out", "o.npz", "--method", "nope"], "--method"),
        (["invert", "face.png", "--out", "o.npz", "--space", "z"], "--space"),
        (["align", "face.png", "--out", "o", "--detector", "dlib"], "--detector"),
        (["animate", "--dtype", "fp8"], "--dtype"),
        (["evaluate", "a.mp4", "--crop", "half"], "--crop"),
        (["tune-pti", "face.png", "--out", "o.pt", "--pivot-method", "x"], "--pivot-method"),
        (["train", "fit", "data", "--out", "m.safetensors", "--arch", "big"], "--arch"),
    ],
)
def test_a_bad_choice_is_a_one_line_usage_error(capsys, tmp_path, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and option in err and "--help" in err, err
    assert not list(tmp_path.iterdir())


def test_choices_are_case_insensitive_as_the_commands_were(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # parsing accepts FAN; the run then stops at the missing input, not at the option
    assert cli.main(["align", "missing.png", "--out", "o", "--detector", "FAN"]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "--detector" not in err, err
