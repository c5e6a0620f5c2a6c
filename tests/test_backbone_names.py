"""Backbone names come from outside (profiles, sweep files, the launchpad, the command line): any
string either parses or gets a BackboneNameError naming it; `limber backbones` describes a name."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assets.cli import main
from pipeline.encoders import ALIASES, BackboneNameError, parse_name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_string_parses_or_gets_a_name_error(name):
    try:
        parse_name(name)
    except BackboneNameError as error:
        assert str(error).startswith(f"backbone {name!r}: ")  # the name, then the problem and the fix


MODELS = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
OPTION_VALUES = {
    "layout": st.sampled_from(["grid", "pooled"]),
    "layer": st.integers(-30, -1),
    "pool": st.integers(1, 16),
    "tokens": st.integers(1, 8),
    "random": st.integers(0, 99),
    "size": st.integers(32, 1024),
}


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["timm", "open_clip", "hf"]),
    MODELS,
    st.one_of(st.none(), MODELS),
    st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.integers(), max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: OPTION_VALUES[k] for k in keys})
    ),
)
def test_the_canonical_form_parses_back_to_the_same_name(library, model, tag, options):
    if library == "hf":
        model, tag = f"org/{model}", None
    name = f"{library}:{model}" + (("." if library == "timm" else ":") + tag if tag else "")
    name += "?" + "&".join(f"{k}={v}" for k, v in options.items()) if options else ""
    parsed = parse_name(name)
    assert parse_name(parsed.canonical) == parsed
    assert {k: v for k, v in parsed.options.items()} == {
        k: v for k, v in options.items() if v != getattr(parse_name(f"{library}:{model}"), k)
    }


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_expand_to_library_names_and_keep_their_weights_variable(alias):
    parsed = parse_name(alias)
    assert parsed.alias == alias and parsed.weights_name == alias
    assert parse_name(f"{alias}?random=3").random == 3


def test_describe_prints_tokens_dim_layout_preprocessing_and_weights(capsys):
    assert main(["backbones", "describe", "timm:convnext_atto.d2_in1k", "--random", "--json", "--run"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["library"].startswith("timm ") and described["layout"] == "grid"
    assert (described["tokens"], described["positions"], described["dim"]) == (49, 49, 320)
    assert described["preprocessing"]["crop_pct"] == 0.875 and described["weights"] == "random init, seed 0"
    assert described["output_shape"] == [1, 49, 320]


def test_describe_says_where_absent_weights_go(capsys, empty_hf_cache):
    assert main(["backbones", "describe", "timm:convnext_atto.d2_in1k", "--run"]) == 3
    out = capsys.readouterr().out
    assert "weights_present  False" in out and "LIMBER_WEIGHTS_TIMM_CONVNEXT_ATTO_D2_IN1K" in out
    assert "not run" in out


def test_describe_of_a_bad_name_is_one_line_and_exit_2(capsys):
    assert main(["backbones", "describe", "hf:../.."]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a Hugging Face repo id" in err and "hf:<org>/<name>" in err


def test_list_shows_the_aliases_and_the_forms(capsys):
    assert main(["backbones", "list"]) == 0
    out = capsys.readouterr().out
    assert all(alias in out for alias in ALIASES)
    assert "timm:<model>[.<tag>]" in out and "open_clip:<arch>[:<pretrained tag>]" in out and "hf:<repo id>" in out


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.sampled_from([".", "..", "a/b", "a--b", "org/model"]), st.text(min_size=1, max_size=40)),
    st.one_of(st.sampled_from([".", "..", "a/b", "a--b"]), st.text(min_size=1, max_size=40)),
)
def test_any_two_names_get_their_own_safe_path_component(first, second):
    """Storage paths hold backbone and system names as one component: plain names stay as they
    are, others are spelled with _ and a hash, so no two names share a folder."""
    from storage.layout import _safe

    for name in (first, second):
        component = _safe(name)
        assert re.fullmatch(r"[A-Za-z0-9_.+-]+", component) and component not in (".", "..")
        if re.fullmatch(r"[A-Za-z0-9_.+-]+", name) and name not in (".", ".."):
            assert component == name
    if first != second:
        assert _safe(first) != _safe(second)


def test_preflight_names_a_sweep_files_backbone_without_weights_or_that_does_not_resolve(
    tmp_path, monkeypatch, empty_hf_cache
):
    from assets.preflight import preflight
    from assets.resources import Runtime

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("backbones: ['timm:convnext_atto.d2_in1k', 'timm:no_such_model', 'timm:resnet18?random']\n")
    monkeypatch.setenv("LIMBER_SWEEP", str(sweep))
    problems = preflight(Runtime(storage_root=str(tmp_path / "storage"), data_root=str(tmp_path / "raw")))
    assert any(p.startswith("backbone timm:convnext_atto.d2_in1k: ") and "LIMBER_WEIGHTS_TIMM" in p for p in problems)
    assert any(p.startswith("backbone timm:no_such_model: timm has no model") for p in problems)
    assert not any("resnet18" in p for p in problems)  # random weights need nothing
