"""ChipConfig: presets, TOML round trip, validation errors that name the field and range."""
import dataclasses

import pytest

from cimstack.chip.config import PRESETS, ChipConfig, FieldSpec, load, preset
from cimstack.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_toml(name, tmp_path):
    cfg = preset(name)
    path = tmp_path / "chip.toml"
    cfg.save(path)
    again = load(path)
    assert again == cfg
    assert again.datapath == cfg.datapath


def test_preset_contents_follow_the_papers():
    oc = preset("opencimtc-576x128")
    assert (oc.array.rows, oc.array.cols) == (576, 128)
    assert (oc.datapath.weight_min, oc.datapath.weight_max) == (-7, 7)     # 4-bit signed weights
    assert oc.adc.bits == 4 and oc.mapping.scheme == "differential"
    assert preset("pcm-joshi2020").device.model == "pcm"
    assert preset("pcm-joshi2020").device.g_max_us == 25.0
    d = preset("default")
    assert (d.array.tiles, d.array.rows, d.array.cols) == (4, 64, 64)


@pytest.mark.parametrize("change, message", [
    (dict(array=dict(rows=0)), "array.rows = 0 is out of range: allowed 1..4096"),
    (dict(array=dict(mac_lanes=7)), "array.mac_lanes = 7 must divide"),
    (dict(array=dict(adc_share=3)), "array.adc_share = 3 must divide"),
    (dict(adc=dict(bits=1)), "adc.bits = 1 is out of range: allowed 2..16"),
    (dict(adc=dict(offset=200)), "adc.offset = 200 is out of range"),
    (dict(input=dict(mode="pwm")), "input.mode = 'pwm' is not one of"),
    (dict(input=dict(mode="unary", bits=10)), "input.bits = 10 is out of range for unary"),
    (dict(input=dict(dac_bits=2)), "input.dac_bits = 2 needs input.mode = 'amplitude'"),
    (dict(device=dict(g_max_us=0.05)), "device.g_max_us = 0.05 must exceed"),
    (dict(device=dict(stuck_at_0_rate=0.9)), "device.stuck_at_0_rate = 0.9 is out of range"),
    (dict(mapping=dict(weight_bits=3.5)), "mapping.weight_bits must be an integer"),
    (dict(cell=dict(cell_bits=1), mapping=dict(scheme="offset")), "cell.cell_bits = 1 is out of range for the offset scheme"),
])
def test_out_of_range_fields_are_named(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        preset("default").replace(**change)


def test_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        ChipConfig.from_toml("[array\nrows = 3")
    with pytest.raises(ConfigError, match="unknown key.*colums.*in \\[array\\]"):
        ChipConfig.from_toml("[array]\ncolums = 3")
    with pytest.raises(ConfigError, match="unknown config key.*arrays"):
        ChipConfig.from_toml("[arrays]\ncols = 3")
    with pytest.raises(ConfigError, match="neither a preset"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")


def test_config_hash_tracks_every_field():
    a = preset("default")
    assert a.datapath.config_hash != a.replace(seed=2).datapath.config_hash
    assert a.datapath.config_hash == preset("default").datapath.config_hash


def _spec_fields():
    """(dotted path, section name or None, the default dataclass holding the field, field) for
    every field of the default config but the sections themselves."""
    cfg = ChipConfig()
    for f in dataclasses.fields(ChipConfig):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from ((f"{f.name}.{g.name}", f.name, value, g) for g in dataclasses.fields(value))
        else:
            yield f.name, None, cfg, f


def test_every_field_declares_its_meaning_and_range():
    for path, _, holder, f in _spec_fields():
        spec = f.metadata.get("spec")
        assert isinstance(spec, FieldSpec), f"{path} is not declared with spec(...)"
        assert spec.doc.strip(), f"{path} has no doc"
        assert spec.kind == f.type, f"{path}: the default is a {spec.kind}, the annotation says {f.type}"
        if spec.choices:
            assert f.default in spec.choices, path
        elif spec.kind in ("int", "float"):
            lo, hi = spec.bounds(holder)
            assert lo <= f.default <= hi, f"{path}: default {f.default} outside {lo}..{hi}"


def _rejections():
    """For each field, values its check refuses and the message naming the field and range
    (a range that depends on another field is the default config's)."""
    for path, section, holder, f in _spec_fields():
        spec = f.metadata["spec"]
        if spec.choices:
            cases = [("pwm", f"{path} = 'pwm' is not one of {', '.join(spec.choices)}")]
        elif spec.kind == "bool":
            cases = [(1, f"{path} must be true or false, got 1")]
        elif spec.kind == "str":
            cases = [("", f"{path} must be a non-empty string, got ''")]
        else:
            lo, hi = spec.bounds(holder)
            rng = f"{lo}..{hi}" if spec.kind == "int" else f"[{lo}, {hi}]"
            what = "an integer" if spec.kind == "int" else "a number"
            cases = [(bad, f"{path} = {bad} is out of range: allowed {rng}") for bad in (lo - 1, hi + 1)]
            cases.append(("8", f"{path} must be {what} in {rng}, got '8'"))
        for value, message in cases:
            change = {section: {f.name: value}} if section else {f.name: value}
            yield pytest.param(change, message, id=f"{path}={value!r}")


@pytest.mark.parametrize("change, message", list(_rejections()))
def test_each_field_check_rejects_by_name(change, message):
    with pytest.raises(ConfigError) as err:
        preset("default").replace(**change)
    assert str(err.value) == message


def test_field_ranges_are_checked_before_cross_field_checks():
    # dac_bits = 2 with bit_serial breaks a cross-field check, v_read its own range: the range wins
    with pytest.raises(ConfigError, match=r"input\.v_read = 5\.0 is out of range"):
        preset("default").replace(input=dict(dac_bits=2, v_read=5.0))
